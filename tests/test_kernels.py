"""The fused row pass (learned_opt/kernels): same values as hrnn's TF-ops reference."""

import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import learned_opt
from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import kernels
from learned_opt import weights as weights_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

pytestmark = pytest.mark.skipif(kernels.load() is None,
                                reason=f"fused kernel unavailable: {kernels.why_not()}")

DEFAULT_KEY = (6, 3, 1)   # the shipped default's Parameter GRU: 6 units, 3 timescales, bfloat16


def _meta(cfg, name):
  if name is None:
    values = hrnn.init_meta_params(cfg, seed=3)
  else:
    values = weights_lib.load_for(name, cfg).meta
  return {k: tf.constant(v) for k, v in values.items()}


def _grads(shapes, rng, i):
  # Magnitudes from 1e-7 to 1e2 across elements and steps: exercises every branch of the
  # kernel's exp / log / tanh / asinh.
  out = []
  for s in shapes:
    scale = 10.0 ** rng.uniform(-7, 2, size=s)
    out.append(tf.constant((rng.standard_normal(s) * scale * (3.0 if i % 3 else 0.1))
                           .astype(np.float32)))
  return out


def _compare_steps(cfg, meta, shapes, steps, seed=0, sums_atol=1e-6):
  """Runs the reference step for `steps` steps; at each, also the fused step from the same
  state, and checks updates and new state agree. `sums_atol`: the Tensor and Global GRU
  states take per-tensor means, which the reference sums in float32 and the kernel in
  float64; over 10^5 rows they differ in the fifth digit (the kernel's are the exact ones)."""
  layout = hrnn.Layout(shapes)
  ref = tf.function(lambda m, s, g: hrnn.step(m, s, g, cfg, layout), jit_compile=True)
  fused = tf.function(lambda m, s, g: hrnn.step(m, s, g, cfg, layout, fused=True),
                      jit_compile=True)
  rng = np.random.default_rng(seed)
  state = hrnn.init_state(meta, layout, cfg, np.log(1e-3))
  bf16 = cfg.state_dtype == "bfloat16"
  for i in range(steps):
    g = _grads(shapes, rng, i)
    fused_updates, fused_state = fused(meta, state, g)
    updates, new_state = ref(meta, state, g)
    _assert_same_step(i, fused_updates, fused_state, updates, new_state, bf16, sums_atol)
    state = new_state


def _assert_same_step(i, updates, state, want_updates, want_state, bf16, sums_atol):
  """Step i's fused updates and new state agree with the reference's (see `_compare_steps`)."""
  for j, (a, b) in enumerate(zip(updates, want_updates)):
    assert a.shape == b.shape, (i, j)
    scale = float(tf.reduce_max(tf.abs(b)))
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=2e-4, atol=2e-4 * scale,
                               err_msg=f"step {i}, update of tensor {j}")
  for field in hrnn.State._fields:
    a, b = getattr(state, field), getattr(want_state, field)
    assert a.dtype == b.dtype and a.shape == b.shape, field
    a = tf.cast(a, tf.float64).numpy()
    b = tf.cast(b, tf.float64).numpy()
    if field in hrnn.STORED_FIELDS and bf16:
      # A value within float32 round-off of a bfloat16 rounding boundary may round to the
      # neighbouring bfloat16: one bfloat16 ulp (2^-7 relative) at most, and rarely.
      close = np.abs(a - b) <= 2.0 ** -7 * np.abs(b) + 1e-30
      assert close.all(), (i, field, np.abs(a - b).max())
      assert np.mean(a != b) < 0.01, (i, field, np.mean(a != b))
    else:
      atol = sums_atol if field in ("tensor_hidden", "global_hidden") else 1e-6
      np.testing.assert_allclose(a, b, rtol=1e-4, atol=atol, err_msg=f"step {i}, {field}")


SHAPES = [(17, 5), (5,), (1,), (3, 3, 2), (40,)]   # rows not multiples of the 16 lanes


@pytest.mark.parametrize("preset,weights", [("annealed", "default"), ("lean", None),
                                            ("stable", "stable"), ("scheduled", None)])
def test_fused_step_matches_reference(preset, weights):
  cfg = config_lib.get(preset)
  assert kernels.supports(cfg) is None
  _compare_steps(cfg, _meta(cfg, weights), SHAPES, steps=6)


def test_fused_step_matches_reference_on_two_threads():
  """Large vectors are split over threads (2 x 16,384 rows or more, when it has two cores);
  the sums of a tensor then come from both."""
  cfg = config_lib.annealed()
  _compare_steps(cfg, _meta(cfg, "default"), [(400, 350), (350,), (7,)], steps=2, seed=1,
                 sums_atol=1e-4)


def _compare_guarded_steps(cfg, meta, shapes, steps, poison=None, seed=0, scale=0.5,
                           sums_atol=1e-6):
  """As `_compare_steps` for `hrnn.guarded_step`, whose fused form also runs the update pass:
  updates (times `scale`), new state and the guard agree with the TF-ops reference.
  `poison(i, grads)` may replace step i's gradients (non-finite ones: a skipped step)."""
  layout = hrnn.Layout(shapes)
  scale = tf.constant(scale)
  ref = tf.function(lambda m, s, g: hrnn.guarded_step(m, s, g, cfg, layout, scale),
                    jit_compile=True)
  fused = tf.function(lambda m, s, g: hrnn.guarded_step(m, s, g, cfg, layout, scale,
                                                        fused=True), jit_compile=True)
  rng = np.random.default_rng(seed)
  state = hrnn.init_state(meta, layout, cfg, np.log(1e-3))
  finites = []
  for i in range(steps):
    g = _grads(shapes, rng, i)
    if poison is not None:
      g = poison(i, g)
    got, want = fused(meta, state, g), ref(meta, state, g)
    assert bool(got.finite) == bool(want.finite), f"step {i}"
    finites.append(bool(want.finite))
    _assert_same_step(i, got.updates, got.state, want.updates, want.state,
                      cfg.state_dtype == "bfloat16", sums_atol)
    state = want.state
  return finites


@pytest.mark.parametrize("preset,weights", [("annealed", "default"), ("lean", None),
                                            ("stable", "stable"), ("scheduled", None)])
def test_fused_guarded_step_matches_reference(preset, weights):
  cfg = config_lib.get(preset)
  assert all(_compare_guarded_steps(cfg, _meta(cfg, weights), SHAPES, steps=5))


def test_fused_guard_skips_the_same_steps():
  """A NaN or infinite gradient, or an update that overflows, skips the step in both forms:
  old state kept (the step counter too), zero updates."""
  def poison(i, g):
    if i == 1:
      g[0] = tf.tensor_scatter_nd_update(g[0], [[3, 2]], [np.nan])
    if i == 3:
      g[2] = tf.fill(g[2].shape, np.inf)
    return g
  cfg = config_lib.annealed()
  meta = _meta(cfg, "default")
  assert _compare_guarded_steps(cfg, meta, SHAPES, steps=5, poison=poison) == [
      True, False, True, False, True]
  # The RNN term's exp overflows float32 (the kernel's exp must give inf as XLA's does).
  huge = dict(meta, log_step_offset=tf.fill(tf.shape(meta["log_step_offset"]), 100.0))
  assert not any(_compare_guarded_steps(cfg, huge, SHAPES, steps=2))


def test_fused_guarded_step_on_two_threads():
  """From 2 x 65,536 rows (with two cores) the update pass splits its rows over threads; a
  NaN in the second thread's half skips the step."""
  if kernels.threads() < 2:
    pytest.skip("one core: the threaded split does not run")
  def poison(i, g):
    if i == 1:   # row 139,999 of 140,357: the second half
      g[0] = tf.tensor_scatter_nd_update(g[0], [[399, 349]], [np.nan])
    return g
  cfg = config_lib.annealed()
  assert _compare_guarded_steps(cfg, _meta(cfg, "default"), [(400, 350), (350,), (7,)],
                                steps=3, seed=1, poison=poison, sums_atol=1e-4) == [
                                    True, False, True]


def _odd_shape():
  """`lean` with a Parameter-GRU shape and storage no preset uses: 7 units, 2 timescales, f32."""
  return config_lib.HRNNConfig(**{**config_lib.lean().to_dict(), "param_units": 7,
                                  "num_timescales": 2, "state_dtype": "float32"})


def test_supports_names_what_it_lacks():
  assert "learned_decays=True" in kernels.supports(config_lib.paper())
  big = config_lib.HRNNConfig(**{**config_lib.lean().to_dict(), "param_units": 40})
  assert "param_units <= 32" in kernels.supports(big)
  odd = _odd_shape()
  assert kernels.supports(odd) is None and kernels.shape_key(odd) == (7, 2, 0)


def test_any_shape_is_compiled_on_demand():
  """A Parameter-GRU shape no preset uses gets its own library, and matches the reference."""
  cfg = _odd_shape()
  assert kernels.available(cfg) is None
  _compare_steps(cfg, _meta(cfg, None), SHAPES, steps=3)


def test_keras_optimizer_uses_the_kernel_where_it_can():
  opt = learned_opt.LearnedOptimizer()
  assert opt.uses_fused_step
  assert not learned_opt.LearnedOptimizer(fused_step=False).uses_fused_step
  assert "jit_step" in learned_opt.LearnedOptimizer(jit_step=False).fused_step_unavailable
  paper = learned_opt.LearnedOptimizer(weights="paper")
  assert "nominal_term=False" in paper.fused_step_unavailable
  assert learned_opt.LearnedOptimizer.from_config(
      learned_opt.LearnedOptimizer(fused_step=False).get_config())._fused_step is False


def test_fit_with_and_without_the_kernel_agrees():
  """model.fit, jit_compile on and off: the fused and TF-ops steps train alike."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  x, y = (x[:256] / 16.0).astype(np.float32), y[:256]
  losses = {}
  for jit in (False, True):
    for fused in (True, False):
      keras.utils.set_random_seed(0)
      model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(16, activation="relu"),
                                keras.layers.Dense(10)])
      opt = learned_opt.LearnedOptimizer(fused_step=fused)
      model.compile(optimizer=opt, jit_compile=jit,
                    loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
      history = model.fit(x, y, batch_size=32, epochs=3, shuffle=False, verbose=0)
      assert opt.uses_fused_step == fused
      losses[jit, fused] = history.history["loss"]
    np.testing.assert_allclose(losses[jit, True], losses[jit, False], rtol=2e-3)


def test_environment_variable_turns_it_off():
  assert kernels.enabled({})
  assert not kernels.enabled({kernels.ENV: "0"})
  assert kernels.enabled({kernels.ENV: "1"})


def test_no_compiler_falls_back_with_one_warning(tmp_path):
  """Without a compiler the optimizer warns once, runs the TF-ops step, and trains."""
  script = (
      "import warnings, numpy as np, keras, learned_opt\n"
      "with warnings.catch_warnings(record=True) as caught:\n"
      "  warnings.simplefilter('always')\n"
      "  opt = learned_opt.LearnedOptimizer()\n"
      "  assert not opt.uses_fused_step, 'kernel without a compiler'\n"
      "  assert 'no C++ compiler' in opt.fused_step_unavailable\n"
      "  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])\n"
      "  model.compile(optimizer=opt, loss='mse')\n"
      "  model.fit(np.ones((8, 3)), np.ones((8, 1)), epochs=2, verbose=0)\n"
      "found = [w for w in caught if 'fused optimizer kernel is unavailable' in str(w.message)]\n"
      "assert len(found) == 1, [str(w.message) for w in caught]\n"
      "print('FALLBACK_OK')\n")
  env = dict(os.environ, CXX="no-such-compiler", PATH="/nonexistent",
             XDG_CACHE_HOME=str(tmp_path))
  env.pop(kernels.ENV, None)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=300)
  assert "FALLBACK_OK" in result.stdout, result.stderr[-3000:]
  assert not list(tmp_path.glob("learned_opt/kernels/*.so"))


def test_library_is_built_into_the_cache_once(tmp_path):
  """A library is written whole into the cache, under a name keyed by shape and inputs."""
  compiler = kernels._compiler()
  path = kernels.library_path(compiler, DEFAULT_KEY)
  assert path.name.startswith("learned_opt_row_pass_v2_6x3_bf16-")
  target = tmp_path / path.name
  kernels.build(target, compiler, DEFAULT_KEY)
  assert target.exists() and not list(tmp_path.glob("*.tmp"))
  assert kernels.library_path(compiler, DEFAULT_KEY) == path   # same key for the same inputs
  assert kernels.library_path(compiler, (10, 4, 0)) != path


def test_build_failure_names_the_source(tmp_path, monkeypatch):
  monkeypatch.setattr(kernels, "FLAGS", ("-no-such-flag-for-the-compiler",))
  with pytest.raises(RuntimeError, match="row_pass.cc"):
    kernels.build(tmp_path / "x.so", kernels._compiler(), DEFAULT_KEY)
  assert not list(tmp_path.iterdir())


def test_off_while_the_persistent_compilation_cache_is_on(monkeypatch):
  """A cached model step around the kernel crashed when loaded back (see kernels' docstring)."""
  from learned_opt import compile_cache
  monkeypatch.setattr(compile_cache, "_directory", None)
  assert kernels.persistent_cache({"TF_XLA_FLAGS": "--tf_xla_persistent_cache_directory=/c"}) \
      == "/c"
  assert kernels.persistent_cache({}) is None
  monkeypatch.setattr(compile_cache, "_directory", "/somewhere")
  reason = learned_opt.LearnedOptimizer().fused_step_unavailable
  assert "persistent compilation cache" in reason and "/somewhere" in reason


def test_cached_jit_compiled_fit_runs_twice(tmp_path):
  """With LEARNED_OPT_XLA_CACHE set, a jit_compile=True fit compiles in one process and loads
  the cached step in the next (the case that crashed with the kernel in it)."""
  script = (
      "import numpy as np, keras, learned_opt\n"
      "keras.utils.set_random_seed(0)\n"
      "model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])\n"
      "opt = learned_opt.LearnedOptimizer()\n"
      "model.compile(optimizer=opt, loss='mse', jit_compile=True)\n"
      "h = model.fit(np.ones((64, 8)), np.ones((64, 4)), epochs=2, verbose=0)\n"
      "assert not opt.uses_fused_step\n"
      "print('LOSS', h.history['loss'][-1])\n")
  env = dict(os.environ, LEARNED_OPT_XLA_CACHE=str(tmp_path), TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("TF_XLA_FLAGS", None)
  losses = []
  for _ in range(2):
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    losses += [l for l in result.stdout.splitlines() if l.startswith("LOSS")]
  assert len(losses) == 2 and losses[0] == losses[1]
