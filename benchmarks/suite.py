"""The optimizer benchmark: 23 held-out Keras tasks, tuned baselines, Celo-style summary.

Every optimizer trains every task (benchmarks/keras_tasks.py) through `model.compile` +
`model.fit`, from the same initial weights and the same minibatch sequence (a fixed-seed
shuffle fed as a tf.data pipeline). Baselines, run by the same code:

  Adam(1e-3), Adam(2e-3), RMSProp(1e-2), SGD(1e-2, momentum 0.9),
  Adam tuned over 7 log-spaced learning rates 1e-4 ... 1e-1 (best final training loss),
  learned:untrained-stable = LearnedOptimizer(config="stable", weights=None): the untrained
  initialisation alone (its nominal AdamAggMo term), so the table shows what meta-training
  added.

Every run is cached on disk (--cache, one JSON per run) under a key made of the task name and
version, the data's hash (packaged texts), steps, batch size, seed, curve points, optimizer and
the TensorFlow / Keras versions, plus, for learned optimizers, the hashes of the weights file
and of learned_opt/*.py; a new weights file therefore costs only its own runs.

Recorded per run: the training loss (Keras' loss of the model in inference mode on a fixed
subset of <= 2048 training samples) every steps/--curve_points steps, the final test metric
(accuracy, or MSE for regression), wall and CPU seconds of `fit`. Per task, for each learned
optimizer: final training loss, test metric, speedup = (steps Adam(2e-3) needs to reach its
own final training loss) / (steps the learned optimizer needs to reach it), 0 if never, and
the wall-time ratio to Adam(2e-3), reported only when both runs were timed by the same process
(with --retime_reference, the default, Adam(2e-3) is re-run beside every fresh learned run
whose reference came from the cache). Summary: wins (lower final training loss) against every
baseline, interquartile mean (IQM) over tasks of the normalised final loss (learned / tuned
Adam, 1 = as good as tuned Adam) and of the speedup, divergences (a non-finite loss, or a
final loss above the initial one) and blow-ups (a run that falls apart after making progress
and recovers only partly, see `blow_up`).

    python -m benchmarks.suite                              # shipped default vs baselines
    python -m benchmarks.suite --weights /tmp/run.npz       # any exported weights file
    python -m benchmarks.suite --tasks mlp8_tanh_digits,gru_lm_python_license --name probe
    python -m benchmarks.suite --baselines_only             # fill the cache only
    python -m benchmarks.suite --resummarize benchmarks/results/suite   # summaries only

Outputs in benchmarks/results/<--name>/: suite.md (tables), suite.json (every number and
curve), curves/<task>.png, summary.png.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import json
import math
import os
import platform
import re
import time
import uuid
from typing import Callable, Sequence

from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

import learned_opt
from benchmarks import keras_tasks
from benchmarks.quality import jsonable  # one JSON spelling of NaN/inf for both benchmarks

TUNED_ADAM_LRS = tuple(float(f"{x:.3g}") for x in np.logspace(-4, -1, 7))
REFERENCE = "Adam(2e-3)"
TUNED = "Adam tuned"
UNTRAINED = "learned:untrained-stable"
TRAIN_SUBSET = 2048
CACHE_FORMAT = 1
# Runs made by this process share this id; wall and CPU ratios are only reported between runs
# with the same id (timed side by side), never between a fresh run and one cached on another
# machine or under another load.
TIMING_SESSION = uuid.uuid4().hex[:12]


# ---- optimizers -------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  """An optimizer the benchmark runs: a label, a factory, and what else its runs depend on
  (`identity`, part of the cache key: weights file and optimizer code hashes)."""
  label: str
  make: Callable[[], keras.optimizers.Optimizer]
  identity: str = ""
  learning_rate: float | None = None


def file_hash(*paths: str) -> str:
  digest = hashlib.sha256()
  for path in paths:
    with open(path, "rb") as f:
      digest.update(f.read())
  return digest.hexdigest()[:12]


def learned_code_hash() -> str:
  """The learned optimizer's code (a change to hrnn.step invalidates its cached runs)."""
  root = os.path.dirname(learned_opt.__file__)
  return file_hash(*sorted(glob.glob(os.path.join(root, "*.py"))))


def adam(lr: float) -> OptimizerSpec:
  label = REFERENCE if lr == 2e-3 else f"Adam({lr:.3g})"
  return OptimizerSpec(label, lambda: keras.optimizers.Adam(lr), learning_rate=lr)


def baselines() -> list[OptimizerSpec]:
  specs = [adam(lr) for lr in sorted({1e-3, 2e-3, *TUNED_ADAM_LRS})]
  specs += [
      OptimizerSpec("RMSProp(1e-2)", lambda: keras.optimizers.RMSprop(1e-2), learning_rate=1e-2),
      OptimizerSpec("SGD(1e-2, m0.9)", lambda: keras.optimizers.SGD(1e-2, momentum=0.9),
                    learning_rate=1e-2),
      OptimizerSpec(UNTRAINED, lambda: learned_opt.LearnedOptimizer(
          1e-3, weights=None, config="stable"), f"code{learned_code_hash()}", 1e-3),
  ]
  return specs


def weights_label(spec: str) -> str:
  name = os.path.splitext(os.path.basename(spec))[0] if spec.endswith(".npz") else spec
  return f"learned:{name}"


def learned_spec(weights: str, learning_rate: float = 1e-3) -> OptimizerSpec:
  """The optimizer under test; built once here so a bad weights file fails before any run."""
  learned_opt.LearnedOptimizer(learning_rate, weights=weights)
  path = learned_opt.weights.resolve(weights)
  return OptimizerSpec(weights_label(weights), lambda: learned_opt.LearnedOptimizer(
      learning_rate, weights=weights),
      f"w{file_hash(path)}-code{learned_code_hash()}-lr{learning_rate:g}", learning_rate)


# ---- metrics ----------------------------------------------------------------------------------

def steps_to_reach(steps: Sequence[int], losses: Sequence[float], target: float) -> int | None:
  """First recorded step whose loss is <= target; None if never (or target not finite)."""
  if target is None or not math.isfinite(target):
    return None
  for step, value in zip(steps, losses):
    if value is not None and math.isfinite(value) and value <= target:
      return int(step)
  return None


def speedup(reference: dict, run: dict) -> float:
  """Steps the reference needs to reach its own final loss / steps `run` needs: 0.0 if never.

  Steps count from the first recorded point (step 0 reaching the target counts as one curve
  interval, so a speedup stays finite)."""
  target = reference["final_loss"]
  ref_steps = steps_to_reach(reference["steps"], reference["losses"], target)
  steps = steps_to_reach(run["steps"], run["losses"], target)
  if ref_steps is None or steps is None:
    return 0.0
  floor = max(1, reference["steps"][1] if len(reference["steps"]) > 1 else 1)
  return max(ref_steps, floor) / max(steps, floor)


def divergence(losses: Sequence[float]) -> str | None:
  """Why a run counts as diverged: a non-finite loss, or a final loss above the initial one."""
  if not len(losses):
    return None
  for index, value in enumerate(losses):
    if value is None or not math.isfinite(value):
      return f"non-finite loss at point {index}"
  if losses[-1] > losses[0]:
    return f"final loss {losses[-1]:.4g} > initial {losses[0]:.4g}"
  return None


# A blow-up: once a run has made real progress (its best loss so far is at most BLOW_UP_PROGRESS
# of its initial loss), a later point gives back at least BLOW_UP_GIVEBACK of that progress,
# i.e. rises above the best by half the distance from the initial loss down to it. It catches
# a run that falls apart and recovers only partly (a divergence needs a non-finite loss or a
# final loss above the initial one), and ignores what a user would not call unstable: the
# early transients of BatchNorm models, whose loss rises before any progress, and relative
# jumps at interpolation (1e-6 -> 1e-4 is a 100x jump but gives back nothing that matters).
BLOW_UP_PROGRESS = 0.5
BLOW_UP_GIVEBACK = 0.5


def blow_up(losses: Sequence[float]) -> str | None:
  """Why a run counts as having blown up (see BLOW_UP_*), or None; non-finite points are left
  to `divergence`, and a run whose initial loss is not positive has no halving to measure."""
  if (not len(losses) or losses[0] is None or not math.isfinite(losses[0])
      or losses[0] <= 0):
    return None
  initial, best, best_index = float(losses[0]), math.inf, 0
  for index, value in enumerate(losses):
    if value is None or not math.isfinite(value):
      continue
    if value < best:
      best, best_index = float(value), index
      continue
    progress = initial - best
    if (progress > 0 and best <= BLOW_UP_PROGRESS * initial
        and value - best >= BLOW_UP_GIVEBACK * progress):
      return (f"loss {value:.4g} at point {index} after {best:.4g} at point {best_index} "
              f"(gave back {(value - best) / progress:.0%} of its progress from {initial:.4g})")
  return None


def finite_or_inf(value) -> float:
  return value if value is not None and math.isfinite(value) else math.inf


def iqm(values: Sequence[float]) -> float:
  """Interquartile mean: the mean of the middle 50% (sorted, 25% cut each side, as in rliable
  and Celo); inf values sort last and count like any other value; NaN (not measured, e.g. no
  tuned Adam in a partial run) is left out."""
  values = sorted(float(v) for v in values if not math.isnan(float(v)))
  n = len(values)
  if not n:
    return math.nan
  cut = n // 4
  middle = values[cut:n - cut]
  if any(math.isinf(v) for v in middle):
    return math.inf
  return float(np.mean(middle))


def timing_session(run: dict) -> str | None:
  """The id of the process that timed a run (None for runs cached before it was recorded)."""
  return (run.get("timing") or {}).get("session")


def timed_together(a: dict, b: dict) -> bool:
  """Whether two runs were timed by one process (so their time ratio means something)."""
  return timing_session(a) is not None and timing_session(a) == timing_session(b)


@functools.lru_cache(maxsize=None)
def machine() -> str:
  """What the timings were taken on (recorded with every run)."""
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  return f"{model}, {os.cpu_count()} cores"


def task_summary(runs: dict[str, dict], learned: Sequence[str]) -> dict:
  """Tuned Adam, and per learned optimizer: final loss, metric, speedup, time ratio."""
  reference = runs[REFERENCE]
  sweep = [runs[adam(lr).label] for lr in TUNED_ADAM_LRS if adam(lr).label in runs]
  tuned = min(sweep, key=lambda r: finite_or_inf(r["final_loss"])) if sweep else None
  summary = {"tuned_adam": None if tuned is None else tuned["optimizer"], "learned": {}}
  for label in learned:
    run = runs[label]
    together = timed_together(run, reference)
    summary["learned"][label] = {
        "final_loss": run["final_loss"], "test_metric": run["test_metric"],
        "speedup": speedup(reference, run),
        "steps_to_adam_final": steps_to_reach(run["steps"], run["losses"],
                                              reference["final_loss"]),
        "wall_ratio": (run["wall_seconds"] / max(reference["wall_seconds"], 1e-9)
                       if together else None),
        "cpu_ratio": (run["cpu_seconds"] / max(reference["cpu_seconds"], 1e-9)
                      if together else None),
        "normalised_loss": finite_or_inf(run["final_loss"]) / max(
            finite_or_inf(tuned["final_loss"]), 1e-12) if tuned else math.nan,
        "diverged": run["diverged"],
        "blew_up": blow_up(run["losses"]),
    }
  return summary


# Baselines of the wins table: the fixed ones, tuned Adam, the untrained optimizer.
COMPARED = (REFERENCE, "Adam(0.001)", "RMSProp(1e-2)", "SGD(1e-2, m0.9)", TUNED, UNTRAINED)


def overall_summary(tasks: dict[str, dict], learned: Sequence[str]) -> dict:
  """Wins against each baseline, IQMs of normalised loss and speedup, divergences."""
  out = {}
  for label in learned:
    wins, counted = {}, {}
    normalised, speedups, divergences, blow_ups = [], [], [], []
    for name, task in tasks.items():
      runs = task["runs"]
      mine = finite_or_inf(runs[label]["final_loss"])
      for other in COMPARED:
        key = task["summary"]["tuned_adam"] if other == TUNED else other
        if key not in runs:
          continue
        counted[other] = counted.get(other, 0) + 1
        wins[other] = wins.get(other, 0) + int(mine < finite_or_inf(runs[key]["final_loss"]))
      s = task["summary"]["learned"][label]
      normalised.append(s["normalised_loss"])
      speedups.append(s["speedup"])
      if s["diverged"]:
        divergences.append(name)
      elif s["blew_up"]:
        blow_ups.append(name)
    out[label] = {"wins": wins, "tasks_compared": counted,
                  "iqm_normalised_loss": iqm(normalised), "iqm_speedup": iqm(speedups),
                  "median_speedup": float(np.median(speedups)) if speedups else math.nan,
                  "divergences": divergences, "blow_ups": blow_ups}
  # Divergences and blow-ups of every baseline too (a benchmark that nothing diverges on is
  # too easy).
  out["baseline_divergences"], out["baseline_blow_ups"] = {}, {}
  for name, task in tasks.items():
    for label, run in task["runs"].items():
      if label in learned:
        continue
      if run["diverged"]:
        out["baseline_divergences"].setdefault(label, []).append(name)
      elif blow_up(run["losses"]):
        out["baseline_blow_ups"].setdefault(label, []).append(name)
  return out


# ---- running one optimizer on one task --------------------------------------------------------

def batch_order(num_samples: int, batch_size: int, steps: int, seed: int) -> np.ndarray:
  """[steps, batch] sample indices: reshuffled epochs from one seed (same for everyone)."""
  rng = np.random.default_rng([seed, 7])
  epochs = math.ceil(steps * batch_size / num_samples)
  order = np.concatenate([rng.permutation(num_samples) for _ in range(epochs)])
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


def curve_layout(steps: int, curve_points: int) -> tuple[int, int, int]:
  """(epochs, steps_per_epoch, steps_per_execution): the curve is recorded at epoch ends."""
  points = max(1, min(curve_points, steps))
  while steps % points:
    points -= 1
  per_epoch = steps // points
  per_execution = max(d for d in range(1, 26) if per_epoch % d == 0)
  return points, per_epoch, per_execution


class _Curve(keras.callbacks.Callback):
  """Records the training-subset loss (Keras' validation pass) at every epoch end, and a
  progress line every `report_every` seconds."""

  def __init__(self, steps_per_epoch: int):
    super().__init__()
    self.steps_per_epoch = steps_per_epoch
    self.steps, self.losses = [], []

  def on_epoch_end(self, epoch, logs=None):
    self.steps.append((epoch + 1) * self.steps_per_epoch)
    self.losses.append(float((logs or {}).get("val_loss", math.nan)))


def run_one(task: keras_tasks.KerasTask, data: keras_tasks.Data, init_weights, optimizer,
            seed: int, curve_points: int, steps: int | None = None,
            jit_compile: bool | str | None = None) -> dict:
  """Trains `task` with `optimizer` by model.fit; returns the curve and metrics."""
  steps = steps or task.steps
  epochs, per_epoch, per_execution = curve_layout(steps, curve_points)
  previous_policy = keras.config.dtype_policy()
  if task.mixed_precision:
    keras.config.set_dtype_policy("mixed_float16")
  try:
    keras.utils.set_random_seed(seed)
    model = task.model(data)
    model.set_weights(init_weights)
    metric_name, metric, _ = task.metric()
    model.compile(optimizer=optimizer, loss=task.loss(), metrics=[metric],
                  jit_compile=task.jit_compile if jit_compile is None else jit_compile,
                  steps_per_execution=per_execution)
    order = batch_order(len(data.x_train), task.batch_size, steps, seed)
    x, y = tf.constant(data.x_train), tf.constant(data.y_train)
    dataset = tf.data.Dataset.from_tensor_slices(order).map(
        lambda i: (tf.gather(x, i), tf.gather(y, i))).prefetch(4)
    subset = np.random.default_rng([seed, 8]).permutation(len(data.x_train))[:TRAIN_SUBSET]
    x_sub, y_sub = data.x_train[np.sort(subset)], data.y_train[np.sort(subset)]
    eval_batch = min(len(x_sub), 1024)
    initial = model.evaluate(x_sub, y_sub, batch_size=eval_batch, verbose=0, return_dict=True)
    curve = _Curve(per_epoch)
    wall, cpu = time.perf_counter(), time.process_time()
    model.fit(dataset, epochs=epochs, shuffle=False, steps_per_epoch=per_epoch, verbose=0,
              validation_data=(x_sub, y_sub), validation_batch_size=eval_batch,
              callbacks=[curve, keras.callbacks.TerminateOnNaN()])
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    losses = [float(initial["loss"])] + curve.losses
    curve_steps = [0] + curve.steps
    final = losses[-1]
    test = (model.evaluate(data.x_test, data.y_test, batch_size=1024, verbose=0,
                           return_dict=True)[metric_name] if math.isfinite(final) else None)
  finally:
    keras.config.set_dtype_policy(previous_policy)
  if len(curve_steps) < epochs + 1:     # stopped by TerminateOnNaN
    final = math.nan
    losses.append(math.nan)
    curve_steps.append(curve_steps[-1] + per_epoch)
  return {"steps": curve_steps, "losses": losses, "final_loss": final,
          "test_metric": None if test is None else float(test), "test_metric_name": metric_name,
          "diverged": divergence(losses), "wall_seconds": wall, "cpu_seconds": cpu,
          "skipped_steps": int(getattr(optimizer, "skipped_steps", 0) or 0)}


# ---- the cache --------------------------------------------------------------------------------

def cache_key(task: keras_tasks.KerasTask, data: keras_tasks.Data, spec: OptimizerSpec,
              seed: int, steps: int, curve_points: int) -> str:
  """Everything a cached run depends on, as a file name."""
  safe = re.sub(r"[^A-Za-z0-9.+-]+", "_", spec.label + "-" + spec.identity).strip("_")
  versions = f"tf{tf.__version__}-keras{keras.__version__}"
  data_hash = f"-{data.source_hash}" if data.source_hash else ""
  return (f"{task.name}-v{task.version}{data_hash}-s{seed}-n{steps}-b{task.batch_size}"
          f"-p{curve_points}-{versions}-c{CACHE_FORMAT}-{safe}")


def cache_load(directory: str | None, key: str) -> dict | None:
  if not directory:
    return None
  path = os.path.join(directory, key + ".json")
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return unjson(json.load(f))


def cache_store(directory: str | None, key: str, run: dict) -> None:
  if not directory:
    return
  os.makedirs(directory, exist_ok=True)
  path = os.path.join(directory, key + ".json")
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    json.dump(jsonable(run), f)
  os.replace(tmp, path)


def unjson(value):
  if isinstance(value, str) and value in ("nan", "inf", "-inf"):
    return float(value)
  if isinstance(value, dict):
    return {k: unjson(v) for k, v in value.items()}
  if isinstance(value, list):
    return [unjson(v) for v in value]
  return value


# ---- the driver -------------------------------------------------------------------------------

@dataclasses.dataclass
class Options:
  weights: Sequence[str] = ("default",)
  tasks: Sequence[str] = tuple(keras_tasks.TASKS)
  baselines: Sequence[str] | None = None        # labels; None = all
  seed: int = 0
  curve_points: int = 40
  steps: int | None = None                      # override every task's steps (smoke runs)
  learning_rate: float = 1e-3
  jit_compile: bool | str | None = None         # None: each task's own setting
  cache: str | None = "benchmarks/results/suite_cache"
  out: str = "benchmarks/results/suite"
  retime_reference: bool = True                 # re-run a cached Adam(2e-3) beside fresh runs


def run(options: Options) -> dict:
  unknown = [t for t in options.tasks if t not in keras_tasks.TASKS]
  if unknown:
    raise ValueError(f"--tasks: unknown {unknown}; known: {sorted(keras_tasks.TASKS)}")
  learned = [learned_spec(w, options.learning_rate) for w in options.weights]
  labels = [s.label for s in learned]
  if len(set(labels)) != len(labels):
    raise ValueError(f"--weights names two files with the same label: {list(options.weights)}")
  specs = baselines()
  if options.baselines is not None:
    known = {s.label for s in specs}
    missing = set(options.baselines) - known
    if missing:
      raise ValueError(f"unknown baselines {sorted(missing)}; known: {sorted(known)}")
    specs = [s for s in specs if s.label in options.baselines or s.label == REFERENCE]
  specs = learned + specs
  total = len(specs) * len(options.tasks)
  done, start = 0, time.perf_counter()
  results = {"learned": labels, "settings": jsonable(dataclasses.asdict(options)),
             "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
             "tasks": {}}
  for name in options.tasks:
    task = keras_tasks.get(name)
    data = task.data(options.seed)
    steps = options.steps or task.steps
    previous_policy = keras.config.dtype_policy()
    if task.mixed_precision:
      keras.config.set_dtype_policy("mixed_float16")
    try:
      keras.utils.set_random_seed(options.seed)
      init_weights = task.model(data).get_weights()
    finally:
      keras.config.set_dtype_policy(previous_policy)
    runs = {}
    for spec in specs:
      done += 1
      key = cache_key(task, data, spec, options.seed, steps, options.curve_points)
      if options.jit_compile is not None:
        key += f"-jit{options.jit_compile}"
      cached = cache_load(options.cache, key)
      if (cached is not None and spec.label == REFERENCE and options.retime_reference
          and any(timing_session(runs[label]) == TIMING_SESSION
                  for label in labels if label in runs)
          and timing_session(cached) != TIMING_SESSION):
        cached = None   # a learned run is fresh: time the reference beside it.
      if cached is None:
        run_result = run_one(task, data, init_weights, spec.make(), options.seed,
                             options.curve_points, steps, options.jit_compile)
        run_result["optimizer"] = spec.label
        run_result["timing"] = {"session": TIMING_SESSION, "machine": machine(),
                                "load_average": os.getloadavg()[0]}
        cache_store(options.cache, key, run_result)
      else:
        run_result = cached
      runs[spec.label] = run_result
      metric = run_result["test_metric"]
      cost = "cached" if cached is not None else f"{run_result['wall_seconds']:.1f} s"
      print(f"[{done:>3}/{total}] {name:<30} {spec.label:<26} final loss "
            f"{run_result['final_loss']:<10.4g} test {run_result['test_metric_name']} "
            f"{'-' if metric is None else f'{metric:.4g}':<7} "
            f"{cost}"
            + (f"  DIVERGED: {run_result['diverged']}" if run_result["diverged"] else ""),
            flush=True)
    results["tasks"][name] = {
        "description": task.description, "version": task.version, "steps": steps,
        "batch_size": task.batch_size, "data_source": task.data_source,
        "architecture": task.architecture, "num_params": int(sum(
            np.prod(w.shape) for w in init_weights)),
        "runs": runs, "summary": task_summary(runs, labels)}
  results["summary"] = overall_summary(results["tasks"], labels)
  results["seconds"] = time.perf_counter() - start
  results["provenance"] = {
      s.label: learned_opt.LearnedOptimizer(weights=w).weights_provenance
      for s, w in zip(learned, options.weights)}
  write_outputs(results, options.out)
  return results


# ---- reporting --------------------------------------------------------------------------------

def fmt(value, digits=4) -> str:
  if value is None:
    return "-"
  if isinstance(value, float) and math.isnan(value):
    return "nan"
  if isinstance(value, float) and math.isinf(value):
    return "inf"
  return f"{value:.{digits}g}"


def markdown(results: dict) -> str:
  learned = results["learned"]
  tasks = results["tasks"]
  lines = []
  for label in learned:
    s = results["summary"][label]
    lines += [f"**{label}** over {len(tasks)} tasks: IQM normalised final loss (learned / tuned "
              f"Adam, lower is better) {fmt(s['iqm_normalised_loss'], 3)}, IQM speedup vs "
              f"Adam(2e-3) {fmt(s['iqm_speedup'], 3)} (median {fmt(s['median_speedup'], 3)}), "
              f"divergences {len(s['divergences'])}"
              + (f" ({', '.join(s['divergences'])})" if s["divergences"] else "")
              + f", blow-ups {len(s.get('blow_ups', []))}"
              + (f" ({', '.join(s['blow_ups'])})" if s.get("blow_ups") else "") + ".", ""]
    lines += ["| wins (lower final train loss) against | " + " | ".join(s["wins"]) + " |",
              "|---|" + "---:|" * len(s["wins"]),
              f"| {label} | " + " | ".join(f"{s['wins'][k]}/{s['tasks_compared'][k]}"
                                           for k in s["wins"]) + " |", ""]
  base_div = results["summary"]["baseline_divergences"]
  if base_div:
    lines += ["Baseline divergences: " + "; ".join(f"{k}: {', '.join(v)}"
                                                   for k, v in base_div.items()), ""]
  base_blow = results["summary"].get("baseline_blow_ups")
  if base_blow:
    lines += ["Baseline blow-ups: " + "; ".join(f"{k}: {', '.join(v)}"
                                                for k, v in base_blow.items()), ""]
  lines += [f"A divergence is a non-finite loss or a final loss above the initial one; a "
            f"blow-up (counted only where there is no divergence) is a point that gives back "
            f"at least {BLOW_UP_GIVEBACK:.0%} of the progress made once the best loss is at "
            f"most {BLOW_UP_PROGRESS:.0%} of the initial one.", ""]
  # Final training loss table.
  columns = [*learned, REFERENCE, "Adam(0.001)", "RMSProp(1e-2)", "SGD(1e-2, m0.9)", UNTRAINED]
  lines += ["Final training loss (fixed training subset, model in inference mode).", "",
            "| task | steps | batch | " + " | ".join(columns) + " | Adam tuned (lr) |",
            "|---|---:|---:|" + "---:|" * (len(columns) + 1)]
  for name, task in tasks.items():
    runs = task["runs"]
    tuned = task["summary"]["tuned_adam"]
    cells = [fmt(runs[c]["final_loss"]) if c in runs else "-" for c in columns]
    tuned_cell = (f"{fmt(runs[tuned]['final_loss'])} ({runs[tuned].get('optimizer', tuned)})"
                  if tuned else "-")
    lines.append(f"| {name} | {task['steps']} | {task['batch_size']} | " + " | ".join(cells)
                 + f" | {tuned_cell} |")
  # Per learned optimizer: metric, speedup, ratios.
  for label in learned:
    lines += ["", f"{label}: test metric (accuracy, or MSE for regression tasks), speedup "
              "(Adam(2e-3)'s steps to its final loss / learned steps to it; 0 = never), time "
              "ratio to Adam(2e-3) (\"-\": the two runs were not timed by one process).", "",
              "| task | metric | learned | Adam(2e-3) | Adam tuned | speedup | wall ratio | "
              "CPU ratio |", "|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, task in tasks.items():
      runs, s = task["runs"], task["summary"]["learned"][label]
      tuned = task["summary"]["tuned_adam"]
      lines.append(
          f"| {name} | {runs[label]['test_metric_name']} | {fmt(s['test_metric'])} | "
          f"{fmt(runs[REFERENCE]['test_metric'])} | "
          f"{fmt(runs[tuned]['test_metric']) if tuned else '-'} | {fmt(s['speedup'], 3)} | "
          f"{fmt(s['wall_ratio'], 3)} | {fmt(s['cpu_ratio'], 3)} |")
  lines += ["", f"Total {results['seconds']:.0f} s (cached runs cost nothing); TensorFlow "
            f"{results['versions']['tensorflow']}, Keras {results['versions']['keras']}."]
  return "\n".join(lines) + "\n"


def plot_task(name: str, task: dict, learned: Sequence[str], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  tuned = task["summary"]["tuned_adam"]
  styles = {REFERENCE: dict(color="tab:blue"), "RMSProp(1e-2)": dict(color="tab:green"),
            "SGD(1e-2, m0.9)": dict(color="tab:olive"),
            UNTRAINED: dict(color="tab:gray", ls=":")}
  if tuned and tuned != REFERENCE:
    styles[tuned] = dict(color="tab:purple", ls="--")
  colors = iter(["tab:red", "tab:orange", "tab:brown", "black"])
  for label in learned:
    styles[label] = dict(color=next(colors), lw=2)
  for label, style in styles.items():
    run = task["runs"].get(label)
    if run is None:
      continue
    losses = np.array([v if v is not None and math.isfinite(v) and v > 0 else np.nan
                       for v in run["losses"]])
    ax.plot(run["steps"], losses, label=label + (" (tuned)" if label == tuned else ""),
            **style)
  ax.set_yscale("log")
  ax.set(xlabel="step", ylabel="training loss", title=f"{name} ({task['num_params']:,} params)")
  ax.title.set_fontsize(9)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_summary(results: dict, path: str) -> None:
  """Per task: log10(final loss / tuned Adam) of each learned optimizer and some baselines."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  names = list(results["tasks"])
  labels = [*results["learned"], REFERENCE, UNTRAINED]
  fig, ax = plt.subplots(figsize=(max(6, 0.45 * len(names) + 2), 4.5))
  width = 0.8 / len(labels)
  for index, label in enumerate(labels):
    values = []
    for name in names:
      task = results["tasks"][name]
      run, tuned = task["runs"].get(label), task["summary"]["tuned_adam"]
      if run is None or not tuned:
        values.append(np.nan)
        continue
      ratio = finite_or_inf(run["final_loss"]) / max(
          finite_or_inf(task["runs"][tuned]["final_loss"]), 1e-12)
      values.append(np.log10(min(ratio, 1e6)) if math.isfinite(ratio) else 6.0)
    ax.bar(np.arange(len(names)) + index * width, values, width, label=label)
  ax.axhline(0, color="black", lw=0.8)
  ax.set_xticks(np.arange(len(names)) + 0.4 - width / 2, names, rotation=70, ha="right",
                fontsize=7)
  ax.set_ylabel("log10(final loss / tuned Adam)")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def resummarize(out: str) -> dict:
  """Recomputes the summaries of a finished run from the runs stored in out/suite.json and
  rewrites its outputs; nothing is trained (for a changed summary criterion)."""
  path = os.path.join(out, "suite.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"--resummarize: no suite.json in {out!r}")
  with open(path) as f:
    results = unjson(json.load(f))
  learned = results["learned"]
  for task in results["tasks"].values():
    task["summary"] = task_summary(task["runs"], learned)
  results["summary"] = overall_summary(results["tasks"], learned)
  write_outputs(results, out)
  return results


def write_outputs(results: dict, out: str) -> None:
  table = markdown(results)
  print("\n" + table)
  os.makedirs(os.path.join(out, "curves"), exist_ok=True)
  with open(os.path.join(out, "suite.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out, "suite.json"), "w") as f:
    json.dump(jsonable(results), f, indent=1, default=str)
  for name, task in results["tasks"].items():
    plot_task(name, task, results["learned"], os.path.join(out, "curves", f"{name}.png"))
  plot_summary(results, os.path.join(out, "summary.png"))
  print(f"wrote {out}/suite.md, suite.json, summary.png, curves/*.png")


FLAGS = flags.FLAGS


def define_flags():
  flags.DEFINE_multi_string("weights", None, "Weights under test: shipped name or .npz path; "
                            "repeat for several. Default: 'default'.")
  flags.DEFINE_list("tasks", list(keras_tasks.TASKS), "Tasks to run (default: all).")
  flags.DEFINE_list("baselines", None, "Baseline labels to run (default: all); Adam(2e-3) "
                    "always runs (it defines the speedup).")
  flags.DEFINE_bool("baselines_only", False, "Run (and cache) the baselines only.")
  flags.DEFINE_integer("seed", 0, "Initial weights and minibatch order.")
  flags.DEFINE_integer("curve_points", 40, "Training-loss evaluations per run.")
  flags.DEFINE_integer("steps", None, "Override every task's steps (smoke runs).")
  flags.DEFINE_float("learning_rate", 1e-3, "LearnedOptimizer's initial step length.")
  flags.DEFINE_string("cache", "benchmarks/results/suite_cache", "Baseline cache directory "
                      "('' = no cache).")
  flags.DEFINE_bool("retime_reference", True, "Re-run a cached Adam(2e-3) beside every fresh "
                    "learned run, so that time ratios compare runs timed side by side.")
  flags.DEFINE_string("name", "suite", "Results go to benchmarks/results/<name>/.")
  flags.DEFINE_string("out", None, "Output directory (overrides --name).")
  flags.DEFINE_string("resummarize", None, "Recompute the summaries of the finished run in "
                      "this directory from its suite.json and rewrite its outputs (no training).")


def main(argv):
  del argv
  if FLAGS.resummarize:
    resummarize(FLAGS.resummarize)
    return
  weights = [] if FLAGS.baselines_only else (FLAGS.weights or ["default"])
  run(Options(weights=weights, tasks=FLAGS.tasks, baselines=FLAGS.baselines, seed=FLAGS.seed,
              curve_points=FLAGS.curve_points, steps=FLAGS.steps,
              learning_rate=FLAGS.learning_rate, cache=FLAGS.cache or None,
              retime_reference=FLAGS.retime_reference,
              out=FLAGS.out or os.path.join("benchmarks", "results", FLAGS.name)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
