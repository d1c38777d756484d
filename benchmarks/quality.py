"""Training quality of LearnedOptimizer vs Adam and RMSProp on held-out tasks (issue 6).

Held-out means not in the meta-training ensemble, which has no neural networks and no real
data (`python -m problems --list`). The tasks (benchmarks/tasks.py) are small networks on
scikit-learn's bundled data sets, so everything runs offline:

  mlp_relu, mlp_sigmoid     MLP on digits (paper Fig. 3 analogue)
  conv_relu, conv_sigmoid   ConvNet on 8x8x1 digits (paper Fig. 8a analogue)
  logreg_breast_cancer      logistic regression, full batch
  attention_digits          1-layer self-attention classifier over the 8 rows of a digit
  long                      --long_task for --long_steps steps: 10x the longest meta-training
                            trajectories (mean ~300 steps; the reference's ~10^3)
  quadratic_lr              paper Fig. 5: a random quadratic from initial learning rates
                            1e-6 ... 1e-2, its own table and plot

Every optimizer on a task starts from the same parameters and sees the same minibatches (a
fixed-seed shuffle), in one process. Baselines: Adam(2e-3) and RMSProp(1e-2) (the paper's
choices) and Adam tuned over 7 log-spaced learning rates 1e-4 ... 1e-1 (best final training
loss). The training loss recorded is the loss on the whole training set, every
ceil(steps / --curve_points) steps. Reported per task: final training loss of each optimizer,
steps the learned optimizer needs to reach Adam(2e-3)'s final loss, and divergences (a
non-finite loss, or a loss above 10x the initial one). Outputs in --out: quality.md (the
tables), quality.json (all numbers and curves), quality.png (loss curves, one subplot per
task), quality_lr.png (Fig. 5).

    python -m benchmarks.quality                                # shipped weights, all tasks
    python -m benchmarks.quality --weights none                 # untrained optimizer
    python -m benchmarks.quality --weights default --weights /tmp/run.npz --steps 3000
    python -m benchmarks.quality --quick --tasks mlp_relu,quadratic_lr --out /tmp/q

Each (task, optimizer family) compiles its loop once (XLA except for the ConvNets, whose
convolutions run slower under XLA on CPU; `--jit on|off` to force); the
runs of one family (the learning-rate sweep) reset the parameters and copy in the state of a
freshly built optimizer instead of recompiling.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable, Sequence

from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

import learned_opt
from benchmarks import tasks as tasks_lib

DIVERGENCE_FACTOR = 10.0
ADAM_LR, RMSPROP_LR = 2e-3, 1e-2                       # the paper's baselines (Fig. 3)
TUNED_ADAM_LRS = tuple(float(x) for x in np.logspace(-4, -1, 7))
FIG5_LRS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2)
SPECIAL_TASKS = ("long", "quadratic_lr")
ALL_TASKS = (*tasks_lib.BUILDERS, *SPECIAL_TASKS)


@dataclasses.dataclass
class Options:
  weights: Sequence[str | None] = ("default",)  # names/paths; None = untrained
  steps: int = 2000
  long_steps: int = 10000
  long_task: str = "mlp_relu"
  tasks: Sequence[str] = ALL_TASKS
  learning_rate: float = 1e-3                      # LearnedOptimizer's initial step length
  seed: int = 0
  curve_points: int = 100
  quadratic_dim: int = 64
  jit: bool | str = "auto"                         # True, False or "auto": per task
  out: str = "benchmarks/results"


# ---- metrics ----------------------------------------------------------------------------------

def divergence(losses: Sequence[float], factor: float = DIVERGENCE_FACTOR) -> str | None:
  """Why a loss curve counts as diverged (non-finite, or > factor x its first value), or None."""
  if not len(losses):
    return None
  initial = float(losses[0])
  for step_index, value in enumerate(losses):
    value = float(value)
    if not math.isfinite(value):
      return f"non-finite loss at point {step_index}"
    if math.isfinite(initial) and value > factor * initial:
      return f"loss {value:.3g} > {factor:g} x initial {initial:.3g} at point {step_index}"
  return None


def steps_to_reach(steps: Sequence[int], losses: Sequence[float], target: float) -> int | None:
  """First recorded step whose loss is <= target (None: never, or target not finite)."""
  if not math.isfinite(target):
    return None
  for step, value in zip(steps, losses):
    if math.isfinite(value) and value <= target:
      return int(step)
  return None


def sort_key(final_loss: float) -> float:
  """For picking the best run: non-finite losses rank last."""
  return final_loss if math.isfinite(final_loss) else math.inf


# ---- optimizers -------------------------------------------------------------------------------

def weights_label(spec: str | None) -> str:
  if spec is None:
    return "learned:untrained"
  return "learned:" + (os.path.splitext(os.path.basename(spec))[0] if spec.endswith(".npz")
                       else spec)


def parse_weights(spec: str) -> str | None:
  return None if spec.lower() in ("none", "untrained") else spec


def adam_label(lr: float) -> str:
  return f"Adam({lr:.2g})"


@dataclasses.dataclass(frozen=True)
class Family:
  """Optimizers that differ only by learning rate share one compiled loop."""
  key: str
  make: Callable[[float], keras.optimizers.Optimizer]
  label: Callable[[float], str]


def learned_family(spec: str | None, seed: int) -> Family:
  label = weights_label(spec)
  # Constructed once up front so a missing weights file fails before anything runs.
  learned_opt.LearnedOptimizer(weights=spec, seed=seed)
  return Family(label, lambda lr: learned_opt.LearnedOptimizer(lr, weights=spec, seed=seed),
                lambda lr, label=label: label)


ADAM = Family("adam", lambda lr: keras.optimizers.Adam(lr), adam_label)
FAMILY_NAMES = {"adam": "Adam", "rmsprop": "RMSProp"}
RMSPROP = Family("rmsprop", lambda lr: keras.optimizers.RMSprop(lr), lambda lr: f"RMSProp({lr:.2g})")


# ---- the training loop ------------------------------------------------------------------------

def batch_order(num_samples: int, batch_size: int | None, steps: int, seed: int) -> np.ndarray:
  """[steps, batch_size] sample indices: reshuffled epochs from one seed (same for everyone).

  Full-batch tasks get a [steps, 1] dummy."""
  if batch_size is None:
    return np.zeros((steps, 1), np.int32)
  rng = np.random.default_rng([seed, 7])
  epochs = math.ceil(steps * batch_size / num_samples)
  order = np.concatenate([rng.permutation(num_samples) for _ in range(epochs)])
  return order[:steps * batch_size].reshape(steps, batch_size).astype(np.int32)


class Trainer:
  """One compiled training loop for one problem and one optimizer family.

  `run(lr, ...)` resets the parameters to the problem's initialisation and the optimizer to
  the state of a freshly built `family.make(lr)`, then trains.
  """

  def __init__(self, init: Sequence[np.ndarray], loss_fn, x: np.ndarray, y: np.ndarray,
               batch_size: int | None, family: Family, chunk: int, jit: bool):
    self.init = [np.asarray(p, np.float32) for p in init]
    self.family = family
    self.chunk = chunk
    self.variables = [keras.Variable(p, name=f"param_{i}") for i, p in enumerate(self.init)]
    self.optimizer = None
    x, y = tf.constant(x), tf.constant(y)

    def train_chunk(indices, num_steps):
      params = lambda: [v.value for v in self.variables]

      def body(i):
        if batch_size is None:
          xb, yb = x, y
        else:
          xb, yb = tf.gather(x, indices[i]), tf.gather(y, indices[i])
        with tf.GradientTape() as tape:
          loss = loss_fn(params(), xb, yb)
        grads = tape.gradient(loss, params())
        self.optimizer.apply_gradients(zip(grads, self.variables))
        return (i + 1,)

      tf.while_loop(lambda i: i < num_steps, body, (tf.constant(0),))
      return loss_fn(params(), x, y)

    self._train_chunk = tf.function(train_chunk, jit_compile=jit)

  def reset(self, lr: float) -> None:
    for variable, value in zip(self.variables, self.init):
      variable.assign(value)
    fresh = self.family.make(lr)
    fresh.build(self.variables)
    if self.optimizer is None:
      self.optimizer = fresh
      return
    pairs = list(zip(self.optimizer.variables, fresh.variables))
    if len(self.optimizer.variables) != len(fresh.variables) or any(
        a.shape != b.shape for a, b in pairs):
      raise RuntimeError(f"{self.family.key}: optimizers of one family must have the same "
                         "variables")
    for target, source in pairs:
      target.assign(source.value)

  def run(self, lr: float, order: np.ndarray) -> dict:
    """Trains len(order) steps; returns the loss curve (whole training set) and diagnostics."""
    self.reset(lr)
    start = time.perf_counter()
    total = len(order)
    steps, losses = [0], [float(self._train_chunk(np.zeros((self.chunk, order.shape[1]),
                                                           np.int32), 0))]
    done = 0
    while done < total and math.isfinite(losses[-1]):   # nothing to learn after a NaN
      n = min(self.chunk, total - done)
      indices = np.zeros((self.chunk, order.shape[1]), np.int32)
      indices[:n] = order[done:done + n]
      losses.append(float(self._train_chunk(indices, n)))
      done += n
      steps.append(done)
    skipped = getattr(self.optimizer, "skipped_steps", 0)
    return {"optimizer": self.family.label(lr), "family": self.family.key,
            "learning_rate": lr, "steps": steps, "losses": losses,
            "final_loss": losses[-1], "diverged": divergence(losses),
            "skipped_steps": int(skipped), "seconds": time.perf_counter() - start}

  def params(self) -> list[np.ndarray]:
    return [v.numpy() for v in self.variables]


def use_xla(jit: bool | str, task: tasks_lib.Task | None = None) -> bool:
  """"auto": XLA unless the task says it runs slower with it (the ConvNets on CPU)."""
  if jit == "auto":
    return task is None or task.xla
  return bool(jit)


def chunk_size(steps: int, curve_points: int) -> int:
  return max(1, math.ceil(steps / max(1, curve_points)))


# ---- one task ---------------------------------------------------------------------------------

def run_task(task: tasks_lib.Task, steps: int, learned: Sequence[Family], options: Options,
             name: str | None = None) -> dict:
  """All optimizers on one task; returns runs and the per-task summary."""
  name = name or task.name
  order = batch_order(len(task.x_train), task.batch_size, steps, options.seed)
  chunk = chunk_size(steps, options.curve_points)
  runs = []

  def family_runs(family, lrs):
    trainer = Trainer(task.init, task.loss, task.x_train, task.y_train, task.batch_size,
                      family, chunk, use_xla(options.jit, task))
    for lr in lrs:
      run = trainer.run(lr, order)
      run["test_accuracy"] = (task.accuracy(trainer.params(), task.x_test, task.y_test)
                              if math.isfinite(run["final_loss"]) else None)
      runs.append(run)
      print(f"  [{name}] {run['optimizer']:>22s} lr {lr:<8.2g} final loss "
            f"{run['final_loss']:.4g}  ({run['seconds']:.1f} s)"
            + (f"  DIVERGED: {run['diverged']}" if run["diverged"] else ""), flush=True)

  for family in learned:
    family_runs(family, [options.learning_rate])
  family_runs(ADAM, sorted({ADAM_LR, *TUNED_ADAM_LRS}))
  family_runs(RMSPROP, [RMSPROP_LR])
  return {"name": name, "description": task.description, "num_params": task.num_params,
          "steps": steps, "batch_size": task.batch_size, "xla": use_xla(options.jit, task),
          "runs": runs,
          "summary": summarize(runs, [f.key for f in learned])}


def summarize(runs: Sequence[dict], learned_keys: Sequence[str]) -> dict:
  """Final losses, the tuned Adam, steps to reach Adam(2e-3), divergences."""
  by_label = {r["optimizer"]: r for r in runs}
  reference = by_label[adam_label(ADAM_LR)]
  sweep = [r for r in runs if r["family"] == "adam" and
           any(math.isclose(r["learning_rate"], lr) for lr in TUNED_ADAM_LRS)]
  tuned = min(sweep, key=lambda r: sort_key(r["final_loss"])) if sweep else None
  target = reference["final_loss"]
  summary = {
      "final_loss": {r["optimizer"]: r["final_loss"] for r in runs},
      "adam_2e-3_final_loss": target,
      "tuned_adam": None if tuned is None else {"learning_rate": tuned["learning_rate"],
                                                "final_loss": tuned["final_loss"]},
      "steps_to_reach_adam_2e-3": {},
      "diverged": {r["optimizer"]: r["diverged"] for r in runs},
  }
  for key in learned_keys:
    run = by_label[key]
    summary["steps_to_reach_adam_2e-3"][key] = steps_to_reach(run["steps"], run["losses"],
                                                              target)
  return summary


# ---- paper Fig. 5 -----------------------------------------------------------------------------

def run_quadratic_lr(learned: Sequence[Family], options: Options, steps: int) -> dict:
  """A random quadratic ½‖Wx − y‖² (problems.well_behaved.Quadratic, a fresh instance) from
  initial learning rates 1e-6 ... 1e-2, for every optimizer."""
  from problems import well_behaved
  problem = well_behaved.Quadratic(options.quadratic_dim)
  seed = 1000 + options.seed   # an instance seed away from the meta-training draws
  data = problem.sample_data(seed)
  init = problem.init_params(seed)
  loss_fn = lambda params, w, y: problem.objective(params, {"w": w, "y": y})
  order = batch_order(0, None, steps, options.seed)
  chunk = chunk_size(steps, options.curve_points)
  runs = []
  for family in (*learned, ADAM, RMSPROP):
    trainer = Trainer(init, loss_fn, data["w"], data["y"], None, family, chunk,
                      use_xla(options.jit))
    for lr in FIG5_LRS:
      run = trainer.run(lr, order)
      runs.append(run)
      print(f"  [quadratic_lr] {run['optimizer']:>22s} lr {lr:<8.2g} final loss "
            f"{run['final_loss']:.4g}  ({run['seconds']:.1f} s)"
            + (f"  DIVERGED: {run['diverged']}" if run["diverged"] else ""), flush=True)
  return {"name": "quadratic_lr", "description": f"random quadratic 1/2|Wx-y|^2, "
          f"d={options.quadratic_dim}, full batch (paper Fig. 5)", "steps": steps,
          "learning_rates": list(FIG5_LRS), "runs": runs}


# ---- reporting --------------------------------------------------------------------------------

def fmt_loss(value: float) -> str:
  return f"{value:.4g}" if math.isfinite(value) else str(value)


def markdown(results: dict) -> str:
  """The tables: one row per task, and the Fig. 5 table."""
  learned = results["learned"]
  lines = []
  tasks = results["tasks"]
  if tasks:
    header = ["task", "steps", *learned, adam_label(ADAM_LR), f"RMSProp({RMSPROP_LR:.2g})",
              "Adam tuned (lr)", *(f"{k}: steps to Adam(2e-3)" for k in learned),
              "divergences"]
    lines += ["Final training loss (whole training set; lower is better).", "",
              "| " + " | ".join(header) + " |",
              "|" + "|".join(["---", "---:"] + ["---:"] * (len(header) - 3) + ["---"]) + "|"]
    for task in tasks:
      s = task["summary"]
      final = s["final_loss"]
      tuned = s["tuned_adam"]
      diverged = [k for k, v in s["diverged"].items() if v]
      row = [task["name"], str(task["steps"]), *(fmt_loss(final[k]) for k in learned),
             fmt_loss(final[adam_label(ADAM_LR)]), fmt_loss(final[f"RMSProp({RMSPROP_LR:.2g})"]),
             f"{fmt_loss(tuned['final_loss'])} ({tuned['learning_rate']:.2g})",
             *(str(s["steps_to_reach_adam_2e-3"][k]) if s["steps_to_reach_adam_2e-3"][k]
               is not None else "never" for k in learned),
             ", ".join(diverged) if diverged else "none"]
      lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    for key in learned:
      lines.append(f"- **{key}**: " + verdict(tasks, key))
    lines.append("")
  if results.get("quadratic_lr"):
    q = results["quadratic_lr"]
    lrs = q["learning_rates"]
    lines += [f"Paper Fig. 5: {q['description']}, {q['steps']} steps; final loss per initial "
              "learning rate († diverged).", "",
              "| optimizer | " + " | ".join(f"lr {lr:.0e}" for lr in lrs) + " | max/min |",
              "|---|" + "---:|" * (len(lrs) + 1)]
    for family in dict.fromkeys(r["family"] for r in q["runs"]):
      runs = [r for r in q["runs"] if r["family"] == family]
      label = FAMILY_NAMES.get(family, family)
      finals = [r["final_loss"] for r in runs]
      cells = [fmt_loss(r["final_loss"]) + (" †" if r["diverged"] else "") for r in runs]
      finite = [f for f in finals if math.isfinite(f) and f > 0]
      spread = f"{max(finite) / min(finite):.3g}" if len(finite) == len(finals) else "inf"
      lines.append(f"| {label} | " + " | ".join(cells) + f" | {spread} |")
    lines.append("")
  return "\n".join(lines)


def verdict(tasks: Sequence[dict], key: str) -> str:
  """The issue's targets: <= Adam(2e-3) everywhere, <= tuned Adam on half, no divergence."""
  n = len(tasks)
  vs_adam = sum(sort_key(t["summary"]["final_loss"][key]) <=
                sort_key(t["summary"]["adam_2e-3_final_loss"]) for t in tasks)
  vs_tuned = sum(sort_key(t["summary"]["final_loss"][key]) <=
                 sort_key(t["summary"]["tuned_adam"]["final_loss"]) for t in tasks)
  diverged = sum(bool(t["summary"]["diverged"][key]) for t in tasks)
  return (f"final loss <= Adam(2e-3) on {vs_adam}/{n} tasks (target {n}/{n}), <= tuned Adam "
          f"on {vs_tuned}/{n} (target >= {math.ceil(n / 2)}), divergences {diverged} "
          "(target 0)")


def plot(results: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  tasks = results["tasks"]
  if not tasks:
    return
  columns = min(3, len(tasks))
  rows = math.ceil(len(tasks) / columns)
  fig, axes = plt.subplots(rows, columns, figsize=(5 * columns, 3.6 * rows), squeeze=False)
  learned_colors = plt.cm.Reds(np.linspace(0.9, 0.5, max(1, len(results["learned"]))))
  for ax, task in zip(axes.flat, tasks):
    tuned = task["summary"]["tuned_adam"]
    styles = {key: dict(color=c, lw=2) for key, c in zip(results["learned"], learned_colors)}
    styles[adam_label(ADAM_LR)] = dict(color="tab:blue", lw=1.2)
    styles[f"RMSProp({RMSPROP_LR:.2g})"] = dict(color="tab:green", lw=1.2)
    for run in task["runs"]:
      style = styles.get(run["optimizer"])
      label = run["optimizer"]
      if style is None and run["family"] == "adam" and tuned and math.isclose(
          run["learning_rate"], tuned["learning_rate"]):
        style, label = dict(color="tab:purple", lw=1.2, ls="--"), f"Adam tuned ({label})"
      if style is None:
        continue
      losses = np.array([v if math.isfinite(v) else np.nan for v in run["losses"]])
      ax.plot(run["steps"], losses, label=label, **style)
    ax.set_yscale("log")
    ax.set_title(f"{task['name']} ({task['num_params']} params)", fontsize=9)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.legend(fontsize=7)
  for ax in list(axes.flat)[len(tasks):]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def plot_quadratic_lr(q: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  families = list(dict.fromkeys(r["family"] for r in q["runs"]))
  fig, axes = plt.subplots(1, len(families), figsize=(4.2 * len(families), 3.6), squeeze=False,
                           sharey=True)
  colors = plt.cm.viridis(np.linspace(0, 0.9, len(q["learning_rates"])))
  for ax, family in zip(axes.flat, families):
    for run in (r for r in q["runs"] if r["family"] == family):
      color = colors[q["learning_rates"].index(run["learning_rate"])]
      losses = np.array([v if math.isfinite(v) and v > 0 else np.nan for v in run["losses"]])
      ax.plot(run["steps"], losses, color=color, label=f"lr {run['learning_rate']:.0e}")
    ax.set_yscale("log")
    ax.set_title(FAMILY_NAMES.get(family, family), fontsize=9)
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
  axes.flat[0].set_ylabel("loss")
  fig.suptitle(q["description"], fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def jsonable(value):
  """NaN/inf become strings (JSON has no spelling for them)."""
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if isinstance(value, dict):
    return {k: jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if isinstance(value, np.generic):
    return value.item()
  return value


# ---- driver -----------------------------------------------------------------------------------

def run(options: Options) -> dict:
  """Runs the selected tasks, prints the tables, writes quality.{md,json,png}[, _lr.png]."""
  unknown = set(options.tasks) - set(ALL_TASKS)
  if unknown:
    raise ValueError(f"unknown tasks {sorted(unknown)}; known: {list(ALL_TASKS)}")
  learned = [learned_family(spec, options.seed) for spec in options.weights]
  if len({f.key for f in learned}) != len(learned):
    raise ValueError(f"--weights names two files with the same label: {options.weights}")
  start = time.perf_counter()
  results = {"learned": [f.key for f in learned], "settings": jsonable(
      dataclasses.asdict(options)), "tasks": [], "quadratic_lr": None}
  for name in options.tasks:
    print(f"{name}:", flush=True)
    if name == "quadratic_lr":
      results["quadratic_lr"] = run_quadratic_lr(learned, options, options.steps)
    elif name == "long":
      task = tasks_lib.get(options.long_task, options.seed)
      results["tasks"].append(run_task(task, options.long_steps, learned, options,
                                       name=f"long_{task.name}"))
    else:
      results["tasks"].append(run_task(tasks_lib.get(name, options.seed), options.steps,
                                       learned, options))
  results["seconds"] = time.perf_counter() - start
  results["provenance"] = {
      f.key: learned_opt.LearnedOptimizer(weights=spec, seed=options.seed).weights_provenance
      for f, spec in zip(learned, options.weights)}

  table = markdown(results)
  print("\n" + table)
  print(f"total {results['seconds']:.0f} s")
  os.makedirs(options.out, exist_ok=True)
  with open(os.path.join(options.out, "quality.md"), "w") as f:
    f.write(table)
  with open(os.path.join(options.out, "quality.json"), "w") as f:
    json.dump(jsonable(results), f, indent=1, default=str)
  plot(results, os.path.join(options.out, "quality.png"))
  if results["quadratic_lr"]:
    plot_quadratic_lr(results["quadratic_lr"], os.path.join(options.out, "quality_lr.png"))
  return results


FLAGS = flags.FLAGS


def define_flags():
  """Flags of the command line only, so that importing this module defines none."""
  flags.DEFINE_multi_string("weights", None, "LearnedOptimizer weights: shipped name or path; "
                            "repeat for several; 'none' = untrained. Default: every shipped "
                            "file (or 'default', which fails clearly if none is shipped).")
  flags.DEFINE_integer("steps", None, "Steps per task (default 2000; --quick: 40).")
  flags.DEFINE_integer("long_steps", None, "Steps of the long run (default 10000, 10x the "
                       "longest meta-training trajectories; --quick: 80).")
  flags.DEFINE_string("long_task", "mlp_relu", "Task of the long run.")
  flags.DEFINE_list("tasks", list(ALL_TASKS), "Tasks to run.")
  flags.DEFINE_float("learning_rate", 1e-3, "LearnedOptimizer's initial step length.")
  flags.DEFINE_integer("seed", 0, "Data split, initialisation and minibatch order.")
  flags.DEFINE_integer("curve_points", 100, "Loss evaluations (whole training set) per run.")
  flags.DEFINE_enum("jit", "auto", ["auto", "on", "off"], "Compile the training loops with "
                    "XLA: auto = all but the ConvNets (XLA's CPU convolutions are slower).")
  flags.DEFINE_bool("quick", False, "Smoke run: few steps.")
  flags.DEFINE_string("out", "benchmarks/results", "Output directory.")


def main(argv):
  del argv
  weights = FLAGS.weights or learned_opt.weights.shipped() or ["default"]
  default_steps, default_long = (40, 80) if FLAGS.quick else (2000, 10000)
  run(Options(
      weights=[parse_weights(w) for w in weights],
      steps=FLAGS.steps or default_steps, long_steps=FLAGS.long_steps or default_long,
      long_task=FLAGS.long_task, tasks=FLAGS.tasks, learning_rate=FLAGS.learning_rate,
      seed=FLAGS.seed, curve_points=FLAGS.curve_points,
      jit={"auto": "auto", "on": True, "off": False}[FLAGS.jit], out=FLAGS.out))


if __name__ == "__main__":
  define_flags()
  app.run(main)
