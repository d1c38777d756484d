"""Plot meta-loss (or another history.csv column) vs meta-step for one or more train_dirs.

    python -m meta.plot_history --runs meta_runs/paper,meta_runs/stable \
        --out learned_opt/weights/meta_loss.png
    python -m meta.plot_history --runs /tmp/run --column validation_score --window 1 \
        --out validation.png     # the validation suite's score (logged every --validate_every)
    python -m meta.plot_history --runs meta_runs/lean_tbptt,meta_runs/lean_pes \
        --column validation_score --window 1 --x cpu_hours \
        --reference "+0.315:untrained lean" --out comparison.png   # equal-CPU comparison
"""

from __future__ import annotations

import csv
import json
import os

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS


def define_flags():
  """Defined only when run as a script, so importing this module adds no global flags."""
  flags.DEFINE_list("runs", None, "train_dirs to plot (each holds history.csv).")
  flags.DEFINE_string("out", "meta_loss.png", "Output PNG.")
  flags.DEFINE_integer("window", 50, "Moving-average window in meta-steps.")
  flags.DEFINE_string("column", "meta_loss", "history.csv column to plot (rows where it is "
                      "empty are skipped), e.g. validation_score.")
  flags.DEFINE_enum("x", "step", list(X_AXES), "Horizontal axis: meta-step, or the run's CPU "
                    "or wall hours (history.csv's cpu_time / wall_time, summed over restarts).")
  flags.DEFINE_multi_string("reference", [], "VALUE:LABEL, a horizontal reference line "
                            "(e.g. the untrained optimizer's score); repeatable.")
  flags.mark_flag_as_required("runs")


X_AXES = {"step": ("step", 1.0, "meta-step (partial unroll)"),
          "cpu_hours": ("cpu_time", 1 / 3600, "CPU hours of meta-training"),
          "wall_hours": ("wall_time", 1 / 3600, "wall-clock hours of meta-training")}


def parse_reference(text: str) -> tuple[float, str]:
  value, sep, label = text.partition(":")
  try:
    return float(value), (label if sep else value)
  except ValueError:
    raise ValueError(f"--reference {text!r}: expected VALUE:LABEL, e.g. +0.315:untrained") \
        from None


def read_history(train_dir: str, column: str = "meta_loss",
                 x: str = "step") -> tuple[np.ndarray, np.ndarray]:
  path = os.path.join(train_dir, "history.csv")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist (is {train_dir} a train_dir?)")
  with open(path) as f:
    reader = csv.DictReader(f)
    if column not in (reader.fieldnames or []):
      raise ValueError(f"{path} has no column {column!r} (it has {reader.fieldnames})")
    x_column, scale, _ = X_AXES[x]
    if x_column not in (reader.fieldnames or []):
      raise ValueError(f"{path} has no column {x_column!r} for --x {x} (it has "
                       f"{reader.fieldnames})")
    rows = [r for r in reader if r.get(column) not in (None, "", "nan")
            and r.get(x_column) not in (None, "")]
  return (np.array([float(r[x_column]) * scale for r in rows]),
          np.array([float(r[column]) for r in rows]))


def warm_start_offset(train_dir: str, x: str) -> tuple[float, str]:
  """(x offset, label) of a warm-started run (--init_weights): on the CPU-hours axis its
  curve starts at the CPU its parent took (run_config.json's "init"), so runs compare at equal
  total CPU; on the other axes it starts at 0."""
  try:
    with open(os.path.join(train_dir, "run_config.json")) as f:
      init = json.load(f).get("init")
  except (OSError, ValueError):
    return 0.0, ""
  if not init:
    return 0.0, ""
  hours = init.get("cpu_hours_total", init.get("cpu_hours")) or 0.0
  parent = init.get("train_dir") or init.get("weights") or "?"
  label = f", from {os.path.basename(os.path.normpath(parent))} @ {init.get('meta_steps')}"
  return (float(hours) if x == "cpu_hours" else 0.0), label


def moving_average(values: np.ndarray, window: int) -> np.ndarray:
  """Trailing mean over `window` entries, ignoring non-finite ones (a diverged unroll's
  meta-loss is inf); NaN until the window fills, or where it holds no finite value."""
  values = np.asarray(values, float)
  window = max(1, min(window, len(values)))
  finite = np.isfinite(values)
  sums = np.cumsum(np.insert(np.where(finite, values, 0.0), 0, 0.0))
  counts = np.cumsum(np.insert(finite.astype(float), 0, 0.0))
  total, count = sums[window:] - sums[:-window], counts[window:] - counts[:-window]
  with np.errstate(invalid="ignore", divide="ignore"):
    out = np.where(count > 0, total / np.maximum(count, 1), np.nan)
  return np.concatenate([np.full(window - 1, np.nan), out])


def main(argv):
  del argv
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.5, 4))
  averages = []
  for run in FLAGS.runs:
    steps, losses = read_history(run, FLAGS.column, FLAGS.x)
    offset, warm = warm_start_offset(run, FLAGS.x)
    steps = steps + offset
    line, = ax.plot(steps, np.where(np.isfinite(losses), losses, np.nan), alpha=0.15)
    averages.append(moving_average(losses, FLAGS.window))
    ax.plot(steps, averages[-1], color=line.get_color(),
            marker="o" if len(steps) <= 200 else None, markersize=4,   # few points: visible
            label=f"{os.path.basename(os.path.normpath(run))} ({len(steps)} points{warm})")
    finite = np.isfinite(losses)
    print(f"{run}: {len(steps)} rows with {FLAGS.column} ({np.sum(~finite)} non-finite), mean "
          f"{FLAGS.column} first/last {FLAGS.window}: {losses[:FLAGS.window][finite[:FLAGS.window]].mean():.3f}"
          f" / {losses[-FLAGS.window:][finite[-FLAGS.window:]].mean():.3f}")
  references = [parse_reference(text) for text in FLAGS.reference]
  for value, label in references:
    ax.axhline(value, color="gray", linestyle="--", linewidth=1)
    ax.annotate(label, (0.01, value), xycoords=("axes fraction", "data"), fontsize=8,
                va="bottom", color="gray")
  finite = np.concatenate([a[np.isfinite(a)] for a in averages]
                          + [np.array([v for v, _ in references])])
  if finite.size:   # frame the averages; the raw per-step values span orders more
    low, high = finite.min(), finite.max()
    ax.set_ylim(low - 0.3 * (high - low + 1e-3), high + 0.3 * (high - low + 1e-3))
  ax.set_xlabel(X_AXES[FLAGS.x][2])
  ax.set_ylabel("meta-loss (eq. 14; lower is better)" if FLAGS.column == "meta_loss"
                else f"{FLAGS.column} (lower is better)")
  ax.set_title(f"meta-training history ({FLAGS.window}-step moving average)")
  ax.legend(loc="best", fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
  fig.savefig(FLAGS.out, dpi=120)
  print(f"plot: {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
