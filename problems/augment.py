"""Task augmentation (VeLO, Celo): one task, many gradient scales, the same minimiser.

Why: a learned optimizer that sees each task at one scale learns that scale. Augmentation
shows it the same task under random reparameterisations, so that what it learns must be
invariant to them (the scales a network's tensors happen to have, the scale of its loss,
how noisy its gradients are), without changing what "solved" means.

`Augmented(inner)` is a wrapper Problem. Per instance (data seed) it draws

* a reparameterisation θ = s ⊙ θ′: the optimizer sees and updates θ′; the loss is computed at
  θ. The level is drawn as in VeLO's task sampler: none (2/7), global (2/7: one scale for all
  parameters), per tensor (2/7) or per parameter (1/7), with scales log-uniform in a range
  drawn from (1e-3, 1e3), (1e-2, 1e2), (1e-1, 10);
* a loss scale c (1 with probability 1/2, else log-uniform in [1e-2, 1e2]);
* relative gradient noise (probability 1/4): each step adds ν · rms(g′) · N(0, 1) to every
  tensor's gradient g′, ν log-uniform in [0.01, 1].

so the optimizer sees the loss c · f(s ⊙ θ′) and gradients c · s ⊙ ∇f(s ⊙ θ′) (+ noise): the
gradient scales change while the minimiser, mapped back by θ = s ⊙ θ′, does not. The draws are
data arrays ("augment/..."), never Python constants, so one compiled function serves every
instance; the level lives only in the values of the scale arrays.

Initial parameters are the inner task's, mapped to θ′ = θ₀ / s. That needs the instance's
scales, which come from the data seed, while the trainer draws initialisations from a
separate seed: `initial_params(seed, data)` (the hook meta/unroll.start_carry calls) reads the
scales from the data; `init_params(seed)` alone assumes the data seed is `seed`.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import tensorflow as tf

from problems import base

PREFIX = "augment/"
LEVELS = ("none", "global", "tensor", "parameter")
LEVEL_WEIGHTS = (2, 2, 2, 1)                       # VeLO's [None, None, g, g, t, t, p]
SCALE_RANGES = ((1e-3, 1e3), (1e-2, 1e2), (1e-1, 10.0))
LOSS_SCALE_RANGE = (1e-2, 1e2)
LOSS_SCALE_PROBABILITY = 0.5
NOISE_RANGE = (0.01, 1.0)
NOISE_PROBABILITY = 0.25
AUGMENT_NOISE_STREAM = 17   # per-step stream tag; base uses 1-3 and 1000+.


def _log_uniform(rng, low, high, size=None):
  return np.exp(rng.uniform(math.log(low), math.log(high), size=size))


class Augmented(base.Problem):
  """`inner` under a random reparameterisation, loss scale and gradient noise per instance.

  Args:
    inner: the task.
    levels, level_weights: which reparameterisation levels are drawn, with what weights.
    scale_ranges: log-uniform ranges of s, one drawn per instance.
    loss_scale_range, loss_scale_probability: c ~ log-uniform(range) with that probability,
      else 1.
    noise_range, noise_probability: relative gradient noise ν ~ log-uniform(range) with that
      probability, else 0.
  """

  def __init__(self, inner: base.Problem, *, levels=LEVELS, level_weights=LEVEL_WEIGHTS,
               scale_ranges=SCALE_RANGES, loss_scale_range=LOSS_SCALE_RANGE,
               loss_scale_probability=LOSS_SCALE_PROBABILITY, noise_range=NOISE_RANGE,
               noise_probability=NOISE_PROBABILITY):
    if any(level not in LEVELS for level in levels) or len(levels) != len(level_weights):
      raise ValueError(f"aug({inner.name}): levels must be among {LEVELS}, one weight each")
    self.inner = inner
    self.batched_keys = inner.batched_keys
    self.levels = tuple(levels)
    self.level_probabilities = np.asarray(level_weights, np.float64) / sum(level_weights)
    self.scale_ranges = tuple(tuple(r) for r in scale_ranges)
    self.loss_scale_range = tuple(loss_scale_range)
    self.loss_scale_probability = float(loss_scale_probability)
    self.noise_range = tuple(noise_range)
    self.noise_probability = float(noise_probability)
    # The minimum scales with c: it stays exact only where it is 0.
    if inner.minimum == 0.0:
      minimum, kind = 0.0, inner.minimum_kind
    else:
      low, high = (self.loss_scale_range if self.loss_scale_probability > 0 else (1.0, 1.0))
      minimum, kind = inner.minimum * (min(low, 1.0) if inner.minimum > 0 else max(high, 1.0)), \
          "bound"
    super().__init__(f"aug({inner.name})", family=inner.family, batch_size=inner.batch_size,
                     noise_stdev=inner.noise_stdev, transform="augment", minimum=minimum,
                     minimum_kind=kind)
    self.masked_parameters = inner.masked_parameters

  # --- the draws ---------------------------------------------------------------------------

  def draw(self, seed: int) -> dict:
    """The instance's augmentation: level, scale range, scales s (list), loss scale, noise."""
    # Keyed by this wrapper's name, so independent of the inner task's draws for `seed`.
    rng = self.rng(seed, base.DATA_STREAM)
    level = self.levels[int(rng.choice(len(self.levels), p=self.level_probabilities))]
    low, high = self.scale_ranges[int(rng.integers(len(self.scale_ranges)))]
    shapes = self.inner.param_shapes()
    if level == "none":
      scales = [np.ones(shape) for shape in shapes]
    elif level == "global":
      value = _log_uniform(rng, low, high)
      scales = [np.full(shape, value) for shape in shapes]
    elif level == "tensor":
      scales = [np.full(shape, _log_uniform(rng, low, high)) for shape in shapes]
    else:
      scales = [_log_uniform(rng, low, high, size=shape) for shape in shapes]
    loss_scale = (_log_uniform(rng, *self.loss_scale_range)
                  if rng.random() < self.loss_scale_probability else 1.0)
    noise = (_log_uniform(rng, *self.noise_range)
             if rng.random() < self.noise_probability else 0.0)
    return {"level": level, "scale_range": (low, high) if level != "none" else None,
            "scales": [np.asarray(s, np.float32).reshape(shape) for s, shape in
                       zip(scales, shapes)],
            "loss_scale": float(loss_scale), "gradient_noise": float(noise)}

  def instance_info(self, seed: int) -> dict:
    draw = self.draw(seed)
    info = dict(getattr(self.inner, "instance_info", lambda s: {})(seed))
    info.update(augment=draw["level"], scale_range=draw["scale_range"],
                loss_scale=round(draw["loss_scale"], 4),
                gradient_noise=round(draw["gradient_noise"], 4))
    return info

  @staticmethod
  def scales_of(data: Mapping) -> list[np.ndarray]:
    count = sum(1 for key in data if key.startswith(PREFIX + "scale/"))
    return [np.asarray(data[f"{PREFIX}scale/{index}"], np.float32) for index in range(count)]

  @staticmethod
  def inner_data(data: Mapping) -> dict:
    return {key: value for key, value in data.items() if not key.startswith(PREFIX)}

  # --- Problem interface -------------------------------------------------------------------

  def param_shapes(self):
    return self.inner.param_shapes()

  def sample_data(self, seed):
    draw = self.draw(seed)
    data = dict(self.inner.sample_data(seed))
    if any(key.startswith(PREFIX) for key in data):
      raise ValueError(f"{self.name}: inner data keys must not start with {PREFIX!r}")
    for index, scale in enumerate(draw["scales"]):
      data[f"{PREFIX}scale/{index}"] = scale
    data[PREFIX + "loss_scale"] = np.float32(draw["loss_scale"])
    data[PREFIX + "gradient_noise"] = np.float32(draw["gradient_noise"])
    return {key: np.asarray(value) for key, value in data.items()}

  def initial_params(self, seed, data):
    """θ′₀ = θ₀ / s with the inner task's init θ₀ (from `seed` and its own data: a family's
    instance initialises by its drawn sizes) and the scales in `data`."""
    inner = self.inner.initial_params(seed, self.inner_data(data))
    return [(theta / scale).astype(np.float32)
            for theta, scale in zip(inner, self.scales_of(data))]

  def parameter_masks(self, data):
    return self.inner.parameter_masks(self.inner_data(data))

  def init_params(self, seed):
    """θ′₀ for the instance whose data seed is also `seed` (see the module docstring)."""
    return [(theta / scale).astype(np.float32) for theta, scale in
            zip(self.inner.init_params(seed), self.draw(seed)["scales"])]

  def _theta(self, params, batch):
    return [p * batch[f"{PREFIX}scale/{index}"] for index, p in enumerate(params)]

  def objective(self, params, batch):
    return batch[PREFIX + "loss_scale"] * self.inner.objective(self._theta(params, batch),
                                                               self.inner_data(batch))

  def minibatch(self, data, seed):
    return self.inner.minibatch(data, seed)

  def gradients(self, params, data, seed):
    """c · s ⊙ ∇f(θ) with the inner task's own noise and masks applied to ∇f(θ) (they are
    part of the task), then the relative augmentation noise on top."""
    params = self._checked(params)
    batch = self.minibatch(data, seed)
    theta = self._theta(params, batch)
    with tf.GradientTape() as tape:
      tape.watch(theta)
      inner_loss = self.inner.objective(theta, self.inner_data(batch))
    grads = tape.gradient(inner_loss, theta, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    grads = self.inner.perturb_gradients(list(grads), seed)
    loss_scale = batch[PREFIX + "loss_scale"]
    grads = [loss_scale * batch[f"{PREFIX}scale/{index}"] * grad
             for index, grad in enumerate(grads)]
    noise_seed = base.step_stream(seed, AUGMENT_NOISE_STREAM)
    level = batch[PREFIX + "gradient_noise"]
    noisy = []
    masks = self.parameter_masks(batch) or [None] * len(grads)
    for index, (grad, mask) in enumerate(zip(grads, masks)):
      if mask is None:
        rms = tf.stop_gradient(tf.sqrt(tf.reduce_mean(tf.square(grad))))
      else:   # over the instance's own entries, where the inner task masks some (a family)
        rms = tf.stop_gradient(tf.sqrt(tf.reduce_sum(tf.square(grad))
                                       / tf.maximum(tf.reduce_sum(mask), 1.0)))
      noisy.append(grad + level * rms * base.standard_normal(
          grad.shape, base.step_stream(noise_seed, index)))
    return loss_scale * inner_loss, noisy

  def perturb_gradients(self, grads, seed):
    raise NotImplementedError(f"{self.name}: noise is applied in gradients(), which needs data")

  def _map_back(self, params, data):
    if params is None:
      return None
    return [(p / s).astype(np.float32) for p, s in zip(params, self.scales_of(data))]

  def minimizer(self, data):
    """The inner minimiser θ* in stored coordinates: θ′* = θ* / s."""
    return self._map_back(self.inner.minimizer(self.inner_data(data)), data)

  def descent_direction(self, data):
    return self._map_back(self.inner.descent_direction(self.inner_data(data)), data)

  def infimum_path(self, data, t):
    return self._map_back(self.inner.infimum_path(self.inner_data(data), t), data)

  def to_inner(self, params, data) -> list[np.ndarray]:
    """θ = s ⊙ θ′: stored parameters mapped back to the task's own coordinates."""
    return [(np.asarray(p) * s).astype(np.float32) for p, s in zip(params, self.scales_of(data))]
