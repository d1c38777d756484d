"""The files eval_imagenet.py keeps in a --train_dir, readable without TensorFlow.

* losses.csv: one row per training step: step, total training loss, wall time (Unix seconds),
  learning rate, cross-entropy (the loss without weight decay).
* run_config.json: {"identity": the flags a resumed run must repeat, "run": every flag,
  "derived": values worked out at the start (initial lr, steps per epoch, replicas, ...)}.
"""

from __future__ import annotations

import csv
import json
import os
from typing import Any

import numpy as np

CSV_NAME = "losses.csv"
CSV_FIELDS = ("step", "loss", "wall_time", "lr", "cross_entropy")
RUN_CONFIG_NAME = "run_config.json"


def write_json_atomically(path: str, payload: dict[str, Any]) -> None:
  """Write JSON so that a crash leaves either the old file or the new one, never half."""
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(payload, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


class LossLog:
  """Appends one CSV row per training step; on resume, drops rows past the restored step."""

  def __init__(self, path: str, restored_step: int):
    self.path = path
    rows = []
    if os.path.exists(path):
      with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) <= restored_step]
    # Rewrite (atomically) so rows logged after the last checkpoint by an interrupted run are
    # replaced by the resumed run's instead of duplicated.
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
      writer = csv.DictWriter(f, CSV_FIELDS)
      writer.writeheader()
      writer.writerows(rows)
    os.replace(tmp, path)
    self._file = open(path, "a", newline="")  # pylint: disable=consider-using-with
    self._writer = csv.DictWriter(self._file, CSV_FIELDS)

  def append(self, **row) -> None:
    self._writer.writerow(row)
    self._file.flush()

  def close(self) -> None:
    self._file.close()


def read_losses(train_dir: str) -> dict[str, np.ndarray]:
  """The columns of train_dir/losses.csv as float arrays (step as int)."""
  with open(os.path.join(train_dir, CSV_NAME), newline="") as f:
    rows = list(csv.DictReader(f))
  out = {k: np.array([float(r[k]) for r in rows]) for k in CSV_FIELDS}
  out["step"] = out["step"].astype(np.int64)
  return out
