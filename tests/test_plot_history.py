"""meta/plot_history.py: reading a train_dir's history and plotting it."""

import subprocess
import sys

import numpy as np
import pytest

from meta import plot_history


def write_history(path, losses):
  lines = ["step,meta_loss"] + [f"{i + 1},{v}" for i, v in enumerate(losses)]
  path.mkdir(parents=True, exist_ok=True)
  (path / "history.csv").write_text("\n".join(lines) + "\n")


def test_read_history_skips_missing_losses(tmp_path):
  write_history(tmp_path / "run", ["-0.5", "nan", "", "-1.5"])
  steps, losses = plot_history.read_history(str(tmp_path / "run"))
  np.testing.assert_array_equal(steps, [1, 4])
  np.testing.assert_array_equal(losses, [-0.5, -1.5])


def test_moving_average_by_hand():
  out = plot_history.moving_average(np.array([1.0, 2.0, 3.0, 4.0]), 2)
  assert np.isnan(out[0])
  np.testing.assert_allclose(out[1:], [1.5, 2.5, 3.5])


def test_moving_average_skips_non_finite_meta_losses():
  # A diverged unroll logs inf; it must not poison every later average.
  out = plot_history.moving_average(np.array([1.0, np.inf, 3.0, 5.0, np.nan, np.nan]), 2)
  np.testing.assert_allclose(out[1:4], [1.0, 3.0, 4.0])
  assert np.isnan(out[5])                       # a window with no finite value


def test_missing_history_names_the_directory(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere"):
    plot_history.read_history(str(tmp_path / "nowhere"))


def test_command_writes_plot(tmp_path):
  write_history(tmp_path / "a", [-0.1 * i for i in range(30)])
  out = tmp_path / "plot.png"
  result = subprocess.run([sys.executable, "-m", "meta.plot_history", "--runs",
                           str(tmp_path / "a"), "--window", "5", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.exists() and "30 rows with meta_loss" in result.stdout


def test_other_column_skips_rows_without_it(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "history.csv").write_text("step,meta_loss,validation_score\n1,-0.1,\n2,-0.2,0.5\n"
                                   "3,-0.3,\n4,-0.4,0.25\n")
  steps, scores = plot_history.read_history(str(run), "validation_score")
  np.testing.assert_array_equal(steps, [2, 4])
  np.testing.assert_array_equal(scores, [0.5, 0.25])
  with pytest.raises(ValueError, match="no column 'nope'"):
    plot_history.read_history(str(run), "nope")


def test_cpu_hours_axis_and_reference_lines(tmp_path):
  run = tmp_path / "run"
  run.mkdir()
  (run / "history.csv").write_text("step,meta_loss,validation_score,cpu_time\n"
                                   "1,-0.1,,360\n2,-0.2,0.5,720\n3,-0.3,0.25,\n4,-0.4,0.1,3600\n")
  hours, scores = plot_history.read_history(str(run), "validation_score", "cpu_hours")
  np.testing.assert_allclose(hours, [0.2, 1.0])        # row 3 has no CPU time: skipped
  np.testing.assert_array_equal(scores, [0.5, 0.1])
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "history.csv").write_text("step,meta_loss\n1,-0.1\n")
  with pytest.raises(ValueError, match="cpu_time"):
    plot_history.read_history(str(tmp_path / "old"), "meta_loss", "cpu_hours")
  assert plot_history.parse_reference("+0.315:untrained lean") == (0.315, "untrained lean")
  with pytest.raises(ValueError, match="VALUE:LABEL"):
    plot_history.parse_reference("untrained")
  out = tmp_path / "plot.png"
  result = subprocess.run([sys.executable, "-m", "meta.plot_history", "--runs", str(run),
                           "--column", "validation_score", "--window", "1", "--x", "cpu_hours",
                           "--reference", "0.3:untrained", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr[-2000:]
  assert out.exists()


def test_warm_started_run_starts_at_its_parents_cpu_hours(tmp_path):
  run = tmp_path / "ft"
  write_history(run, [-0.1])
  assert plot_history.warm_start_offset(str(run), "cpu_hours") == (0.0, "")   # no record
  (run / "run_config.json").write_text(
      '{"options": {}, "init": {"weights": "runs/a/exports/best.npz", "train_dir": "runs/a", '
      '"meta_steps": 7, "cpu_hours": 1.5}}')
  offset, label = plot_history.warm_start_offset(str(run), "cpu_hours")
  assert offset == 1.5 and "from a @ 7" in label
  assert plot_history.warm_start_offset(str(run), "step")[0] == 0.0
  (run / "run_config.json").write_text(
      '{"init": {"weights": "b.npz", "cpu_hours": 0.5, "cpu_hours_total": 2.0}}')
  assert plot_history.warm_start_offset(str(run), "cpu_hours")[0] == 2.0
