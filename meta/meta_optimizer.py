"""RMSProp or Adam on the meta-parameters, with the reference's gradient cleaning.

hrnn_reference.md §3 (RMSProp) and peers.md §1.4 (Adam: learned_optimization's PES recipe
uses outer Adam at 3e-4 behind a gradient clip). `build(name, ...)` picks one.

Per element: non-finite meta-gradients are replaced by 0, then clipped to +-clip (reference
`gradient_clip_level` 1e4). Optional L2 on the meta-parameters (seed paper 2's "weight decay":
the *optimizer's own* weights, not the problem parameters; peers.md §1.3): the gradient of
(l2 / 2) * ||theta||^2 is added before clipping.

RMSProp as TF1's `tf.train.RMSPropOptimizer` that the reference used: ms <- decay ms +
(1 - decay) g^2, theta <- theta - lr g / sqrt(ms + eps). Departure: TF1 starts the mean-square
slot at ONE; with meta-gradients of ~1e-3 that shrinks the first ~50 meta-steps by ~1000x,
harmless over the reference's weeks of training but it hides all progress in a CPU run of
minutes, so the slot starts at zero (as Keras' RMSprop; the first step is lr * sqrt(10) * sign). The slots are plain `tf.Variable`s, so the optimizer checkpoints with
`tf.train.Checkpoint` and runs unchanged on MirroredVariables or parameter-server variables.
"""

from __future__ import annotations

import fnmatch
from typing import Mapping

NAMES = ("rmsprop", "adam")

import tensorflow as tf

# Scalar log-scale offsets whose zero is not "off": L2 would drag them towards a step length
# of exp(0) = 1 or a log-lr momentum of 1/2. Seed paper 2's weight decay acts on the network
# weights; its step multipliers are fixed constants, not meta-parameters, so we exclude ours.
L2_EXCLUDED = ("log_step_offset", "nominal/log_step", "log_lr_momentum_logit", "log_lr_anchor")

# Meta-parameters with an upper bound, projected onto it after every update. The `scheduled`
# preset's exponents act as min(w, 0) (a decay, never a growth); without the projection a w
# pushed above 0 sits where both of PES's +-sigma probes are clipped and gets no signal back.
UPPER_BOUNDS = {"schedule/nominal": 0.0, "schedule/blackbox": 0.0}


def parse_lr_scales(spec: str, names) -> dict[str, float]:
  """Per-meta-parameter learning-rate multipliers from "PATTERN=SCALE,..." (--meta_lr_scales).

  PATTERN is an fnmatch pattern over meta-parameter names ("log_lr_anchor", "nominal/*",
  "readout/*"); a name matched by several patterns takes the last one's scale; names no
  pattern matches keep 1. Why: with Adam every coordinate moves by about the learning rate per
  step whatever its gradient's size, so at a meta-lr of 1e-4 a scalar such as the log step
  length (a log-scale offset of magnitude ~5) needs tens of thousands of meta-steps to move by
  one, while the network weights beside it are already at their scale. Raises ValueError naming
  the flag and the offending entry.
  """
  names = list(names)
  scales = {k: 1.0 for k in names}
  for entry in filter(None, (e.strip() for e in spec.split(","))):
    pattern, sep, value = entry.partition("=")
    pattern = pattern.strip()
    try:
      scale = float(value) if sep else float("nan")
    except ValueError:
      scale = float("nan")
    if not pattern or not scale > 0 or scale == float("inf"):
      raise ValueError(f"--meta_lr_scales entry {entry!r}: expected PATTERN=SCALE with a "
                       "finite SCALE > 0")
    matched = fnmatch.filter(names, pattern)
    if not matched:
      raise ValueError(f"--meta_lr_scales pattern {pattern!r} matches no meta-parameter; "
                       f"names are {sorted(names)}")
    for k in matched:
      scales[k] = scale
  return scales


class MetaRMSProp(tf.Module):
  """RMSProp for a dict of meta-parameter variables."""

  def __init__(self, variables: Mapping[str, tf.Variable], learning_rate: float,
               decay: float = 0.9, epsilon: float = 1e-10, clip: float = 1e4,
               l2: float = 0.0, lr_scales: Mapping[str, float] | None = None,
               name: str = "meta_rmsprop"):
    super().__init__(name=name)
    if learning_rate <= 0 or not 0 <= decay < 1 or epsilon < 0 or clip <= 0 or l2 < 0:
      raise ValueError(f"bad RMSProp settings lr={learning_rate} decay={decay} "
                       f"eps={epsilon} clip={clip} l2={l2}")
    self.learning_rate = float(learning_rate)
    self.decay = float(decay)
    self.epsilon = float(epsilon)
    self.clip = float(clip)
    self.l2 = float(l2)
    self.names = sorted(variables)
    # Per-variable learning rate: learning_rate x lr_scales[k] (parse_lr_scales; default 1).
    unknown = sorted(set(lr_scales or {}) - set(self.names))
    if unknown:
      raise ValueError(f"lr_scales names unknown meta-parameters {unknown}")
    self.learning_rates = {k: self.learning_rate * float((lr_scales or {}).get(k, 1.0))
                           for k in self.names}
    with self.name_scope:
      self.mean_square = {
          k: tf.Variable(tf.zeros_like(variables[k]), trainable=False,
                         name="ms__" + k.replace("/", "__")) for k in self.names}

  def clean(self, grads: Mapping[str, tf.Tensor], variables: Mapping[str, tf.Variable]):
    """Zeroes non-finite entries, adds L2, clips elementwise."""
    out = {}
    for k in self.names:
      g = tf.convert_to_tensor(grads[k], tf.float32)
      g = tf.where(tf.math.is_finite(g), g, tf.zeros_like(g))
      if self.l2 and k not in L2_EXCLUDED:
        g = g + self.l2 * tf.convert_to_tensor(variables[k])
      out[k] = tf.clip_by_value(g, -self.clip, self.clip)
    return out

  def apply(self, grads: Mapping[str, tf.Tensor], variables: Mapping[str, tf.Variable]):
    """One RMSProp update of `variables` from raw meta-gradients `grads`."""
    grads = self.clean(grads, variables)
    for k in self.names:
      ms = self.mean_square[k]
      new_ms = self.decay * ms + (1.0 - self.decay) * tf.square(grads[k])
      ms.assign(new_ms)
      variables[k].assign_sub(self.learning_rates[k] * grads[k] * tf.math.rsqrt(new_ms + self.epsilon))
      self._project(k, variables)

  def _project(self, k: str, variables: Mapping[str, tf.Variable]) -> None:
    if k in UPPER_BOUNDS:
      variables[k].assign(tf.minimum(variables[k], UPPER_BOUNDS[k]))


class MetaAdam(MetaRMSProp):
  """Adam (Kingma & Ba) for a dict of meta-parameter variables, after the same cleaning.

  m <- b1 m + (1 - b1) g, v <- b2 v + (1 - b2) g^2, theta <- theta - lr m_hat / (sqrt(v_hat)
  + eps) with bias-corrected m_hat, v_hat. The gradient is cleaned first (non-finite -> 0,
  L2, elementwise clip at `clip`), so with PES's noisy estimates `clip` bounds each
  coordinate's contribution to the moments; learned_optimization clips at 3 before Adam.
  """

  def __init__(self, variables: Mapping[str, tf.Variable], learning_rate: float,
               beta1: float = 0.9, beta2: float = 0.999, epsilon: float = 1e-8,
               clip: float = 1e4, l2: float = 0.0,
               lr_scales: Mapping[str, float] | None = None, name: str = "meta_adam"):
    if not (0 <= beta1 < 1 and 0 <= beta2 < 1):
      raise ValueError(f"bad Adam settings beta1={beta1} beta2={beta2}")
    super().__init__(variables, learning_rate, decay=beta2, epsilon=epsilon, clip=clip, l2=l2,
                     lr_scales=lr_scales, name=name)
    self.beta1 = float(beta1)
    with self.name_scope:
      self.momentum = {
          k: tf.Variable(tf.zeros_like(variables[k]), trainable=False,
                         name="m__" + k.replace("/", "__")) for k in self.names}
      self.iterations = tf.Variable(0, dtype=tf.int64, trainable=False, name="iterations")

  def apply(self, grads: Mapping[str, tf.Tensor], variables: Mapping[str, tf.Variable]):
    """One Adam update of `variables` from raw meta-gradients `grads`."""
    grads = self.clean(grads, variables)
    t = tf.cast(self.iterations.assign_add(1), tf.float32)
    correction1 = 1.0 - tf.pow(self.beta1, t)
    correction2 = 1.0 - tf.pow(self.decay, t)
    for k in self.names:
      m = self.momentum[k].assign(self.beta1 * self.momentum[k] + (1.0 - self.beta1) * grads[k])
      v = self.mean_square[k].assign(
          self.decay * self.mean_square[k] + (1.0 - self.decay) * tf.square(grads[k]))
      variables[k].assign_sub(self.learning_rates[k] * (m / correction1)
                              / (tf.sqrt(v / correction2) + self.epsilon))
      self._project(k, variables)


def build(name: str, variables: Mapping[str, tf.Variable], learning_rate: float, *,
          decay: float, epsilon: float, clip: float, l2: float, beta1: float = 0.9,
          beta2: float = 0.999, adam_epsilon: float = 1e-8, lr_scales: str = ""):
  """The meta-optimizer `name` ("rmsprop": reference; "adam": PES recipe).

  `lr_scales`: the --meta_lr_scales spec (parse_lr_scales), "" for one learning rate.
  """
  scales = parse_lr_scales(lr_scales, variables)
  if name == "rmsprop":
    return MetaRMSProp(variables, learning_rate, decay=decay, epsilon=epsilon, clip=clip, l2=l2,
                       lr_scales=scales)
  if name == "adam":
    return MetaAdam(variables, learning_rate, beta1=beta1, beta2=beta2, epsilon=adam_epsilon,
                    clip=clip, l2=l2, lr_scales=scales)
  raise ValueError(f"unknown --meta_optimizer {name!r}; choose one of {NAMES}")
