"""`LearnedOptimizer`: the Keras 3 shell around the hierarchical RNN step (hrnn.step).

The shell owns variables, the math is hrnn.step. In `build` every leaf of hrnn.State becomes
an optimizer variable (packed over all model variables: one row per parameter), and the
meta-parameters become non-trainable optimizer variables too, so `model.save` and
`tf.train.Checkpoint` capture everything needed to continue identically. Each training step
Keras hands over the whole gradient list (after clipping, weight decay and gradient
accumulation) in `_backend_update_step`; we all-reduce like the TF backend does, then run ONE
joint hrnn.step over all variables (the Global GRU couples them) inside
`strategy.extended.update`, so under MirroredStrategy each replica updates its own copies
with identical inputs.

The step itself (hrnn.guarded_step: hrnn.step, the finiteness check and the select between old
and new state) is compiled with XLA as one function even when the model is not (`jit_step`,
default on): the step is a long chain of elementwise ops over [N, k] rows, which plain TF runs
as one kernel and one full-size intermediate per op, and which XLA fuses. Inside a model
compiled with `jit_compile=True` the function is inlined into the model's cluster. On CPU its
per-row parts run as the compiled loops of `learned_opt.kernels` (`fused_step`).

`_backend_update_step` is a private Keras hook; tests/test_optimizer.py fails if Keras moves it.
"""

from __future__ import annotations

import contextlib
import math
import os
import warnings
from concurrent import futures

import keras
import numpy as np
import tensorflow as tf
from keras.src import backend as keras_backend

from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import kernels
from learned_opt import weights as weights_lib

_SUPPORTED_DTYPES = ("float16", "bfloat16", "float32", "float64")


@keras.saving.register_keras_serializable(package="learned_opt")
class LearnedOptimizer(keras.optimizers.Optimizer):
  """Hierarchical-RNN learned optimizer (Wichrowska et al. 2017) as a Keras optimizer.

  Example:
    model.compile(optimizer=learned_opt.LearnedOptimizer(), loss=...)

  Args:
    learning_rate: the initial step length of the RNN term (the RNN adapts it from there,
      paper §5.4). The first update of each parameter has length about
      learning_rate * exp(offset), with the learned offset (-1 untrained). Under the shipped
      default (config `bounded`) the step length then relaxes to a learned anchor within a few
      dozen steps, so the initial value matters only at the start; the nominal (Adam-like)
      term of the `stable`, `lean` and `bounded` presets does not read it. A schedule or a
      later change of the learning rate (e.g. ReduceLROnPlateau) multiplies every update by
      lr_now / lr_initial on top of the optimizer's own step length.
    weights: name of a shipped weights file ("default", "paper"; see
      `learned_opt.weights.shipped()`), a path to a file written by `train_meta.py --export`,
      or None for the untrained reference initialisation.
    config: an HRNNConfig, a preset name ("paper", "stable", "lean", "bounded", "scheduled",
      "annealed") or dict.
      With a weights file it must match the file's config (or be None: the file's config is
      used).
    seed: seed of the untrained initialisation (weights=None only).
    jit_step: compile the optimizer step with XLA even when the model is not (default True;
      False runs it as plain TF ops, e.g. where XLA is unavailable).
    fused_step: on CPU, run the per-parameter part of the XLA-compiled step as two compiled
      C++ loops (`learned_opt.kernels`, built with the system's g++ on first use): the same
      values to float32 round-off, 4-5x faster on large models (~2x on small ones). Default
      True; it needs `jit_step`, a CPU and a config the kernel implements (every preset but
      `paper`), and falls back to the TF-ops step, with a warning if the kernel cannot be
      built or loaded.
    **kwargs: Keras' standard optimizer options (clipnorm, clipvalue, global_clipnorm,
      weight_decay, use_ema, ema_momentum, ema_overwrite_frequency, loss_scale_factor,
      gradient_accumulation_steps, name).

  Non-finite gradients (or updates) skip the step: parameters and state stay as they were and
  `skipped_steps` counts it; `model.fit` warns at its end when it skipped steps. Gradients
  above ~1e19 are finite but their squares overflow float32 in the running statistics (as in
  Adam's), so they skip too: the statistics are stored state that cannot hold such values, and
  a rescaled form would change the math for every input, so we warn instead of guessing.
  Sparse gradients (tf.IndexedSlices) are densified: the RNN state of every parameter evolves
  every step.
  """

  def __init__(self, learning_rate=1e-3, weights="default", config=None, seed=0,
               jit_step=True, fused_step=True, name="learned_optimizer", **kwargs):
    super().__init__(learning_rate=learning_rate, name=name, **kwargs)
    requested = None if config is None else config_lib.get(config)
    if weights is None:
      self.hrnn_config = requested or config_lib.paper()
      self._meta_values = hrnn.init_meta_params(self.hrnn_config, seed)
      self.weights_provenance = {"source": f"untrained reference initialisation, seed {seed}"}
    else:
      loaded = weights_lib.load(weights, expected_config=requested)
      self.hrnn_config = loaded.config
      self._meta_values = loaded.meta
      self.weights_provenance = loaded.provenance
    self._weights_spec = None if weights is None else os.fspath(weights)
    self._seed = int(seed)
    self._jit_step = bool(jit_step)
    self._fused_step = bool(fused_step)
    if self._fused_step and self._jit_step:
      kernels.prepare(self.hrnn_config)   # builds or loads it in the background meanwhile
    self._step_fns = {}   # {which gradients are present: the (compiled) joint step}
    # Captured eagerly here: build() usually runs inside the traced train step.
    self._initial_lr_value = _initial_lr_value(learning_rate)
    self._reported = (0, 0)   # (iterations, skipped_steps) at the last skipped-steps warning

  # ---- construction -------------------------------------------------------------------------

  def build(self, variables):
    if self.built:
      return
    if tf.inside_function() and not tf.distribute.has_strategy():
      # Keras builds the optimizer inside the first trace of its train function. Variables
      # created there go through tf.function's variable creator: the function is traced a
      # second time and their initial values are lifted out of the graph. A helper thread has
      # its own (empty) graph and creator stacks, so it creates them eagerly instead, on the
      # device of the model's first variable (the caller's device scope stays in its thread).
      device = _device_of(variables[0]) if variables else ""
      def build_eagerly():
        with tf.device(device) if device else contextlib.nullcontext():
          self._build(variables)
      with futures.ThreadPoolExecutor(1, thread_name_prefix="LearnedOptimizer.build") as pool:
        pool.submit(build_eagerly).result()   # re-raises the thread's exception here
      return
    with tf.init_scope():
      self._build(variables)

  def _build(self, variables):
    super().build(variables)
    for v in variables:
      if keras_backend.standardize_dtype(v.dtype) not in _SUPPORTED_DTYPES:
        raise ValueError(f"LearnedOptimizer supports floating-point variables "
                         f"{_SUPPORTED_DTYPES}; variable {_name_of(v)!r} has dtype {v.dtype}")
      if any(d is None for d in v.shape):
        raise ValueError(f"variable {_name_of(v)!r} has an undefined shape {v.shape}")
      if any(d == 0 for d in v.shape):
        raise ValueError(f"LearnedOptimizer cannot optimise variable {_name_of(v)!r} of shape "
                         f"{tuple(v.shape)}: it has no elements (leave it out of the trainable "
                         "variables)")
    self._layout = hrnn.Layout([tuple(v.shape) for v in variables])
    cfg = self.hrnn_config

    def const(value, dtype="float32"):
      value = np.asarray(value)
      return lambda shape, dtype=dtype: tf.constant(value.reshape(shape), dtype=dtype)

    self._meta_vars = {
        k: self.add_variable(v.shape, initializer=const(v), dtype="float32",
                             name="meta__" + k.replace("/", "__"))
        for k, v in self._meta_values.items()
    }
    lr0 = self._initial_lr_value
    self._initial_lr = self.add_variable((), initializer=const(lr0), dtype="float32",
                                         name="initial_learning_rate")
    with tf.init_scope():  # build() may run inside a traced function; these are constants.
      meta = {k: tf.constant(v) for k, v in self._meta_values.items()}
      initial = {f: v.numpy() for f, v in
                 hrnn.init_state(meta, self._layout, cfg, math.log(lr0))._asdict().items()}
    self._state_vars = {}
    for field, value in initial.items():
      if value.ndim and value.shape[0] == 0:
        continue   # disabled feature (nominal_rms / attention_offset)
      dtype = keras_backend.standardize_dtype(value.dtype)   # int32 step, bfloat16 lean leaves
      self._state_vars[field] = self.add_variable(
          tuple(value.shape), initializer=const(value, dtype), dtype=dtype,
          name=f"hrnn__{field}")
    self._skipped = self.add_variable((), initializer="zeros", dtype="int64",
                                      name="skipped_steps")

  # ---- public read-outs ---------------------------------------------------------------------

  @property
  def skipped_steps(self) -> int:
    """Number of steps skipped because of non-finite gradients or updates."""
    return 0 if not self.built else int(self._skipped.numpy())

  def state(self) -> hrnn.State:
    """The current hrnn.State (tensors), e.g. for inspection or parity tests."""
    values = {f: tf.convert_to_tensor(v.value) for f, v in self._state_vars.items()}
    empty = tf.zeros([0], tf.float32)
    return hrnn.State(**{f: values.get(f, empty) for f in hrnn.State._fields})

  def meta_params(self) -> dict[str, tf.Tensor]:
    return {k: tf.convert_to_tensor(v.value) for k, v in self._meta_vars.items()}

  @property
  def uses_fused_step(self) -> bool:
    """Whether the step's row pass runs as the compiled kernel (see `fused_step`)."""
    return self.fused_step_unavailable is None

  @property
  def fused_step_unavailable(self) -> str | None:
    """None if the fused kernel runs the step, else why not."""
    if not self._fused_step:
      return "fused_step=False"
    if not self._jit_step:
      return "jit_step=False (the kernel is an XLA custom call)"
    if not self._on_cpu():
      return "the variables are not on a CPU"
    return kernels.available(self.hrnn_config)

  def _on_cpu(self) -> bool:
    device = _device_of(self._trainable_variables[0]) if self.built and \
        self._trainable_variables else ""
    if device:
      return tf.DeviceSpec.from_string(device).device_type in (None, "CPU")
    return not tf.config.list_logical_devices("GPU")

  @property
  def state_floats_per_parameter(self) -> float:
    return hrnn.state_floats_per_parameter(self.hrnn_config)

  # ---- the update ---------------------------------------------------------------------------

  def update_step(self, gradient, variable, learning_rate):
    raise NotImplementedError(
        "LearnedOptimizer updates all variables jointly in _backend_update_step")

  @tf.autograph.experimental.do_not_convert
  def _backend_update_step(self, grads, trainable_variables, learning_rate):
    trainable_variables = [
        v.value if isinstance(v, keras_backend.Variable) else v for v in trainable_variables]
    grads_and_vars = self._all_reduce_sum_gradients(list(zip(grads, trainable_variables)))
    tf.__internal__.distribute.interim.maybe_merge_call(
        self._distributed_joint_step, self._distribution_strategy, grads_and_vars,
        learning_rate)

  def _distributed_joint_step(self, distribution, grads_and_vars, learning_rate):
    indices = [self._get_variable_index(v) for _, v in grads_and_vars]
    grads = [g for g, _ in grads_and_vars]
    anchor = self._state_vars["step"].value

    def joint_step(_, grads, learning_rate):
      self._joint_step(dict(zip(indices, grads)), learning_rate)

    distribution.extended.update(anchor, joint_step, args=(grads, learning_rate), group=False)

  def _joint_step(self, grads_by_index, learning_rate):
    layout = self._layout
    grads = []
    for i in range(layout.num_tensors):
      g = grads_by_index.get(i)
      if g is not None:
        if isinstance(g, tf.IndexedSlices):
          g = tf.convert_to_tensor(g)
        g = tf.cast(g, tf.float32)
      grads.append(g)
    present = tuple(g is not None for g in grads)
    scale = tf.cast(learning_rate, tf.float32) / tf.convert_to_tensor(self._initial_lr.value)
    updates, new_state, finite = self._step_fn(present)(
        self.meta_params(), self.state(), [g for g in grads if g is not None], scale)
    for field, var in self._state_vars.items():
      self.assign(var, getattr(new_state, field))
    variables = [v for v, p in zip(self._trainable_variables, present) if p]
    for var, update in zip(variables, updates):
      self.assign_sub(var, tf.cast(update, var.dtype))
    self.assign_add(self._skipped, tf.cast(tf.logical_not(finite), tf.int64))

  def _step_fn(self, present):
    """(meta, state, present grads, lr scale) -> (scaled updates, state, finite), cached."""
    fn = self._step_fns.get(present)
    if fn is not None:
      return fn
    config, layout = self.hrnn_config, self._layout
    fused = self.uses_fused_step

    def joint_step(meta, old_state, grads, scale):
      given = iter(grads)
      grads = [next(given) if p else None for p in present]
      return hrnn.guarded_step(meta, old_state, grads, config, layout, scale, fused=fused)

    # autograph=False (and do_not_convert on _backend_update_step): the step has no Python
    # control flow on tensors, and autograph's source conversion of hrnn was ~1.5 CPU-s of a
    # small model's first epoch.
    fn = (tf.function(joint_step, jit_compile=True, autograph=False) if self._jit_step
          else joint_step)
    self._step_fns[present] = fn
    return fn

  def finalize_variable_values(self, var_list):
    """Called by `model.fit` at its end: warns (once per fit) if steps were skipped."""
    super().finalize_variable_values(var_list)
    self._warn_skipped_steps()

  def _warn_skipped_steps(self) -> None:
    if not self.built:
      return
    iterations, skipped = int(self.iterations.numpy()), self.skipped_steps
    new, steps = skipped - self._reported[1], iterations - self._reported[0]
    self._reported = (iterations, skipped)
    if new > 0:
      warnings.warn(
          f"LearnedOptimizer skipped {new} of {steps} steps (skipped_steps = {skipped} in all): "
          "their gradients or updates were not finite, so parameters and optimizer state were "
          "left as they were. Finite gradients above ~1e19 do this too: their squares overflow "
          "float32 in the optimizer's running statistics, and if the loss stays there every "
          "step is skipped. Scale the loss down or clip the gradients elementwise (clipvalue).",
          UserWarning, stacklevel=2)

  # ---- serialisation ------------------------------------------------------------------------

  def get_config(self):
    cfg = super().get_config()
    if self.built:
      cfg["learning_rate"] = float(self._initial_lr.numpy()) if not isinstance(
          self._learning_rate, keras.optimizers.schedules.LearningRateSchedule) else \
          cfg["learning_rate"]
    cfg.update({"weights": self._weights_spec, "config": self.hrnn_config.to_dict(),
                "seed": self._seed, "jit_step": self._jit_step,
                "fused_step": self._fused_step})
    return cfg

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    spec = config.get("weights")
    if spec is not None:
      try:
        recorded = config.get("config")
        weights_lib.load(spec, expected_config=None if recorded is None else
                         config_lib.get(recorded))
      except (FileNotFoundError, ValueError) as e:
        # The meta-parameters are optimizer variables, restored with the rest of the model's
        # state (model.save / load_model); a weights file that moved, or that the path now
        # holds another config's or corrupt bytes, must not break loading.
        warnings.warn(f"LearnedOptimizer.from_config: not using weights file {spec!r} ({e}); "
                      "the meta-parameters come from the saved optimizer variables (the "
                      "untrained initialisation until they are restored)")
        config["weights"] = None
    return super().from_config(config, custom_objects=custom_objects)


def _initial_lr_value(learning_rate) -> float:
  if isinstance(learning_rate, keras.optimizers.schedules.LearningRateSchedule):
    value = learning_rate(0)
  elif callable(learning_rate):
    value = learning_rate()
  else:
    value = learning_rate
  value = float(keras.ops.convert_to_numpy(value))
  if not (value > 0 and math.isfinite(value)):
    raise ValueError(f"LearnedOptimizer: learning_rate must be a positive finite number, "
                     f"got {value}")
  return value


def _device_of(variable) -> str:
  """The device a (Keras or TF) variable lives on, or "" where it has none."""
  value = getattr(variable, "value", variable)
  try:
    return value.device or ""
  except (AttributeError, RuntimeError, ValueError):
    return ""


def _name_of(variable) -> str:
  return getattr(variable, "path", None) or getattr(variable, "name", "?")
