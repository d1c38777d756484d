"""Everything a meta-training run needs to continue exactly, and the train_dir bookkeeping.

Checkpointed with `tf.train.CheckpointManager` (train_dir/checkpoints): the meta-parameters,
the RMSProp slots, the meta-step, the elapsed training wall time, the numpy sampling RNG
state and the in-flight trajectories (problem, seeds, unroll counters and the carried
parameters + optimizer state as .npz bytes) - the last two as tf.string variables, so a
restored run draws the same problems, lengths and seeds and continues the same trajectory.

Also here: train_dir/run_config.json (the resolved HRNN config and flags of the run as first
started; a train_dir made with another config is refused before any work, and a resume never
rewrites it), train_dir/resumes.jsonl (one record per resume: its flags and which differ from
the recorded run's), and train_dir/history.csv (meta-loss per meta-step; trimmed back to the
checkpoint's step on resume so a killed run leaves no rows that the resumed run will write
again, and no half-written line).

A kill during `CheckpointManager.save` can leave a `ckpt-N_temp/` directory (TF writes the
shards there, then renames); the trainer removes such leftovers when it resumes.
"""

from __future__ import annotations

import csv
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import tensorflow as tf

from learned_opt.config import HRNNConfig

RUN_CONFIG = "run_config.json"
RESUMES = "resumes.jsonl"
HISTORY = "history.csv"
HISTORY_FIELDS = ("step", "wall_time", "problem", "family", "replicas", "unroll", "num_unrolls",
                  "steps", "meta_loss", "final_relative_loss", "log_lr_mean", "log_lr_std",
                  "skipped", "inner_steps_per_sec", "validation_score", "cpu_time")


class TrainState(tf.Module):
  """Checkpointed training state (meta-parameters and meta-optimizer are attached by the trainer)."""

  def __init__(self):
    super().__init__(name="train_state")
    self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="meta_step")
    self.wall_time = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="wall_time")
    # CPU seconds of the meta-training processes (user + system, all threads), summed over
    # restarts: the budget of a run on a shared machine, where wall time says little.
    self.cpu_time = tf.Variable(0.0, dtype=tf.float64, trainable=False, name="cpu_time")
    self.sampler = tf.Variable("", dtype=tf.string, trainable=False, name="sampler_state")
    self.trajectories = tf.Variable(b"", dtype=tf.string, trainable=False, name="trajectories")


def legacy_view(train_state: TrainState) -> tf.Module:
  """`train_state` without `cpu_time`, for restoring checkpoints written before it existed."""
  view = tf.Module(name="train_state")
  view.step, view.wall_time = train_state.step, train_state.wall_time
  view.sampler, view.trajectories = train_state.sampler, train_state.trajectories
  return view


def has_cpu_time(path: str) -> bool:
  return any(name.startswith("train_state/cpu_time") for name, _ in tf.train.list_variables(path))


def pack_arrays(arrays: Mapping[str, np.ndarray]) -> bytes:
  buffer = io.BytesIO()
  np.savez(buffer, **{k: np.asarray(v) for k, v in arrays.items()})
  return buffer.getvalue()


def unpack_arrays(blob: bytes) -> dict[str, np.ndarray]:
  """Inverse of pack_arrays. numpy's .npz writes bfloat16 (the `lean` state) as raw 2-byte
  records ('|V2'); they are viewed back as bfloat16."""
  if not blob:
    return {}
  with np.load(io.BytesIO(blob), allow_pickle=False) as data:
    arrays = {k: data[k] for k in data.files}
  bfloat16 = tf.bfloat16.as_numpy_dtype
  return {k: v.view(bfloat16) if v.dtype.kind == "V" and v.dtype.itemsize == 2 else v
          for k, v in arrays.items()}


def check_writable(directory: str | os.PathLike, what: str) -> Path:
  """Creates `directory` if needed and proves it writable; clear error otherwise."""
  path = Path(directory).expanduser()
  try:
    path.mkdir(parents=True, exist_ok=True)
    fd, probe = tempfile.mkstemp(prefix=".write_probe", dir=path)
    os.close(fd)
    os.remove(probe)
  except OSError as e:
    raise ValueError(f"{what} {path} is not a writable directory: {e}") from e
  return path


def has_checkpoint(train_dir: Path) -> bool:
  """Whether train_dir holds a checkpointed run (so starting there resumes it)."""
  return tf.train.latest_checkpoint(str(train_dir / "checkpoints")) is not None


def check_run_config(train_dir: Path, config: HRNNConfig) -> dict | None:
  """Raises ValueError if train_dir holds a run made with another HRNN config.

  Returns the recorded run config (None for a fresh directory).
  """
  path = train_dir / RUN_CONFIG
  if not path.exists():
    if has_checkpoint(train_dir):
      raise ValueError(f"{train_dir} has checkpoints but no {RUN_CONFIG}; refusing to guess "
                       "which config made them (use a fresh --train_dir)")
    return None
  try:
    recorded = json.loads(path.read_text())
    recorded_config = HRNNConfig.from_dict(recorded["config"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"{path} is unreadable ({e}); use a fresh --train_dir") from e
  if recorded_config != config:
    differences = ", ".join(f"{k}: recorded {a!r}, requested {b!r}"
                            for k, (a, b) in recorded_config.diff(config).items())
    raise ValueError(f"--train_dir {train_dir} was made with a different optimizer config "
                     f"({differences}); use a fresh --train_dir or the recorded --config")
  return recorded


def recorded_options(train_dir: Path) -> dict | None:
  """The options a run in train_dir last ran with (its latest resume's, else its first), or
  None when train_dir holds no checkpointed run."""
  if not has_checkpoint(train_dir):
    return None
  try:
    options = json.loads((train_dir / RUN_CONFIG).read_text())["options"]
  except (OSError, ValueError, KeyError, TypeError):
    return None   # check_run_config reports an unreadable record
  resumes = train_dir / RESUMES
  if resumes.exists():
    for line in reversed(resumes.read_text().splitlines()):
      try:
        return {**options, **json.loads(line)["options"]}
      except (ValueError, KeyError, TypeError):
        continue   # a line cut short by a crash
  return options


def write_json_atomic(path: Path, value: Any) -> None:
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
  with os.fdopen(fd, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True, default=str)
  os.replace(tmp, path)


def append_json_line(path: Path, value: Any) -> None:
  """Appends one JSON record as a line (flushed and synced: a kill loses at most that line)."""
  with open(path, "a") as f:
    f.write(json.dumps(value, sort_keys=True, default=str) + "\n")
    f.flush()
    os.fsync(f.fileno())


def stale_temp_dirs(checkpoint_dir: Path) -> list[Path]:
  """`ckpt-N_temp/` directories: shards of a save that a kill interrupted before the rename."""
  if not checkpoint_dir.is_dir():
    return []
  return sorted(p for p in checkpoint_dir.glob("*_temp") if p.is_dir())


def trim_history(train_dir: Path, step: int) -> None:
  """Drops history rows after meta-step `step` (written after the last checkpoint).

  Also drops a last line without its newline: History writes whole lines, so that is a row a
  kill cut short (keeping it would leave a corrupt or duplicate step). A complete line whose
  step is not an integer is an error naming the file and line; the file is left as it was.
  """
  path = train_dir / HISTORY
  if not path.exists():
    return
  with open(path, newline="") as f:
    text = f.read()
  lines = text.splitlines(keepends=True)
  if lines and not lines[-1].endswith(("\n", "\r")):
    lines = lines[:-1]
  rows = []
  reader = csv.DictReader(lines)
  for row in reader:
    number = reader.line_num
    if not any(row.values()):
      continue
    try:
      row_step = int(row.get("step") or "")
    except ValueError:
      raise ValueError(
          f"{path}, line {number}: step {row.get('step')!r} is not an integer ({HISTORY} holds "
          "one row per meta-step); fix or delete that line and re-run") from None
    if row_step <= step:
      rows.append({k: v for k, v in row.items() if k in HISTORY_FIELDS})
  fd, tmp = tempfile.mkstemp(prefix=HISTORY + ".", suffix=".tmp", dir=train_dir)
  with os.fdopen(fd, "w", newline="") as f:
    writer = csv.DictWriter(f, HISTORY_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
  os.replace(tmp, path)


class History:
  """Appends one CSV row per meta-step (flushed, so a kill loses at most a line)."""

  def __init__(self, train_dir: Path):
    self.path = train_dir / HISTORY
    new = not self.path.exists()
    self._file = open(self.path, "a", newline="")
    self._writer = csv.DictWriter(self._file, HISTORY_FIELDS, extrasaction="ignore")
    if new:
      self._writer.writeheader()
      self._file.flush()

  def write(self, row: Mapping[str, Any]) -> None:
    self._writer.writerow(row)
    self._file.flush()

  def close(self):
    self._file.close()


def read_history(train_dir) -> list[dict[str, str]]:
  path = Path(train_dir) / HISTORY
  if not path.exists():
    return []
  with open(path, newline="") as f:
    return list(csv.DictReader(f))
