"""The validation suite of meta-training: the rule that picks exports/best.npz (issue 17).

Three sets are kept apart: the meta-training family (problems/), this validation suite, and
the held-out benchmark (benchmarks/keras_tasks.py). The suite is cheap enough to run every
few hundred meta-steps inside train_meta.py (`--validate_every N`) and decides which
meta-parameters are exported as `exports/best.npz`, by a rule fixed before the run:

    score = mean over the suite's tasks of ln(final loss of the learned optimizer /
                                              final loss of Adam(2e-3))

lower is better; 0 means "as good as Adam(2e-3) on average, in log ratio". A non-finite or
diverged final loss counts as ln(1e3) (the ratio is also capped at 1e3 and floored at 1e-3),
so one blow-up costs a bounded, large penalty instead of making the score infinite.

Every task is a `problems.base.Problem` on generated data of a kind that neither the
meta-training family (quadratics, bowls, 2-D test functions, teacher nets, Gaussian mixtures,
manifolds, synthetic sequences, images of blobs, textures and strokes) nor the benchmark
(scikit-learn sets, packaged text, pendulum ODE, Mandelbrot) uses: two spirals, a
checkerboard, concentric rings, sine, polynomial, sawtooth and 2-D sinc regression, bit
parity, bit majority and a sparse linear system. A fixed instance (data seed, init seed,
minibatch seeds) per task, a fixed initial step length 1e-3 (LearnedOptimizer's default), and
`steps` steps run forward-only (meta/unroll.py's Unroller, compute_gradients=False, compiled).
The Adam(2e-3) reference runs the same instance, same minibatches, in one compiled loop; its
final losses are computed once and cached in the run directory (validation_reference.json).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

from learned_opt import hrnn
from meta import unroll as unroll_lib
from problems import base

REFERENCE_FILE = "validation_reference.json"
BEST_DIR = "exports"
BEST_FILE = "best.npz"
BEST_RECORD = "best.json"
PENALTY_RATIO = 1e3           # cap of the loss ratio, and the ratio of a diverged task
ADAM_LR, ADAM_BETAS, ADAM_EPS = 2e-3, (0.9, 0.999), 1e-7
INITIAL_LR = 1e-3
DATA_SEED, INIT_SEED, STEP_SEED = 1701, 1702, (17, 1703)
INSTANCE_STRIDE = 1000        # instance k > 0 shifts every seed above by k * this
DEFAULT_STEPS = 300
# The long-horizon guard (see `LongHorizonGuard`): a new best must also survive this.
GUARD_TASKS = ("val_two_spirals_mlp2_tanh", "val_sine_mlp2_tanh", "val_checkerboard_mlp2_relu")
GUARD_READS = 10              # the loss and step length are read after each tenth of the run
GUARD_SPIKE = 10.0            # a chunk's loss above 10x the lowest loss before it is a spike
GUARD_DRIFT = math.log(10.0)  # the mean log step length may not climb more than this above its
                              # value after the first chunk (learned_opt.stability's drift bound)


# ---- the tasks --------------------------------------------------------------------------------

def _two_spirals(rng, n):
  t = np.sqrt(rng.uniform(0.05, 1.0, n)) * 3.0 * math.pi
  label = rng.integers(0, 2, n)
  sign = np.where(label == 0, 1.0, -1.0)
  x = np.stack([sign * t * np.cos(t), sign * t * np.sin(t)], 1) / (3.0 * math.pi)
  return x + 0.02 * rng.standard_normal(x.shape), label


def _checkerboard(rng, n, cells=4):
  x = rng.uniform(-1.0, 1.0, (n, 2))
  cell = np.floor((x + 1.0) / 2.0 * cells).astype(int)
  return x, (cell[:, 0] + cell[:, 1]) % 2


def _rings(rng, n, classes=3):
  label = rng.integers(0, classes, n)
  radius = (label + 1) / classes + 0.06 * rng.standard_normal(n)
  angle = rng.uniform(0, 2 * math.pi, n)
  return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1), label


def _parity(rng, n, bits=6):
  x = rng.integers(0, 2, (n, bits))
  return 2.0 * x - 1.0, x.sum(1) % 2


def _majority(rng, n, bits=11):
  x = rng.integers(0, 2, (n, bits))
  flip = rng.uniform(size=n) < 0.05   # label noise: the minimum is not 0
  label = (x.sum(1) > bits // 2).astype(int)
  return 2.0 * x - 1.0, np.where(flip, 1 - label, label)


def _sine(rng, n):
  x = rng.uniform(-math.pi, math.pi, (n, 1))
  return x / math.pi, np.sin(3.0 * x) + 0.5 * np.cos(x)


def _polynomial(rng, n):
  x = rng.uniform(-1.0, 1.0, (n, 3))
  y = x[:, :1] ** 3 - 2.0 * x[:, 1:2] * x[:, 2:3] + 0.5 * x[:, 1:2] ** 2 - 0.3
  return x, y


def _sawtooth(rng, n, teeth=3):
  x = rng.uniform(-1.0, 1.0, (n, 1))
  return x, 2.0 * ((x * teeth) % 1.0) - 1.0


def _sinc2d(rng, n):
  x = rng.uniform(-1.0, 1.0, (n, 2))
  r = 6.0 * np.sqrt((x ** 2).sum(1, keepdims=True)) + 1e-6
  return x, np.sin(r) / r


class NetProblem(base.Problem):
  """A small MLP (or a linear model: hidden=()) on one generated data set.

  Softmax cross-entropy for classes > 0 (integer labels), mean squared error otherwise.
  """

  batched_keys = ("x", "y")

  def __init__(self, kind: str, generate: Callable, features: int, classes: int,
               hidden: Sequence[int], activation: str, batch_size: int = 64,
               num_samples: int = 512):
    self.kind, self.generate, self.features, self.classes = kind, generate, features, classes
    self.hidden, self.activation, self.num_samples = tuple(hidden), activation, num_samples
    arch = "linear" if not hidden else f"mlp{len(hidden)}_{activation}"
    self.data_source = f"generated:{kind}"
    self.architecture = arch + ("" if classes else "_regression")
    super().__init__(f"val_{kind}_{arch}", family=base.NEURAL_NETWORK, batch_size=batch_size,
                     minimum_kind="bound")

  def param_shapes(self):
    sizes = (self.features, *self.hidden, max(self.classes, 1))
    return [shape for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
            for shape in ((fan_in, fan_out), (fan_out,))]

  def sample_data(self, seed):
    x, y = self.generate(self.rng(seed, base.DATA_STREAM), self.num_samples)
    y = np.asarray(y, np.float32).reshape(len(x), -1)
    return {"x": np.asarray(x, np.float32), "y": y}

  def init_params(self, seed):
    rng = self.rng(seed, base.INIT_STREAM)
    return [(rng.standard_normal(s) / math.sqrt(s[0])).astype(np.float32) if len(s) == 2
            else np.zeros(s, np.float32) for s in self.param_shapes()]

  def objective(self, params, batch):
    act = {"tanh": tf.tanh, "relu": tf.nn.relu, "gelu": tf.nn.gelu, "elu": tf.nn.elu}[
        self.activation]
    h = batch["x"]
    for layer in range(0, len(params), 2):
      if layer:
        h = act(h)
      h = tf.matmul(h, params[layer]) + params[layer + 1]
    if self.classes:
      labels = tf.cast(tf.reshape(batch["y"], [-1]), tf.int32)
      return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels, h))
    return tf.reduce_mean(tf.square(h - batch["y"]))


class SparseLinearSystem(base.Problem):
  """Least squares 1/2 mean((A x - b)^2) with a random sparse A (5% non-zeros, +-1 entries,
  row-scaled), full batch. Not the meta-training quadratics (dense Gaussian W)."""

  def __init__(self, rows: int = 120, cols: int = 60, density: float = 0.05):
    self.rows, self.cols, self.density = rows, cols, density
    self.data_source = "generated:sparse_linear_system"
    self.architecture = "linear_least_squares"
    super().__init__(f"val_sparse_linear_system_{rows}x{cols}", family=base.WELL_BEHAVED)

  def param_shapes(self):
    return [(self.cols,)]

  def sample_data(self, seed):
    rng = self.rng(seed, base.DATA_STREAM)
    mask = rng.uniform(size=(self.rows, self.cols)) < self.density
    mask[np.arange(self.rows), rng.integers(0, self.cols, self.rows)] = True
    a = np.where(mask, rng.choice([-1.0, 1.0], (self.rows, self.cols)), 0.0)
    a *= rng.uniform(0.2, 3.0, (self.rows, 1))       # badly scaled rows
    b = rng.standard_normal(self.rows)
    return {"a": a.astype(np.float32), "b": b.astype(np.float32)}

  def init_params(self, seed):
    return [np.zeros(self.cols, np.float32)]

  def objective(self, params, batch):
    residual = tf.linalg.matvec(batch["a"], params[0]) - batch["b"]
    return 0.5 * tf.reduce_mean(tf.square(residual))


def suite() -> list[base.Problem]:
  """The 14 validation tasks (fixed; changing them changes the selection rule).

  The first 10 are the suite of 2026-12-01 (version 1). Version 2 (2026-12-03) adds four deep
  networks, 4-8 layers, two of them at batch 8: a default chosen on version 1 trained the 1-2
  layer networks well and left deep ones stuck at chance (its steps too large at
  initialisation for a deep net), which version 1 could not see.
  """
  return [
      NetProblem("two_spirals", _two_spirals, 2, 2, (32, 32), "tanh"),
      NetProblem("checkerboard", _checkerboard, 2, 2, (32, 32), "relu"),
      NetProblem("concentric_rings", _rings, 2, 3, (16,), "relu"),
      NetProblem("bit_parity", _parity, 6, 2, (32,), "tanh"),
      NetProblem("bit_majority", _majority, 11, 2, (), "relu", batch_size=32),
      NetProblem("sine", _sine, 1, 0, (32, 32), "tanh"),
      NetProblem("polynomial", _polynomial, 3, 0, (32,), "relu"),
      NetProblem("sawtooth", _sawtooth, 1, 0, (32, 32), "relu", batch_size=16),
      NetProblem("sinc2d", _sinc2d, 2, 0, (32, 32), "tanh", batch_size=128),
      SparseLinearSystem(),
      NetProblem("two_spirals", _two_spirals, 2, 2, (32,) * 6, "gelu"),
      NetProblem("checkerboard", _checkerboard, 2, 2, (16,) * 8, "tanh", batch_size=8),
      NetProblem("concentric_rings", _rings, 2, 3, (16,) * 8, "relu", batch_size=8),
      NetProblem("sawtooth", _sawtooth, 1, 0, (64,) * 4, "elu", batch_size=32),
  ]


VERSION_1_COUNT = 10   # suite()[:10] is version 1, the rule of the runs before 2026-12-03


def select(names: str | Sequence[str] = "") -> list[base.Problem]:
  """The suite, or the named subset of it (comma-separated string or list); "v1" names
  version 1 (the first 10 tasks), "v2" or "" the whole current suite."""
  tasks = suite()
  if isinstance(names, str):
    names = [n.strip() for n in names.split(",") if n.strip()]
  if list(names) == ["v1"]:
    return tasks[:VERSION_1_COUNT]
  if not names or list(names) == ["v2"]:
    return tasks
  by_name = {t.name: t for t in tasks}
  unknown = [n for n in names if n not in by_name]
  if unknown:
    raise ValueError(f"--validation_tasks: unknown {unknown}; known: {sorted(by_name)}")
  return [by_name[n] for n in names]


# ---- the instance ------------------------------------------------------------------------------

def instance_seeds(instance: int = 0) -> tuple[int, int, tuple[int, int]]:
  """(data seed, init seed, minibatch seed pair) of validation instance `instance`. Instance 0
  is the one meta-training selects on (exports/best.npz); others draw fresh data, inits and
  minibatches from the same task generators, to re-score a selected file on instances it was
  not selected on (`python -m meta.validation --instances 1,2,3`)."""
  if instance < 0:
    raise ValueError(f"validation instance must be >= 0, got {instance}")
  shift = INSTANCE_STRIDE * instance
  return DATA_SEED + shift, INIT_SEED + shift, (STEP_SEED[0], STEP_SEED[1] + shift)


# ---- the Adam(2e-3) reference -----------------------------------------------------------------

def adam_final_loss(problem: base.Problem, data, steps: int, instance: int = 0) -> float:
  """Full-data loss after `steps` Adam(2e-3) steps from the validation instance, with the
  minibatch seeds the learned optimizer sees (one compiled loop)."""
  _, init_seed, step_seed = instance_seeds(instance)
  params = [tf.constant(p) for p in problem.init_params(init_seed)]
  seed = tf.constant(step_seed, tf.int32)
  beta1, beta2 = ADAM_BETAS

  @tf.function(jit_compile=True, autograph=False)
  def train(params, data):
    def body(i, params, m, v):
      _, grads = problem.gradients(params, data,
                                   tf.random.experimental.stateless_fold_in(seed, i))
      t = tf.cast(i + 1, tf.float32)
      m = [beta1 * a + (1 - beta1) * g for a, g in zip(m, grads)]
      v = [beta2 * a + (1 - beta2) * g * g for a, g in zip(v, grads)]
      scale = ADAM_LR * tf.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
      params = [p - scale * a / (tf.sqrt(b) + ADAM_EPS) for p, a, b in zip(params, m, v)]
      return i + 1, params, m, v
    zeros = [tf.zeros_like(p) for p in params]
    _, params, _, _ = tf.while_loop(lambda i, *_: i < steps, body,
                                    (tf.constant(0), params, zeros, list(zeros)))
    return problem.full_loss(params, data)
  return float(train(params, data))


def reference_losses(run_dir: str | os.PathLike | None, problems: Sequence[base.Problem],
                     steps: int, instance: int = 0) -> dict[str, float]:
  """Adam(2e-3) final losses per task, read from run_dir/validation_reference.json or computed
  (and written there) for the tasks it lacks."""
  path = Path(run_dir) / REFERENCE_FILE if run_dir else None
  cached = {}
  if path is not None and path.exists():
    try:
      cached = json.loads(path.read_text())
    except ValueError as e:
      raise ValueError(f"{path} is unreadable ({e}); delete it to recompute") from e
  key = lambda p: f"{p.name}@{steps}" + (f"#{instance}" if instance else "")
  missing = [p for p in problems if key(p) not in cached]
  data_seed = instance_seeds(instance)[0]
  for problem in missing:
    data = unroll_lib.data_tensors(problem.sample_data(data_seed))
    cached[key(problem)] = adam_final_loss(problem, data, steps, instance)
  if missing and path is not None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(cached, indent=1, sort_keys=True))
    os.replace(tmp, path)
  return {p.name: cached[key(p)] for p in problems}


# ---- the learned optimizer and the score ------------------------------------------------------

def instance_data(problems: Sequence[base.Problem], instance: int = 0) -> dict:
  """{name: data tensors} of each task's validation instance."""
  data_seed = instance_seeds(instance)[0]
  return {p.name: unroll_lib.data_tensors(p.sample_data(data_seed)) for p in problems}


def start(problem, meta, config, data, instance: int = 0) -> unroll_lib.Carry:
  """The validation instance's starting carry: its init, every step length at INITIAL_LR."""
  layout = hrnn.Layout(problem.param_shapes())
  state = hrnn.init_state(meta, layout, config, math.log(INITIAL_LR))
  return unroll_lib.start_carry(problem, meta, config, data, instance_seeds(instance)[1], [0, 0],
                                state=state)


def as_tensors(meta) -> dict:
  return {k: tf.convert_to_tensor(v) for k, v in dict(meta).items()}


def learned_final_loss(problem, meta, config, data, steps: int,
                       unroller: unroll_lib.Unroller, instance: int = 0) -> float:
  """Full-data loss after `steps` forward-only steps of the hRNN (hrnn.step via the Unroller)."""
  carry = start(problem, meta, config, data, instance)
  out = unroller(problem, meta, carry, data, steps, list(instance_seeds(instance)[2]),
                 compute_gradients=False)
  if not bool(out.finite) or int(out.steps) < steps:
    return math.nan
  return float(out.final_loss)


def log_ratio(learned: float, reference: float) -> float:
  """ln(learned / reference), capped to +-ln(PENALTY_RATIO); diverged -> +ln(PENALTY_RATIO)."""
  cap = math.log(PENALTY_RATIO)
  if not math.isfinite(learned) or learned < 0:
    return cap
  ratio = max(learned, 1e-30) / max(reference, 1e-30)
  return float(np.clip(math.log(ratio), -cap, cap))


class Validator:
  """Runs the suite for given meta-parameters; keeps the Adam references of one run dir."""

  def __init__(self, config, run_dir=None, steps: int = DEFAULT_STEPS,
               problems: Sequence[base.Problem] | None = None, mode: str = "xla",
               instance: int = 0, unroller: unroll_lib.Unroller | None = None):
    self.config = config
    self.steps = int(steps)
    self.instance = int(instance)
    self.problems = list(problems) if problems is not None else suite()
    self.unroller = unroller or unroll_lib.Unroller(config, max_steps=self.steps, mode=mode)
    self.references = reference_losses(run_dir, self.problems, self.steps, self.instance)
    self._data = instance_data(self.problems, self.instance)

  def __call__(self, meta) -> dict:
    """{"score": float, "tasks": {name: {"learned", "adam", "log_ratio"}}}."""
    meta = as_tensors(meta)
    tasks = {}
    for problem in self.problems:
      learned = learned_final_loss(problem, meta, self.config, self._data[problem.name],
                                   self.steps, self.unroller, self.instance)
      reference = self.references[problem.name]
      tasks[problem.name] = {"learned": learned, "adam": reference,
                             "log_ratio": log_ratio(learned, reference)}
    score = float(np.mean([t["log_ratio"] for t in tasks.values()]))
    return {"score": score, "tasks": tasks}


# ---- the long-horizon guard -------------------------------------------------------------------

def long_horizon_run(problem, meta, config, data, steps: int,
                     unroller: unroll_lib.Unroller, chunk: int) -> dict:
  """Runs the learned optimizer `steps` steps forward-only on one validation task, in chunks of
  `chunk` steps, and reads the full-data loss and the mean log step length after each chunk.

  Returns {"losses": [...], "log_lr": [...], "finite": bool, "spike": max over chunks of
  loss / lowest earlier loss, "drift": max over chunks of mean log step length minus its value
  after the first chunk}."""
  carry = start(problem, meta, config, data)
  losses, log_lr, finite = [], [], True
  for c in range(max(1, steps // chunk)):
    out = unroller(problem, meta, carry, data, chunk, [STEP_SEED[0], STEP_SEED[1] + 7919 * c],
                   compute_gradients=False)
    if not bool(out.finite) or int(out.steps) < chunk or not math.isfinite(float(out.final_loss)):
      finite = False
      break
    losses.append(float(out.final_loss))
    log_lr.append(float(out.log_lr_mean))
    carry = out.carry
  spike = max([losses[i] / max(min(losses[:i]), 1e-30) for i in range(1, len(losses))],
              default=1.0)
  drift = max([v - log_lr[0] for v in log_lr[1:]], default=0.0)
  return {"losses": losses, "log_lr": log_lr, "finite": finite, "spike": float(spike),
          "drift": float(drift), "chunk": int(chunk)}


def run_passes(run: dict) -> bool:
  return run["finite"] and run["spike"] <= GUARD_SPIKE and run["drift"] <= GUARD_DRIFT


class LongHorizonGuard:
  """The check a new best must pass before it is exported: on GUARD_TASKS, `steps` steps
  (10x the validation horizon by default) from the validation instance, the learned optimizer
  must stay finite, never end a tenth of the run at more than GUARD_SPIKE x its lowest loss
  so far, and its mean log step length must not climb more than GUARD_DRIFT above its value
  after the first tenth. A validation score at 1,000 steps cannot see an optimizer whose step
  length keeps growing (the 2026-12-05 candidates blew up after ~1,000-5,000 steps of
  model.fit); this costs ~10 CPU-s at 10,000 steps on the three tasks, once compiled, and runs
  only when the score is a new best."""

  def __init__(self, config, steps: int, tasks: Sequence[str] = GUARD_TASKS,
               mode: str = "xla"):
    if steps < GUARD_READS:
      raise ValueError(f"guard steps must be >= {GUARD_READS}, got {steps}")
    self.config, self.steps = config, int(steps)
    self.chunk = self.steps // GUARD_READS
    self.problems = select(list(tasks))
    self.unroller = unroll_lib.Unroller(config, max_steps=self.chunk, mode=mode)
    self._data = instance_data(self.problems)

  def __call__(self, meta) -> dict:
    """{"passed": bool, "steps": int, "tasks": {name: run dict + "passed"}}."""
    meta = as_tensors(meta)
    tasks = {}
    for problem in self.problems:
      run = long_horizon_run(problem, meta, self.config, self._data[problem.name], self.steps,
                             self.unroller, self.chunk)
      tasks[problem.name] = {**run, "passed": run_passes(run)}
    return {"passed": all(t["passed"] for t in tasks.values()), "steps": self.steps,
            "tasks": tasks}


GUARD_LOG = "guard.jsonl"


def append_guard_log(train_dir, meta_step: int, score: float, result: dict) -> None:
  """One JSON line per guarded candidate (passed or not) in train_dir/exports/guard.jsonl."""
  path = Path(train_dir) / BEST_DIR / GUARD_LOG
  path.parent.mkdir(parents=True, exist_ok=True)
  line = {"meta_step": int(meta_step), "score": float(score), "passed": result["passed"],
          "steps": result["steps"], "why": guard_summary(result),
          "tasks": {n: {k: t[k] for k in ("finite", "spike", "drift")} | {
              "final_loss": t["losses"][-1] if t["losses"] else None}
              for n, t in result["tasks"].items()}}
  with open(path, "a") as f:
    f.write(json.dumps(line) + "\n")


def guard_summary(result: dict) -> str:
  """One line per failing task, e.g. 'val_sine_mlp2_tanh: drift +3.10 > 2.30'."""
  lines = []
  for name, t in result["tasks"].items():
    if t["passed"]:
      continue
    why = []
    if not t["finite"]:
      why.append(f"non-finite after {len(t['losses']) * t['chunk']} steps")
    if t["spike"] > GUARD_SPIKE:
      why.append(f"spike x{t['spike']:.3g} > x{GUARD_SPIKE:g}")
    if t["drift"] > GUARD_DRIFT:
      why.append(f"drift {t['drift']:+.2f} > {GUARD_DRIFT:.2f}")
    lines.append(f"{name}: " + ", ".join(why))
  return "; ".join(lines) or "passed"


def best_record(train_dir) -> dict | None:
  path = Path(train_dir) / BEST_DIR / BEST_RECORD
  if not path.exists():
    return None
  return json.loads(path.read_text())


def record_guard_steps(record: dict) -> int:
  return int((record.get("guard") or {}).get("steps", 0))


def comparable(record: dict | None, tasks, steps: int, guard_steps: int = 0) -> bool:
  """Whether a best.json record was scored on the same tasks and steps, and chosen under the
  same long-horizon guard (scores of different suites, e.g. version 1's 10 tasks and version
  2's 14, are not comparable, and a best chosen without the guard is not one chosen with it)."""
  return (record is not None and set(record.get("tasks", {})) == set(tasks)
          and int(record.get("validation_steps", steps)) == int(steps)
          and record_guard_steps(record) == int(guard_steps))


def archive_incomparable(train_dir, tasks, steps: int, guard_steps: int = 0) -> Path | None:
  """Renames exports/best.{npz,json} to best_<tasks>tasks_<steps>steps[_guard<n>].{npz,json}
  when the record was scored on another suite or guard, so that a new best under this suite
  never overwrites it; returns the archived .json path, or None if nothing was moved."""
  record = best_record(train_dir)
  if record is None or comparable(record, tasks, steps, guard_steps):
    return None
  exports = Path(train_dir) / BEST_DIR
  stem = f"best_{len(record.get('tasks', {}))}tasks_{record.get('validation_steps', 'n')}steps"
  stem += f"_guard{record_guard_steps(record)}" if record_guard_steps(record) else "_unguarded"
  for suffix in (".npz", ".json"):
    source = exports / (Path(BEST_FILE).stem + suffix)
    if source.exists():
      os.replace(source, exports / (stem + suffix))
  return exports / (stem + ".json")


def is_better(score: float, record: dict | None) -> bool:
  return math.isfinite(score) and (record is None or score < float(record["score"]))


# ---- command line: score weights files --------------------------------------------------------

def weights_meta(spec: str):
  """(label, config, meta values) of a weights spec: a shipped name, a path, or
  'untrained:<preset>' (the reference initialisation of that preset)."""
  from learned_opt import config as config_lib
  from learned_opt import weights as weights_lib
  if spec.startswith("untrained:"):
    config = config_lib.get(spec.split(":", 1)[1])
    return spec, config, hrnn.MetaParams(config).numpy()
  loaded = weights_lib.load(weights_lib.resolve(spec))
  return spec, loaded.config, loaded.meta


def score_table(specs: Sequence[str], steps: int, names: str = "",
                cache_dir: str | None = None, instance: int = 0,
                unrollers: dict | None = None) -> tuple[str, dict]:
  """Markdown table of the validation score and per-task log ratios of each weights spec.
  `unrollers` ({config json: Unroller}, filled here) shares compiled loops between calls."""
  unrollers = {} if unrollers is None else unrollers
  import tempfile
  problems = select(names)
  results, validators = {}, {}
  with tempfile.TemporaryDirectory() as scratch:   # Adam references once, not once per spec
    for spec in specs:
      label, config, meta = weights_meta(spec)
      key = config.to_json()
      if key not in validators:
        if key not in unrollers:
          unrollers[key] = unroll_lib.Unroller(config, max_steps=steps)
        validators[key] = Validator(config, cache_dir or scratch, steps, problems,
                                    instance=instance, unroller=unrollers[key])
      results[label] = validators[key](meta)
  header = "| weights | score | " + " | ".join(p.name for p in problems) + " |"
  lines = [header, "|---|---:|" + "---:|" * len(problems)]
  for label, result in results.items():
    cells = [f"{result['tasks'][p.name]['log_ratio']:+.2f}" for p in problems]
    lines.append(f"| {label} | {result['score']:+.3f} | " + " | ".join(cells) + " |")
  return "\n".join(lines), results


def main(argv=None) -> None:
  import argparse
  parser = argparse.ArgumentParser(
      prog="python -m meta.validation",
      description="Validation score (mean ln(final loss / Adam(2e-3)'s), lower is better) and "
                  "per-task log ratios of weights files on the validation suite.")
  parser.add_argument("weights", nargs="+", help="shipped name (default, paper), a .npz path, "
                      "or untrained:<preset> (paper, stable, lean)")
  parser.add_argument("--steps", type=int, default=DEFAULT_STEPS, help="steps per task")
  parser.add_argument("--tasks", default="", help="comma-separated subset of the suite")
  parser.add_argument("--cache_dir", default=None,
                      help="directory for the Adam references (validation_reference.json)")
  parser.add_argument("--guard_steps", type=int, default=0,
                      help="also run the long-horizon guard for this many steps (e.g. 10000)")
  parser.add_argument("--instances", default="0",
                      help="comma-separated validation instances: 0 is the one meta-training "
                           "selects on; 1, 2, ... draw fresh data, inits and minibatches. "
                           "Several: a table each, then each file's mean score and its "
                           "standard error over them")
  args = parser.parse_args(argv)
  try:
    instances = [int(k) for k in args.instances.split(",") if k.strip()]
  except ValueError:
    instances = []
  if not instances or min(instances) < 0:
    parser.error(f"--instances must be comma-separated integers >= 0, got {args.instances!r}")
  if args.steps < 1:
    parser.error(f"--steps must be >= 1, got {args.steps}")
  if args.guard_steps and args.guard_steps < GUARD_READS:
    parser.error(f"--guard_steps must be 0 or >= {GUARD_READS}, got {args.guard_steps}")
  scores: dict[str, list] = {}
  unrollers: dict = {}
  for instance in instances:
    table, results = score_table(args.weights, args.steps, args.tasks, args.cache_dir, instance,
                                 unrollers)
    if len(instances) > 1:
      print(f"instance {instance}:")
    print(table)
    for label, result in results.items():
      scores.setdefault(label, []).append(result["score"])
  if len(instances) > 1:
    print()
    print(mean_table(scores, instances))
  if args.guard_steps:
    print()
    print(guard_table(args.weights, args.guard_steps))


def mean_table(scores: dict[str, list], instances: Sequence[int]) -> str:
  """Markdown table of each file's mean validation score over instances, with its standard
  error (the spread of the score across instances of the same tasks)."""
  lines = [f"mean over instances {','.join(map(str, instances))}:", "",
           "| weights | mean score | standard error | " +
           " | ".join(f"instance {k}" for k in instances) + " |",
           "|---|---:|---:|" + "---:|" * len(instances)]
  for label, values in scores.items():
    error = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else 0.0
    lines.append(f"| {label} | {float(np.mean(values)):+.3f} | {error:.3f} | " +
                 " | ".join(f"{v:+.3f}" for v in values) + " |")
  return "\n".join(lines)


def guard_table(specs: Sequence[str], steps: int) -> str:
  """Markdown table of the long-horizon guard per weights spec and guard task."""
  lines = [f"long-horizon guard, {steps} steps: max spike (x lowest earlier loss, limit "
           f"{GUARD_SPIKE:g}) / drift of the mean log step length (limit {GUARD_DRIFT:.2f}) / "
           "final loss", "",
           "| weights | passed | " + " | ".join(GUARD_TASKS) + " |",
           "|---|---|" + "---|" * len(GUARD_TASKS)]
  guards = {}
  for spec in specs:
    label, config, meta = weights_meta(spec)
    key = config.to_json()
    if key not in guards:
      guards[key] = LongHorizonGuard(config, steps)
    result = guards[key](meta)
    cells = []
    for name in GUARD_TASKS:
      t = result["tasks"][name]
      final = f"{t['losses'][-1]:.3g}" if t["finite"] else "non-finite"
      cells.append(f"x{t['spike']:.3g} / {t['drift']:+.2f} / {final}")
    lines.append(f"| {label} | {'yes' if result['passed'] else 'NO'} | " + " | ".join(cells)
                 + " |")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
