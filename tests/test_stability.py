"""Seed paper 2 (issue 5): stability analysis and the meta-parameter L2."""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import stability

PROBLEM = stability.NoisyQuadratic.make(dim=8, min_eig=1e-2, max_eig=1.0, noise=0.1)


def analyse(cfg, learning_rate=1e-3, horizon=50):
  meta = hrnn.init_meta_params(cfg, 0)
  return stability.analyse(meta, cfg, PROBLEM, learning_rate=learning_rate, horizon=horizon,
                           multiples=(10,), jit_compile=False)


@pytest.fixture(scope="module")
def stable_report():
  return analyse(config_lib.stable())


def test_stable_preset_is_stable_and_bounded(stable_report):
  report = stable_report
  assert report.rho <= 1.0 + stability.RHO_TOLERANCE
  assert report.stable and report.bounded[10]


@pytest.mark.parametrize("unstable", ["ascending_blackbox", "paper_huge_step"])
def test_deliberately_unstable_configurations_have_rho_above_one(unstable):
  if unstable == "ascending_blackbox":
    # A blackbox term with negative gain pushes uphill.
    cfg = config_lib.HRNNConfig(**{**config_lib.stable().to_dict(), "blackbox_gain_init": -5.0})
    report = analyse(cfg)
  else:
    report = analyse(config_lib.paper(), learning_rate=10.0)
  assert report.rho > 1.0 + stability.RHO_TOLERANCE
  assert not report.stable


def test_lean_preset_with_bfloat16_state_is_analysed():
  """The lean preset stores state in bfloat16; the analysis linearises it in float32 (it
  failed with a dtype error in tf.concat before)."""
  report = analyse(config_lib.lean())
  assert report.stable and report.bounded[10] and np.isfinite(report.drift)
  # theta (8) + per parameter 6 GRU units, 3 momenta, 3 mean squares, log step, nominal RMS
  # (8 x 14) + Tensor and Global GRU (20 + 20).
  assert report.eigenvalues.size == 8 + 8 * 14 + 40


def test_jacobian_of_known_linear_dynamics(stable_report):
  """Untrained stable = AdamAggMo; its theta-block is 1 - d(update)/d(theta), inside (0, 1]."""
  report = stable_report
  assert 0.0 < report.rho_params <= 1.0 + 1e-6
  assert np.isclose(np.max(np.abs(report.eigenvalues)), report.rho)


def test_meta_l2_shrinks_meta_parameters_as_specified():
  from meta.meta_optimizer import L2_EXCLUDED, MetaRMSProp
  cfg = config_lib.stable()
  variables = {k: tf.Variable(v) for k, v in hrnn.init_meta_params(cfg, 0).items()}
  before = {k: v.numpy().copy() for k, v in variables.items()}
  opt = MetaRMSProp(variables, learning_rate=1e-3, l2=0.1)
  zero = {k: tf.zeros_like(v) for k, v in variables.items()}
  cleaned = opt.clean(zero, variables)
  # With no task gradient, the meta-gradient is exactly l2 * theta (excluded scalars: 0).
  for k in variables:
    expected = np.zeros_like(before[k]) if k in L2_EXCLUDED else 0.1 * before[k]
    np.testing.assert_allclose(cleaned[k].numpy(), expected, rtol=1e-6)
  for _ in range(20):
    opt.apply(zero, variables)
  for k in variables:
    if k in L2_EXCLUDED:
      np.testing.assert_array_equal(variables[k].numpy(), before[k])
    elif np.any(before[k] != 0):
      assert np.sum(variables[k].numpy() ** 2) < np.sum(before[k] ** 2), k


@pytest.mark.slow
def test_command_prints_table_and_writes_plot(tmp_path):
  out = tmp_path / "eig.png"
  result = subprocess.run(
      [sys.executable, "-m", "learned_opt.stability", "--weights", "none", "--config", "stable",
       "--dim", "4", "--horizon", "10", "--nojit", "--out", str(out)],
      capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert "| untrained stable |" in result.stdout
  assert out.exists() and (tmp_path / "eig.json").exists()


def test_bad_override_is_a_clear_error():
  with pytest.raises(ValueError, match="nonsense"):
    stability.parse_overrides(["nonsense=1"])


def test_step_length_drift_is_reported_and_flagged(stable_report):
  """Issue 16 item 2: the mean log step length's rise above its value at H is measured."""
  assert set(stable_report.log_lr) == {1, 10}
  assert np.isfinite(stable_report.drift) and stable_report.drift_ok
  # A positive bias on the log step length's readout raises it by a fixed amount per step:
  # with the untrained stable preset (blackbox gain 0) the loss stays bounded, but the step
  # length drifts by ~bias * (1 - momentum) per step, and the drift is flagged.
  cfg = config_lib.stable()
  meta = hrnn.init_meta_params(cfg, 0)
  meta["readout/log_lr_delta/bias"] = meta["readout/log_lr_delta/bias"] + np.float32(0.2)
  drifting = stability.analyse(meta, cfg, PROBLEM, learning_rate=1e-3, horizon=50,
                               multiples=(10,), jit_compile=False)
  momentum = 1 / (1 + np.exp(-float(meta["log_lr_momentum_logit"])))
  assert drifting.log_lr[10] > drifting.log_lr[1] + stability.MAX_DRIFT
  assert drifting.drift == pytest.approx(0.2 * (1 - momentum) * 450, rel=0.2)
  assert not drifting.drift_ok
  assert "| drifting | " in stability.table({"drifting": drifting._replace(
      loss_ratios={10: 1.0, 100: 1.0}, bounded={10: True, 100: True},
      log_lr={**drifting.log_lr, 100: drifting.log_lr[10]})})
