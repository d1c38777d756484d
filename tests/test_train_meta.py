"""Tests of the meta-training pipeline (issue 4): meta/ and train_meta.py."""

from __future__ import annotations

import csv
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import problems
from learned_opt import config as config_lib
from learned_opt import hrnn
from meta import checkpoints
from meta import meta_optimizer
from meta import objective
from meta import strategy as strategy_lib
from meta import trainer as trainer_lib
from meta import unroll as unroll_lib
from learned_opt import weights as weights_io
from problems.base import Problem, WELL_BEHAVED

REPO = Path(__file__).resolve().parent.parent
CONFIG = config_lib.paper()
QUAD = problems.get("quadratic_d25")
BOWL = problems.get("bowl_k1")


@pytest.fixture(scope="module")
def unroller():
  """One XLA unroller for the module, so each problem compiles once."""
  return unroll_lib.Unroller(CONFIG, max_steps=64)


def _carry(problem, seed=1, meta=None):
  meta = meta or hrnn.MetaParams(CONFIG).as_dict()
  data = unroll_lib.data_tensors(problem.sample_data(seed))
  return meta, data, unroll_lib.start_carry(problem, meta, CONFIG, data, seed, [seed, 5])


def _fast_options(train_dir, **overrides):
  values = dict(train_dir=str(train_dir) if train_dir is not None else "", problems="quadratic_d25", max_steps=10,
                min_unroll_steps=10, unroll_steps_scale=10, max_unroll_steps=64,
                num_unrolls_scale=2, checkpoint_every_secs=0)
  values.update(overrides)
  return trainer_lib.Options(**values)


# --- the meta-objective ---------------------------------------------------------------------

def test_meta_loss_matches_hand_computation():
  """Eq. 14, reference form, against an eager step-by-step unroll with numpy logs."""
  meta, data, carry = _carry(BOWL)
  n = 6
  eager = unroll_lib.Unroller(CONFIG, max_steps=16, mode="eager")
  out = eager(BOWL, meta, carry, data, n, [3, 4], compute_gradients=False)
  params, state, losses = list(carry.params), carry.state, []
  for i in range(n):
    loss, grads = BOWL.gradients(params, data,
                                 tf.random.experimental.stateless_fold_in([3, 4], i))
    losses.append(float(BOWL.full_loss(params, data)))
    step = hrnn.step(meta, state, grads, CONFIG, hrnn.Layout(BOWL.param_shapes()))
    params, state = [p - u for p, u in zip(params, step.updates)], step.state
  f0 = float(carry.initial_loss)
  by_hand = np.mean([np.log(f / (f0 + 1e-6) + 1e-6) for f in [losses[0]] + losses])
  assert objective.meta_loss_numpy(losses, f0) == pytest.approx(by_hand, rel=1e-12)
  assert float(out.meta_loss) == pytest.approx(by_hand, rel=1e-5, abs=1e-7)
  assert int(out.steps) == n
  np.testing.assert_allclose(out.carry.params[0], params[0], rtol=1e-5, atol=1e-7)


def test_log_relative_loss_epsilons():
  assert float(objective.log_relative_loss(0.0, 1.0)) == pytest.approx(np.log(1e-6))
  assert float(objective.log_relative_loss(2.0, 2.0)) == pytest.approx(
      np.log(2.0 / (2.0 + 1e-6) + 1e-6), abs=1e-7)  # float32 near 0


# --- meta-gradients ---------------------------------------------------------------------------

def test_meta_gradient_finite_nonzero_and_xla_matches_function(unroller):
  meta, data, carry = _carry(QUAD)
  out = unroller(QUAD, meta, carry, data, 20, [1, 2])
  assert set(out.meta_grads) == set(meta)
  norms = {k: float(tf.norm(g)) for k, g in out.meta_grads.items()}
  assert all(np.isfinite(v) for v in norms.values())
  assert sum(norms.values()) > 0
  # The step-length offset always matters for the loss.
  assert norms["log_step_offset"] > 0
  function = unroll_lib.Unroller(CONFIG, max_steps=64, mode="function")
  ref = function(QUAD, meta, carry, data, 20, [1, 2])
  assert float(out.meta_loss) == pytest.approx(float(ref.meta_loss), rel=1e-4)
  np.testing.assert_allclose(out.meta_grads["log_step_offset"],
                             ref.meta_grads["log_step_offset"], rtol=1e-3)


def test_second_derivatives_flag_changes_the_gradient(unroller):
  meta, data, carry = _carry(QUAD)
  first_order = unroll_lib.Unroller(CONFIG, max_steps=64, second_derivatives=False)
  with_second = unroller(QUAD, meta, carry, data, 20, [1, 2])
  without = first_order(QUAD, meta, carry, data, 20, [1, 2])
  assert float(with_second.meta_loss) == pytest.approx(float(without.meta_loss), rel=1e-5)
  diff = sum(float(tf.norm(with_second.meta_grads[k] - without.meta_grads[k])) for k in meta)
  assert diff > 1e-6 * sum(float(tf.norm(g)) for g in with_second.meta_grads.values())


def test_dynamic_trip_count_one_compilation(unroller):
  """Different unroll lengths reuse the compiled function (no retracing per length)."""
  meta, data, carry = _carry(QUAD)
  fn = unroller.function_for(QUAD)
  for n in (5, 17, 40):
    out = unroller(QUAD, meta, carry, data, n, [1, 2])
    assert int(out.steps) == n
  assert fn.experimental_get_tracing_count() == 1


def test_rmsprop_cleans_gradients():
  variables = {"a": tf.Variable([1.0, 2.0, 3.0]), "log_step_offset": tf.Variable(-1.0)}
  opt = meta_optimizer.MetaRMSProp(variables, 0.1, clip=5.0, l2=0.5)
  cleaned = opt.clean({"a": tf.constant([np.nan, np.inf, 100.0]),
                       "log_step_offset": tf.constant(0.0)}, variables)
  np.testing.assert_allclose(cleaned["a"], [0.5, 1.0, 5.0])   # NaN/Inf -> 0, + l2 * a, clip
  assert float(cleaned["log_step_offset"]) == 0.0             # excluded from L2
  opt.apply({"a": tf.constant([1.0, 0.0, 0.0]), "log_step_offset": tf.constant(0.0)}, variables)
  assert np.all(np.isfinite(variables["a"].numpy()))


# --- training ---------------------------------------------------------------------------------

def test_short_meta_training_lowers_the_meta_loss(tmp_path):
  options = _fast_options(tmp_path / "run", problems="quadratic_d25,bowl_k1", max_steps=40,
                          min_unroll_steps=20, num_unrolls_scale=3, meta_learning_rate=3e-3)
  trainer = trainer_lib.Trainer(options)
  evaluation = [QUAD, BOWL]

  def evaluate():
    return trainer_lib.evaluate(trainer.meta.as_dict(), evaluation, [1, 2, 3], 40,
                                trainer.config, unroller=trainer.unroller)
  before = evaluate()
  trainer.run()
  after = evaluate()
  assert trainer.step == 40
  assert after < before - 1e-4, (before, after)
  history = checkpoints.read_history(tmp_path / "run")
  assert [int(r["step"]) for r in history] == list(range(1, 41))
  events = list((tmp_path / "run" / "summaries").iterdir())
  assert len(events) == 1
  # TensorBoard scalars every --summary_every_steps (10) meta-steps; history.csv has them all.
  written = [event.step for event in tf.compat.v1.train.summary_iterator(str(events[0]))
             if any(value.tag == "meta_loss" for value in event.summary.value)]
  assert written == [10, 20, 30, 40]
  assert json.loads((tmp_path / "run" / "run_config.json").read_text())["config"] == \
      CONFIG.to_dict()


class _SqrtProblem(Problem):
  """sum(sqrt(p)) from p = 0.5: the optimizer drives p below 0, the loss becomes NaN."""

  def __init__(self):
    super().__init__("test_sqrt_diverges", family=WELL_BEHAVED)

  def param_shapes(self):
    return [(4,)]

  def init_params(self, seed):
    return [np.full((4,), 0.5, np.float32)]

  def objective(self, params, batch):
    return tf.reduce_sum(tf.sqrt(params[0]))


def test_diverging_problem_ends_trajectory_without_poisoning(tmp_path):
  options = _fast_options(tmp_path / "nan", max_steps=3, min_unroll_steps=60,
                          unroll_steps_scale=0, num_unrolls_scale=5, lr_min=0.05, lr_max=0.5)
  trainer = trainer_lib.Trainer(options, problem_pool=[_SqrtProblem()])
  before = {k: v.numpy() for k, v in trainer.meta.variables_by_name.items()}
  info = trainer.train_step()
  assert info["skipped"] == 1 and not np.isfinite(info["meta_loss"])
  assert info["steps"] == 60
  after = {k: v.numpy() for k, v in trainer.meta.variables_by_name.items()}
  for k in before:
    np.testing.assert_array_equal(before[k], after[k])
  # The trajectory is over: the next meta-step starts a fresh one.
  first = trainer.trajectory
  assert first.unroll_index == first.num_unrolls
  trainer.train_step()
  assert trainer.trajectory is not first and trainer.trajectory.init_seeds != first.init_seeds
  assert all(np.all(np.isfinite(v.numpy())) for v in trainer.meta.variables_by_name.values())


# --- checkpoints, resume, export, bad input ------------------------------------------------

def _run_script(args, **kwargs):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  return subprocess.Popen([sys.executable, str(REPO / "train_meta.py")] + args, cwd=REPO,
                          env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True, **kwargs)


def _meta_from_checkpoint(train_dir):
  trainer = trainer_lib.Trainer(_fast_options(train_dir, max_steps=0))
  return trainer.step, {k: v.numpy() for k, v in trainer.meta.variables_by_name.items()}


def test_resume_after_sigkill_is_exact(tmp_path):
  """Kill -9 a run mid-way, resume it, compare with an uninterrupted run bit for bit."""
  total = 60
  common = ["--problems", "quadratic_d25", "--min_unroll_steps", "10", "--unroll_steps_scale",
            "10", "--max_unroll_steps", "64", "--num_unrolls_scale", "2",
            "--checkpoint_every_secs", "0", "--checkpoint_every_steps", "3",
            "--max_steps", str(total)]
  killed_dir = tmp_path / "killed"
  proc = _run_script(["--train_dir", str(killed_dir)] + common)
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    latest = tf.train.latest_checkpoint(str(killed_dir / "checkpoints"))
    if latest and int(latest.rsplit("-", 1)[1]) >= 6:
      break
    time.sleep(0.02)
  assert proc.poll() is None, "run finished before it could be killed:\n" + proc.stdout.read()
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at = int(tf.train.latest_checkpoint(str(killed_dir / "checkpoints")).rsplit("-")[-1])
  assert killed_at < total
  resumed = _run_script(["--train_dir", str(killed_dir)] + common)
  output = resumed.communicate(timeout=300)[0]
  assert resumed.returncode == 0, output
  assert f"restored" in output

  straight = trainer_lib.Trainer(_fast_options(
      tmp_path / "straight", max_steps=total, checkpoint_every_steps=3))
  straight.run()
  step, resumed_meta = _meta_from_checkpoint(killed_dir)
  assert step == total
  for k, v in straight.meta.variables_by_name.items():
    np.testing.assert_array_equal(resumed_meta[k], v.numpy(), err_msg=k)
  rows = checkpoints.read_history(killed_dir)
  assert [int(r["step"]) for r in rows] == list(range(1, total + 1))
  straight_rows = checkpoints.read_history(tmp_path / "straight")
  assert [r["meta_loss"] for r in rows] == [r["meta_loss"] for r in straight_rows]


@pytest.mark.parametrize("budget, reason", [
    # The two budgets share the hand-over; the map budget's run is slow-only (45 s).
    pytest.param(["--max_memory_maps", "1"], "memory maps", marks=pytest.mark.slow),
    (["--max_memory_gb", "0.001"], "GB resident")])
def test_memory_budget_hands_over_to_a_fresh_process_exactly(tmp_path, budget, reason):
  """Past --max_memory_maps or --max_memory_gb the run checkpoints and re-executes itself;
  nothing changes.

  A budget of 1 map (or 1 MB) is always exceeded, so each process does one meta-step (the one
  that compiles) and hands over: 2 meta-steps take 2 processes."""
  import resource
  total = 2
  before = resource.getrusage(resource.RUSAGE_CHILDREN)
  proc = _run_script(["--train_dir", str(tmp_path / "run"), "--problems", "quadratic_d25",
                      "--min_unroll_steps", "10", "--unroll_steps_scale", "10",
                      "--max_unroll_steps", "64", "--num_unrolls_scale", "2",
                      "--checkpoint_every_secs", "0", "--max_steps", str(total),
                      "--export", str(tmp_path / "w.npz")] + budget)
  output = proc.communicate(timeout=400)[0]
  assert proc.returncode == 0, output
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  used = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
  # The kernel keeps a process's CPU time across exec: the recorded CPU time of the run must
  # not count the first process twice (it once did), nor lose either process.
  recorded = weights_io.load(tmp_path / "w.npz").provenance["cpu_hours"] * 3600
  assert 0.6 * used <= recorded <= used + 2.0, (recorded, used)
  assert output.count("continuing in a fresh process") == total - 1, output
  assert output.count(reason) == total - 1, output
  straight = trainer_lib.Trainer(_fast_options(tmp_path / "straight", max_steps=total))
  straight.run()
  exported = weights_io.load(tmp_path / "w.npz")
  assert exported.provenance["meta_steps"] == total
  for k, v in straight.meta.variables_by_name.items():
    np.testing.assert_array_equal(exported.meta[k], v.numpy(), err_msg=k)
  rows = checkpoints.read_history(tmp_path / "run")
  assert [int(r["step"]) for r in rows] == list(range(1, total + 1))
  assert ([r["meta_loss"] for r in rows] ==
          [r["meta_loss"] for r in checkpoints.read_history(tmp_path / "straight")])


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_release_free_memory_returns_freed_heap_to_the_system():
  """What the trainer does after a meta-step that compiled: freed C-heap pages (here ~200 MB of
  1 kB allocations, the heap's top pinned by a later one) leave the resident set."""
  chunks = [bytes(1000) + bytes([i % 256]) for i in range(200_000)]
  pinned = bytes(1000) + b"x"
  del chunks
  before = trainer_lib.process_memory_bytes()
  assert trainer_lib.release_free_memory()
  after = trainer_lib.process_memory_bytes()
  assert before - after > 100 * 2**20, (before, after)
  del pinned


def test_per_step_scalars_do_not_fill_tfs_scalar_cache(tmp_path, monkeypatch):
  """TF keeps the tensor of every distinct Python float it converts (~0.7 KB each, for the life
  of the process); the trainer hands it 0-d arrays instead (`_array`), at every meta-step."""
  if trainer_lib.heap_bytes() is None:
    pytest.skip("needs glibc's mallinfo2")

  def in_use():   # heap in use, not RSS: freed heap left by earlier tests hides RSS growth
    return trainer_lib.heap_bytes()[0]

  variable = tf.Variable(0.0, dtype=tf.float64)
  def growth(convert):
    before = in_use()
    for i in range(20_000):
      variable.assign(convert(1e6 + i * 1e-3))
    return (in_use() - before) / 2**20
  assert growth(trainer_lib._array) < 3.0              # pylint: disable=protected-access
  assert growth(float) > 8.0     # TF's cache, the reason for _array (if this fails, TF fixed it)
  calls = []
  real = trainer_lib._array                              # pylint: disable=protected-access
  monkeypatch.setattr(trainer_lib, "_array", lambda *a: calls.append(1) or real(*a))
  trainer_lib.Trainer(_fast_options(tmp_path / "run", max_steps=3,
                                    summary_every_steps=1)).run()
  assert len(calls) >= 3 * 2


def test_low_memory_map_limit_is_warned_up_front(tmp_path, monkeypatch, caplog):
  monkeypatch.setattr(trainer_lib, "memory_map_limit", lambda: 65530)
  with caplog.at_level(logging.WARNING, logger="train_meta"):
    trainer = trainer_lib.Trainer(_fast_options(tmp_path / "run", problems="default",
                                                compile_by="problem"))
  assert trainer.map_budget == int(0.9 * 65530)
  assert "vm.max_map_count is 65530" in caplog.text and "sysctl" in caplog.text
  caplog.clear()
  # Bucketed (the default), the 109 problems compile into a handful of functions: no warning.
  with caplog.at_level(logging.WARNING, logger="train_meta"):
    trainer_lib.Trainer(_fast_options(tmp_path / "bucketed", problems="default"))
  assert "max_map_count" not in caplog.text
  caplog.clear()
  with caplog.at_level(logging.WARNING, logger="train_meta"):
    trainer_lib.Trainer(_fast_options(tmp_path / "small"))       # one problem: plenty
  assert "max_map_count" not in caplog.text


def test_export_loads_in_learned_optimizer(tmp_path):
  from learned_opt import optimizer as optimizer_lib
  trainer = trainer_lib.Trainer(_fast_options(tmp_path / "run", max_steps=2,
                                              export=str(tmp_path / "w.npz")))
  trainer.run()
  loaded = weights_io.load(tmp_path / "w.npz")
  assert loaded.provenance["meta_steps"] == 2
  assert loaded.provenance["options"]["problems"] == "quadratic_d25"
  assert "git_commit" in loaded.provenance and loaded.provenance["wall_time_secs"] > 0
  assert loaded.provenance["cpu_hours"] > 0
  # tmp_path is outside the repository: the path is kept as given, never resolved.
  assert loaded.provenance["train_dir"] == str(tmp_path / "run")
  rows = checkpoints.read_history(tmp_path / "run")
  cpu = [float(r["cpu_time"]) for r in rows]
  assert cpu[0] > 0 and cpu == sorted(cpu)
  opt = optimizer_lib.LearnedOptimizer(weights=str(tmp_path / "w.npz"))
  for k, v in trainer.meta.variables_by_name.items():
    np.testing.assert_array_equal(opt._meta_values[k], v.numpy())
  # Export-only from the train_dir via the script: it records the run's flags, and writes
  # nothing in the train_dir (safe beside a running meta-training process).
  before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
  with open(tmp_path / "run" / "history.csv", "a") as f:
    f.write("3,1.0,quadratic_d25,x,1,1,1,20,-0.1,0.9,-7,1,0,100\n")   # a step past the checkpoint
  before[tmp_path / "run" / "history.csv"] = (tmp_path / "run" / "history.csv").read_bytes()
  proc = _run_script(["--train_dir", str(tmp_path / "run"), "--export",
                      str(tmp_path / "w2.npz"), "--export_only"])
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output
  exported = weights_io.load(tmp_path / "w2.npz").provenance
  assert exported["meta_steps"] == 2 and exported["options"]["max_steps"] == 2
  after = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
  assert after == before


def test_warm_start_from_a_weights_file(tmp_path):
  """--init_weights: a fresh run starts from the file's meta-parameters; the parent's CPU-hours
  add up in the export; a resume ignores the flag; a file for another config is refused."""
  parent = trainer_lib.Trainer(_fast_options(tmp_path / "parent", max_steps=3, init_seed=7,
                                             export=str(tmp_path / "parent.npz")))
  parent.run()
  parent_meta = weights_io.load(tmp_path / "parent.npz")
  options = _fast_options(tmp_path / "child", max_steps=0, init_weights=str(tmp_path / "parent.npz"))
  child = trainer_lib.Trainer(options)
  for name, variable in child.meta.variables_by_name.items():
    np.testing.assert_array_equal(variable.numpy(), parent_meta.meta[name])
  child.options.max_steps = 2
  child.run()
  out = child.export(tmp_path / "child.npz").resolve()
  provenance = weights_io.load(out).provenance
  assert provenance["init_weights"]["meta_steps"] == 3
  assert provenance["cpu_hours_total"] == pytest.approx(
      provenance["cpu_hours"] + parent_meta.provenance["cpu_hours"], abs=2e-4)
  record = json.loads((tmp_path / "child" / "run_config.json").read_text())
  assert record["init"]["weights"] == str(tmp_path / "parent.npz")
  # Resume: the checkpoint wins over the flag (and over a file that no longer exists).
  (tmp_path / "parent.npz").unlink()
  resumed = trainer_lib.Trainer(_fast_options(tmp_path / "child", max_steps=2))
  for name, variable in resumed.meta.variables_by_name.items():
    np.testing.assert_array_equal(variable.numpy(), child.meta.variables_by_name[name].numpy())
  assert weights_io.load(resumed.export(tmp_path / "again.npz")).provenance[
      "cpu_hours_total"] == provenance["cpu_hours_total"]
  # train_meta.py resumes with the recorded --init_weights. If that name now holds a file of
  # another config (the shipped `default` moved on), the resume and --export_only still work.
  other = config_lib.get("paper" if options.config != "paper" else "stable")
  weights_io.save(tmp_path / "parent.npz", hrnn.init_meta_params(other), other, {})
  moved = trainer_lib.Trainer(_fast_options(tmp_path / "child", max_steps=2,
                                            init_weights=str(tmp_path / "parent.npz")),
                              read_only=True)
  for name, variable in moved.meta.variables_by_name.items():
    np.testing.assert_array_equal(variable.numpy(), child.meta.variables_by_name[name].numpy())
  with pytest.raises(ValueError, match="--init_weights.*another config"):
    trainer_lib.Trainer(_fast_options(tmp_path / "x", config="stable", init_weights=str(out)))
  with pytest.raises(ValueError, match="--init_weights.*does not exist"):
    trainer_lib.Trainer(_fast_options(tmp_path / "y", init_weights=str(tmp_path / "none.npz")))
  assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


def test_sigterm_checkpoints_and_exits(tmp_path):
  """SIGTERM (or Ctrl-C) ends the run after the meta-step in flight, with a checkpoint at that
  step: nothing since the last periodic checkpoint is lost (checkpoints are off here)."""
  run = tmp_path / "run"
  proc = _run_script(["--train_dir", str(run), "--problems", "bowl_k1", "--max_steps", "100000",
                      "--min_unroll_steps", "10", "--unroll_steps_scale", "10",
                      "--max_unroll_steps", "32", "--checkpoint_every_secs", "0"])
  deadline = time.time() + 300
  while time.time() < deadline and len(checkpoints.read_history(run)) < 3:
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode == 0, output
  assert "SIGTERM: stopping" in output
  steps = len(checkpoints.read_history(run))
  assert 3 <= steps < 100000
  assert tf.train.latest_checkpoint(str(run / "checkpoints")).endswith(f"ckpt-{steps}")


def test_resume_and_export_take_the_recorded_flags(tmp_path):
  """`--train_dir DIR` alone resumes or exports a run made with non-default flags (before, the
  default --config paper was refused against the run's stable record)."""
  run = tmp_path / "run"
  proc = _run_script(["--train_dir", str(run), "--config", "stable", "--problems", "bowl_k1",
                      "--max_steps", "2", "--min_unroll_steps", "10", "--unroll_steps_scale",
                      "10", "--max_unroll_steps", "32", "--meta_l2", "0.25"])
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, output
  proc = _run_script(["--train_dir", str(run), "--export", str(tmp_path / "w.npz"),
                      "--export_only"])
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, output
  assert weights_io.load(tmp_path / "w.npz").config == config_lib.stable()
  proc = _run_script(["--train_dir", str(run), "--max_steps", "3"])
  output = proc.communicate(timeout=300)[0]
  assert proc.returncode == 0, output
  assert "recorded flags" in output and "--config 'stable'" in output
  resume = json.loads((run / checkpoints.RESUMES).read_text().splitlines()[-1])
  assert resume["changed"] == {"max_steps": [2, 3]}
  assert resume["options"]["problems"] == "bowl_k1" and resume["options"]["meta_l2"] == 0.25
  assert len(checkpoints.read_history(run)) == 3


def test_provenance_paths_are_relative_to_the_repository(tmp_path):
  assert trainer_lib.repo_relative(REPO / "meta_runs" / "x") == os.path.join("meta_runs", "x")
  assert trainer_lib.repo_relative(tmp_path / "run") == str(tmp_path / "run")


def test_checkpoint_from_before_cpu_time_resumes(tmp_path):
  """A run checkpointed before cpu_time existed (the committed meta_runs/stable) still resumes:
  its meta-parameters are restored exactly and its CPU count starts at zero."""
  import shutil
  source = REPO / "meta_runs" / "stable"
  latest = tf.train.latest_checkpoint(str(source / "checkpoints"))
  assert latest and not checkpoints.has_cpu_time(latest)
  shutil.copytree(source, tmp_path / "stable")
  trainer = trainer_lib.Trainer(trainer_lib.Options(
      **{**json.loads((source / "run_config.json").read_text())["options"],
         "train_dir": str(tmp_path / "stable"), "compile_by": "problem"}))
  reader = tf.train.load_checkpoint(latest)
  key = next(n for n, _ in tf.train.list_variables(latest) if n.startswith("meta/"))
  assert trainer.step == int(latest.rsplit("-", 1)[1])
  assert float(trainer.train_state.cpu_time.numpy()) == 0.0
  assert any(np.array_equal(reader.get_tensor(key), v.numpy())
             for v in trainer.meta.variables_by_name.values())


def test_max_cpu_hours_stops_the_run_checkpointed(tmp_path):
  """--max_cpu_hours ends a run once its recorded CPU time reaches the budget, checkpointed,
  and a resume with a larger budget goes on from there."""
  trainer = trainer_lib.Trainer(_fast_options(tmp_path / "run", max_cpu_hours=1e-6))
  trainer.run()
  assert trainer.step == 1 and float(trainer.train_state.cpu_time.numpy()) >= 1e-6 * 3600
  assert int(trainer.manager.latest_checkpoint.rsplit("-", 1)[1]) == 1
  resumed = trainer_lib.Trainer(_fast_options(tmp_path / "run", max_cpu_hours=1e-6))
  resumed.run()
  assert resumed.step == 1   # already spent: nothing more
  more = trainer_lib.Trainer(_fast_options(tmp_path / "run", max_cpu_hours=10.0, max_steps=3))
  more.run()
  assert more.step == 3


@pytest.mark.parametrize("overrides, message", [
    ({"strategy": "nccl"}, "--strategy"),
    ({"config": "fancy"}, "--config"),
    ({"problems": "no_such_problem"}, "unknown problem"),
    ({"lr_min": 1e-2, "lr_max": 1e-6}, "--lr_min"),
    ({"max_unroll_steps": 5}, "--max_unroll_steps"),
    ({"keep_checkpoints": 0}, "--keep_checkpoints"),
    ({"max_memory_gb": -1.0}, "--max_memory_gb"),
    ({"max_cpu_hours": -1.0}, "--max_cpu_hours"),
    ({"summary_every_steps": 0}, "--summary_every_steps"),
    ({"tbptt_tasks": 0}, "--tbptt_tasks"),
    ({"tbptt_tasks": 2, "estimator": "pes"}, "--tbptt_tasks 2 needs"),
])
def test_bad_options_fail_up_front(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    trainer_lib.Trainer(_fast_options(tmp_path / "x", **overrides))
  assert not (tmp_path / "x").exists()


def test_missing_train_dir():
  with pytest.raises(ValueError, match="--train_dir is required"):
    trainer_lib.Trainer(_fast_options(None))


def test_non_writable_train_dir(tmp_path):
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  with pytest.raises(ValueError, match="not a writable directory"):
    trainer_lib.Trainer(_fast_options(blocker / "run"))


def test_train_dir_with_other_config_is_refused(tmp_path):
  trainer_lib.Trainer(_fast_options(tmp_path / "run", max_steps=1)).run()
  recorded = (tmp_path / "run" / "run_config.json").read_text()
  listing = sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir())
  with pytest.raises(ValueError, match="different optimizer config"):
    trainer_lib.Trainer(_fast_options(tmp_path / "run", config="stable"))
  assert (tmp_path / "run" / "run_config.json").read_text() == recorded
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == listing


def test_script_rejects_unknown_strategy(tmp_path):
  proc = _run_script(["--train_dir", str(tmp_path / "r"), "--strategy", "tpu"])
  output = proc.communicate(timeout=120)[0]
  assert proc.returncode != 0 and "strategy" in output
  assert not (tmp_path / "r").exists()


def test_cluster_strategies_need_tf_config(monkeypatch):
  monkeypatch.delenv("TF_CONFIG", raising=False)
  with pytest.raises(ValueError, match="TF_CONFIG"):
    strategy_lib.check_cluster("multi_worker")
  monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["a:1"]},
                                              "task": {"type": "worker", "index": 0}}))
  with pytest.raises(ValueError, match="'ps'"):
    strategy_lib.check_cluster("parameter_server")


# --- strategies -----------------------------------------------------------------------------

def _helper(kind, train_dir, steps, timeout=400):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, str(REPO / "tests" / "meta_strategy_helper.py"), kind,
                         str(train_dir), str(steps)], cwd=REPO, env=env, capture_output=True,
                        text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_mirrored_two_logical_cpus(tmp_path):
  result = _helper("mirrored", tmp_path / "mirrored", 4)
  assert result == {**result, "step": 4, "replicas": 2, "finite": True, "changed": True}
  assert result["checkpoint"].endswith("ckpt-4")


@pytest.mark.slow
def test_parameter_server_local_cluster(tmp_path):
  result = _helper("parameter_server", tmp_path / "ps", 4)
  assert result["step"] >= 4 and result["replicas"] == 2
  assert result["finite"] and result["changed"]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_two_processes(tmp_path):
  workers = [f"127.0.0.1:{_free_port()}" for _ in range(2)]
  procs = []
  for index in range(2):
    env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2",
               TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                     "task": {"type": "worker", "index": index}}))
    procs.append(subprocess.Popen(
        [sys.executable, str(REPO / "train_meta.py"), "--train_dir", str(tmp_path / "mw"),
         "--strategy", "multi_worker", "--problems", "quadratic_d25", "--max_steps", "4",
         "--min_unroll_steps", "10", "--unroll_steps_scale", "10", "--max_unroll_steps", "64",
         "--checkpoint_every_steps", "2", "--checkpoint_every_secs", "0"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  outputs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outputs):
    assert p.returncode == 0, out[-4000:]
  rows = checkpoints.read_history(tmp_path / "mw")
  assert [int(r["step"]) for r in rows] == [1, 2, 3, 4]
  assert all(int(r["replicas"]) == 1 for r in rows)  # local replicas reported by the chief
  assert tf.train.latest_checkpoint(str(tmp_path / "mw" / "checkpoints")).endswith("ckpt-4")


# --- the TBPTT population (--tbptt_tasks) -------------------------------------------------------

class _Recorder:
  """Wraps the trainer's Unroller and keeps the meta-gradients of every partial unroll."""

  def __init__(self, unroller):
    self.unroller, self.grads = unroller, []

  def __call__(self, *args, **kwargs):
    out = self.unroller(*args, **kwargs)
    self.grads.append({k: v.numpy() for k, v in out.meta_grads.items()} if bool(out.finite)
                      else None)
    return out

  def __getattr__(self, name):
    return getattr(self.unroller, name)

  def __len__(self):
    return len(self.unroller)


def test_tbptt_population_averages_every_tasks_meta_gradient(tmp_path):
  trainer = trainer_lib.Trainer(_fast_options(tmp_path / "run", tbptt_tasks=3,
                                              problems="quadratic_d25,bowl_k1"))
  recorder = trainer.unroller = _Recorder(trainer.unroller)
  applied = []
  apply = trainer._apply
  trainer._apply = lambda grads: (applied.append({k: v.numpy() for k, v in grads.items()}),
                                  apply(grads))
  unrolls = []
  for step in range(3):
    info = trainer.train_step()
    assert info["problem"].startswith("3 tasks: ") and info["family"] == "population"
    assert int(trainer.step) == step + 1
    unrolls.append([t.unroll_index for t in trainer.estimator.slots])
  assert len(recorder.grads) == 9                      # 3 partial unrolls per meta-step
  for step in range(3):
    grads = [g for g in recorder.grads[3 * step:3 * step + 3] if g is not None]
    assert len(grads) == 3
    for k, v in applied[step].items():
      np.testing.assert_allclose(v, np.mean([g[k] for g in grads], axis=0), rtol=1e-6,
                                 atol=1e-12, err_msg=k)
  # Every task advanced by one partial unroll per meta-step (until its trajectory ended).
  for before, after in zip(unrolls, unrolls[1:]):
    assert all(a == b + 1 or a == 1 for a, b in zip(after, before))
  assert len({t.problem for t in trainer.estimator.slots} |
             {t.data_seeds[0] for t in trainer.estimator.slots}) > 1


def test_tbptt_population_resumes_exactly(tmp_path):
  options = dict(tbptt_tasks=2, problems="quadratic_d25,bowl_k1", max_steps=4)
  straight = trainer_lib.Trainer(_fast_options(tmp_path / "straight", **options))
  straight.run()
  killed = trainer_lib.Trainer(_fast_options(tmp_path / "killed", checkpoint_every_steps=2,
                                             **options))
  killed.run(stop_after=2)
  killed.train_step()                                  # lost with the "killed" process
  resumed = trainer_lib.Trainer(_fast_options(tmp_path / "killed", **options))
  assert resumed.step == 2 and len(resumed.estimator.slots) == 2
  resumed.run()
  for k, v in straight.meta.variables_by_name.items():
    np.testing.assert_array_equal(resumed.meta.variables_by_name[k].numpy(), v.numpy(),
                                  err_msg=k)
  assert ([t.header() for t in resumed.estimator.slots] ==
          [t.header() for t in straight.estimator.slots])
  with pytest.raises(ValueError, match="--tbptt_tasks 2"):
    trainer_lib.Trainer(_fast_options(tmp_path / "killed", **{**options, "tbptt_tasks": 3}))


def test_bounded_run_warm_starts_from_lean_weights(tmp_path):
  """A `bounded` run may start from `lean` weights (the anchored step length is a switch that
  adds one meta-parameter): every lean meta-parameter is kept, log_lr_anchor starts at its
  initial value, the provenance names the switch; `learned_opt.weights --switch_on` writes the
  same file and refuses to overwrite its source; any other config difference is refused."""
  from learned_opt import config as config_lib
  from learned_opt import hrnn
  lean = config_lib.lean()
  values = hrnn.init_meta_params(lean, 3)
  values["blackbox/gain"] = np.float32(0.25)
  src = weights_io.save(tmp_path / "lean.npz", values, lean, {"meta_steps": 5})
  child = trainer_lib.Trainer(_fast_options(tmp_path / "child", config="bounded", max_steps=0,
                                            init_weights=str(src)))
  got = {k: v.numpy() for k, v in child.meta.variables_by_name.items()}
  assert set(got) == set(values) | {"log_lr_anchor"}
  for name, value in values.items():
    np.testing.assert_array_equal(got[name], value)
  assert got["log_lr_anchor"] == np.float32(config_lib.bounded().log_lr_anchor_init)
  assert child.init_record["switched_on"] == ["anchored_log_lr"]
  weights_io.main(["--switch_on", "anchored_log_lr", str(src), str(tmp_path / "b.npz")])
  switched = weights_io.load(tmp_path / "b.npz", config_lib.bounded())
  assert switched.provenance["meta_steps"] == 5
  for name in values:
    np.testing.assert_array_equal(switched.meta[name], values[name])
  before = src.read_bytes()
  with pytest.raises(SystemExit):
    weights_io.main(["--switch_on", "anchored_log_lr", str(src), str(src)])
  assert src.read_bytes() == before
  # Only switching on: bounded weights do not load as lean, nor lean ones as stable.
  with pytest.raises(ValueError, match="another config"):
    weights_io.load_for(tmp_path / "b.npz", lean)
  with pytest.raises(ValueError, match="another config"):
    weights_io.load_for(src, config_lib.stable())
