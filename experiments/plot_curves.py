"""Training-loss curves of eval_imagenet.py runs, learned optimizer vs RMSProp (paper Fig. 8b).

  python -m experiments.plot_curves --runs=runs/inception_learned,runs/inception_rmsprop \
      --out=fig8b_inception.png

Each run directory holds losses.csv and run_config.json (written by eval_imagenet.py); a run is
labelled by its optimizer and drawn in a panel per model, total training loss against step, as
in Fig. 8b. `--smooth=N` overlays a trailing N-step mean on the raw (faint) curve.
"""

from __future__ import annotations

import json
import os

from absl import app
from absl import flags
import numpy as np

from experiments import run_files

_COLOURS = {"learned": "tab:blue", "rmsprop": "tab:orange", "adam": "tab:green"}


def load_run(run_dir: str) -> dict:
  """A run's losses and identity: {'dir', 'model', 'optimizer', 'label', 'step', 'loss', ...}."""
  csv_path = os.path.join(run_dir, run_files.CSV_NAME)
  if not os.path.isfile(csv_path):
    raise ValueError(f"{run_dir} has no {run_files.CSV_NAME}: not an eval_imagenet.py "
                     "--train_dir")
  columns = run_files.read_losses(run_dir)
  if columns["step"].size == 0:
    raise ValueError(f"{csv_path} has no rows yet")
  identity = {}
  config_path = os.path.join(run_dir, run_files.RUN_CONFIG_NAME)
  if os.path.isfile(config_path):
    with open(config_path) as f:
      identity = json.load(f).get("identity", {})
  optimizer = identity.get("optimizer", "?")
  label = optimizer if optimizer != "learned" else f"learned ({identity.get('weights')})"
  return {"dir": run_dir, "model": identity.get("model", os.path.basename(run_dir)),
          "optimizer": optimizer, "label": label, **columns}


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
  """Mean of the last `window` values at each position (fewer at the start)."""
  if window <= 1:
    return values
  sums = np.cumsum(np.insert(values, 0, 0.0))
  counts = np.minimum(np.arange(1, len(values) + 1), window)
  return (sums[1:] - sums[np.arange(len(values)) + 1 - counts]) / counts


def plot_runs(run_dirs: list[str], out: str, smooth: int = 1, log_y: bool = False) -> dict:
  """Draw the runs into `out` (one panel per model); returns {model: [(label, last loss)]}."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  runs = [load_run(d) for d in run_dirs]
  models = list(dict.fromkeys(r["model"] for r in runs))
  fig, axes = plt.subplots(1, len(models), figsize=(5.5 * len(models), 4), squeeze=False)
  summary = {}
  for ax, model in zip(axes[0], models):
    for run in (r for r in runs if r["model"] == model):
      colour = _COLOURS.get(run["optimizer"])
      if smooth > 1:
        ax.plot(run["step"], run["loss"], color=colour, alpha=0.25, linewidth=0.8)
      ax.plot(run["step"], trailing_mean(run["loss"], smooth), color=colour, label=run["label"])
      summary.setdefault(model, []).append((run["label"], float(run["loss"][-1])))
    ax.set_title(model)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    if log_y:
      ax.set_yscale("log")
    ax.legend()
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  fig.savefig(out, dpi=120)
  plt.close(fig)
  return summary


_RUNS = flags.DEFINE_list("runs", None, "Comma-separated eval_imagenet.py --train_dir's.")
_OUT = flags.DEFINE_string("out", "loss_curves.png", "Image file to write.")
_SMOOTH = flags.DEFINE_integer("smooth", 1, "Trailing-mean window in steps (1: raw).")
_LOG_Y = flags.DEFINE_bool("log_y", False, "Logarithmic loss axis.")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  if not _RUNS.value:
    raise app.UsageError("--runs is required")
  try:
    summary = plot_runs(_RUNS.value, _OUT.value, _SMOOTH.value, _LOG_Y.value)
  except ValueError as e:
    raise SystemExit(f"plot_curves: error: {e}") from e
  for model, rows in summary.items():
    for label, last in rows:
      print(f"{model}: {label}: final loss {last:.4f}")
  print(f"wrote {_OUT.value}")


if __name__ == "__main__":
  app.run(main)
