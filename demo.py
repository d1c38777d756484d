"""Demonstration: one Keras model trained with LearnedOptimizer() and with Adam, side by side.

An MLP on scikit-learn's digits (bundled, offline), `model.compile` + `model.fit`, the same
initial weights and the same shuffling for both optimizers. Prints train loss and test
accuracy per epoch and writes a PNG of the loss curves.

    python demo.py                         # shipped default weights, 10 epochs
    python demo.py --weights paper         # another shipped weights file, or a path
    python demo.py --weights none          # untrained optimizer (for development)
    python demo.py --epochs 3 --out /tmp/demo.png
"""

from __future__ import annotations

import os
import time

from absl import app, flags
import keras
import numpy as np

import learned_opt


def load_data(seed: int):
  """Digits, pixels in [0, 1], a fixed 80/20 train/test split."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x = (x / 16.0).astype(np.float32)
  order = np.random.default_rng(seed).permutation(len(x))
  test, train = order[:360], order[360:]
  return x[train], y[train], x[test], y[test]


def make_model(seed: int) -> keras.Model:
  keras.utils.set_random_seed(seed)
  return keras.Sequential([
      keras.Input((64,)),
      keras.layers.Dense(128, activation="relu"),
      keras.layers.Dense(64, activation="relu"),
      keras.layers.Dense(10),
  ])


def train(optimizer, data, epochs: int, batch_size: int, seed: int) -> dict:
  """Fits a fresh model (same initial weights for every call) and returns its history."""
  x_train, y_train, x_test, y_test = data
  model = make_model(seed)
  model.compile(optimizer=optimizer,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  keras.utils.set_random_seed(seed)   # the same shuffling for every optimizer
  start = time.perf_counter()
  history = model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs,
                      validation_data=(x_test, y_test), verbose=0)
  seconds = time.perf_counter() - start
  return {"loss": history.history["loss"], "test_accuracy": history.history["val_accuracy"],
          "test_loss": history.history["val_loss"], "seconds": seconds}


def table(results: dict[str, dict]) -> str:
  names = list(results)
  header = "| epoch | " + " | ".join(f"{n} train loss | {n} test acc" for n in names) + " |"
  lines = [header, "|---:|" + "---:|" * (2 * len(names))]
  for epoch in range(len(results[names[0]]["loss"])):
    cells = [f"{results[n]['loss'][epoch]:.4f} | {results[n]['test_accuracy'][epoch]:.3f}"
             for n in names]
    lines.append(f"| {epoch + 1} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(results: dict[str, dict], path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.8))
  for name, history in results.items():
    epochs = np.arange(1, len(history["loss"]) + 1)
    left.plot(epochs, history["loss"], marker="o", label=name)
    right.plot(epochs, history["test_accuracy"], marker="o", label=name)
  left.set(yscale="log", xlabel="epoch", ylabel="train loss (epoch mean)")
  right.set(xlabel="epoch", ylabel="test accuracy")
  left.legend()
  fig.suptitle("Keras MLP on scikit-learn digits")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


def run(weights: str | None = "default", epochs: int = 10, out: str = "demo_results/demo.png",
        batch_size: int = 32, seed: int = 0) -> dict[str, dict]:
  """Trains with LearnedOptimizer(weights=...) and Adam(2e-3); prints and plots."""
  # Made first: without shipped weights this raises LearnedOptimizer's own error at once.
  learned = (learned_opt.LearnedOptimizer() if weights == "default"
             else learned_opt.LearnedOptimizer(weights=weights))
  label = "LearnedOptimizer" + ("" if weights == "default" else
                                f"({'untrained' if weights is None else weights})")
  print(f"{label}: {learned.weights_provenance.get('source', learned.weights_provenance)}")
  data = load_data(seed)
  results = {label: train(learned, data, epochs, batch_size, seed),
             "Adam(2e-3)": train(keras.optimizers.Adam(2e-3), data, epochs, batch_size, seed)}
  print(f"\nMLP 64-128-64-10 on digits ({len(data[0])} train / {len(data[2])} test), batch "
        f"{batch_size}, {epochs} epochs\n")
  print(table(results))
  for name, history in results.items():
    print(f"{name}: final train loss {history['loss'][-1]:.4f}, test accuracy "
          f"{history['test_accuracy'][-1]:.3f}, {history['seconds']:.1f} s")
  plot(results, out)
  print(f"wrote {out}")
  return results


FLAGS = flags.FLAGS


def define_flags():
  """Flags of the command line only, so that importing demo defines none (tests import it)."""
  flags.DEFINE_string("weights", "default", "Shipped weights name, a path, or 'none' "
                      "(untrained).")
  flags.DEFINE_integer("epochs", 10, "Epochs of model.fit.")
  flags.DEFINE_integer("batch_size", 32, "Minibatch size.")
  flags.DEFINE_integer("seed", 0, "Split, initial weights and shuffling.")
  flags.DEFINE_string("out", "demo_results/demo.png", "Where to write the loss-curve PNG.")


def main(argv):
  del argv
  weights = None if FLAGS.weights.lower() in ("none", "untrained") else FLAGS.weights
  run(weights, FLAGS.epochs, FLAGS.out, FLAGS.batch_size, FLAGS.seed)


if __name__ == "__main__":
  define_flags()
  app.run(main)
