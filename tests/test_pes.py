"""Tests of the meta-gradient estimators (issue 14): PES against exact gradients, its
population bookkeeping, resume, strategies; the Adam meta-optimizer."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from meta import meta_optimizer
from meta import trainer as trainer_lib
from meta.estimators import pes

REPO = Path(__file__).resolve().parent.parent


# --- the estimator on a problem whose full-horizon gradient is known -------------------------

# Learning a scalar log step size on an ill-conditioned quadratic over 200 steps, split into
# 20 truncations of 10: the short-horizon-bias setting (Wu et al. 2018). Truncation k's loss is
# the mean log(f / f_0) over its steps; the meta-objective is the sum over the truncations.
CURVATURES = tf.constant([1.0, 0.05])
X0 = tf.constant([1.0, 1.0])
STEPS, TRUNCATIONS = 10, 20


def _quadratic(x):
  return 0.5 * tf.reduce_sum(CURVATURES * x * x)


def _run_truncation(theta, x, f0):
  total = 0.0
  for _ in range(STEPS):
    x = x - tf.exp(theta["log_lr"]) * CURVATURES * x
    total += tf.math.log(_quadratic(x) / f0)
  return total / STEPS, x


def _toy_truncate(theta_i, carry):
  x, f0 = carry
  loss, x = _run_truncation(theta_i, x, f0)
  return loss, tf.math.is_finite(loss), (x, f0), tf.constant(0.0)


def test_pes_matches_the_full_horizon_gradient_where_tbptt_is_biased():
  theta = {"log_lr": tf.constant(np.log(0.5), tf.float32)}
  f0 = _quadratic(X0)
  # Exact: backpropagation through all 200 steps.
  with tf.GradientTape() as tape:
    tape.watch(theta)
    x, total = X0, 0.0
    for _ in range(TRUNCATIONS):
      loss, x = _run_truncation(theta, x, f0)
      total += loss
  exact = float(tape.gradient(total, theta)["log_lr"])
  # Truncated BPTT: each truncation differentiated from its carried (constant) start.
  x, tbptt = X0, 0.0
  for _ in range(TRUNCATIONS):
    with tf.GradientTape() as tape:
      tape.watch(theta)
      loss, next_x = _run_truncation(theta, x, f0)
    tbptt += float(tape.gradient(loss, theta)["log_lr"])
    x = next_x
  # PES: 2000 antithetic pairs carried across the 20 truncations of one trajectory.
  particles = 4000

  @tf.function(jit_compile=True)
  def one_truncation(xi, carries, noise_seed):
    result = pes.truncation(_toy_truncate, theta, xi, carries, 0.01, noise_seed)
    return result.weighted, result.carries, result.xi, result.valid

  xi = {"log_lr": tf.zeros([particles])}
  carries = (tf.tile(X0[None], [particles, 1]), tf.fill([particles], f0))
  per_particle = np.zeros(particles)
  for k in range(TRUNCATIONS):
    weighted, carries, xi, valid = one_truncation(xi, carries, tf.constant([k, 7]))
    assert bool(tf.reduce_all(valid))
    per_particle += weighted["log_lr"].numpy()   # the sum of the truncations' estimates
  per_pair = per_particle.reshape(-1, 2).mean(axis=1)
  estimate = per_pair.mean()
  standard_error = per_pair.std(ddof=1) / np.sqrt(len(per_pair))
  assert standard_error < 0.1 * abs(exact), (exact, standard_error)
  assert abs(estimate - exact) < 3 * standard_error, (estimate, exact, standard_error)
  # Truncated BPTT is off by far more than PES's noise (here ~16x too small).
  assert abs(tbptt - exact) > 10 * standard_error, (tbptt, exact, standard_error)
  assert abs(tbptt - exact) > 0.5 * abs(exact)


def test_truncation_accumulates_and_zeroes_invalid_pairs():
  theta = {"a": tf.constant([0.5, -1.0]), "b": tf.constant(2.0)}
  sigma, seed = 0.1, tf.constant([3, 4])

  def truncate(theta_i, carry):
    loss = tf.reduce_sum(theta_i["a"]) + theta_i["b"] + carry
    finite = carry < 10.0       # particle 2 (pair 1) reports non-finite parameters
    return loss, finite, carry + 1.0, tf.constant(0.0)

  xi = {"a": tf.ones([4, 2]), "b": tf.zeros([4])}
  carries = tf.constant([0.0, 0.0, 20.0, 0.0])
  result = pes.truncation(truncate, theta, xi, carries, sigma, seed)   # eagerly
  for pair in range(2):
    eps = pes.perturbation(theta, seed, pair, sigma)
    for sign, particle in ((1.0, 2 * pair), (-1.0, 2 * pair + 1)):
      np.testing.assert_allclose(result.xi["a"][particle], 1.0 + sign * eps["a"], rtol=1e-6)
      np.testing.assert_allclose(result.xi["b"][particle], sign * eps["b"], rtol=1e-6)
  np.testing.assert_array_equal(result.valid, [True, True, False, False])
  np.testing.assert_allclose(result.weighted["a"][:2],
                             result.xi["a"][:2] * result.losses[:2, None] / sigma**2, rtol=1e-6)
  np.testing.assert_array_equal(result.weighted["a"][2:], 0.0)
  np.testing.assert_array_equal(result.carries, [1.0, 1.0, 21.0, 1.0])
  with pytest.raises(ValueError, match="antithetic"):
    pes.truncation(truncate, theta, {"a": tf.ones([3, 2]), "b": tf.zeros([3])},
                   tf.zeros([3]), sigma, seed)


# --- the population in the trainer -------------------------------------------------------------

def _pes_options(train_dir, **overrides):
  values = dict(train_dir=str(train_dir), problems="bowl_k1", estimator="pes", num_tasks=1,
                pes_particles=2, pes_sigma=0.01, trajectory_min_steps=30,
                trajectory_max_steps=30, truncation_min_steps=10, truncation_max_steps=10,
                max_steps=8, checkpoint_every_secs=0, meta_learning_rate=1e-3)
  values.update(overrides)
  return trainer_lib.Options(**values)


def test_accumulated_perturbations_reset_at_trajectory_boundaries(tmp_path):
  trainer = trainer_lib.Trainer(_pes_options(tmp_path / "run"))
  estimator = trainer.estimator
  shapes = trainer.meta.as_dict()
  perturbation = tf.function(pes.perturbation, jit_compile=True)  # as the unrolls draw it
  previous_task, previous_xi, resets = None, None, 0
  for _ in range(8):
    trainer.train_step()
    task = estimator.tasks[0]
    xi = {k: v.numpy() for k, v in task.xi[0].items()}
    eps = {k: v.numpy() for k, v in perturbation(shapes, tf.constant(task.noise_seed),
                                                 tf.constant(0), 0.01).items()}
    fresh = task is not previous_task
    resets += fresh and previous_task is not None
    for k in xi:
      expected = eps[k] if fresh else previous_xi[k][0] + eps[k]
      np.testing.assert_allclose(xi[k][0], expected, rtol=1e-5, atol=1e-7, err_msg=k)
      np.testing.assert_array_equal(xi[k][1], -xi[k][0])    # antithetic partner
    assert task.done <= task.length
    if fresh:
      assert task.done == min(10, task.length)
    previous_task, previous_xi = task, xi
  # 30-step trajectories of 3 truncations (the first one staggered): several boundaries seen.
  assert resets >= 2
  assert np.all(np.isfinite(trainer.meta.as_dict()["log_step_offset"].numpy()))


def _state(trainer):
  meta = {k: v.numpy() for k, v in trainer.meta.variables_by_name.items()}
  tasks = [(t.header(), [p.numpy() for p in t.carries[0].params],
            {k: v.numpy() for k, v in t.xi[0].items()}) for t in trainer.estimator.tasks]
  return meta, tasks


def test_resume_continues_the_same_particles(tmp_path):
  options = dict(num_tasks=2, max_steps=5, checkpoint_every_steps=2, meta_optimizer="adam",
                 trajectory_min_steps=15, trajectory_max_steps=40)
  uninterrupted = trainer_lib.Trainer(_pes_options(tmp_path / "straight", **options))
  uninterrupted.run()
  killed = trainer_lib.Trainer(_pes_options(tmp_path / "killed", **options))
  killed.run(stop_after=2)     # checkpoint at meta-step 2
  killed.train_step()          # meta-step 3 is lost with the "killed" process
  resumed = trainer_lib.Trainer(_pes_options(tmp_path / "killed", **options))
  assert resumed.step == 2
  assert [t.header() for t in resumed.estimator.tasks] != \
      [t.header() for t in killed.estimator.tasks]
  resumed.run()
  meta_a, tasks_a = _state(uninterrupted)
  meta_b, tasks_b = _state(resumed)
  for k in meta_a:
    np.testing.assert_array_equal(meta_a[k], meta_b[k], err_msg=k)
  for (header_a, params_a, xi_a), (header_b, params_b, xi_b) in zip(tasks_a, tasks_b):
    assert header_a == header_b
    for a, b in zip(params_a, params_b):
      np.testing.assert_array_equal(a, b)
    for k in xi_a:
      np.testing.assert_array_equal(xi_a[k], xi_b[k])


def test_estimator_of_a_train_dir_is_checked_on_resume(tmp_path):
  trainer_lib.Trainer(trainer_lib.Options(train_dir=str(tmp_path / "run"), problems="bowl_k1",
                                          max_steps=0)).run()   # a (tbptt) checkpoint
  with pytest.raises(ValueError, match="--estimator tbptt"):
    trainer_lib.Trainer(_pes_options(tmp_path / "run"))


@pytest.mark.parametrize("overrides, message", [
    (dict(pes_particles=3), "--pes_particles"),
    (dict(pes_sigma=0.0), "--pes_sigma"),
    (dict(num_tasks=0), "--num_tasks"),
    (dict(truncation_min_steps=50, truncation_max_steps=20), "--truncation_min_steps"),
    (dict(trajectory_min_steps=0), "--trajectory_min_steps"),
    (dict(estimator="es"), "--estimator"),
    (dict(meta_optimizer="sgd"), "--meta_optimizer"),
])
def test_bad_pes_options_fail_up_front(tmp_path, overrides, message):
  with pytest.raises(ValueError, match=message):
    _pes_options(tmp_path / "run", **overrides).validate()


@pytest.mark.slow
def test_script_runs_pes_with_adam(tmp_path):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run(
      [sys.executable, str(REPO / "train_meta.py"), "--train_dir", str(tmp_path / "run"),
       "--problems", "bowl_k1", "--estimator", "pes", "--num_tasks", "2", "--pes_particles",
       "2", "--trajectory_min_steps", "20", "--trajectory_max_steps", "40",
       "--truncation_min_steps", "10", "--truncation_max_steps", "10", "--max_steps", "2",
       "--meta_optimizer", "adam", "--checkpoint_every_secs", "0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  record = json.loads((tmp_path / "run" / "run_config.json").read_text())
  assert record["options"]["estimator"] == "pes"
  assert "2 tasks: bowl_k1,bowl_k1" in proc.stderr


# --- meta-optimizer ---------------------------------------------------------------------------

def test_meta_adam_matches_keras_adam():
  start = np.array([1.0, -2.0, 3.0], np.float32)
  ours = {"w": tf.Variable(start)}
  theirs = tf.Variable(start)
  adam = meta_optimizer.build("adam", ours, 0.1, decay=0.9, epsilon=1e-10, clip=1e4, l2=0.0)
  keras_adam = tf.keras.optimizers.Adam(0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-8)
  for i in range(4):
    grad = np.array([0.5, -1.0, 2.0], np.float32) * (i + 1)
    adam.apply({"w": tf.constant(grad)}, ours)
    keras_adam.apply_gradients([(tf.constant(grad), theirs)])
  np.testing.assert_allclose(ours["w"].numpy(), theirs.numpy(), rtol=1e-5)
  assert int(adam.iterations.numpy()) == 4
  # Gradient cleaning is shared with RMSProp: non-finite entries are zeroed, then clipped.
  clipped = meta_optimizer.build("adam", ours, 0.1, decay=0.9, epsilon=0.0, clip=1.0, l2=0.0)
  np.testing.assert_array_equal(
      clipped.clean({"w": tf.constant([np.nan, 5.0, -0.5])}, ours)["w"], [0.0, 1.0, -0.5])


def test_meta_lr_scales_multiply_the_step_of_matched_variables_only():
  start = {"log_lr_anchor": np.float32(-6.9), "nominal/log_step": np.float32(-4.9),
           "nominal/head/kernel": np.ones(3, np.float32), "readout/direction": np.ones(2, np.float32)}
  grads = {k: tf.ones_like(v) for k, v in start.items()}
  steps = {}
  for spec in ("", "log_lr_anchor=30,nominal/*=10,nominal/head/*=2"):
    ours = {k: tf.Variable(v) for k, v in start.items()}
    adam = meta_optimizer.build("adam", ours, 1e-3, decay=0.9, epsilon=1e-10, clip=1e4, l2=0.0,
                                lr_scales=spec)
    adam.apply(grads, ours)
    steps[spec] = {k: start[k] - ours[k].numpy() for k in start}
  base, scaled = steps[""], steps["log_lr_anchor=30,nominal/*=10,nominal/head/*=2"]
  # Adam's first step is lr x sign(g); the last matching pattern wins, unmatched names keep 1.
  np.testing.assert_allclose(base["log_lr_anchor"], 1e-3, rtol=1e-4)
  np.testing.assert_allclose(scaled["log_lr_anchor"], 30 * base["log_lr_anchor"], rtol=1e-4)
  np.testing.assert_allclose(scaled["nominal/log_step"], 10 * base["nominal/log_step"], rtol=1e-4)
  np.testing.assert_allclose(scaled["nominal/head/kernel"], 2 * base["nominal/head/kernel"],
                             rtol=1e-4)
  np.testing.assert_allclose(scaled["readout/direction"], base["readout/direction"], rtol=1e-6)


@pytest.mark.parametrize("spec, message", [
    ("nominal/*", "expected PATTERN=SCALE"), ("nominal/*=-1", "expected PATTERN=SCALE"),
    ("nominal/*=abc", "expected PATTERN=SCALE"), ("no_such_thing=3", "matches no meta-parameter")])
def test_bad_meta_lr_scales_name_the_flag_and_entry(spec, message):
  with pytest.raises(ValueError, match="--meta_lr_scales") as info:
    meta_optimizer.parse_lr_scales(spec, ["log_lr_anchor", "nominal/log_step"])
  assert message in str(info.value)
  options = trainer_lib.Options(train_dir="/tmp/x", config="bounded", meta_lr_scales=spec)
  with pytest.raises(ValueError, match="--meta_lr_scales"):
    options.validate()


# --- strategies -------------------------------------------------------------------------------

def _helper(kind, train_dir, steps, overrides, timeout=900):
  env = dict(os.environ, PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
  proc = subprocess.run([sys.executable, str(REPO / "tests" / "meta_strategy_helper.py"), kind,
                         str(train_dir), str(steps), json.dumps(overrides)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


PES_HELPER = dict(estimator="pes", problems="bowl_k1", num_tasks=2, pes_particles=4,
                  unroll_mode="function",   # tf.function: no XLA compile per replica device
                  trajectory_min_steps=20, trajectory_max_steps=40, truncation_min_steps=10,
                  truncation_max_steps=10)


def test_pes_mirrored_two_logical_cpus(tmp_path):
  """Each replica runs one antithetic pair of each of the 2 tasks; sums all-reduced."""
  result = _helper("mirrored", tmp_path / "mirrored", 3, PES_HELPER)
  assert result == {**result, "step": 3, "replicas": 2, "finite": True, "changed": True}
  assert np.isfinite(result["meta_loss"])


@pytest.mark.slow
def test_pes_parameter_server_local_cluster(tmp_path):
  """One closure per task on the 2 workers; the coordinator applies one update per step."""
  result = _helper("parameter_server", tmp_path / "ps", 3, PES_HELPER)
  assert result["step"] == 3 and result["finite"] and result["changed"]


# --- bucketed PES: one compiled particle loop per size group (issue 12) ---------------------

def _pes_pair(problem, config, meta, fn, carries, inputs, fresh, noise_seed):
  return fn(meta, {k: tf.zeros([2] + v.shape.as_list()) for k, v in meta.items()} if fresh
            else carries[1], carries[0], inputs, tf.constant(9, tf.int32),
            tf.constant([3, 4], tf.int32), tf.constant(noise_seed, tf.int32),
            tf.constant(0, tf.int32), tf.constant(fresh), tf.constant(0.01),
            tf.constant(2, tf.int32))


@pytest.mark.parametrize("sample", ["paper", "nets"])
def test_bucketed_pes_matches_per_problem_pes(sample, monkeypatch):
  """Two truncations (a fresh start, then a continuation) of the same particles give the same
  losses, estimate, statistics and carries whether the problem runs in its own compiled
  particle loop or in its size group's, and the group's problems share one function."""
  import problems
  from learned_opt import config as config_lib
  from learned_opt import hrnn
  from meta import unroll as unroll_lib
  from tests.test_unroll_buckets import NETS, SAMPLE
  config = config_lib.get("lean")
  if sample == "paper":
    pool = [SAMPLE[0], SAMPLE[-1]]
  else:
    pool = [problems.get(name) for name in NETS[:2]]
    for problem in pool:   # networks compile alone by default; grouped here
      monkeypatch.setattr(problem, "compile_alone", False)
  meta = hrnn.MetaParams(config, seed=1).as_dict()
  unroller = unroll_lib.Unroller(config, max_steps=12, mode="function", compile_by="bucket",
                                 problems=pool)
  assert unroller.num_groups() == 1
  compiled_before = len(pes._COMPILED)
  for problem in pool:
    data = unroll_lib.data_tensors(problem.sample_data(4))
    carry = unroll_lib.start_carry(problem, meta, config, data, 4, [4, 5])
    group, inputs = unroller.bucket_inputs(problem, data)
    reference = pes.task_function(problem, config, max_steps=12, num_particles=2,
                                  mode="function")
    bucketed = pes.task_function(problem, config, max_steps=12, num_particles=2,
                                 mode="function", group=group)
    ref_state = (pes.stack_carry(carry, 2), None)
    bkt_state = (pes.stack_carry(group.pad_carry(problem, carry), 2), None)
    for fresh, noise_seed in ((True, [5, 6]), (False, [7, 8])):
      ref = _pes_pair(problem, config, meta, reference, ref_state, data, fresh, noise_seed)
      bkt = _pes_pair(problem, config, meta, bucketed, bkt_state, inputs, fresh, noise_seed)
      grads_a, count_a, losses_a, valid_a, carries_a, xi_a, stats_a = ref
      grads_b, count_b, losses_b, valid_b, carries_b, xi_b, stats_b = bkt
      assert float(count_a) == float(count_b) == 2.0, problem.name
      np.testing.assert_allclose(losses_b.numpy(), losses_a.numpy(), rtol=2e-4, atol=1e-6,
                                 err_msg=problem.name)
      np.testing.assert_allclose(stats_b.numpy(), stats_a.numpy(), rtol=2e-4, atol=1e-5,
                                 err_msg=problem.name)
      for k in grads_a:
        np.testing.assert_allclose(grads_b[k].numpy(), grads_a[k].numpy(), rtol=2e-3,
                                   atol=1e-4 * float(np.abs(grads_a[k].numpy()).max() + 1),
                                   err_msg=f"{problem.name}: {k}")
      layout = hrnn.Layout(problem.param_shapes())
      for i in range(2):
        flat_a = layout.flatten([p[i] for p in carries_a.params]).numpy()
        flat_b = carries_b.params[0][i].numpy()
        np.testing.assert_allclose(flat_b[:layout.total], flat_a, rtol=1e-4, atol=1e-6)
        np.testing.assert_array_equal(flat_b[layout.total:], 0.0)   # padding never moves
      ref_state, bkt_state = (carries_a, xi_a), (carries_b, xi_b)
  # One per-problem function per problem, and one for the whole group.
  assert len(pes._COMPILED) - compiled_before == len(pool) + 1


@pytest.mark.slow  # 21 s: compiles a per-problem PES group to write the carries
def test_pes_carries_of_another_compile_by_are_refused_on_resume(tmp_path):
  trainer_lib.Trainer(_pes_options(tmp_path / "run", compile_by="problem", max_steps=1,
                                   checkpoint_every_steps=1)).run()
  with pytest.raises(ValueError, match="--compile_by problem"):
    trainer_lib.Trainer(_pes_options(tmp_path / "run", compile_by="bucket"))


@pytest.mark.parametrize("name", ["adam", "rmsprop"])
def test_schedule_exponents_are_projected_onto_w_le_0(name):
  """The `scheduled` exponents stay <= 0 whatever the meta-gradient says (no dead zone above 0
  for PES); a meta-gradient towards decay moves them below 0; other variables are not bounded."""
  variables = {k: tf.Variable(0.0) for k in ("schedule/nominal", "schedule/blackbox", "other")}
  opt = meta_optimizer.build(name, variables, 1e-2, decay=0.9, epsilon=1e-10, clip=10.0, l2=0.0)
  for _ in range(5):
    opt.apply({"schedule/nominal": tf.constant(-1.0), "schedule/blackbox": tf.constant(1.0),
               "other": tf.constant(-1.0)}, variables)
  assert float(variables["schedule/nominal"]) == 0.0      # pushed up: held at the bound
  assert float(variables["schedule/blackbox"]) < -0.01    # pushed down: free
  assert float(variables["other"]) > 0.01
