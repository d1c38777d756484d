"""Tests for the meta-training problem ensemble (problems/, paper §4.1; issue 3)."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import problems
from problems import base, literature, transforms

DEFAULT_NAMES = [problem.name for problem in problems.default_problems()]
STEP_SEED = tf.constant([7, 11], tf.int32)

# One per family, transform and problem class: compiled in the default run;
# the full XLA sweep over all 109 problems (~90 s) is marked slow.
REPRESENTATIVE = [
    "quadratic_d2048", "bowl_k5_rot45", "logreg_f10_sep2_b100", "rosenbrock", "ackley_noise1",
    "quadratic_d20_noise0.5", "minibatch_quadratic_d12_n100_b10", "norm_d22_p3",
    "matmul_n3_k24", "outward_snake_d12_n100_b10", "dependency_chain_d12", "min_max_well_d12",
    "log(bowl_k1)", "rescale_8(norm_d18_p1.5)", "sum_rosenbrock_logsumexp_ackley",
    "sparse_0.99(quadratic_d20)", "power_0.5(quadratic_d50)",
]


@functools.cache
def instance(name: str, seed: int = 0):
  """(problem, data, init params) for one seeded instance, cached across tests."""
  problem = problems.get(name)
  return problem, problem.sample_data(seed), problem.init_params(seed)


def full_loss(problem, params, data) -> float:
  return float(problem.full_loss(params, data))


def true_gradients(problem, params, data):
  """Gradients of full_loss, without noise, masking or minibatching."""
  params = [tf.constant(p) for p in params]
  with tf.GradientTape() as tape:
    tape.watch(params)
    value = problem.full_loss(params, data)
  return [g.numpy() for g in tape.gradient(value, params)]


def contains_neural_network(problem) -> bool:
  children = [getattr(problem, "inner", None)] + list(getattr(problem, "problems", ()))
  return problem.family == base.NEURAL_NETWORK or any(
      contains_neural_network(child) for child in children if child is not None)


# --- Registry ------------------------------------------------------------------------


def test_default_set_is_documented_and_has_every_paper_family():
  default = problems.default_problems()
  assert len(default) == problems.DEFAULT_COUNT == 109
  assert len(set(DEFAULT_NAMES)) == len(DEFAULT_NAMES)
  assert {p.family for p in default} == set(problems.FAMILIES) - {base.NEURAL_NETWORK}
  # The paper's optimizer saw no neural networks in meta-training.
  assert not any(contains_neural_network(p) for p in default)
  for name in ("outward_snake_d20_n1000_b100", "dependency_chain_d20", "min_max_well_d20",
               "minibatch_quadratic_d20_n1000_b100", "michalewicz", "matmul_n3_k19"):
    assert name in DEFAULT_NAMES
  transforms_present = {p.transform.split("_")[0].split("(")[0] for p in default if p.transform}
  assert transforms_present == {"sparse", "rescale", "log", "power", "sum"}


def test_all_problems_keep_the_networks_off_by_default():
  everything = problems.all_problems()
  assert everything[:len(DEFAULT_NAMES)] == problems.default_problems()
  networks = [p for p in everything if contains_neural_network(p)]
  assert len(networks) == 15  # the reference's 12 MLPs and 3 sparse MLPs
  assert problems.get("mlp_f8_h32-64_b10").family == base.NEURAL_NETWORK
  with pytest.raises(KeyError, match="unknown problem"):
    problems.get("no_such_problem")


def test_sample_is_uniform_over_the_list_and_seeded():
  draws = [problems.sample(np.random.default_rng(seed)).name for seed in range(3)]
  assert draws == [problems.sample(np.random.default_rng(seed)).name for seed in range(3)]
  rng = np.random.default_rng(0)
  subset = problems.default_problems()[:4]
  counts = {p.name: 0 for p in subset}
  for _ in range(4000):
    counts[problems.sample(rng, subset).name] += 1
  assert all(900 < count < 1100 for count in counts.values()), counts


def test_cli_lists_the_default_set(capsys):
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""),
             TF_CPP_MIN_LOG_LEVEL="3")
  default = subprocess.run([sys.executable, "-m", "problems", "--list"], cwd=root, env=env,
                           capture_output=True, text=True, timeout=120, check=True).stdout
  assert "total: 109 problems (default set)" in default
  lines = default.splitlines()
  assert lines[0].split() == ["name", "family", "#params", "batch", "noise", "transform",
                              "minimum"]
  assert {line.split()[0] for line in lines[1:110]} == set(DEFAULT_NAMES)
  assert "mlp_" not in default
  from problems import __main__ as cli
  assert cli.main(["--list", "--all"]) == 0
  assert f"total: {len(problems.all_problems())} problems (all)" in capsys.readouterr().out


# --- Every default problem -------------------------------------------------------------


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_known_minimum(name):
  problem, data, init = instance(name)
  start = full_loss(problem, init, data)
  assert start > problem.minimum + 1e-3, "initialisation should not start at the minimum"
  if problem.minimum_kind == "exact":
    value = full_loss(problem, problem.minimizer(data), data)
    assert value == pytest.approx(problem.minimum, abs=1e-4)
  elif problem.minimum_kind == "infinity":
    values = [full_loss(problem, problem.infimum_path(data, t), data)
              for t in (10.0, 100.0, 1e3, 1e4)]
    assert all(later < earlier for earlier, later in zip(values, values[1:])), values
    assert values[-1] - problem.minimum < 1e-3 * start
    direction = np.concatenate([d.ravel() for d in problem.descent_direction(data)])
    far = np.concatenate([p.ravel() for p in problem.infimum_path(data, 1e4)]) / 1e4
    assert np.linalg.norm(far - direction) < 0.05  # the path heads off along d
  else:  # a lower bound; check stationarity where a minimiser can be computed
    minimizer = problem.minimizer(data)
    if minimizer is not None:
      value = full_loss(problem, minimizer, data)
      assert problem.minimum <= value < start
      norm = lambda grads: np.sqrt(sum(np.sum(g**2) for g in grads))
      assert norm(true_gradients(problem, minimizer, data)) < 1e-3 * norm(
          true_gradients(problem, init, data))
  # The stated minimum bounds the loss near the initialisation too.
  rng = np.random.default_rng(1)
  for _ in range(3):
    nearby = [(p + rng.standard_normal(p.shape) * (np.abs(p).mean() + 1)).astype(np.float32)
              for p in init]
    assert full_loss(problem, nearby, data) >= problem.minimum - 1e-6


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_gradients_finite_at_initialisation(name):
  problem, data, init = instance(name)
  loss, grads = problem.gradients(init, data, STEP_SEED)
  assert np.isfinite(loss.numpy())
  assert [tuple(g.shape) for g in grads] == [tuple(s) for s in problem.param_shapes()]
  assert all(np.all(np.isfinite(g.numpy())) for g in grads)
  assert sum(np.sum(np.abs(g)) for g in true_gradients(problem, init, data)) > 0


@pytest.mark.parametrize("name", DEFAULT_NAMES)
def test_seeds_give_reproducible_distinct_instances(name):
  problem, data, init = instance(name)
  assert [p.dtype for p in init] == [np.float32] * len(init)
  assert all(value.dtype == np.float32 for value in data.values())
  again_data, again_init = problem.sample_data(0), problem.init_params(0)
  assert data.keys() == again_data.keys()
  assert all(np.array_equal(data[key], again_data[key]) for key in data)
  assert all(np.array_equal(a, b) for a, b in zip(init, again_init))
  other_data, other_init = problem.sample_data(1), problem.init_params(1)
  same_data = all(np.array_equal(data[key], other_data[key]) for key in data)
  same_init = all(np.array_equal(a, b) for a, b in zip(init, other_init))
  assert not (same_data and same_init)


def _check_compiles(name):
  problem, data, init = instance(name)
  data = {key: tf.constant(value) for key, value in data.items()}
  params = [tf.constant(p) for p in init]

  @tf.function(jit_compile=True)
  def step(params, data, seed):
    loss, grads = problem.gradients(params, data, seed)
    return problem.full_loss(params, data), loss, grads

  compiled_full, compiled_loss, compiled_grads = step(params, data, STEP_SEED)
  eager_loss, eager_grads = problem.gradients(params, data, STEP_SEED)
  assert float(compiled_full) == pytest.approx(full_loss(problem, init, data), rel=1e-5)
  # Same minibatch, noise and mask under XLA as eagerly.
  assert float(compiled_loss) == pytest.approx(float(eager_loss), rel=1e-5)
  for compiled, eager in zip(compiled_grads, eager_grads):
    scale = np.abs(eager.numpy()).max() + 1e-6
    np.testing.assert_allclose(compiled.numpy(), eager.numpy(), atol=1e-4 * scale)


@pytest.mark.parametrize("name", REPRESENTATIVE)
def test_compiles_under_xla_representatives(name):
  _check_compiles(name)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(set(DEFAULT_NAMES) - set(REPRESENTATIVE)))
def test_compiles_under_xla_all(name):
  _check_compiles(name)


# --- Interface behaviour -----------------------------------------------------------------


def test_gradients_are_differentiable_again():
  """The meta-trainer backpropagates through gradients (second derivatives)."""
  problem, data, init = instance("quadratic_d20_noise0.5")
  params = [tf.constant(init[0])]
  vector = tf.constant(np.random.default_rng(0).standard_normal((20, 1)), tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(params)
    _, grads = problem.gradients(params, data, STEP_SEED)
    inner = tf.reduce_sum(grads[0] * vector)
  hessian_vector = tape.gradient(inner, params)[0].numpy()
  w = data["w"].astype(np.float64)
  np.testing.assert_allclose(hessian_vector, w.T @ w @ vector.numpy(), rtol=1e-4, atol=1e-3)


def test_minibatch_loss_is_an_unbiased_sample_of_the_full_loss():
  problem, data, init = instance("logreg_f10_sep2_b100")
  losses = np.array([float(problem.loss(init, data, tf.constant([s, 0]))) for s in range(300)])
  assert len(set(losses)) > 250
  standard_error = losses.std() / math.sqrt(len(losses))
  assert abs(losses.mean() - full_loss(problem, init, data)) < 4 * standard_error


def test_gradient_noise_has_the_stated_std_and_follows_the_seed():
  problem, data, init = instance("quadratic_d100_noise2")
  clean = true_gradients(problem, init, data)[0]
  noise = np.concatenate([(problem.gradients(init, data, tf.constant([s, 1]))[1][0] - clean)
                          .numpy().ravel() for s in range(20)])
  assert noise.std() == pytest.approx(2.0, rel=0.05)
  assert abs(noise.mean()) < 0.1
  first = problem.gradients(init, data, STEP_SEED)[1][0].numpy()
  np.testing.assert_array_equal(first, problem.gradients(init, data, STEP_SEED)[1][0].numpy())


def test_noiseless_problems_return_exact_gradients():
  problem, data, init = instance("quadratic_d25")
  np.testing.assert_allclose(problem.gradients(init, data, STEP_SEED)[1][0].numpy(),
                             true_gradients(problem, init, data)[0], rtol=1e-6)


@pytest.mark.parametrize("name", ["quadratic_d20_noise0.5", "logreg_f10_sep2_b100", "rosenbrock"])
def test_wrong_shapes_raise_naming_problem_and_tensor(name):
  problem, data, init = instance(name)
  wrong = [np.zeros(s + (1,), np.float32) for s in problem.param_shapes()]
  for call in (lambda p: problem.loss(p, data, STEP_SEED), lambda p: problem.full_loss(p, data),
               lambda p: problem.gradients(p, data, STEP_SEED), problem.check_params):
    with pytest.raises(ValueError, match=rf"{name}: parameter 0 has shape"):
      call(wrong)
  with pytest.raises(ValueError, match=rf"{name}: expected a list of"):
    problem.full_loss(init + init, data)
  with pytest.raises(ValueError, match=rf"{name}: parameter 0 has dtype float64"):
    problem.full_loss([tf.constant(p, tf.float64) for p in init], data)
  # Shapes are static, so the check also fires while tracing a compiled function.
  with pytest.raises(ValueError, match=rf"{name}: parameter 0 has shape"):
    tf.function(lambda p: problem.full_loss(p, data), jit_compile=True)(
        [tf.constant(w) for w in wrong])


def test_non_finite_parameters_raise_naming_problem_and_tensor():
  problem, data, init = instance("sum_quadratics2")
  bad = [p.copy() for p in init]
  bad[1][0, 0] = np.nan
  with pytest.raises(ValueError, match=r"sum_quadratics2: parameter 1 .* non-finite"):
    problem.check_params(bad)
  with pytest.raises(ValueError, match=r"sum_quadratics2: parameter 1 .* non-finite"):
    problem.full_loss(bad, data)
  bad[1][0, 0] = np.inf
  with pytest.raises(ValueError, match="non-finite"):
    problem.gradients(bad, data, STEP_SEED)
  problem.check_params(init)  # finite: no error


def test_instance_seeds_must_be_non_negative_ints():
  problem = problems.get("quadratic_d25")
  for seed in (-1, 1.5, "0"):
    with pytest.raises(ValueError, match="seed"):
      problem.sample_data(seed)


# --- Literature functions ----------------------------------------------------------------


@pytest.mark.parametrize("function", literature.FUNCTIONS, ids=lambda f: f.key)
def test_literature_shift_constants(function):
  """Shifted value >= 0 on a grid over (and around) the init box, 0 at the minimiser."""
  problem = function()
  low, high = np.array(problem.init_low) - 2, np.array(problem.init_high) + 2
  x, y = np.meshgrid(np.linspace(low[0], high[0], 401), np.linspace(low[1], high[1], 401))
  unclamped = (problem.reference_value(tf.constant(x), tf.constant(y)).numpy()
               - problem.REFERENCE_MINIMUM)
  assert unclamped.min() >= -1e-9
  if problem.MINIMIZER is not None:
    exact = problem.reference_value(*(tf.constant(v, tf.float64) for v in problem.MINIMIZER))
    assert float(exact) - problem.REFERENCE_MINIMUM == pytest.approx(0.0, abs=1e-9)
    assert unclamped.min() < 0.05  # the grid gets close to the stated minimum


def test_michalewicz_infimum_is_zero_but_box_minimum_is_not():
  problem = literature.Michalewicz()
  box_min = problem.reference_value(*(tf.constant(v, tf.float64)
                                      for v in problem.BOX_MINIMIZER))
  assert float(box_min) == pytest.approx(problem.BOX_MINIMUM, abs=1e-12)
  x, y = np.meshgrid(np.linspace(0, math.pi, 801), np.linspace(0, math.pi, 801))
  assert problem.reference_value(x, y).numpy().min() >= problem.BOX_MINIMUM - 1e-9
  far = np.linspace(100, 110, 2_000_001)
  values = problem.reference_value(tf.constant(far), tf.constant(math.pi / 2, tf.float64))
  assert values.numpy().min() < 1e-3  # far from the box the loss gets near 0


# --- Transforms ----------------------------------------------------------------------------


def _default_of_type(kind):
  return [p for p in problems.default_problems() if isinstance(p, kind)]


@pytest.mark.parametrize("problem", _default_of_type(transforms.Rescale), ids=str)
def test_rescale_is_a_change_of_variables(problem):
  inner, data = problem.inner, problem.sample_data(0)
  inner_init = inner.init_params(0)
  np.testing.assert_allclose(problem.init_params(0)[0], inner_init[0] * problem.scale, rtol=1e-6)
  assert full_loss(problem, problem.init_params(0), data) == pytest.approx(
      full_loss(inner, inner_init, data), rel=1e-5)
  assert problem.minimum == inner.minimum
  np.testing.assert_allclose(problem.minimizer(data)[0],
                             inner.minimizer(data)[0] * problem.scale, rtol=1e-6)


@pytest.mark.parametrize("problem", _default_of_type(transforms.SumTask), ids=str)
def test_sum_task_adds_its_parts(problem):
  data, init = problem.sample_data(0), problem.init_params(0)
  assert problem.minimum == pytest.approx(sum(p.minimum for p in problem.problems))
  total, start = 0.0, 0
  for index, part in enumerate(problem.problems):
    count = len(part.param_shapes())
    total += full_loss(part, init[start:start + count], problem._child_data(data, index))
    start += count
  assert start == len(init)
  assert full_loss(problem, init, data) == pytest.approx(total, rel=1e-5)


def test_noisy_sum_task_adds_noise_to_the_noisy_part_only():
  problem, data, init = instance("sum_literature9_quadratics2_noise0.5")
  clean = true_gradients(problem, init, data)
  noisy = [g.numpy() for g in problem.gradients(init, data, STEP_SEED)[1]]
  for clean_grad, noisy_grad in zip(clean[:-1], noisy[:-1]):
    np.testing.assert_allclose(noisy_grad, clean_grad, rtol=1e-5)
  assert np.abs(noisy[-1] - clean[-1]).max() > 1e-2  # quadratic_d13 with noise 0.5


def test_sparse_gradients_zero_99_percent_and_keep_the_rest():
  problem, data, init = instance("sparse_0.99(quadratic_d100)")
  clean = true_gradients(problem, init, data)[0]
  assert full_loss(problem, init, data) == full_loss(problem.inner, init, data)
  np.testing.assert_array_equal(problem.minimizer(data)[0], problem.inner.minimizer(data)[0])
  zeros = kept = 0
  for seed in range(50):
    loss, grads = problem.gradients(init, data, tf.constant([seed, 5]))
    grad = grads[0].numpy()
    mask = grad != 0
    np.testing.assert_allclose(grad[mask], clean[mask], rtol=1e-5)
    zeros, kept = zeros + (~mask).sum(), kept + mask.sum()
  assert 0.98 < zeros / (zeros + kept) < 0.997


@pytest.mark.parametrize("name", ["log(quadratic_d20)", "power_0.5(quadratic_d50)",
                                  "power_2(quadratic_d20)"])
def test_monotonic_loss_transforms(name):
  problem, data, init = instance(name)
  inner_value = full_loss(problem.inner, init, data)
  expected = (math.log1p(inner_value / base.EPSILON) if problem.transform == "log"
              else (inner_value + base.EPSILON)**problem.power - base.EPSILON**problem.power)
  assert full_loss(problem, init, data) == pytest.approx(expected, rel=1e-5)
  # Same minimiser, minimum 0 kept.
  assert problem.minimum == 0.0
  assert full_loss(problem, problem.inner.minimizer(data), data) == pytest.approx(0, abs=1e-4)


# --- Optimisation ------------------------------------------------------------------------


@pytest.mark.parametrize("name", [
    "quadratic_d20_noise0.5", "bowl_k5_rot45", "logreg_f10_sep2_b100", "rosenbrock",
    "dependency_chain_d12", "min_max_well_d12", "outward_snake_d12_n100_b10", "matmul_n2_k8",
    "sum_quadratics2", "sparse_0.99(quadratic_d20)", "rescale_8(norm_d18_p1.5)",
    "minibatch_quadratic_d12_n100_b10"])
def test_adam_reduces_full_loss(name):
  """Plain Adam (lr 0.1, 300 steps) on the gradients the optimizer would see."""
  problem, data, init = instance(name)
  params = [tf.Variable(p) for p in init]
  first = [tf.Variable(tf.zeros_like(p)) for p in init]
  second = [tf.Variable(tf.zeros_like(p)) for p in init]

  @tf.function
  def step(t):
    _, grads = problem.gradients([p.read_value() for p in params], data, tf.stack([t, 0]))
    count = tf.cast(t + 1, tf.float32)
    for param, grad, m, v in zip(params, grads, first, second):
      m.assign(0.9 * m + 0.1 * grad)
      v.assign(0.999 * v + 0.001 * grad**2)
      param.assign_sub(0.1 * m / (1 - 0.9**count) / (tf.sqrt(v / (1 - 0.999**count)) + 1e-8))

  for t in range(300):
    step(tf.constant(t))
  start = full_loss(problem, init, data)
  end = full_loss(problem, [p.numpy() for p in params], data)
  assert end - problem.minimum < 0.5 * (start - problem.minimum), (start, end)


def test_noise_level_as_a_tensor_is_the_problems_own_noise():
  """The bucketed unroll runs a problem and its noisy copy through one branch, with the level
  as a tensor (meta/unroll.py `_branch_key`): the same gradients as each problem's own."""
  clean, noisy = problems.get("bowl_k1"), problems.get("bowl_k1_noise0.1")
  data = clean.sample_data(3)
  params = clean.init_params(3)
  seed = tf.constant([1, 2], tf.int32)
  _, own_noisy = noisy.gradients(params, data, seed)
  _, as_tensor = clean.gradients(params, data, seed, noise_stdev=tf.constant(0.1))
  _, own_clean = clean.gradients(params, data, seed)
  _, zero = noisy.gradients(params, data, seed, noise_stdev=tf.constant(0.0))
  for a, b, c, d in zip(own_noisy, as_tensor, own_clean, zero):
    np.testing.assert_allclose(a, b, rtol=1e-6)
    np.testing.assert_array_equal(c, d)
    assert not np.allclose(a, c)
