"""Issue 16: user errors name their file or flag, resumes keep their records, nothing is lost.

One test per defect of the issue's probe (2-10), each written to fail before its fix. The
trainer tests run tiny eager unrolls of bowl_k1 / quadratic_d25 so that none compiles.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import optimizer as optimizer_lib
from learned_opt import weights as weights_lib
from meta import checkpoints
from meta import trainer as trainer_lib

REPO = Path(__file__).resolve().parent.parent


def _options(train_dir, **overrides):
  values = dict(train_dir=str(train_dir), problems="bowl_k1", max_steps=2, unroll_mode="eager",
                min_unroll_steps=3, unroll_steps_scale=0, max_unroll_steps=8,
                num_unrolls_scale=0, min_num_unrolls=1, checkpoint_every_secs=0,
                checkpoint_every_steps=1)
  values.update(overrides)
  return trainer_lib.Options(**values)


def _listing(directory: Path) -> dict:
  return {p.relative_to(directory): p.read_bytes() for p in directory.rglob("*") if p.is_file()}


# --- defect 2: resuming with a --problems list that drops the problem in progress -------------

def test_resume_with_problems_that_drop_the_trajectory_in_progress(tmp_path, caplog):
  # Five unrolls per trajectory: after one meta-step the bowl_k1 trajectory is in progress.
  trainer_lib.Trainer(_options(tmp_path / "run", max_steps=1, min_num_unrolls=5)).run()
  with caplog.at_level(logging.WARNING, logger="train_meta"):
    resumed = trainer_lib.Trainer(_options(tmp_path / "run", max_steps=2, min_num_unrolls=5,
                                           problems="quadratic_d25"))
  assert "--problems" in caplog.text and "bowl_k1" in caplog.text
  assert resumed.step == 1 and resumed.trajectory is None
  info = resumed.run()
  assert resumed.step == 2 and info["problem"] == "quadratic_d25"


# --- defect 3: a truncated latest checkpoint falls back to the previous intact one -------------

def test_truncated_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
  straight = trainer_lib.Trainer(_options(tmp_path / "run", max_steps=2))
  straight.run()
  data = tmp_path / "run" / "checkpoints" / "ckpt-2.data-00000-of-00001"
  data.write_bytes(data.read_bytes()[:len(data.read_bytes()) // 2])
  with caplog.at_level(logging.WARNING, logger="train_meta"):
    resumed = trainer_lib.Trainer(_options(tmp_path / "run", max_steps=2))
  assert resumed.step == 1
  assert "ckpt-2" in caplog.text and "ckpt-1" in caplog.text
  resumed.run()
  assert resumed.step == 2
  # The re-run of meta-step 2 from ckpt-1 reproduces the original meta-parameters.
  for k, v in straight.meta.variables_by_name.items():
    np.testing.assert_array_equal(resumed.meta.variables_by_name[k].numpy(), v.numpy())


def test_no_readable_checkpoint_is_a_clear_error(tmp_path):
  trainer_lib.Trainer(_options(tmp_path / "run", max_steps=1, keep_checkpoints=1)).run()
  data = tmp_path / "run" / "checkpoints" / "ckpt-1.data-00000-of-00001"
  data.write_bytes(b"\0" * 7)
  before = _listing(tmp_path / "run")
  with pytest.raises(ValueError, match="ckpt-1"):
    trainer_lib.Trainer(_options(tmp_path / "run", max_steps=2))
  assert _listing(tmp_path / "run") == before


# --- defect 4: --export pointing at a directory -----------------------------------------------

def test_export_to_an_existing_directory_fails_up_front(tmp_path):
  (tmp_path / "out").mkdir()
  with pytest.raises(ValueError, match="--export"):
    trainer_lib.Trainer(_options(tmp_path / "run", export=str(tmp_path / "out")))
  assert not (tmp_path / "run" / "checkpoints").exists()


# --- defect 5: load_model when the recorded weights path now holds something else -------------

@pytest.mark.parametrize("replacement", [
    "corrupt", pytest.param("other_config", marks=pytest.mark.slow)])  # 11 s, slow-only
def test_load_model_ignores_a_replaced_weights_file(tmp_path, replacement):
  path = tmp_path / "w.npz"
  cfg = config_lib.paper()
  weights_lib.save(path, hrnn.init_meta_params(cfg, 3), cfg)
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  model.compile(optimizer=optimizer_lib.LearnedOptimizer(weights=str(path)), loss="mse")
  x, y = np.ones((8, 4), np.float32), np.zeros((8, 2), np.float32)
  model.fit(x, y, epochs=1, verbose=0)
  model.save(tmp_path / "m.keras")
  if replacement == "corrupt":
    path.write_bytes(b"not a weights file at all")
  else:
    other = config_lib.stable()
    weights_lib.save(path, hrnn.init_meta_params(other, 0), other)
  with pytest.warns(UserWarning, match=str(path)):
    loaded = keras.models.load_model(tmp_path / "m.keras")
  assert loaded.optimizer.hrnn_config == cfg
  for k, v in model.optimizer.meta_params().items():
    np.testing.assert_array_equal(loaded.optimizer.meta_params()[k].numpy(), v.numpy())
  loaded.fit(x, y, epochs=1, verbose=0)


# --- defect 6: resume keeps run_config.json and appends a resume record -----------------------

def test_resume_keeps_run_config_and_records_changed_flags(tmp_path, caplog):
  trainer_lib.Trainer(_options(tmp_path / "run", max_steps=1)).run()
  original = (tmp_path / "run" / "run_config.json").read_text()
  with caplog.at_level(logging.WARNING, logger="train_meta"):
    trainer_lib.Trainer(_options(tmp_path / "run", max_steps=2, seed=5)).run()
  assert (tmp_path / "run" / "run_config.json").read_text() == original
  assert "--seed" in caplog.text and "no effect" in caplog.text
  records = [json.loads(line) for line in
             (tmp_path / "run" / checkpoints.RESUMES).read_text().splitlines()]
  assert len(records) == 1
  assert records[0]["step"] == 1 and records[0]["options"]["seed"] == 5
  assert records[0]["changed"]["seed"] == [0, 5] and records[0]["changed"]["max_steps"] == [1, 2]
  assert "seed" in records[0]["no_effect"] and "max_steps" not in records[0]["no_effect"]


# --- defect 7: history trimming and garbage lines ---------------------------------------------

def test_trim_history_drops_a_partial_last_line(tmp_path):
  history = checkpoints.History(tmp_path)
  for step in (1, 2, 3):
    history.write({"step": step, "meta_loss": -0.5, "problem": "bowl_k1"})
  history.close()
  with open(tmp_path / checkpoints.HISTORY, "a") as f:
    f.write("1")      # a kill while writing step 13's row: no newline, one field
  checkpoints.trim_history(tmp_path, 12)
  steps = [r["step"] for r in checkpoints.read_history(tmp_path)]
  assert steps == ["1", "2", "3"]


def test_garbage_history_line_names_the_file(tmp_path):
  history = checkpoints.History(tmp_path)
  history.write({"step": 1, "meta_loss": -0.5})
  history.close()
  with open(tmp_path / checkpoints.HISTORY, "a") as f:
    f.write("garbage,\x00\x01,??\n")
  before = (tmp_path / checkpoints.HISTORY).read_bytes()
  with pytest.raises(ValueError, match=r"history\.csv.*line 3"):
    checkpoints.trim_history(tmp_path, 5)
  assert (tmp_path / checkpoints.HISTORY).read_bytes() == before


# --- defect 8: a zero-size variable is named ---------------------------------------------------

def test_zero_size_variable_error_names_the_variable():
  opt = optimizer_lib.LearnedOptimizer(weights=None)
  variables = [keras.Variable(np.zeros((3,), np.float32), name="fine"),
               keras.Variable(np.zeros((0, 4), np.float32), name="empty_kernel")]
  with pytest.raises(ValueError, match="empty_kernel"):
    opt.build(variables)


# --- defect 9: gradients whose squares overflow float32 ---------------------------------------

def test_overflowing_gradients_warn_loudly_once_per_fit():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
  model.compile(optimizer=optimizer_lib.LearnedOptimizer(weights=None),
                loss=lambda y, p: 1e20 * tf.reduce_mean(p))   # gradients ~1e20: finite
  x, y = np.ones((4, 2), np.float32), np.zeros((4, 1), np.float32)
  with pytest.warns(UserWarning, match=r"skipped 3 of 3 steps") as record:
    model.fit(x, y, epochs=3, batch_size=4, verbose=0)
  assert sum("skipped" in str(w.message) for w in record) == 1
  assert "1e19" in str([w.message for w in record if "skipped" in str(w.message)][0])
  assert model.optimizer.skipped_steps == 3
  # A fit without skipped steps says nothing.
  model.compile(optimizer=optimizer_lib.LearnedOptimizer(weights=None), loss="mse")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)


# --- defect 10: stale ckpt-N_temp, random bytes, integer arrays -------------------------------

def test_stale_checkpoint_temp_directory_is_removed_on_resume(tmp_path):
  trainer_lib.Trainer(_options(tmp_path / "run", max_steps=1)).run()
  stale = tmp_path / "run" / "checkpoints" / "ckpt-2_temp"
  stale.mkdir()
  (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"half")
  trainer = trainer_lib.Trainer(_options(tmp_path / "run", max_steps=2))
  assert not stale.exists()
  trainer.run()
  assert trainer.step == 2


def test_export_only_leaves_a_stale_temp_directory_alone(tmp_path):
  """--export_only writes nothing in train_dir: a running run may be saving right now."""
  trainer_lib.Trainer(_options(tmp_path / "run", max_steps=1)).run()
  busy = tmp_path / "run" / "checkpoints" / "ckpt-2_temp"
  busy.mkdir()
  trainer_lib.Trainer(_options(tmp_path / "run", max_steps=0), read_only=True)
  assert busy.exists()


def test_random_bytes_weights_file_is_not_called_pickled(tmp_path):
  path = tmp_path / "random.npz"
  path.write_bytes(np.random.default_rng(0).bytes(4096))
  with pytest.raises(ValueError) as error:
    weights_lib.load(path)
  assert str(path) in str(error.value) and "not a .npz" in str(error.value)
  assert "pickle" not in str(error.value)


def test_integer_weight_arrays_are_refused(tmp_path):
  cfg = config_lib.paper()
  meta = hrnn.init_meta_params(cfg, 0)
  path = weights_lib.save(tmp_path / "w.npz", meta, cfg)
  with np.load(path) as data:
    contents = {k: data[k] for k in data.files}
  name = "readout/log_lr_delta/bias"
  contents[f"meta/{name}"] = contents[f"meta/{name}"].astype(np.int32)
  np.savez(tmp_path / "int.npz", **contents)
  with pytest.raises(ValueError, match=f"int.npz.*{name}.*int32"):
    weights_lib.load(tmp_path / "int.npz")


def test_script_reports_an_unreadable_checkpoint_without_a_traceback(tmp_path):
  trainer_lib.Trainer(_options(tmp_path / "run", max_steps=1, keep_checkpoints=1)).run()
  data = tmp_path / "run" / "checkpoints" / "ckpt-1.data-00000-of-00001"
  data.write_bytes(data.read_bytes()[:5])
  proc = subprocess.run(
      [sys.executable, "train_meta.py", "--train_dir", str(tmp_path / "run"), "--problems",
       "bowl_k1", "--unroll_mode", "eager", "--max_steps", "2"],
      cwd=REPO, capture_output=True, text=True, timeout=300,
      env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
  assert proc.returncode == 2, proc.stderr
  assert "Traceback" not in proc.stderr and "ckpt-1" in proc.stderr


def test_packed_bfloat16_arrays_round_trip():
  """PES checkpoints hold the particles' state; the `lean` preset stores it in bfloat16, which
  numpy's .npz writes as raw 2-byte records. Before the fix a lean PES run could not resume."""
  import numpy as np
  import tensorflow as tf
  from meta import checkpoints
  bfloat16 = tf.bfloat16.as_numpy_dtype
  arrays = {"h": np.array([[1.5, -2.25], [3.0, 0.0]], bfloat16),
            "f": np.array([0.1, 0.2], np.float32), "i": np.array([3, 4], np.int32)}
  out = checkpoints.unpack_arrays(checkpoints.pack_arrays(arrays))
  for key, value in arrays.items():
    assert out[key].dtype == value.dtype, key
    np.testing.assert_array_equal(out[key].astype(np.float32), value.astype(np.float32))
  tf.convert_to_tensor(out["h"])   # what the PES unpack does with it
