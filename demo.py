"""Demonstration: LearnedOptimizer() against Adam on one task of the optimizer benchmark.

The task comes from benchmarks/keras_tasks.py (held-out data: scikit-learn's bundled sets,
offline), and is trained exactly as the benchmark trains it (benchmarks/suite.py `run_one`):
`model.compile` + `model.fit`, the same initial weights and the same minibatch sequence for
both optimizers, the training loss measured on a fixed subset of the training set. Prints one
short table and says who won; writes a PNG of the two loss curves.

    python demo.py                                 # shipped default vs Adam(2e-3), MLP on digits
    python demo.py --task mlp8_tanh_digits         # any benchmark task (python demo.py --list)
    python demo.py --weights paper                 # another shipped weights file, or a path
    python demo.py --weights none --steps 200      # the untrained optimizer, a short run
"""

from __future__ import annotations

import math
import os

from absl import app, flags
import keras
import numpy as np

import learned_opt
from learned_opt import config as config_lib
from benchmarks import keras_tasks
from benchmarks import suite

DEFAULT_TASK = "mlp2_relu_digits"
ADAM = "Adam(2e-3)"


def learned_label(weights: str | None) -> str:
  if weights == "default":
    return "LearnedOptimizer()"
  return f"LearnedOptimizer({'untrained' if weights is None else weights})"


def run(weights: str | None = "default", task_name: str = DEFAULT_TASK, steps: int | None = None,
        out: str = "demo_results/demo.png", seed: int = 0, curve_points: int = 20) -> dict:
  """Trains `task_name` with LearnedOptimizer(weights=...) and Adam(2e-3); prints, plots and
  returns {label: run} (benchmarks/suite.py's run records)."""
  task = keras_tasks.get(task_name)
  label = learned_label(weights)
  steps = steps or task.steps
  data = task.data(seed)
  keras.utils.set_random_seed(seed)
  init_weights = task.model(data).get_weights()
  print(f"task: {task.name} - {task.description}; {steps} steps, seed {seed}")
  # Built before any training: a missing or bad weights file fails here.
  learned = (learned_opt.LearnedOptimizer() if weights == "default"
             else learned_opt.LearnedOptimizer(weights=weights))
  print(f"{label}: {describe_weights(learned)}")
  results = {}
  for name, optimizer in ((label, learned), (ADAM, keras.optimizers.Adam(2e-3))):
    print(f"training with {name} ...", flush=True)
    results[name] = suite.run_one(task, data, init_weights, optimizer, seed, curve_points, steps)
  print()
  print(table(results, task))
  print()
  print(verdict(results, label))
  plot(results, task, out)
  print(f"wrote {out}")
  return results


def describe_weights(optimizer) -> str:
  """One line about the optimizer's weights (never a raw dict)."""
  p = optimizer.weights_provenance or {}
  if not p or str(p.get("source", "")).startswith("untrained"):
    return "untrained initialisation (no meta-trained weights)"
  preset = next((name for name, make in config_lib.PRESETS.items()
                 if make() == optimizer.hrnn_config), None)
  parts = [f"config '{preset}'" if preset else "weights file"]
  if p.get("meta_steps") is not None:
    steps, link = 0, p   # a warm-started run's parents, back to the first run
    while isinstance(link, dict) and link.get("meta_steps") is not None:
      steps += int(link["meta_steps"])
      link = link.get("init_weights")
    parts.append(f"{steps:,} meta-steps")
  hours = p.get("cpu_hours_total", p.get("cpu_hours"))
  if hours is not None:
    parts.append(f"{hours:.2f} CPU-hours of meta-training")
  options = p.get("options") or {}
  if options.get("problems"):
    parts.append(f"problems '{options['problems']}'")
  return ", ".join(parts)


def table(results: dict[str, dict], task) -> str:
  metric = next(iter(results.values()))["test_metric_name"]
  reference = results[ADAM]
  lines = [f"| optimizer | final train loss | test {metric} | steps to Adam's final loss | "
           "fit wall time |", "|---|---:|---:|---:|---:|"]
  for name, run in results.items():
    reach = suite.steps_to_reach(run["steps"], run["losses"], reference["final_loss"])
    test = "-" if run["test_metric"] is None else f"{run['test_metric']:.4g}"
    lines.append(f"| {name} | {suite.fmt(run['final_loss'])} | {test} | "
                 f"{'never' if reach is None else f'{reach:,}'} | {run['wall_seconds']:.1f} s |")
  return "\n".join(lines)


def verdict(results: dict[str, dict], label: str) -> str:
  """Who won on final training loss, by how much, and at what wall-time cost; plainly."""
  mine, adam = results[label], results[ADAM]
  a, b = mine["final_loss"], adam["final_loss"]
  cost = mine["wall_seconds"] / max(adam["wall_seconds"], 1e-9)
  time_note = f"{label} took {cost:.1f}x Adam's wall time."
  if mine["diverged"] or not math.isfinite(a):
    return f"Adam won: {label} diverged ({mine['diverged'] or 'non-finite loss'}). {time_note}"
  if not math.isfinite(b):
    return f"{label} won: Adam diverged. {time_note}"
  if a <= b:
    return (f"{label} won: final train loss {a:.4g} vs Adam's {b:.4g} "
            f"({b / max(a, 1e-30):.2f}x lower). {time_note}")
  return (f"Adam won: final train loss {b:.4g} vs {label}'s {a:.4g} "
          f"({a / max(b, 1e-30):.2f}x lower). {time_note}")


def plot(results: dict[str, dict], task, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, run in results.items():
    losses = np.asarray(run["losses"], float)
    ax.plot(run["steps"], losses, marker="o", markersize=3, label=name)
  ax.set(yscale="log", xlabel="step", ylabel="train loss (training subset)", title=task.name)
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


FLAGS = flags.FLAGS


def define_flags():
  """Flags of the command line only, so that importing demo defines none (tests import it)."""
  flags.DEFINE_string("weights", "default", "Shipped weights name, a path, or 'none' "
                      "(untrained).")
  flags.DEFINE_string("task", DEFAULT_TASK, "A task of benchmarks/keras_tasks.py.")
  flags.DEFINE_integer("steps", None, "Training steps (default: the task's own).")
  flags.DEFINE_integer("seed", 0, "Data split, initial weights and minibatch order.")
  flags.DEFINE_string("out", "demo_results/demo.png", "Where to write the loss-curve PNG.")
  flags.DEFINE_bool("list", False, "List the tasks and exit.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.list:
    for task in keras_tasks.TASKS.values():
      print(f"{task.name:32s} {task.description}")
    return
  if FLAGS.task not in keras_tasks.TASKS:
    raise app.UsageError(f"--task {FLAGS.task!r} is not a benchmark task; "
                         "python demo.py --list shows them")
  if FLAGS.steps is not None and FLAGS.steps < 1:
    raise app.UsageError(f"--steps must be >= 1, got {FLAGS.steps}")
  weights = None if FLAGS.weights.lower() in ("none", "untrained") else FLAGS.weights
  run(weights, FLAGS.task, FLAGS.steps, FLAGS.out, FLAGS.seed)


if __name__ == "__main__":
  define_flags()
  app.run(main)
