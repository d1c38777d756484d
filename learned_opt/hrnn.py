"""The hierarchical RNN optimizer step as a pure function (seed paper 1 §3, seed paper 2 fixes).

One core, two users: `LearnedOptimizer` (the Keras shell) keeps `State` in optimizer variables
and calls `step` once per training step over all variables; the meta-trainer carries `State`
as tensors through an unroll and differentiates through `step`. Nothing here assigns to a
variable, so `step` runs eagerly, under `tf.function`, under XLA and under a `GradientTape`.

Layout. All parameter tensors are flattened and concatenated into one vector of N elements
(`Layout`), so the Parameter GRU runs once over [N, ...] rows and per-tensor quantities are
segment reductions over it; the Tensor GRUs run as one batch of T rows. The op count of a step
is therefore independent of the number of variables in the model.

Meta-parameters are a flat dict {name: tensor} (`init_meta_params` gives the reference
initialisation as numpy arrays; `MetaParams` holds them as `tf.Variable`s for meta-training).

Departures from the original code (hrnn_reference.md), each deliberate:
* The Global GRU is fed the mean over *all* Tensor GRU states (paper §3.1); the original fed
  only the last tensor's state, a bug.
* The momentum and RMS decays are recomputed each step from the stored Parameter GRU state
  instead of being stored: the same function of the same state, 2 floats per parameter less.
  As in the original, they are 0 on the first step.
"""

from __future__ import annotations

import math
from typing import Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from learned_opt.config import HRNNConfig

MetaParamsDict = Mapping[str, tf.Tensor]

_MS_EPS = 1e-12      # added to a^2 in the RMS accumulator (reference).
_EPS = 1e-16         # inside sqrt / log of RMS features and direction normalisation (reference).


# --------------------------------------------------------------------------------------------
# Layout of the flattened parameter vector.
# --------------------------------------------------------------------------------------------

class Layout:
  """Static description of how a list of parameter tensors is packed into one vector."""

  def __init__(self, shapes: Sequence[Sequence[int]]):
    shapes = [tuple(int(d) for d in s) for s in shapes]
    if not shapes:
      raise ValueError("Layout needs at least one parameter tensor")
    for i, s in enumerate(shapes):
      if any(d is None or d < 0 for d in s):
        raise ValueError(f"parameter tensor {i} has an undefined shape {s}")
    self.shapes = shapes
    self.sizes = [int(np.prod(s)) for s in shapes]
    if any(n == 0 for n in self.sizes):
      empty = [i for i, n in enumerate(self.sizes) if n == 0]
      raise ValueError(f"parameter tensors {empty} have no elements (shapes "
                       f"{[shapes[i] for i in empty]})")
    self.num_tensors = len(shapes)
    self.total = int(sum(self.sizes))

  def segment_ids(self) -> tf.Tensor:
    """int32 [N]: the tensor index of every element."""
    return tf.repeat(tf.range(self.num_tensors, dtype=tf.int32), self.sizes)

  def flatten(self, tensors: Sequence[tf.Tensor]) -> tf.Tensor:
    return tf.concat([tf.reshape(tf.cast(t, tf.float32), [-1]) for t in tensors], axis=0)

  def unflatten(self, flat: tf.Tensor) -> list[tf.Tensor]:
    parts = tf.split(flat, self.sizes, axis=0) if self.num_tensors > 1 else [flat]
    return [tf.reshape(p, s) for p, s in zip(parts, self.shapes)]

  def __eq__(self, other):
    return isinstance(other, Layout) and self.shapes == other.shapes

  def __repr__(self):
    return f"Layout(num_tensors={self.num_tensors}, total={self.total})"


class Segments:
  """Per-tensor reductions and broadcasts over the flat vector.

  Built from a static `Layout` (`from_layout`: the Keras shell, tests) or from tensors
  (`padded`: the meta-trainer's size buckets, where one compiled unroll serves every problem
  whose flat vector fits in N_pad rows). A padded vector has extra rows past the problem's N
  elements and extra tensor slots past its T tensors; `element_mask` [N_pad] and `tensor_mask`
  [T_pad] mark the real ones, so the problem-wide statistics (mean relative log step length,
  Global GRU input) are masked means over real rows only, and the padded rows' updates are 0.
  Padding rows sit in tensor slots of their own, so per-tensor means of real tensors never
  see them.
  """

  def __init__(self, ids, counts, num_segments: int, total: int, element_mask=None,
               tensor_mask=None, masked_rows: bool = False):
    self.ids = ids                        # int32 [N]: tensor slot of every row.
    self.counts = counts                  # float32 [T, 1]: rows per slot (>= 1).
    self.num_segments = int(num_segments)
    self.total = int(total)
    self.element_mask = element_mask      # float32 [N] or None (no padding).
    self.tensor_mask = tensor_mask        # float32 [T] or None.
    # Rows masked inside a real tensor (a network family's instance, meta/unroll.py): per-tensor
    # means weigh rows by element_mask, and counts are the unmasked rows.
    self.masked_rows = bool(masked_rows)

  @classmethod
  def from_layout(cls, layout: Layout) -> "Segments":
    ids = tf.constant(np.repeat(np.arange(layout.num_tensors, dtype=np.int32), layout.sizes))
    counts = tf.constant(np.asarray(layout.sizes, np.float32)[:, None])
    return cls(ids, counts, layout.num_tensors, layout.total)

  @classmethod
  def padded(cls, ids, counts, element_mask, tensor_mask, masked_rows: bool = False
             ) -> "Segments":
    """From tensors: ids int32 [N_pad], counts [T_pad] or [T_pad, 1], masks [N_pad], [T_pad]."""
    num_segments, total = int(tensor_mask.shape[0]), int(element_mask.shape[0])
    counts = tf.reshape(tf.cast(counts, tf.float32), [num_segments, 1])
    return cls(tf.cast(ids, tf.int32), tf.maximum(counts, 1.0), num_segments, total,
               tf.cast(element_mask, tf.float32), tf.cast(tensor_mask, tf.float32),
               masked_rows)

  @property
  def single(self) -> bool:
    return self.num_segments == 1 and self.element_mask is None

  def mean(self, x: tf.Tensor) -> tf.Tensor:
    """[N, k] -> [T, k] mean over each tensor's rows."""
    if self.single:
      return tf.reduce_mean(x, axis=0, keepdims=True)
    if self.masked_rows:
      mask = self.element_mask if x.shape.rank == 1 else self.element_mask[:, None]
      x = x * mask
    return tf.math.unsorted_segment_sum(x, self.ids, self.num_segments) / self.counts

  def broadcast(self, x: tf.Tensor) -> tf.Tensor:
    """[T, k] -> [N, k]: each tensor's row repeated over its elements."""
    if self.single:
      return tf.broadcast_to(x, [self.total, x.shape[-1]])
    return tf.gather(x, self.ids)

  def tensor_mean(self, x: tf.Tensor) -> tf.Tensor:
    """[T, k] -> [1, k] mean over the real tensors."""
    if self.tensor_mask is None:
      return tf.reduce_mean(x, axis=0, keepdims=True)
    mask = self.tensor_mask[:, None]
    return tf.reduce_sum(x * mask, axis=0, keepdims=True) / tf.reduce_sum(mask)

  def element_mean(self, x: tf.Tensor) -> tf.Tensor:
    """[N] -> scalar mean over the real elements."""
    if self.element_mask is None:
      return tf.reduce_mean(x)
    return tf.reduce_sum(x * self.element_mask) / tf.reduce_sum(self.element_mask)


# --------------------------------------------------------------------------------------------
# Meta-parameters.
# --------------------------------------------------------------------------------------------

def _gru_shapes(prefix: str, input_size: int, units: int) -> dict[str, tuple[int, ...]]:
  return {
      f"{prefix}/gates/kernel_x": (input_size, 2 * units),
      f"{prefix}/gates/kernel_h": (units, 2 * units),
      f"{prefix}/gates/bias": (2 * units,),
      f"{prefix}/candidate/kernel_x": (input_size, units),
      f"{prefix}/candidate/kernel_h": (units, units),
      f"{prefix}/candidate/bias": (units,),
  }


def meta_param_shapes(config: HRNNConfig) -> dict[str, tuple[int, ...]]:
  """Names and shapes of every meta-parameter for `config` (sorted by name)."""
  kp, kt, kg, s = config.param_units, config.tensor_units, config.global_units, \
      config.num_timescales
  shapes: dict[str, tuple[int, ...]] = {}
  shapes.update(_gru_shapes("param_rnn", config.input_size, kp))
  shapes.update(_gru_shapes("tensor_rnn", kp + config.input_size, kt))
  shapes.update(_gru_shapes("global_rnn", kt, kg))
  shapes.update({
      # Biases injected into the Parameter GRU from the Tensor and Global GRUs (paper Fig. 1).
      "param_bias_from_tensor/kernel": (kt, 3 * kp),
      "param_bias_from_tensor/bias": (3 * kp,),
      "param_bias_from_global/kernel": (kg, 3 * kp),
      "param_bias_from_global/bias": (3 * kp,),
      # Bias injected into the Tensor GRU from the Global GRU.
      "tensor_bias_from_global/kernel": (kg, 3 * kt),
      "tensor_bias_from_global/bias": (3 * kt,),
      # Readouts from the Parameter GRU state (eq. 13).
      "readout/direction": (kp, 1),
      "readout/log_lr_delta/kernel": (kp, 1),
      "readout/log_lr_delta/bias": (1,),
      "log_lr_momentum_logit": (),   # gamma of eq. 8, through a sigmoid.
      "log_step_offset": (),         # learned offset of the used log step length.
      # Learnable initial hidden states.
      "init/param_hidden": (kp,),
      "init/tensor_hidden": (kt,),
      "init/global_hidden": (kg,),
  })
  if config.learned_decays:
    shapes.update({
        "readout/momentum_decay/kernel": (kp, 1),
        "readout/momentum_decay/bias": (1,),
        "readout/rms_decay/kernel": (kp, 1),
        "readout/rms_decay/bias": (1,),
    })
  if config.use_gradient_shortcut:
    shapes["readout/shortcut"] = (s, 1)
  if config.use_attention:
    shapes["readout/attention"] = (kp, 1)
    shapes["readout/attention_shortcut"] = (s, 1)
  if config.nominal_term:
    shapes["nominal/log_step"] = ()
    shapes["nominal/head/kernel"] = (kt, 1)   # per-tensor controller of the nominal magnitude.
    shapes["nominal/head/bias"] = (1,)
  if config.blackbox_gain:
    shapes["blackbox/gain"] = ()
  if config.anchored_log_lr:
    shapes["log_lr_anchor"] = ()   # where the anchored step length's running average pulls.
  if config.learned_schedule:
    shapes["schedule/blackbox"] = ()   # exponents of the (1 + t / T)^min(w, 0) schedules.
    if config.nominal_term:
      shapes["schedule/nominal"] = ()
  return dict(sorted(shapes.items()))


def init_meta_params(config: HRNNConfig, seed: int = 0) -> dict[str, np.ndarray]:
  """Reference initialisation (hrnn_reference.md §1.4-1.5) as float32 numpy arrays."""
  rng = np.random.default_rng(seed)
  shapes = meta_param_shapes(config)
  values: dict[str, np.ndarray] = {}

  def normal(shape, std, mean=0.0):
    return (mean + std * rng.standard_normal(shape)).astype(np.float32)

  for name, shape in shapes.items():
    rnn = name.split("/")[0]
    if rnn.endswith("_rnn"):
      units = shapes[f"{rnn}/candidate/bias"][0]
      fan_in = shapes[f"{rnn}/candidate/kernel_x"][0] + units
      if name.endswith("gates/bias"):
        values[name] = np.full(shape, config.gate_bias_init, np.float32)
      elif name.endswith("candidate/bias"):
        values[name] = np.zeros(shape, np.float32)
      else:
        values[name] = normal(shape, config.weight_scale / math.sqrt(fan_in))
    elif name.endswith("_from_tensor/kernel") or name.endswith("_from_global/kernel"):
      values[name] = normal(shape, config.weight_scale / math.sqrt(shape[0]))
    elif name.endswith("/bias") and ("_from_" in name or "log_lr_delta" in name
                                     or name.startswith("nominal/head")):
      values[name] = np.zeros(shape, np.float32)
    elif name in ("readout/direction", "readout/attention", "readout/momentum_decay/kernel",
                  "readout/rms_decay/kernel"):
      values[name] = normal(shape, config.readout_scale / math.sqrt(config.param_units))
    elif name in ("readout/log_lr_delta/kernel", "nominal/head/kernel"):
      values[name] = np.zeros(shape, np.float32)
    elif name in ("readout/shortcut", "readout/attention_shortcut"):
      s = config.num_timescales
      values[name] = normal(shape, config.shortcut_std / math.sqrt(s), mean=1.0 / s)
    elif name == "readout/momentum_decay/bias":
      values[name] = np.full(shape, config.momentum_decay_bias_init, np.float32)
    elif name == "readout/rms_decay/bias":
      values[name] = np.full(shape, config.rms_decay_bias_init, np.float32)
    elif name == "log_lr_momentum_logit":
      values[name] = np.float32(config.log_lr_momentum_logit_init)
    elif name == "log_step_offset":
      values[name] = np.float32(config.log_step_offset_init)
    elif name.startswith("init/"):
      values[name] = rng.uniform(-1.0, 1.0, shape).astype(np.float32)
    elif name == "nominal/log_step":
      values[name] = np.float32(math.log(config.nominal_step))
    elif name == "blackbox/gain":
      values[name] = np.float32(config.blackbox_gain_init)
    elif name == "log_lr_anchor":
      values[name] = np.float32(config.log_lr_anchor_init)
    elif name.startswith("schedule/"):
      values[name] = np.float32(0.0)   # no schedule until meta-training finds one.
    else:  # pragma: no cover - every name above is handled
      raise AssertionError(f"no initialiser for meta-parameter {name}")
    values[name] = np.asarray(values[name], np.float32).reshape(shape)
  return values


class MetaParams(tf.Module):
  """The meta-parameters as `tf.Variable`s (what meta-training optimises)."""

  def __init__(self, config: HRNNConfig, values: Mapping[str, np.ndarray] | None = None,
               seed: int = 0, name: str = "hrnn_meta_params"):
    super().__init__(name=name)
    self.config = config
    values = dict(values) if values is not None else init_meta_params(config, seed)
    expected = meta_param_shapes(config)
    check_meta_values(values, config, source="MetaParams values")
    with self.name_scope:
      self.variables_by_name = {
          k: tf.Variable(np.asarray(values[k], np.float32), name=k.replace("/", "__"))
          for k in expected
      }

  def as_dict(self) -> dict[str, tf.Tensor]:
    return dict(self.variables_by_name)

  def numpy(self) -> dict[str, np.ndarray]:
    return {k: v.numpy() for k, v in self.variables_by_name.items()}


def check_meta_values(values: Mapping[str, np.ndarray], config: HRNNConfig, source: str):
  """Raises ValueError naming `source` if values do not match `config`'s meta-parameters."""
  expected = meta_param_shapes(config)
  missing = sorted(set(expected) - set(values))
  extra = sorted(set(values) - set(expected))
  if missing or extra:
    raise ValueError(f"{source}: meta-parameters do not match the config "
                     f"(missing {missing}, unexpected {extra})")
  for k, shape in expected.items():
    got = tuple(np.shape(values[k]))
    if got != tuple(shape):
      raise ValueError(f"{source}: meta-parameter {k!r} has shape {got}, the config "
                       f"needs {tuple(shape)}")
    if not np.all(np.isfinite(values[k])):
      raise ValueError(f"{source}: meta-parameter {k!r} has non-finite values")


# --------------------------------------------------------------------------------------------
# State.
# --------------------------------------------------------------------------------------------

class State(NamedTuple):
  """Optimizer state for N parameters in T tensors (packed, see `Layout`).

  Per parameter: param_hidden [N, K_P], momentum [N, S], mean_square [N, S], log_lr [N]
  (= K_P + 2S + 1 = 19 floats with the paper config), plus nominal_rms [N] with the nominal
  term and attention_offset [N] (phi - theta) with attention; those are [0] when off.
  param_hidden, momentum and mean_square are stored in `config.state_dtype` (float32 or
  bfloat16); everything else is float32.
  Per tensor: tensor_hidden [T, K_T]. Global: global_hidden [1, K_G], step (int32 scalar).
  """
  param_hidden: tf.Tensor
  momentum: tf.Tensor
  mean_square: tf.Tensor
  log_lr: tf.Tensor
  nominal_rms: tf.Tensor
  attention_offset: tf.Tensor
  tensor_hidden: tf.Tensor
  global_hidden: tf.Tensor
  step: tf.Tensor


# State leaves with one row per parameter (the rest are per tensor, global, or the step).
PER_PARAMETER_FIELDS = ("param_hidden", "momentum", "mean_square", "log_lr", "nominal_rms",
                        "attention_offset")


# Leaves stored in config.state_dtype; the step computes on them in float32.
STORED_FIELDS = ("param_hidden", "momentum", "mean_square")


def state_floats_per_parameter(config: HRNNConfig) -> float:
  """Float32-equivalents (4 bytes) of optimizer state kept per parameter (the README quotes it)."""
  stored = config.param_units + 2 * config.num_timescales
  stored *= tf.as_dtype(config.state_dtype).size / 4
  total = stored + 1 + int(config.nominal_term) + int(config.use_attention)
  return int(total) if float(total).is_integer() else total


def init_state(meta: MetaParamsDict, layout: Layout, config: HRNNConfig,
               log_lr: tf.Tensor | float) -> State:
  """Fresh state. `log_lr` is a scalar or an [N] tensor of initial log step lengths."""
  n, t = layout.total, layout.num_tensors
  s = config.num_timescales
  log_lr = tf.cast(log_lr, tf.float32)
  log_lr = tf.broadcast_to(log_lr, [n]) if log_lr.shape.rank == 0 else tf.reshape(log_lr, [n])
  zeros_n = tf.zeros([n], tf.float32)
  state = State(
      param_hidden=tf.tile(tf.reshape(tf.cast(meta["init/param_hidden"], tf.float32),
                                      [1, -1]), [n, 1]),
      momentum=tf.zeros([n, s], tf.float32),
      mean_square=tf.zeros([n, s], tf.float32),
      log_lr=log_lr,
      nominal_rms=zeros_n if config.nominal_term else tf.zeros([0], tf.float32),
      attention_offset=zeros_n if config.use_attention else tf.zeros([0], tf.float32),
      tensor_hidden=tf.tile(tf.reshape(tf.cast(meta["init/tensor_hidden"], tf.float32),
                                       [1, -1]), [t, 1]),
      global_hidden=tf.reshape(tf.cast(meta["init/global_hidden"], tf.float32), [1, -1]),
      step=tf.constant(0, tf.int32),
  )
  return _store(state, config)


def _store(state: State, config: HRNNConfig) -> State:
  """Casts the large per-parameter leaves to their storage dtype."""
  dtype = tf.as_dtype(config.state_dtype)
  return state._replace(**{f: tf.cast(getattr(state, f), dtype) for f in STORED_FIELDS})


def sample_initial_log_lr(layout: Layout, seed, lr_range=(1e-6, 1e-2),
                          max_log_lr: float = 33.0) -> tf.Tensor:
  """Random initial log step lengths as in the original code (hrnn_reference.md §1.6).

  Per tensor: a uniform offset in [log lo / 2, log hi / 2] plus per-element uniform values in
  the same range, clipped; pooled over tensors the marginal is triangular on [log lo, log hi].
  `seed` is an int32 [2] tensor for stateless sampling.
  """
  lo, hi = math.log(lr_range[0]) / 2.0, math.log(lr_range[1]) / 2.0
  seeds = tf.random.experimental.stateless_split(tf.cast(seed, tf.int32), 2)
  per_tensor = tf.random.stateless_uniform([layout.num_tensors, 1], seeds[0], lo, hi)
  per_element = tf.random.stateless_uniform([layout.total], seeds[1], lo, hi)
  log_lr = per_element + tf.reshape(Segments.from_layout(layout).broadcast(per_tensor), [-1])
  return tf.clip_by_value(log_lr, -max_log_lr, max_log_lr)


# --------------------------------------------------------------------------------------------
# The step.
# --------------------------------------------------------------------------------------------

def _bias_gru(meta: MetaParamsDict, prefix: str, x: tf.Tensor, h: tf.Tensor,
              injected_bias: tf.Tensor | None, broadcast=None) -> tf.Tensor:
  """GRU with an externally injected bias (hrnn_reference.md §1.4).

  injected_bias is [rows or 1, 3*units] split into (reset, update, candidate) parts; with
  `broadcast` (a [T, k] -> [N, k] function) it is per tensor and broadcast to the rows here,
  separately for the gates and the candidate so that each broadcast fuses into its one use.
  The update gate u multiplies the *old* state: h' = u * h + (1 - u) * c.

  The gates and the candidate's input part are one [rows, in + units] x [in + units, 3 units]
  matmul (the candidate does not see h there, so that block of the kernel is zero): one pass
  over the rows instead of three, the same sums up to float round-off.
  """
  units = h.shape[-1]
  kernel, bias = _packed_gru(meta, prefix, units)
  pre = tf.matmul(tf.concat([x, h], axis=1), kernel) + bias                 # [rows, 3 units]
  gates, cand_pre = pre[:, :2 * units], pre[:, 2 * units:]
  if injected_bias is not None:
    gate_bias, cand_bias = injected_bias[:, :2 * units], injected_bias[:, 2 * units:]
    if broadcast is not None:
      gate_bias, cand_bias = broadcast(gate_bias), broadcast(cand_bias)
    gates, cand_pre = gates + gate_bias, cand_pre + cand_bias
  reset, update = tf.split(tf.sigmoid(gates), 2, axis=-1)
  candidate = tf.tanh(cand_pre + tf.matmul(reset * h, meta[f"{prefix}/candidate/kernel_h"]))
  return update * h + (1.0 - update) * candidate


def _packed_gru(meta: MetaParamsDict, prefix: str, units: int) -> tuple[tf.Tensor, tf.Tensor]:
  """The GRU's gates and candidate input part as one [in + units, 3 units] kernel (the
  candidate's block for h is zero) and one [3 units] bias: reset, update, candidate."""
  kernel = tf.concat([
      tf.concat([meta[f"{prefix}/gates/kernel_x"], meta[f"{prefix}/candidate/kernel_x"]], 1),
      tf.concat([meta[f"{prefix}/gates/kernel_h"], tf.zeros([units, units], tf.float32)], 1),
  ], 0)
  bias = tf.concat([meta[f"{prefix}/gates/bias"], meta[f"{prefix}/candidate/bias"]], 0)
  return kernel, bias


def _affine(meta: MetaParamsDict, prefix: str, x: tf.Tensor) -> tf.Tensor:
  return tf.matmul(x, meta[f"{prefix}/kernel"]) + meta[f"{prefix}/bias"]


@tf.custom_gradient
def _asinh(x: tf.Tensor) -> tf.Tensor:
  """asinh(x) = sign(x) log1p(|x| + x^2 / (1 + sqrt(1 + x^2))), to float32 round-off.

  TF's CPU kernel for tf.asinh is scalar libm (about 30 ns an element on 2 cores, a tenth of
  the whole step at 1M parameters); this form is vectorised elementwise ops, under XLA too.
  Written so that neither large |x| (x^2 overflows only past 1e19, and |x| here is at most a
  few) nor small |x| (log1p keeps the relative precision) loses accuracy.
  """
  root = tf.sqrt(1.0 + tf.square(x))
  a = tf.abs(x)
  y = tf.sign(x) * tf.math.log1p(a + tf.square(a) / (1.0 + root))

  def grad(dy):   # the exact derivative, also at 0 (where abs and sign would give 0).
    return dy / root

  return y, grad


def _clip_forward(x: tf.Tensor, limit: float) -> tf.Tensor:
  """Clips in the forward pass only; the gradient passes straight through (reference)."""
  return x + tf.stop_gradient(tf.clip_by_value(x, -limit, limit) - x)


def _decays(meta: MetaParamsDict, config: HRNNConfig, hidden: tf.Tensor,
            first_step: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
  """Momentum decays [N, S] (beta^(2^-s), eq. 1) and the RMS decay [N, 1].

  Read out of the previous Parameter GRU state (or fixed at their initial values when
  learned_decays is off: seed paper 2's fixed-form EMAs); 0 on the first step.
  """
  s = config.num_timescales
  if config.learned_decays:
    momentum_logit = _affine(meta, "readout/momentum_decay", hidden)   # [N, 1]
    rms_logit = _affine(meta, "readout/rms_decay", hidden)
  else:
    momentum_logit = tf.constant([[config.momentum_decay_bias_init]], tf.float32)
    rms_logit = tf.constant([[config.rms_decay_bias_init]], tf.float32)
  # beta^(2^-s) = exp(2^-s log sigmoid(z)): no pow at 0, so gradients stay finite.
  powers = tf.constant([[2.0 ** -i for i in range(s)]], tf.float32)
  not_first = 1.0 - tf.cast(first_step, tf.float32)
  momentum_decay = tf.exp(tf.math.log_sigmoid(momentum_logit) * powers) * not_first
  rms_decay = tf.sigmoid(rms_logit) * not_first
  return momentum_decay, rms_decay


class StepOutput(NamedTuple):
  updates: list[tf.Tensor]   # to be subtracted from the parameters, one per tensor.
  state: State


def step(meta: MetaParamsDict, state: State, grads: Sequence[tf.Tensor | None],
         config: HRNNConfig, layout: Layout | None = None, fused: bool = False) -> StepOutput:
  """One optimizer step over all parameter tensors: (meta, state, grads) -> (updates, state).

  The caller applies `params[i] -= updates[i]`. A `None` gradient leaves that tensor and its
  state untouched (its old state still enters the problem-wide means). `fused` runs the row
  pass as the compiled kernel (see `step_flat`; the caller checks `kernels.available`).
  """
  if layout is None:
    layout = Layout([g.shape for g in grads])
  _check_grads(grads, layout)
  present = [g is not None for g in grads]
  grads = [tf.zeros(s, tf.float32) if g is None else g for g, s in zip(grads, layout.shapes)]
  update, new_state = step_flat(meta, state, layout.flatten(grads), config,
                                Segments.from_layout(layout),
                                fused_sizes=layout.sizes if fused else None)
  updates = layout.unflatten(update)
  if not all(present):
    new_state = _keep_absent(state, new_state, present, layout)
    updates = [u if p else tf.zeros_like(u) for u, p in zip(updates, present)]
  return StepOutput(updates, new_state)


def _check_grads(grads: Sequence[tf.Tensor | None], layout: Layout) -> None:
  """Raises unless there is one gradient (or None) per tensor of `layout`, of its shape."""
  if len(grads) != layout.num_tensors:
    raise ValueError(f"got {len(grads)} gradients for a layout of {layout.num_tensors} tensors")
  for i, (g, shape) in enumerate(zip(grads, layout.shapes)):
    if g is not None and tuple(g.shape) != shape:
      raise ValueError(f"gradient {i} has shape {tuple(g.shape)}, expected {shape}")


class GuardedStep(NamedTuple):
  updates: list[tf.Tensor]   # times the lr scale, to be subtracted; zeros for a skipped step
  state: State               # the new state, or the old one for a skipped step
  finite: tf.Tensor          # bool scalar: False if the step was skipped


def guarded_step(meta: MetaParamsDict, state: State, grads: Sequence[tf.Tensor | None],
                 config: HRNNConfig, layout: Layout, scale: tf.Tensor, fused: bool = False
                 ) -> GuardedStep:
  """`step` with the Keras optimizer's guard: if a gradient or an update is not finite, the
  step is skipped (old state, zero updates); the updates of present gradients are multiplied
  by `scale` (the learning-rate schedule's ratio). Returns updates for present gradients only.

  `fused` (all gradients present) runs the row pass and the update pass, which also applies
  the guard, as the compiled kernel; `step` with `fused` otherwise (see `step_flat`)."""
  present = [g is not None for g in grads]
  if fused and all(present):
    return _fused_guarded_step(meta, state, grads, config, layout, scale)
  out = step(meta, state, grads, config, layout, fused=fused)
  # Two reductions over the concatenated gradients and updates, not one per tensor: with
  # 100 variables the per-tensor form was ~300 of the step's ~460 XLA operations (each
  # compiled on its own, each a few microseconds a step). XLA folds the concatenation of
  # the updates' slices back into the flat update.
  finite = tf.logical_and(_all_finite([g for g in grads if g is not None]),
                          _all_finite(out.updates))
  new_state = State(*[tf.where(finite, new, old) for new, old in zip(out.state, state)])
  updates = [tf.where(finite, u * scale, tf.zeros_like(u))
             for u, p in zip(out.updates, present) if p]
  return GuardedStep(updates, new_state, finite)


def _all_finite(tensors) -> tf.Tensor:
  """Whether every element of every tensor is finite, as one reduction over their concatenation."""
  flat = [tf.reshape(t, [-1]) for t in tensors]
  return tf.reduce_all(tf.math.is_finite(flat[0] if len(flat) == 1 else tf.concat(flat, 0)))


def _fused_guarded_step(meta: MetaParamsDict, state: State, grads: Sequence[tf.Tensor],
                        config: HRNNConfig, layout: Layout, scale: tf.Tensor) -> GuardedStep:
  """`guarded_step` by the kernel: the row pass, XLA's Tensor and Global GRUs, then the
  update pass (`kernels.update_pass`) for the per-row tail of `step_flat` and the guard.
  The per-tensor and scalar factors of that tail are computed here as in `step_flat`."""
  from learned_opt import kernels
  _check_grads(grads, layout)
  grad = layout.flatten(grads)
  seg = Segments.from_layout(layout)
  head = _head(meta, state, grad, config, seg, layout.sizes)
  meta, rows = head.meta, head.rows
  log_schedule = _log_schedule(meta, config, state.step)
  factor = tf.math.rsqrt(rows.direction_ms[:, 0] + _EPS)                       # [T]
  if config.anneal_blackbox:
    factor *= tf.sqrt(rows.nominal_ms[:, 0])
  if config.blackbox_gain:
    factor *= meta["blackbox/gain"]
  magnitude = tf.exp(meta["nominal/log_step"] + _affine(meta, "nominal/head",
                                                        head.tensor_hidden)[:, 0]
                     + log_schedule.get("nominal", 0.0))                       # [T]
  anchor = meta["log_lr_anchor"] if config.anchored_log_lr else 0.0
  small = tf.concat([tf.reshape(tf.cast(x, tf.float32), [1]) for x in (
      tf.sigmoid(meta["log_lr_momentum_logit"]), anchor, config.max_log_lr,
      meta["log_step_offset"] + log_schedule.get("blackbox", 0.0), scale,
      float(config.anchored_log_lr))], axis=0)
  out = kernels.update_pass(grad, rows, state.log_lr, state, tf.stack([factor, magnitude], 1),
                            small, config, layout.sizes)
  finite = out.finite
  new_state = State(
      param_hidden=out.param_hidden, momentum=out.momentum, mean_square=out.mean_square,
      log_lr=out.log_lr, nominal_rms=out.nominal_rms, attention_offset=state.attention_offset,
      tensor_hidden=tf.where(finite, head.tensor_hidden, state.tensor_hidden),
      global_hidden=tf.where(finite, head.global_hidden, state.global_hidden),
      step=tf.where(finite, state.step + 1, state.step))
  updates = [tf.reshape(u, shape) for u, shape in zip(out.updates, layout.shapes)]
  return GuardedStep(updates, new_state, finite)


class Rows(NamedTuple):
  """The per-row part of a step (`_rows`; `kernels.row_pass` computes the same values).

  New per-parameter state (param_hidden, momentum, mean_square, nominal_rms), the direction
  before its per-tensor normalisation [N, 1] (readout + shortcut, preconditioned), the nominal
  direction [N] (None without the nominal term), the log-step-length delta [N], and per-tensor
  means [T, ...] of [new Parameter GRU state, features] (the Tensor GRU's input), of
  direction^2 and of nominal^2 (None without the nominal term). `scaled` [N, S] (the squashed
  momenta) is kept for the attention readout; the fused path does not implement attention.
  """
  param_hidden: tf.Tensor
  momentum: tf.Tensor
  mean_square: tf.Tensor
  nominal_rms: tf.Tensor
  direction: tf.Tensor
  nominal: tf.Tensor | None
  delta_log_lr: tf.Tensor
  tensor_input: tf.Tensor
  direction_ms: tf.Tensor
  nominal_ms: tf.Tensor | None
  scaled: tf.Tensor | None


def _rows(meta: MetaParamsDict, config: HRNNConfig, state: State, g: tf.Tensor,
          seg: Segments, first_step: tf.Tensor, param_bias: tf.Tensor) -> Rows:
  """The reference row pass, in TF ops (state in float32, g [N, 1])."""
  # Multi-timescale momentum (eq. 1) and RMS of the averaged gradients (eq. 2).
  momentum_decay, rms_decay = _decays(meta, config, state.param_hidden, first_step)
  momentum = momentum_decay * state.momentum + (1.0 - momentum_decay) * g           # [N, S]
  mean_square = rms_decay * state.mean_square + (1.0 - rms_decay) * (
      tf.square(momentum) + _MS_EPS)

  # Input features (§3.2.2-3.2.4): asinh-squashed scaled momenta (eq. 3), their products,
  # relative log magnitudes (eq. 4), relative log step length.
  scaled = _asinh(momentum * tf.math.rsqrt(mean_square + _EPS))                    # [N, S]
  features = [scaled]
  if config.use_grad_products:
    features.append(scaled[:, :-1] * scaled[:, 1:])
  if config.use_log_magnitudes:
    log_ms = tf.math.log(mean_square + _EPS)
    features.append(log_ms - tf.reduce_mean(log_ms, axis=1, keepdims=True))
  if config.use_relative_lr:
    features.append((state.log_lr - seg.element_mean(state.log_lr))[:, None])
  x = tf.concat(features, axis=1)                                                   # [N, F]

  # Parameter GRU with biases from the previous Tensor and Global states (eq. 10).
  param_hidden = _bias_gru(meta, "param_rnn", x, state.param_hidden, param_bias,
                           broadcast=seg.broadcast)                                 # [N, K_P]
  tensor_input = tf.concat([seg.mean(param_hidden), seg.mean(x)], axis=1)           # [T, ...]

  # Nominal term state (seed paper 2): RMS of the raw gradient, fixed-form EMA.
  nominal_rms = state.nominal_rms
  precondition = None
  if config.nominal_term or config.precondition_output:
    raw_decay = config.nominal_rms_decay * (1.0 - tf.cast(first_step, tf.float32))
    prev = state.nominal_rms[:, None] if config.nominal_term else tf.zeros_like(g)
    raw_ms = raw_decay * prev + (1.0 - raw_decay) * tf.square(g)                   # [N, 1]
    if config.nominal_term:
      nominal_rms = raw_ms[:, 0]
    if config.precondition_output:
      # Output preconditioning by 1/sqrt(v), before the per-tensor normalisation so that the
      # update stays invariant to the gradient scale (departure from STAR, which has no
      # direction normalisation to fold it into).
      source = raw_ms if config.nominal_term else mean_square[:, :1]
      precondition = tf.math.rsqrt(source + _EPS)

  # Direction: readout + gradient shortcut (A.1), before its unit RMS per tensor (eq. 5).
  direction = _raw_direction(meta, config, param_hidden, scaled, "readout/direction",
                             "readout/shortcut", precondition)
  nominal = nominal_ms = None
  if config.nominal_term:
    # AdamAggMo: mean over timescales of m_s / sqrt(v).
    nominal = tf.reduce_mean(momentum, axis=1) * tf.math.rsqrt(nominal_rms + _EPS)
    nominal_ms = seg.mean(tf.square(nominal[:, None]))
  delta_log_lr = _affine(meta, "readout/log_lr_delta", param_hidden)[:, 0]
  return Rows(param_hidden=param_hidden, momentum=momentum, mean_square=mean_square,
              nominal_rms=nominal_rms, direction=direction, nominal=nominal,
              delta_log_lr=delta_log_lr, tensor_input=tensor_input,
              direction_ms=seg.mean(tf.square(direction)), nominal_ms=nominal_ms,
              scaled=scaled)


def _raw_direction(meta, config, param_hidden, scaled, readout_name, shortcut_name,
                   precondition):
  direction = tf.matmul(param_hidden, meta[readout_name])
  if config.use_gradient_shortcut:
    direction += tf.matmul(scaled, meta[shortcut_name])
  if precondition is not None:
    direction *= precondition
  return direction


def _fused_rows(meta: MetaParamsDict, config: HRNNConfig, state: State, g: tf.Tensor,
                seg: Segments, first_step: tf.Tensor, param_bias: tf.Tensor,
                sizes: Sequence[int]) -> Rows:
  """`_rows` by the compiled kernel (learned_opt/kernels): same values, stored state."""
  from learned_opt import kernels
  k, s = config.param_units, config.num_timescales
  momentum_decay, rms_decay = _decays(meta, config, None, first_step)
  raw_decay = config.nominal_rms_decay * (1.0 - tf.cast(first_step, tf.float32))
  small = tf.concat([
      tf.reshape(momentum_decay, [s]), tf.reshape(rms_decay, [1]), tf.reshape(raw_decay, [1]),
      tf.reshape(seg.element_mean(state.log_lr), [1]),
      tf.reshape(meta["readout/direction"], [k]), tf.reshape(meta["readout/shortcut"], [s]),
      tf.reshape(meta["readout/log_lr_delta/kernel"], [k]),
      tf.reshape(meta["readout/log_lr_delta/bias"], [1])], axis=0)
  kernel, bias = _packed_gru(meta, "param_rnn", k)
  out = kernels.row_pass(g[:, 0], state, config, bias + param_bias, kernel,
                         meta["param_rnn/candidate/kernel_h"], small, sizes)
  means = out.sums / seg.counts
  width = k + config.input_size
  return Rows(param_hidden=out.param_hidden, momentum=out.momentum,
              mean_square=out.mean_square, nominal_rms=out.nominal_rms,
              direction=out.direction[:, None], nominal=out.nominal,
              delta_log_lr=out.delta_log_lr, tensor_input=means[:, :width],
              direction_ms=means[:, width:width + 1], nominal_ms=means[:, width + 1:],
              scaled=None)


class _Head(NamedTuple):
  """What both tails of a step start from (`step_flat`, `_fused_guarded_step`)."""
  meta: MetaParamsDict      # float32
  state: State              # the old state, stored leaves in float32
  rows: Rows
  tensor_hidden: tf.Tensor  # new [T, K_T]
  global_hidden: tf.Tensor  # new [1, K_G]


def _head(meta: MetaParamsDict, state: State, grad: tf.Tensor, config: HRNNConfig,
          seg: Segments, fused_sizes: Sequence[int] | None) -> _Head:
  """The row pass and the Tensor and Global GRUs (eq. 10-12)."""
  meta = {k: tf.cast(v, tf.float32) for k, v in meta.items()}
  g = tf.reshape(tf.cast(grad, tf.float32), [-1, 1])                 # [N, 1]
  first_step = tf.equal(state.step, 0)
  stored = state
  state = state._replace(**{f: tf.cast(getattr(state, f), tf.float32) for f in STORED_FIELDS})

  # Biases injected into the Parameter GRU from the previous Tensor and Global states (eq. 10).
  param_bias = (_affine(meta, "param_bias_from_tensor", state.tensor_hidden)         # [T, 3K_P]
                + _affine(meta, "param_bias_from_global", state.global_hidden))
  if fused_sizes is not None:
    rows = _fused_rows(meta, config, stored, g, seg, first_step, param_bias, fused_sizes)
  else:
    rows = _rows(meta, config, state, g, seg, first_step, param_bias)

  # Tensor GRU on the per-tensor mean of [new parameter state, inputs] (eq. 11).
  tensor_bias = _affine(meta, "tensor_bias_from_global", state.global_hidden)
  tensor_hidden = _bias_gru(meta, "tensor_rnn", rows.tensor_input, state.tensor_hidden,
                            tensor_bias)

  # Global GRU on the mean over all tensors (eq. 12; the original used the last tensor only).
  global_input = seg.tensor_mean(tensor_hidden)
  global_hidden = _bias_gru(meta, "global_rnn", global_input, state.global_hidden, None)
  return _Head(meta, state, rows, tensor_hidden, global_hidden)


def step_flat(meta: MetaParamsDict, state: State, grad: tf.Tensor, config: HRNNConfig,
              seg: Segments, fused_sizes: Sequence[int] | None = None
              ) -> tuple[tf.Tensor, State]:
  """The step on the flat vector: grad [N] -> (update [N], new state); see `step`.

  `seg` says which tensor every row belongs to (and, for padded vectors, which rows and
  tensor slots are real: padded rows get a zero update and stay out of every statistic).
  `fused_sizes` (the rows of each tensor, contiguous and in order) runs the row pass as the
  compiled kernel (`learned_opt.kernels`): only under XLA on CPU, without a gradient, for a
  config `kernels.available` accepts.
  """
  head = _head(meta, state, grad, config, seg, fused_sizes)
  meta, state, rows = head.meta, head.state, head.rows
  param_hidden = rows.param_hidden
  tensor_hidden, global_hidden = head.tensor_hidden, head.global_hidden

  # Direction at unit RMS per tensor (eq. 5).
  direction = rows.direction * tf.math.rsqrt(seg.broadcast(rows.direction_ms) + _EPS)

  # Step length (eq. 7-8): log step relative to a running average with learned momentum.
  delta_log_lr = rows.delta_log_lr
  step_log_lr = _clip_forward(state.log_lr + delta_log_lr, config.max_log_lr)
  lr_momentum = tf.sigmoid(meta["log_lr_momentum_logit"])
  if config.anchored_log_lr:
    # Departure: the average pulls toward anchor + delta, not toward itself + delta, so
    # |log_lr - anchor| <= max |delta| and the used step within anchor +- 2 max |delta|.
    target = _clip_forward(meta["log_lr_anchor"] + delta_log_lr, config.max_log_lr)
  else:
    target = step_log_lr
  log_lr = lr_momentum * state.log_lr + (1.0 - lr_momentum) * target
  log_schedule = _log_schedule(meta, config, state.step)
  nominal = rows.nominal
  if config.anneal_blackbox:
    # Departure: the RNN direction takes the nominal direction's per-tensor RMS instead of 1,
    # so that it shrinks, as Adam's step does, once the gradients fall below their long-run
    # RMS; at unit RMS it kept its full length at interpolation and pushed the weights outward.
    direction *= seg.broadcast(tf.sqrt(rows.nominal_ms))
  blackbox_log_lr = step_log_lr + meta["log_step_offset"] + log_schedule.get("blackbox", 0.0)
  blackbox = (tf.exp(blackbox_log_lr)[:, None] * direction)[:, 0]
  if config.blackbox_gain:
    blackbox = meta["blackbox/gain"] * blackbox
  update = blackbox

  if config.nominal_term:
    # The nominal term's own learned magnitude exp(a + head(tensor state)).
    log_magnitude = meta["nominal/log_step"] + seg.broadcast(
        _affine(meta, "nominal/head", tensor_hidden))[:, 0] + log_schedule.get("nominal", 0.0)
    update = update + tf.exp(log_magnitude) * nominal

  attention_offset = state.attention_offset
  if config.use_attention:
    # Gradients were taken at phi = theta + offset. theta_new = theta - update, and the next
    # attended point is phi_new = theta - lr_att * d_att (eq. 6, 9: an offset from the old
    # theta, step length without the learned offset). The variable holds phi.
    attention = _raw_direction(meta, config, param_hidden, rows.scaled, "readout/attention",
                               "readout/attention_shortcut", None)
    attention *= tf.math.rsqrt(seg.broadcast(seg.mean(tf.square(attention))) + _EPS)
    attention_step = (tf.exp(step_log_lr)[:, None] * attention)[:, 0]
    variable_update = state.attention_offset + attention_step   # phi - phi_new
    attention_offset = update - attention_step                  # phi_new - theta_new
    update = variable_update

  new_state = State(
      param_hidden=param_hidden, momentum=rows.momentum, mean_square=rows.mean_square,
      log_lr=log_lr, nominal_rms=rows.nominal_rms, attention_offset=attention_offset,
      tensor_hidden=tensor_hidden, global_hidden=global_hidden, step=state.step + 1)
  new_state = _store(new_state, config)
  if seg.element_mask is not None:
    update = update * seg.element_mask
    if config.use_attention:
      new_state = new_state._replace(attention_offset=attention_offset * seg.element_mask)
  return update, new_state


def _log_schedule(meta: MetaParamsDict, config: HRNNConfig, step: tf.Tensor
                  ) -> dict[str, tf.Tensor]:
  """{"blackbox" / "nominal": added log step length} under `learned_schedule`, else {}."""
  if not config.learned_schedule:
    return {}
  # Departure: a learned power-law decay of both step lengths with the step count, outside
  # the stored log step length (whose recurrence stays as it is). min(w, 0): never a growth.
  progress = tf.math.log1p(tf.cast(step, tf.float32) / config.schedule_steps)
  return {name: tf.minimum(meta[f"schedule/{name}"], 0.0) * progress
          for name in ("blackbox", "nominal") if f"schedule/{name}" in meta}


def _keep_absent(old: State, new: State, present: Sequence[bool], layout: Layout) -> State:
  """Restores the per-parameter and per-tensor state of tensors that had no gradient."""
  def rows(new_x, old_x, sizes):
    if new_x.shape[0] == 0:
      return new_x
    new_parts = tf.split(new_x, sizes, axis=0)
    old_parts = tf.split(old_x, sizes, axis=0)
    return tf.concat([n if p else o for n, o, p in zip(new_parts, old_parts, present)], axis=0)

  per_param = {f: rows(getattr(new, f), getattr(old, f), layout.sizes)
               for f in PER_PARAMETER_FIELDS}
  tensor_hidden = rows(new.tensor_hidden, old.tensor_hidden, [1] * layout.num_tensors)
  return new._replace(tensor_hidden=tensor_hidden, **per_param)


def true_params(params: Sequence[tf.Tensor], state: State, layout: Layout) -> list[tf.Tensor]:
  """theta from the variables' values phi (they differ only with attention)."""
  if state.attention_offset.shape[0] == 0:
    return list(params)
  return [p - o for p, o in zip(params, layout.unflatten(state.attention_offset))]
