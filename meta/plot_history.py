"""Plot meta-loss vs meta-step for one or more train_dirs (their history.csv).

    python -m meta.plot_history --runs meta_runs/paper,meta_runs/stable \
        --out learned_opt/weights/meta_loss.png
"""

from __future__ import annotations

import csv
import os

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a script, so importing this module adds no global flags."""
  flags.DEFINE_list("runs", None, "train_dirs to plot (each holds history.csv).")
  flags.DEFINE_string("out", "meta_loss.png", "Output PNG.")
  flags.DEFINE_integer("window", 50, "Moving-average window in meta-steps.")
  flags.mark_flag_as_required("runs")


def read_history(train_dir: str) -> tuple[np.ndarray, np.ndarray]:
  path = os.path.join(train_dir, "history.csv")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist (is {train_dir} a train_dir?)")
  with open(path) as f:
    rows = [r for r in csv.DictReader(f) if r.get("meta_loss") not in (None, "", "nan")]
  return (np.array([int(r["step"]) for r in rows]),
          np.array([float(r["meta_loss"]) for r in rows]))


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
  window = max(1, min(window, len(values)))
  cumulative = np.cumsum(np.insert(values, 0, 0.0))
  out = (cumulative[window:] - cumulative[:-window]) / window
  return np.concatenate([np.full(window - 1, np.nan), out])


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  for run in FLAGS.runs:
    steps, losses = read_history(run)
    line, = ax.plot(steps, losses, alpha=0.15)
    ax.plot(steps, moving_average(losses, FLAGS.window), color=line.get_color(),
            label=f"{os.path.basename(os.path.normpath(run))} ({len(steps)} meta-steps)")
    print(f"{run}: {len(steps)} meta-steps, mean meta-loss first/last {FLAGS.window}: "
          f"{losses[:FLAGS.window].mean():.3f} / {losses[-FLAGS.window:].mean():.3f}")
  ax.set_xlabel("meta-step (partial unroll)")
  ax.set_ylabel("meta-loss (eq. 14; lower is better)")
  ax.set_title(f"meta-training history ({FLAGS.window}-step moving average)")
  ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  fig.savefig(FLAGS.out, dpi=120)
  print(f"plot: {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
