"""Tests of the pure hierarchical-RNN step (learned_opt/hrnn.py)."""

import dataclasses
import math

import numpy as np
import pytest
import tensorflow as tf

from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import weights as weights_io

SHAPES = [(3, 4), (), (5,), (2, 3, 4, 5), (7, 1, 2)]
# The last shipped file under the `bounded` preset (the default from 2026-12-06, third session,
# to the sixth; the default is `annealed` since).
BOUNDED = "bounded_v2"

CONFIGS = {
    "paper": config_lib.paper(),
    "stable": config_lib.stable(),
    "attention": config_lib.HRNNConfig(use_attention=True),
}


def as_tensors(meta):
  return {k: tf.constant(v) for k, v in meta.items()}


def meta_for(cfg, seed=0):
  return as_tensors(hrnn.init_meta_params(cfg, seed))


def random_grads(shapes, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  return [tf.constant(scale * rng.standard_normal(s), tf.float32) for s in shapes]


def run(cfg, grads_per_step, meta=None, log_lr=math.log(1e-3), shapes=SHAPES):
  meta = meta or meta_for(cfg)
  layout = hrnn.Layout(shapes)
  state = hrnn.init_state(meta, layout, cfg, log_lr)
  all_updates = []
  for grads in grads_per_step:
    updates, state = hrnn.step(meta, state, grads, cfg, layout)
    all_updates.append(updates)
  return all_updates, state


def test_meta_parameter_count_matches_reference():
  # hrnn_reference.md §1.5: about 8.35k with the paper config.
  count = sum(int(np.prod(s)) for s in hrnn.meta_param_shapes(config_lib.paper()).values())
  assert count == 8349


def test_state_floats_per_parameter():
  for name, cfg in CONFIGS.items():
    _, state = run(cfg, [random_grads(SHAPES)])
    n = sum(int(np.prod(s)) for s in SHAPES)
    per_param = sum(int(np.prod(getattr(state, f).shape))
                    for f in ("param_hidden", "momentum", "mean_square", "log_lr",
                              "nominal_rms", "attention_offset")) / n
    assert per_param == hrnn.state_floats_per_parameter(cfg), name
  assert hrnn.state_floats_per_parameter(config_lib.paper()) == 19   # README claim
  assert hrnn.state_floats_per_parameter(config_lib.stable()) == 20


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("scale", [1e-2, 1e3, 1e5])
def test_updates_invariant_to_gradient_scale(name, scale):
  """Paper §3.2.3-3.2.4: rescaling every gradient by a constant leaves the updates unchanged."""
  cfg = CONFIGS[name]
  steps = [random_grads(SHAPES, seed=i) for i in range(4)]
  base, _ = run(cfg, steps)
  scaled, _ = run(cfg, [[g * scale for g in grads] for grads in steps])
  # Holds while gradient entries are >> 1e-6: the reference's 1e-12 added to a^2 breaks it
  # below that (documented in the README); entries here are >= ~1e-4.
  for a_step, b_step in zip(base, scaled):
    for a, b in zip(a_step, b_step):
      np.testing.assert_allclose(b.numpy(), a.numpy(), rtol=1e-3, atol=1e-9)


def test_first_step_by_hand():
  """At step 0 the decays are 0, so every momentum equals g and the update has RMS lr*e^-1."""
  cfg = config_lib.paper()
  shapes = [(6,)]
  grads = random_grads(shapes, seed=3)
  updates, state = run(cfg, [grads], log_lr=math.log(1e-2), shapes=shapes)
  g = grads[0].numpy()
  np.testing.assert_allclose(state.momentum.numpy(), np.tile(g[:, None], [1, 4]), rtol=1e-6)
  np.testing.assert_allclose(state.mean_square.numpy(), np.tile(g[:, None] ** 2 + 1e-12, [1, 4]),
                             rtol=1e-5)
  # log_lr_delta readout starts at zero, so the step length is exp(log lr + offset(-1)).
  rms = np.sqrt(np.mean(updates[0][0].numpy() ** 2))
  np.testing.assert_allclose(rms, 1e-2 * math.exp(-1.0), rtol=1e-5)
  # The stored log step length stays at log(1e-2) because the readout delta is 0.
  np.testing.assert_allclose(state.log_lr.numpy(), math.log(1e-2), rtol=1e-6)


def test_global_rnn_sees_every_tensor():
  """Changing only the FIRST tensor's gradient changes the Global GRU state.

  The original code fed the Global GRU the last tensor's state only (hrnn_reference.md §1.3
  step 11); that bug would make this test fail.
  """
  cfg = config_lib.paper()
  grads = random_grads(SHAPES, seed=1)
  _, state_a = run(cfg, [grads])
  perturbed = [grads[0] * -3.0 + 1.0] + grads[1:]
  _, state_b = run(cfg, [perturbed])
  assert not np.allclose(state_a.global_hidden.numpy(), state_b.global_hidden.numpy())
  # ...and the last tensor's state alone did not change (only the global one carries it).
  np.testing.assert_allclose(state_a.tensor_hidden[-1].numpy(), state_b.tensor_hidden[-1].numpy())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_shapes_and_dtypes_every_rank(name):
  cfg = CONFIGS[name]
  updates, state = run(cfg, [random_grads(SHAPES, seed=i) for i in range(2)])
  for update, shape in zip(updates[-1], SHAPES):
    assert tuple(update.shape) == shape
    assert update.dtype == tf.float32
    assert np.all(np.isfinite(update.numpy()))
  n = sum(int(np.prod(s)) for s in SHAPES)
  assert state.param_hidden.shape == (n, cfg.param_units)
  assert state.tensor_hidden.shape == (len(SHAPES), cfg.tensor_units)
  assert state.global_hidden.shape == (1, cfg.global_units)
  assert int(state.step) == 2


def test_deterministic():
  cfg = config_lib.paper()
  steps = [random_grads(SHAPES, seed=i) for i in range(3)]
  a, sa = run(cfg, steps)
  b, sb = run(cfg, steps)
  for x, y in zip(tf.nest.flatten((a, sa)), tf.nest.flatten((b, sb))):
    np.testing.assert_array_equal(x.numpy(), y.numpy())
  m0, m1 = hrnn.init_meta_params(cfg, 0), hrnn.init_meta_params(cfg, 1)
  assert all(np.array_equal(m0[k], hrnn.init_meta_params(cfg, 0)[k]) for k in m0)
  assert not np.array_equal(m0["param_rnn/gates/kernel_x"], m1["param_rnn/gates/kernel_x"])


def test_none_gradient_leaves_tensor_and_state_untouched():
  cfg = config_lib.paper()
  meta = meta_for(cfg)
  layout = hrnn.Layout(SHAPES)
  state = hrnn.init_state(meta, layout, cfg, math.log(1e-3))
  _, state = hrnn.step(meta, state, random_grads(SHAPES), cfg, layout)
  grads = random_grads(SHAPES, seed=5)
  grads[2] = None
  updates, new = hrnn.step(meta, state, grads, cfg, layout)
  assert np.all(updates[2].numpy() == 0)
  start = sum(layout.sizes[:2])
  rows = slice(start, start + layout.sizes[2])
  np.testing.assert_array_equal(new.param_hidden[rows].numpy(), state.param_hidden[rows].numpy())
  np.testing.assert_array_equal(new.tensor_hidden[2].numpy(), state.tensor_hidden[2].numpy())
  assert not np.allclose(new.param_hidden[:start].numpy(), state.param_hidden[:start].numpy())


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_xla_matches_eager(name):
  cfg = CONFIGS[name]
  meta = meta_for(cfg)
  layout = hrnn.Layout(SHAPES)
  state = hrnn.init_state(meta, layout, cfg, math.log(1e-3))
  grads = random_grads(SHAPES)

  @tf.function(jit_compile=True)
  def compiled(meta, state, grads):
    return hrnn.step(meta, state, grads, cfg, layout)

  eager = hrnn.step(meta, state, grads, cfg, layout)
  xla = compiled(meta, state, grads)
  for a, b in zip(tf.nest.flatten(eager), tf.nest.flatten(xla)):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("name", ["paper", "stable"])
def test_meta_gradients_flow_through_several_steps(name):
  """d(loss after 5 steps)/d(meta) is finite and reaches every level of the hierarchy."""
  cfg = CONFIGS[name]
  meta_params = hrnn.MetaParams(cfg)
  rng = np.random.default_rng(0)
  a = tf.constant(rng.standard_normal((12, 12)), tf.float32)
  shapes = [(6,), (3, 2)]
  layout = hrnn.Layout(shapes)

  def loss_fn(params):
    x = tf.concat([tf.reshape(p, [-1]) for p in params], 0)
    return tf.reduce_sum(tf.square(tf.linalg.matvec(a, x) - 1.0))

  with tf.GradientTape() as tape:
    meta = meta_params.as_dict()
    params = [tf.ones(s) for s in shapes]
    state = hrnn.init_state(meta, layout, cfg, math.log(1e-2))
    for _ in range(5):
      with tf.GradientTape() as inner:
        inner.watch(params)
        loss = loss_fn(params)
      grads = inner.gradient(loss, params)
      updates, state = hrnn.step(meta, state, grads, cfg, layout)
      params = [p - u for p, u in zip(params, updates)]
    final = loss_fn(params)
  names = list(meta_params.variables_by_name)
  grads = tape.gradient(final, [meta_params.variables_by_name[k] for k in names])
  by_name = dict(zip(names, grads))
  for k, g in by_name.items():
    assert g is None or np.all(np.isfinite(g.numpy())), k
  if name == "paper":
    reached = ["param_rnn/gates/kernel_x", "tensor_rnn/candidate/kernel_x",
               "global_rnn/candidate/kernel_x", "param_bias_from_global/kernel",
               "readout/log_lr_delta/kernel", "log_step_offset"]
  else:
    # The blackbox gain starts at 0 (ReZero-like): at first only the gain and the nominal
    # magnitude and its per-tensor controller receive gradient.
    reached = ["blackbox/gain", "nominal/log_step", "nominal/head/kernel"]
  for k in reached:
    assert by_name[k] is not None and np.any(by_name[k].numpy() != 0), k


def test_attention_variable_holds_attended_point():
  """With attention, params - offset is theta, and theta follows theta - blackbox update."""
  cfg = CONFIGS["attention"]
  meta = meta_for(cfg)
  layout = hrnn.Layout(SHAPES)
  state = hrnn.init_state(meta, layout, cfg, math.log(1e-2))
  params = [tf.ones(s) for s in SHAPES]
  for i in range(3):
    updates, state = hrnn.step(meta, state, random_grads(SHAPES, seed=i), cfg, layout)
    params = [p - u for p, u in zip(params, updates)]
  theta = hrnn.true_params(params, state, layout)
  assert not all(np.allclose(t.numpy(), p.numpy()) for t, p in zip(theta, params))
  assert all(np.all(np.isfinite(t.numpy())) for t in theta)


def test_sample_initial_log_lr_range_and_triangular_shape():
  layout = hrnn.Layout([(2000,)] * 50)
  log_lr = hrnn.sample_initial_log_lr(layout, tf.constant([1, 2])).numpy()
  assert log_lr.min() >= math.log(1e-6) - 1e-4 and log_lr.max() <= math.log(1e-2) + 1e-4
  # Triangular marginal peaking at 1e-4: the middle third holds more than a third of the mass.
  lo, hi = math.log(1e-6), math.log(1e-2)
  middle = np.mean((log_lr > lo + (hi - lo) / 3) & (log_lr < hi - (hi - lo) / 3))
  assert middle > 0.45


def test_stable_untrained_matches_nominal_optimizer():
  """Seed paper 2: nominal term on, blackbox gain at its initial 0 -> exactly AdamAggMo."""
  cfg = config_lib.stable()
  shapes = [(4,), (2, 3)]
  grads_seq = [random_grads(shapes, seed=i) for i in range(6)]
  updates, _ = run(cfg, grads_seq, shapes=shapes)
  # Reference AdamAggMo with the HRNN's fixed decays.
  beta = 1 / (1 + math.exp(-cfg.momentum_decay_bias_init))
  decays = [beta ** (2.0 ** -i) for i in range(cfg.num_timescales)]
  m = [np.zeros(s, np.float32) for s in shapes]
  mom = [[np.zeros(s) for _ in decays] for s in shapes]
  v = [np.zeros(s) for s in shapes]
  for t, grads in enumerate(grads_seq):
    for j, g in enumerate(grads):
      g = g.numpy()
      d = [0.0] * len(decays) if t == 0 else decays
      mom[j] = [di * mi + (1 - di) * g for di, mi in zip(d, mom[j])]
      rd = 0.0 if t == 0 else cfg.nominal_rms_decay
      v[j] = rd * v[j] + (1 - rd) * g * g
      expected = cfg.nominal_step * np.mean(mom[j], axis=0) / np.sqrt(v[j] + 1e-16)
      np.testing.assert_allclose(updates[t][j].numpy(), expected, rtol=1e-4, atol=1e-9)


def test_layout_rejects_bad_shapes():
  with pytest.raises(ValueError, match="no elements"):
    hrnn.Layout([(3,), (0, 2)])
  with pytest.raises(ValueError, match="at least one"):
    hrnn.Layout([])
  cfg = config_lib.paper()
  meta = meta_for(cfg)
  layout = hrnn.Layout([(3,)])
  state = hrnn.init_state(meta, layout, cfg, 0.0)
  with pytest.raises(ValueError, match="gradient 0 has shape"):
    hrnn.step(meta, state, [tf.zeros([4])], cfg, layout)


def test_config_presets_and_validation():
  assert config_lib.get("stable") == config_lib.stable()
  assert config_lib.get(None) == config_lib.paper()
  assert config_lib.paper().input_size == 12
  with pytest.raises(ValueError, match="unknown config preset"):
    config_lib.get("fast")
  with pytest.raises(ValueError, match="param_units"):
    config_lib.HRNNConfig(param_units=0)
  with pytest.raises(ValueError, match="unknown HRNNConfig fields"):
    config_lib.HRNNConfig.from_dict({"nope": 1})
  cfg = config_lib.HRNNConfig.from_dict(config_lib.stable().to_dict())
  assert cfg == config_lib.stable()


def test_state_floats_per_parameter_counts_real_bytes():
  """state_floats_per_parameter = bytes of the per-parameter state / 4 / N, every preset."""
  n = sum(int(np.prod(s)) for s in SHAPES)
  for name in sorted(config_lib.PRESETS):
    cfg = config_lib.get(name)
    _, state = run(cfg, [random_grads(SHAPES)] * 2)
    nbytes = sum(int(np.prod(getattr(state, f).shape)) * getattr(state, f).dtype.size
                 for f in hrnn.PER_PARAMETER_FIELDS)
    assert nbytes / 4 / n == hrnn.state_floats_per_parameter(cfg), name
    for f in hrnn.STORED_FIELDS:
      assert getattr(state, f).dtype == tf.as_dtype(cfg.state_dtype), (name, f)
  assert hrnn.state_floats_per_parameter(config_lib.lean()) <= 8   # issue 15's budget


def test_lean_matches_float32_storage_up_to_bfloat16_rounding():
  """bfloat16 storage only rounds the stored state: same config in float32 stays close."""
  lean = config_lib.lean()
  wide = config_lib.HRNNConfig(**{**lean.to_dict(), "state_dtype": "float32"})
  meta = meta_for(lean)
  grads = [random_grads(SHAPES, seed=i) for i in range(10)]
  lean_updates, lean_state = run(lean, grads, meta=meta)
  wide_updates, _ = run(wide, grads, meta=meta)
  for a, b in zip(lean_updates[-1], wide_updates[-1]):
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=0.05, atol=1e-5)
  assert lean_state.param_hidden.dtype == tf.bfloat16
  assert all(np.all(np.isfinite(u.numpy())) for u in lean_updates[-1])


def test_lean_meta_gradients_flow_through_bfloat16_state():
  lean = config_lib.lean()
  values = hrnn.init_meta_params(lean, 0)
  values["blackbox/gain"] = np.float32(1.0)   # 0 untrained: the RNN term would get no gradient.
  meta = {k: tf.Variable(v) for k, v in values.items()}
  layout = hrnn.Layout(SHAPES)
  params = [tf.constant(g) for g in random_grads(SHAPES, seed=3)]
  with tf.GradientTape() as tape:
    state = hrnn.init_state(meta, layout, lean, math.log(1e-2))
    loss = 0.0
    for _ in range(3):
      grads = [2.0 * p for p in params]
      updates, state = hrnn.step(meta, state, grads, lean, layout)
      params = [p - u for p, u in zip(params, updates)]
      loss += sum(tf.reduce_sum(tf.square(p)) for p in params)
  grads = tape.gradient(loss, meta)
  assert all(g is not None and np.all(np.isfinite(g.numpy())) for g in grads.values())
  assert np.any(grads["param_rnn/gates/kernel_x"].numpy() != 0)


def test_asinh_matches_tf_asinh_and_its_gradient():
  x = tf.constant(np.concatenate([np.linspace(-50, 50, 2001), [0.0, 1e-30, -1e-7, 3e4]]),
                  tf.float32)
  with tf.GradientTape() as tape:
    tape.watch(x)
    y = hrnn._asinh(x)
  grad = tape.gradient(y, x)
  np.testing.assert_allclose(y.numpy(), np.arcsinh(x.numpy().astype(np.float64)), rtol=1e-6,
                             atol=1e-37)
  np.testing.assert_allclose(grad.numpy(), 1 / np.sqrt(1 + x.numpy().astype(np.float64) ** 2),
                             rtol=1e-6)


def test_state_dtype_validation():
  with pytest.raises(ValueError, match="state_dtype"):
    config_lib.HRNNConfig(state_dtype="float16")
  assert config_lib.get("lean").state_dtype == "bfloat16"
  assert config_lib.paper().state_dtype == config_lib.stable().state_dtype == "float32"


def test_anchored_step_length_is_bounded_where_the_paper_recurrence_drifts():
  """A constant positive log-lr delta makes the paper's step length climb every step (eq. 8 is
  an integrator); the `bounded` preset's anchored average settles at anchor + delta instead,
  from any initial learning rate."""
  bounded = config_lib.bounded()
  lean = config_lib.lean()
  assert bounded.anchored_log_lr and not lean.anchored_log_lr
  assert "log_lr_anchor" in hrnn.meta_param_shapes(bounded)
  assert "log_lr_anchor" not in hrnn.meta_param_shapes(lean)
  grads = [random_grads(SHAPES, seed=i) for i in range(3)] * 100   # 300 steps
  delta, anchor = 0.5, math.log(3e-4)
  means = {}
  for name, cfg in (("lean", lean), ("bounded", bounded)):
    values = hrnn.init_meta_params(cfg, 0)
    values["readout/log_lr_delta/bias"] = np.full((1,), delta, np.float32)
    values["blackbox/gain"] = np.float32(1.0)
    if cfg.anchored_log_lr:
      values["log_lr_anchor"] = np.float32(anchor)
    meta = {k: tf.constant(v) for k, v in values.items()}
    for log_lr in (math.log(1e-6), math.log(1e-2)):
      updates, state = run(cfg, grads, meta=meta, log_lr=log_lr)
      means[name, log_lr] = float(tf.reduce_mean(state.log_lr))
      assert all(np.all(np.isfinite(u.numpy())) for u in updates[-1])
  for log_lr in (math.log(1e-6), math.log(1e-2)):
    # gamma = sigmoid(3.2): the paper's recurrence climbs (1 - gamma) * delta per step.
    assert means["lean", log_lr] > log_lr + 0.8 * 300 * (1 - 1 / (1 + math.exp(-3.2))) * delta
    assert means["bounded", log_lr] == pytest.approx(anchor + delta, abs=0.01)


def test_untrained_bounded_matches_untrained_lean():
  """With the blackbox gain at zero the step length is unused, so the untrained `bounded`
  optimizer takes exactly the untrained `lean` optimizer's steps."""
  grads = [random_grads(SHAPES, seed=i) for i in range(5)]
  lean_updates, _ = run(config_lib.lean(), grads)
  bounded_updates, _ = run(config_lib.bounded(), grads)
  for a, b in zip(lean_updates[-1], bounded_updates[-1]):
    np.testing.assert_array_equal(a.numpy(), b.numpy())


def _scheduled_meta(nominal: float, blackbox: float) -> dict:
  """The shipped `bounded` file's meta-parameters under `scheduled`, with the given exponents."""
  meta = dict(weights_io.load_for(BOUNDED, config_lib.scheduled()).meta)
  meta["schedule/nominal"] = np.float32(nominal)
  meta["schedule/blackbox"] = np.float32(blackbox)
  return as_tensors(meta)


def test_scheduled_with_zero_exponents_is_the_bounded_file_exactly():
  """Switched on by a warm start, the schedule starts at w = 0: the bounded file's own steps."""
  switched = weights_io.load_for(BOUNDED, config_lib.scheduled())
  assert switched.provenance["switched_on"] == ["learned_schedule"]
  assert {k: float(v) for k, v in switched.meta.items() if k.startswith("schedule/")} == {
      "schedule/nominal": 0.0, "schedule/blackbox": 0.0}
  bounded = weights_io.load(BOUNDED)
  grads = [random_grads(SHAPES, seed=i) for i in range(30)]
  a, _ = run(bounded.config, grads, meta=as_tensors(bounded.meta))
  b, _ = run(config_lib.scheduled(), grads, meta=_scheduled_meta(0.0, 0.0))
  for ua, ub in zip(a, b):
    for x, y in zip(ua, ub):
      np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_schedule_scales_both_terms_by_a_power_of_the_step_count_and_never_grows():
  """The schedule sits outside the state recurrence, so with one exponent w on both terms
  the update at step t (0-based) is (1 + t / schedule_steps)^w times the unscheduled one; a
  positive w is clipped to 0 (the step may only shrink)."""
  cfg = dataclasses.replace(config_lib.scheduled(), schedule_steps=10.0)
  grads = [random_grads(SHAPES, seed=i) for i in range(40)]
  base, _ = run(cfg, grads, meta=_scheduled_meta(0.0, 0.0))
  decayed, _ = run(cfg, grads, meta=_scheduled_meta(-0.7, -0.7))
  grown, _ = run(cfg, grads, meta=_scheduled_meta(0.5, 2.0))
  for t in (0, 1, 9, 39):
    factor = (1.0 + t / 10.0) ** -0.7
    for x, y, z in zip(base[t], decayed[t], grown[t]):
      np.testing.assert_allclose(y.numpy(), factor * x.numpy(), rtol=2e-5, atol=1e-12)
      np.testing.assert_array_equal(z.numpy(), x.numpy())
  # Each term separately: the nominal exponent alone leaves the blackbox part, and vice versa.
  nominal_only, _ = run(cfg, grads, meta=_scheduled_meta(-0.7, 0.0))
  blackbox_only, _ = run(cfg, grads, meta=_scheduled_meta(0.0, -0.7))
  for x, y, n, b in zip(base[39], decayed[39], nominal_only[39], blackbox_only[39]):
    np.testing.assert_allclose(n.numpy() + b.numpy(), x.numpy() + y.numpy(), rtol=1e-4,
                               atol=1e-10)
    assert not np.allclose(n.numpy(), x.numpy()) and not np.allclose(b.numpy(), x.numpy())


def test_schedule_steps_must_be_positive():
  with pytest.raises(ValueError, match="schedule_steps"):
    dataclasses.replace(config_lib.scheduled(), schedule_steps=0.0)


def test_blackbox_ablation_leaves_the_nominal_term_and_says_so(tmp_path, capsys):
  """`python -m learned_opt.weights --ablate blackbox SRC DST`: the RNN term's gain is 0, every
  other meta-parameter is SRC's, the provenance records it, the update is then exactly the
  nominal term (the same as SRC's update minus SRC's blackbox part), SRC is never overwritten,
  and a config without the gain is refused with the file named."""
  src = weights_io.load("default")
  weights_io.main(["--ablate", "blackbox", "default", str(tmp_path / "nobb.npz")])
  out = weights_io.load(tmp_path / "nobb.npz")
  assert out.config == src.config and out.provenance["ablated"] == ["blackbox"]
  assert float(out.meta["blackbox/gain"]) == 0.0
  assert all(np.array_equal(out.meta[k], src.meta[k]) for k in src.meta if k != "blackbox/gain")
  grads = [random_grads(SHAPES, seed=i) for i in range(6)]
  with_bb, _ = run(src.config, grads, meta=as_tensors(src.meta))
  without, _ = run(src.config, grads, meta=as_tensors(out.meta))
  doubled, _ = run(src.config, grads, meta=as_tensors(
      {**src.meta, "blackbox/gain": 2 * src.meta["blackbox/gain"]}))
  for a, b, c in zip(with_bb[-1], without[-1], doubled[-1]):   # update = nominal + gain * RNN
    np.testing.assert_allclose(b.numpy(), 2 * a.numpy() - c.numpy(), rtol=1e-4, atol=1e-9)
  before = (tmp_path / "nobb.npz").read_bytes()
  with pytest.raises(SystemExit):
    same = str(tmp_path / "nobb.npz")
    weights_io.main(["--ablate", "blackbox", same, same])
  assert (tmp_path / "nobb.npz").read_bytes() == before
  with pytest.raises(SystemExit):
    weights_io.main(["--ablate", "blackbox", "paper", str(tmp_path / "p.npz")])
  assert "paper" in capsys.readouterr().err and not (tmp_path / "p.npz").exists()


def _annealed_run(anneal, grads, shapes, overrides):
  """Updates per step for the `bounded` file's meta-parameters with `overrides` (name ->
  value), under `bounded` with anneal_blackbox = `anneal`."""
  cfg = dataclasses.replace(config_lib.bounded(), anneal_blackbox=anneal)
  meta = dict(weights_io.load_for(BOUNDED, cfg).meta)
  meta.update({k: np.float32(v) for k, v in overrides.items()})
  return run(cfg, grads, meta=as_tensors(meta), shapes=shapes)[0]


def _rnn_term(anneal, grads, shapes):
  """The RNN term alone (gain 1, nominal term at exp(-40))."""
  return _annealed_run(anneal, grads, shapes,
                       {"blackbox/gain": 1.0, "nominal/log_step": -40.0})


def _nominal_direction(grads, shapes):
  """The nominal direction m / sqrt(v) alone (RNN gain 0, nominal magnitude exp(0 + 0))."""
  heads = {k: np.zeros_like(v) for k, v in weights_io.load(BOUNDED).meta.items()
           if k.startswith("nominal/head/")}
  return _annealed_run(False, grads, shapes,
                       {"blackbox/gain": 0.0, "nominal/log_step": 0.0, **heads})


def _rms(x):
  return float(np.sqrt(np.mean(np.square(x))))


def test_annealed_rnn_term_has_the_nominal_directions_rms_per_tensor():
  """anneal_blackbox: the same RNN direction, rescaled per tensor from unit RMS to the RMS
  of the nominal AdamAggMo direction at that step."""
  grads = [random_grads(SHAPES, seed=i) for i in range(8)]
  unit, nominal = _rnn_term(False, grads, SHAPES), _nominal_direction(grads, SHAPES)
  annealed = _rnn_term(True, grads, SHAPES)
  for t in (0, 3, 7):
    for u, n, a in zip(unit[t], nominal[t], annealed[t]):
      u, n, a = u.numpy(), n.numpy(), a.numpy()
      np.testing.assert_allclose(a, u * _rms(n), rtol=1e-4, atol=1e-12)


def test_annealed_rnn_term_shrinks_as_the_gradients_do_and_the_unit_one_does_not():
  """At interpolation the gradients keep their sign and shrink geometrically; Adam's step
  shrinks with them (v remembers the larger past gradients), the unit-RMS RNN step did not."""
  shapes = [(50, 20)]
  base = random_grads(shapes, seed=1)[0]
  grads = [[base * 0.97 ** t] for t in range(300)]
  unit, annealed = _rnn_term(False, grads, shapes), _rnn_term(True, grads, shapes)
  unit_ratio = _rms(unit[299][0].numpy()) / _rms(unit[20][0].numpy())
  annealed_ratio = _rms(annealed[299][0].numpy()) / _rms(annealed[20][0].numpy())
  assert 0.5 < unit_ratio < 2.0
  assert annealed_ratio < 0.05


def test_anneal_blackbox_is_a_warm_start_switch_and_needs_the_nominal_term():
  cfg = dataclasses.replace(config_lib.bounded(), anneal_blackbox=True)
  switched = weights_io.load_for(BOUNDED, cfg)
  bounded = weights_io.load(BOUNDED)
  assert switched.provenance["switched_on"] == ["anneal_blackbox"]
  assert all(np.array_equal(switched.meta[k], bounded.meta[k]) for k in bounded.meta)
  assert set(switched.meta) == set(bounded.meta)
  with pytest.raises(ValueError, match="anneal_blackbox needs nominal_term"):
    config_lib.HRNNConfig(anneal_blackbox=True)
