"""Wall-clock time of one gradient + update step, LearnedOptimizer vs Keras Adam (paper Fig. 7).

A 2-layer ConvNet on 28x28x1 inputs (synthetic data: only the shapes matter for timing), batch
sizes 16...1024, each optimizer compiled with tf.function and with XLA, all in one process.
Also reports the optimizer state per parameter. Prints a table, writes a PNG.

    python -m benchmarks.step_time                       # full sweep
    python -m benchmarks.step_time --batch_sizes 16,128 --steps 10
"""

from __future__ import annotations

import time

from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

import learned_opt

FLAGS = flags.FLAGS


def define_flags():
  """Flags of the command line only, so that importing this module defines none."""
  flags.DEFINE_list("batch_sizes", ["16", "64", "128", "256", "1024"], "Batch sizes to time.")
  flags.DEFINE_integer("steps", 20, "Timed steps per configuration (after 3 warm-up steps).")
  flags.DEFINE_integer("repeats", 3, "Timing repeats; the median is reported.")
  flags.DEFINE_string("out", "benchmarks/results/step_time.png", "Where to write the plot.")
  flags.DEFINE_string("weights", None, "LearnedOptimizer weights (None: untrained; timing is "
                      "independent of the weights).")


def convnet():
  return keras.Sequential([
      keras.Input((28, 28, 1)),
      keras.layers.Conv2D(16, 3, activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Conv2D(32, 3, activation="relu"),
      keras.layers.MaxPooling2D(),
      keras.layers.Flatten(),
      keras.layers.Dense(10),
  ])


def make_optimizer(name):
  if name == "adam":
    return keras.optimizers.Adam(1e-3)
  return learned_opt.LearnedOptimizer(learning_rate=1e-3, weights=FLAGS.weights)


def time_step(opt_name: str, batch: int, jit: bool) -> tuple[float, int, int]:
  """Median seconds per step, #model params, optimizer state floats."""
  keras.utils.set_random_seed(0)
  model = convnet()
  opt = make_optimizer(opt_name)
  loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  opt.build(model.trainable_variables)
  x = tf.random.normal([batch, 28, 28, 1])
  y = tf.random.uniform([batch], 0, 10, tf.int32)

  @tf.function(jit_compile=jit)
  def train_step():
    with tf.GradientTape() as tape:
      loss = loss_fn(y, model(x, training=True))
    grads = tape.gradient(loss, model.trainable_variables)
    opt.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  for _ in range(3):
    train_step().numpy()
  times = []
  for _ in range(FLAGS.repeats):
    start = time.perf_counter()
    for _ in range(FLAGS.steps):
      loss = train_step()
    loss.numpy()
    times.append((time.perf_counter() - start) / FLAGS.steps)
  n_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  state_floats = sum(int(np.prod(v.shape)) for v in opt.variables)
  return float(np.median(times)), n_params, state_floats


def main(argv):
  del argv
  batches = [int(b) for b in FLAGS.batch_sizes]
  rows = []
  for batch in batches:
    for jit in (False, True):
      for opt_name in ("adam", "learned"):
        seconds, n_params, state = time_step(opt_name, batch, jit)
        rows.append((batch, "XLA" if jit else "tf.function", opt_name, seconds, n_params, state))
        print(f"batch {batch:5d} {'XLA' if jit else 'tf.function':11s} {opt_name:8s} "
              f"{seconds * 1e3:8.2f} ms/step", flush=True)

  n_params = rows[0][4]
  import os
  print(f"\n2-layer ConvNet, {n_params} parameters, CPU, {os.cpu_count()} cores\n")
  print("| batch | mode | Adam ms/step | learned ms/step | learned / Adam |")
  print("|---:|---|---:|---:|---:|")
  for batch in batches:
    for mode in ("tf.function", "XLA"):
      adam = next(r[3] for r in rows if r[:3] == (batch, mode, "adam"))
      learned = next(r[3] for r in rows if r[:3] == (batch, mode, "learned"))
      print(f"| {batch} | {mode} | {adam * 1e3:.2f} | {learned * 1e3:.2f} | "
            f"{learned / adam:.2f} |")
  adam_state = next(r[5] for r in rows if r[2] == "adam")
  learned_state = next(r[5] for r in rows if r[2] == "learned")
  print("\n| optimizer | state floats (all optimizer variables) | per parameter |")
  print("|---|---:|---:|")
  print(f"| Adam | {adam_state} | {adam_state / n_params:.2f} |")
  print(f"| LearnedOptimizer | {learned_state} | {learned_state / n_params:.2f} |")

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import os
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  fig, ax = plt.subplots(figsize=(6, 4))
  for mode, style in (("tf.function", "-"), ("XLA", "--")):
    for opt_name, color in (("adam", "tab:blue"), ("learned", "tab:red")):
      ys = [next(r[3] for r in rows if r[:3] == (b, mode, opt_name)) for b in batches]
      ax.plot(batches, ys, style, color=color, marker="o",
              label=f"{'Adam' if opt_name == 'adam' else 'Learned'} ({mode})")
  ax.set_xscale("log", base=2)
  ax.set_yscale("log")
  ax.set_xlabel("batch size")
  ax.set_ylabel("seconds per gradient + update step")
  ax.set_title("2-layer ConvNet on CPU (cf. paper Fig. 7)")
  ax.legend()
  fig.tight_layout()
  fig.savefig(FLAGS.out, dpi=120)
  print(f"\nplot: {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
