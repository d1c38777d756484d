"""Long-run safety: does the learned optimizer keep a converged model converged for 20k steps?

Meta-training trajectories are a few hundred steps long, so nothing in meta-training asks the
optimizer to shrink its step once the loss is near zero. If it never learned to, the log step
length keeps drifting up while the loss sits at its floor, the weights drift outward, and
eventually a step throws the model off (issue 16: the shipped default on the first demo.py task,
epoch 358 of 445). This benchmark measures that as a property of a weights file:

  * each task is trained with `model.fit` for >= 20,000 steps, by LearnedOptimizer(weights)
    and by Keras Adam(2e-3) in the same process, from the same initial weights with the same
    minibatches;
  * an epoch "spikes" when its mean train loss is more than 10x the running minimum of the
    epochs before it;
  * a task passes when the learned optimizer has no spiking epoch and ends at or below Adam's
    final train loss.

Tasks: the first demo.py model and data (64-128-64-10 MLP on digits, batch 32, 445 epochs of 45
steps), and two held-out benchmark tasks of benchmarks/tasks.py rebuilt as Keras models with
the same initialisation (mlp_sigmoid: 64-100-100-10 sigmoid MLP, batch 128;
logreg_breast_cancer: full batch). For those, an "epoch" is 50 steps of a repeated,
reshuffled tf.data stream. None of these is in the meta-training ensemble.

    python -m benchmarks.long_run                          # shipped default, 3 tasks, 20k steps
    python -m benchmarks.long_run --weights /tmp/run.npz --out /tmp/long_run
    python -m benchmarks.long_run --tasks demo_mlp --steps 2000   # quick look
    python -m benchmarks.long_run --report benchmarks/results/long_run/long_run.json

Prints a table per task and a summary, writes long_run.json and long_run.png under --out.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Callable

import keras
import numpy as np
import tensorflow as tf

SPIKE_FACTOR = 10.0          # an epoch > 10x the running minimum of the epochs before it
ADAM_LEARNING_RATE = 2e-3
DEFAULT_TASKS = ("demo_mlp", "mlp_sigmoid", "logreg_breast_cancer")
STEPS_PER_EPOCH = 50         # for the tf.data tasks (the demo uses true epochs)


@dataclasses.dataclass
class LongTask:
  """A Keras model + data, trained with model.fit. `steps_per_epoch` None: passes over x."""
  name: str
  description: str
  make_model: Callable[[], keras.Model]
  loss: keras.losses.Loss
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  batch_size: int
  steps_per_epoch: int | None

  def epochs_for(self, steps: int) -> int:
    per_epoch = self.steps_per_epoch or math.ceil(len(self.x_train) / self.batch_size)
    return max(1, math.ceil(steps / per_epoch))


def demo_data(seed: int):
  """Digits, pixels in [0, 1], a fixed 80/20 train/test split (the first demo.py's data)."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  order = np.random.default_rng(seed).permutation(len(x))
  test, train = order[:360], order[360:]
  return x[train], y[train], x[test], y[test]


def demo_model(seed: int) -> keras.Model:
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input((64,)),
      keras.layers.Dense(128, activation="relu"),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(10),
  ])


def demo_task(seed: int = 0) -> LongTask:
  x_train, y_train, x_test, y_test = demo_data(seed)
  return LongTask("demo_mlp", "MLP 64-128-64-10 relu, digits, batch 32 (issue 16's demo run)",
                  lambda: demo_model(seed),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  x_train, y_train, x_test, y_test, batch_size=32, steps_per_epoch=None)


def benchmark_task(name: str, seed: int = 0) -> LongTask:
  """A benchmarks/tasks.py task as a Keras model with the task's own initial parameters."""
  from benchmarks import tasks
  task = tasks.get(name, seed)
  if name == "mlp_sigmoid":
    def make_model():
      model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(100, "sigmoid"),
                                keras.layers.Dense(100, "sigmoid"), keras.layers.Dense(10)])
      model.set_weights(task.init)
      return model
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    y_train, y_test, batch_size = task.y_train, task.y_test, task.batch_size
  elif name == "logreg_breast_cancer":
    def make_model():
      model = keras.Sequential([keras.Input((30,)), keras.layers.Dense(1)])
      model.set_weights(task.init)
      return model
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    y_train = task.y_train.astype(np.float32)[:, None]
    y_test = task.y_test.astype(np.float32)[:, None]
    batch_size = len(task.x_train)   # full batch, as in benchmarks.quality
  else:
    raise ValueError(f"--tasks: no Keras version of benchmark task {name!r}; known: "
                     f"{sorted(TASKS)}")
  return LongTask(name, task.description, make_model, loss, task.x_train, y_train,
                  task.x_test, y_test, batch_size=batch_size, steps_per_epoch=STEPS_PER_EPOCH)


TASKS = {"demo_mlp": demo_task,
         "mlp_sigmoid": lambda seed=0: benchmark_task("mlp_sigmoid", seed),
         "logreg_breast_cancer": lambda seed=0: benchmark_task("logreg_breast_cancer", seed)}


def get_task(name: str, seed: int = 0) -> LongTask:
  if name not in TASKS:
    raise ValueError(f"--tasks: unknown task {name!r}; known: {sorted(TASKS)}")
  return TASKS[name](seed)


# ---- the criterion ----------------------------------------------------------------------------

def spikes(losses) -> dict:
  """Epochs whose loss is > SPIKE_FACTOR x the running minimum of the epochs before them.

  Returns {"count", "max_ratio", "first_epoch" (1-based or None), "finite"}. A non-finite
  epoch loss counts as a spike with an infinite ratio.
  """
  losses = np.asarray(losses, np.float64)
  count, max_ratio, first = 0, 0.0, None
  running_min = math.inf
  for epoch, loss in enumerate(losses, start=1):
    if epoch > 1:
      ratio = loss / running_min if (math.isfinite(loss) and running_min > 0) else (
          math.inf if not math.isfinite(loss) else (1.0 if loss == 0 else math.inf))
      max_ratio = max(max_ratio, ratio)
      if ratio > SPIKE_FACTOR:
        count += 1
        first = first or epoch
    if math.isfinite(loss):
      running_min = min(running_min, loss)
  return {"count": count, "max_ratio": max_ratio, "first_epoch": first,
          "finite": bool(np.all(np.isfinite(losses)))}


def verdict(learned_losses, adam_losses) -> dict:
  """The pass/fail of one task: no spiking epoch, final loss <= Adam's final loss."""
  s = spikes(learned_losses)
  final, adam_final = float(learned_losses[-1]), float(adam_losses[-1])
  beats_adam = bool(math.isfinite(final) and final <= adam_final)
  return {**s, "final": final, "adam_final": adam_final, "beats_adam": beats_adam,
          "passed": bool(s["count"] == 0 and s["finite"] and beats_adam)}


# ---- training ---------------------------------------------------------------------------------

class _Recorder(keras.callbacks.Callback):
  """Per epoch: the mean log step length (learned optimizer) and the global weight norm."""

  def __init__(self):
    super().__init__()
    self.log_lr, self.weight_norm = [], []

  def on_epoch_end(self, epoch, logs=None):
    state_vars = getattr(self.model.optimizer, "_state_vars", None)
    if state_vars is not None:
      self.log_lr.append(float(np.mean(state_vars["log_lr"].numpy())))
    self.weight_norm.append(float(math.sqrt(sum(
        float(np.sum(np.square(w))) for w in self.model.get_weights()))))


def fit(task: LongTask, optimizer, steps: int, seed: int = 0) -> dict:
  """Trains a fresh model of `task` (same init, same minibatches for every optimizer)."""
  model = task.make_model()
  model.compile(optimizer=optimizer, loss=task.loss)
  keras.utils.set_random_seed(seed)   # the same shuffling for every optimizer
  recorder = _Recorder()
  epochs = task.epochs_for(steps)
  start_wall, start_cpu = time.perf_counter(), time.process_time()
  if task.steps_per_epoch is None:
    history = model.fit(task.x_train, task.y_train, batch_size=task.batch_size, epochs=epochs,
                        verbose=0, callbacks=[recorder])
    steps_done = epochs * math.ceil(len(task.x_train) / task.batch_size)
  else:
    data = tf.data.Dataset.from_tensor_slices((task.x_train, task.y_train))
    if task.batch_size < len(task.x_train):
      data = data.shuffle(len(task.x_train), seed=seed, reshuffle_each_iteration=True)
    data = data.batch(task.batch_size).repeat()
    history = model.fit(data, epochs=epochs, steps_per_epoch=task.steps_per_epoch, verbose=0,
                        shuffle=False, callbacks=[recorder])
    steps_done = epochs * task.steps_per_epoch
  wall, cpu = time.perf_counter() - start_wall, time.process_time() - start_cpu
  test_loss = float(model.evaluate(task.x_test, task.y_test, verbose=0,
                                   batch_size=len(task.x_test)))
  return {"loss": [float(x) for x in history.history["loss"]], "test_loss": test_loss,
          "log_lr": recorder.log_lr, "weight_norm": recorder.weight_norm, "steps": steps_done,
          "epochs": epochs, "skipped_steps": int(getattr(optimizer, "skipped_steps", 0)),
          "wall_secs": wall, "cpu_secs": cpu}


def run_task(task: LongTask, weights, steps: int, learning_rate: float = 1e-3,
             seed: int = 0) -> dict:
  import learned_opt
  learned = learned_opt.LearnedOptimizer(learning_rate=learning_rate, weights=weights)
  result = {"task": task.name, "description": task.description,
            "learned": fit(task, learned, steps, seed),
            "adam": fit(task, keras.optimizers.Adam(ADAM_LEARNING_RATE), steps, seed)}
  result["verdict"] = verdict(result["learned"]["loss"], result["adam"]["loss"])
  result["adam_spikes"] = spikes(result["adam"]["loss"])
  return result


def report_epochs(num_epochs: int) -> list[int]:
  """A few 1-based epochs spread over the run (for the step-length columns)."""
  picks = {1, max(1, num_epochs // 20), num_epochs // 4, num_epochs // 2,
           (3 * num_epochs) // 4, num_epochs}
  return sorted(e for e in picks if e >= 1)


def task_table(result: dict) -> str:
  learned, adam, v = result["learned"], result["adam"], result["verdict"]
  epochs = report_epochs(len(learned["loss"]))
  lines = [f"{result['task']} — {result['description']}, {learned['steps']:,} steps "
           f"({learned['epochs']} epochs)", "",
           "| epoch | learned train loss | Adam(2e-3) train loss | learned mean log step length "
           "| learned ‖W‖₂ |", "|---:|---:|---:|---:|---:|"]
  for e in epochs:
    log_lr = learned["log_lr"][e - 1] if learned["log_lr"] else float("nan")
    lines.append(f"| {e} | {learned['loss'][e - 1]:.3g} | {adam['loss'][e - 1]:.3g} | "
                 f"{log_lr:+.2f} | {learned['weight_norm'][e - 1]:,.1f} |")
  lines += ["", f"final train loss {v['final']:.3g} (Adam {v['adam_final']:.3g}); epochs > "
            f"{SPIKE_FACTOR:g}x running min: {v['count']} (max ratio {v['max_ratio']:.3g}"
            f"{'' if v['first_epoch'] is None else ', first at epoch %d' % v['first_epoch']});"
            f" Adam's: {result['adam_spikes']['count']}; test loss {learned['test_loss']:.3g} "
            f"(Adam {adam['test_loss']:.3g}); skipped steps {learned['skipped_steps']}; "
            f"{'PASS' if v['passed'] else 'FAIL'}"]
  return "\n".join(lines)


def summary_table(results: list[dict]) -> str:
  lines = ["| task | steps | final train loss | Adam(2e-3) final | epochs > 10x running min "
           "(Adam) | max ratio | log step length first → last epoch | test loss (Adam) | "
           "verdict |", "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
  for r in results:
    v, learned = r["verdict"], r["learned"]
    log_lr = (f"{learned['log_lr'][0]:+.2f} → {learned['log_lr'][-1]:+.2f}"
              if learned["log_lr"] else "")
    lines.append(f"| {r['task']} | {learned['steps']:,} | {v['final']:.3g} | "
                 f"{v['adam_final']:.3g} | {v['count']} ({r['adam_spikes']['count']}) | "
                 f"{v['max_ratio']:.3g} | {log_lr} | {learned['test_loss']:.3g} "
                 f"({r['adam']['test_loss']:.3g}) | {'PASS' if v['passed'] else 'FAIL'} |")
  return "\n".join(lines)


def plot(results: list[dict], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.8), squeeze=False)
  for ax, r in zip(axes[0], results):
    epochs = np.arange(1, len(r["learned"]["loss"]) + 1)
    ax.plot(epochs, r["learned"]["loss"], label="learned", color="tab:red", lw=1)
    ax.plot(epochs, r["adam"]["loss"], label="Adam(2e-3)", color="tab:blue", lw=1)
    ax.set(yscale="log", xlabel="epoch", ylabel="train loss (epoch mean)")
    ax.set_title(f"{r['task']}: {'PASS' if r['verdict']['passed'] else 'FAIL'}", fontsize=9)
    if r["learned"]["log_lr"]:
      twin = ax.twinx()
      twin.plot(epochs, r["learned"]["log_lr"], color="tab:gray", lw=0.8, ls="--")
      twin.set_ylabel("learned mean log step length (dashed)")
    ax.legend(loc="lower left", fontsize=8)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(weights="default", task_names=DEFAULT_TASKS, steps: int = 20_000,
        out: str | None = "benchmarks/results/long_run", learning_rate: float = 1e-3,
        seed: int = 0) -> list[dict]:
  """Runs every task, prints its table and the summary, writes JSON + PNG under `out`."""
  from learned_opt import weights as weights_lib
  if weights is not None:
    weights_lib.load(weights)   # a bad weights file fails before any training
  tasks = [get_task(name, seed) for name in task_names]
  results = []
  record = {"weights": None if weights is None else os.fspath(weights), "steps": steps,
            "learning_rate": learning_rate, "seed": seed, "spike_factor": SPIKE_FACTOR,
            "adam_learning_rate": ADAM_LEARNING_RATE, "results": results}
  if out:
    os.makedirs(out, exist_ok=True)
  for task in tasks:
    result = run_task(task, weights, steps, learning_rate, seed)
    print(task_table(result) + "\n", flush=True)
    results.append(result)
    if out:   # after every task: a long run stopped part-way keeps what it measured
      with open(os.path.join(out, "long_run.json"), "w") as f:
        json.dump(record, f, indent=1)
  print(summary_table(results))
  if out:
    plot(results, os.path.join(out, "long_run.png"),
         f"LearnedOptimizer(weights={weights!r}) vs Adam(2e-3), {steps:,} steps")
    print(f"\nwrote {out}/long_run.json and long_run.png")
  return results


def report(path: str) -> list[dict]:
  """Prints the tables of a saved long_run.json again and redraws the PNG beside it."""
  with open(path) as f:
    record = json.load(f)
  results = record["results"]
  for result in results:
    print(task_table(result) + "\n")
  print(summary_table(results))
  plot(results, os.path.join(os.path.dirname(path), "long_run.png"),
       f"LearnedOptimizer(weights={record['weights']!r}) vs Adam(2e-3), "
       f"{record['steps']:,} steps")
  return results


def main(argv=None):
  from absl import app, flags
  flags.DEFINE_string("weights", "default", "Shipped weights name, a path, or 'none'.")
  flags.DEFINE_list("tasks", list(DEFAULT_TASKS), f"Tasks among {sorted(TASKS)}.")
  flags.DEFINE_integer("steps", 20_000, "Training steps per task and optimizer (at least).")
  flags.DEFINE_float("learning_rate", 1e-3, "LearnedOptimizer's initial step length.")
  flags.DEFINE_integer("seed", 0, "Split, initial weights and shuffling.")
  flags.DEFINE_string("out", "benchmarks/results/long_run", "Directory for JSON + PNG.")
  flags.DEFINE_string("report", "", "Only print the tables of this saved long_run.json (and "
                      "redraw its PNG); trains nothing.")
  FLAGS = flags.FLAGS

  def main_(argv):
    del argv
    if FLAGS.report:
      results = report(FLAGS.report)
      return 0 if all(r["verdict"]["passed"] for r in results) else 1
    if FLAGS.steps < 1:
      raise app.UsageError(f"--steps must be >= 1, got {FLAGS.steps}")
    try:
      for name in FLAGS.tasks:
        if name not in TASKS:
          raise ValueError(f"--tasks: unknown task {name!r}; known: {sorted(TASKS)}")
      weights = None if FLAGS.weights.lower() == "none" else FLAGS.weights
      results = run(weights, FLAGS.tasks, FLAGS.steps, FLAGS.out, FLAGS.learning_rate,
                    FLAGS.seed)
    except (ValueError, FileNotFoundError) as e:
      raise app.UsageError(str(e)) from None
    return 0 if all(r["verdict"]["passed"] for r in results) else 1

  app.run(main_, argv)   # exits with main_'s status: 1 when a task fails


if __name__ == "__main__":
  main()
