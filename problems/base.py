"""The Problem interface the meta-trainer unrolls (paper §4.1, reference §2.1).

A `Problem` is a static, hashable description of one entry of the meta-training
ensemble: parameter shapes, batch size, gradient noise, transform and known
minimum. Everything random about an *instance* is produced on the numpy side,
deterministically from an integer seed, and handed to the loss as tensors:

    data   = problem.sample_data(seed)     # dict of float32 arrays (W, y, x, ...)
    params = problem.init_params(seed)     # list of float32 arrays
    loss, grads = problem.gradients(params, data, step_seed)   # step_seed: int32 [2]

so that one `tf.function(jit_compile=True)` per problem *name* serves every
instance. Minibatch sampling, gradient noise and gradient masking use
`tf.random.stateless_*` on the per-step seed only; the loss code contains no
Python-side randomness and no numpy.

Subclasses implement `param_shapes` and `objective(params, batch)` (the loss on a
batch of data without any checks) and, where they differ from the defaults,
`sample_data`, `init_params`, `minimizer`, `descent_direction`.
"""

from __future__ import annotations

import math
import zlib
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

LITERATURE_2D = "literature_2d"
WELL_BEHAVED = "well_behaved"
NOISY_MINIBATCH = "noisy_minibatch"
SLOW_CONVERGENCE = "slow_convergence"
TRANSFORM = "transform"
NEURAL_NETWORK = "neural_network"
FAMILIES = (LITERATURE_2D, WELL_BEHAVED, NOISY_MINIBATCH, SLOW_CONVERGENCE,
            TRANSFORM, NEURAL_NETWORK)

# How `Problem.minimum` relates to full_loss:
#   "exact":    minimizer(data) attains it;
#   "infinity": it is the infimum, approached along infimum_path(data, t), t -> inf;
#   "bound":    a lower bound only (true minimum unknown or instance-dependent).
MINIMUM_KINDS = ("exact", "infinity", "bound")

EPSILON = 1e-6  # the reference's problem_generator.EPSILON

# (ndim, samples, batch) of the reference's data-driven groups (OutwardSnake,
# ProjectionQuadratic, ...); the first five are in the default set.
DATA_SETTINGS = ((20, 1000, 100), (12, 100, 10), (56, 5000, 100), (64, 1000, 50),
                 (13, 10000, 50), (20, 1000, 128), (12, 100, 16), (56, 5000, 128),
                 (64, 1000, 64), (13, 10000, 32))

# Independent random streams derived from one integer seed (numpy side) ...
DATA_STREAM, INIT_STREAM = 0, 1
# ... and from one per-step int32 [2] seed (tensor side).
BATCH_STREAM, NOISE_STREAM, MASK_STREAM, CHILD_STREAM = 1, 2, 3, 1000


def numpy_rng(seed: int, stream: int, key: str = "") -> np.random.Generator:
  """Generator for one stream (DATA_STREAM, INIT_STREAM, ...) of an instance seed.

  `key` (the problem name) decorrelates problems drawn with the same seed.
  """
  if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed must be a non-negative int, got {seed!r}")
  return np.random.default_rng([int(seed), stream, zlib.crc32(key.encode())])


# Pinned, and floats are made from integer draws (see `uniform`), so that XLA
# and eager execution draw the same numbers for one seed.
RNG_ALGORITHM = "philox"


def step_stream(seed, tag: int) -> tf.Tensor:
  """Independent per-step seed (int32 [2]) for one use: batch, noise, mask, child."""
  if seed is None:
    raise ValueError("a per-step seed (int32 tensor of shape [2]) is required")
  return tf.random.experimental.stateless_fold_in(
      tf.convert_to_tensor(seed, dtype_hint=tf.int32), tag, alg=RNG_ALGORITHM)


def uniform(shape, seed) -> tf.Tensor:
  """U(0, 1) float32 samples, strictly inside (0, 1), on a grid of 2^-24.

  tf.random.stateless_uniform turns random bits into floats differently under
  XLA and eagerly (on CPU, TF 2.21), while its integer draws agree; so floats
  are made here from integer draws.
  """
  bits = tf.random.stateless_uniform(tuple(shape), seed, minval=0, maxval=1 << 24,
                                     dtype=tf.int32, alg=RNG_ALGORITHM)
  return (tf.cast(bits, tf.float32) + 0.5) * (1.0 / (1 << 24))


def standard_normal(shape, seed) -> tf.Tensor:
  """N(0, 1) samples by Box-Muller from `uniform` (same numbers under XLA and eagerly).

  Element k of the flattened output uses the integer draws 2k and 2k + 1, so a draw of a
  shape larger in its leading dimension starts with the smaller draw (a padded problem's gradient
  noise equals its own on the real entries: meta/unroll.py, `Problem.padding_family`).
  """
  uniforms = uniform(tuple(shape) + (2,), seed)
  return (tf.sqrt(-2.0 * tf.math.log(uniforms[..., 0]))
          * tf.cos(2.0 * math.pi * uniforms[..., 1]))


def clamp_at_zero(value: tf.Tensor) -> tf.Tensor:
  """max(value, 0) for objectives shifted so their minimum is 0.

  Float32 round-off can make a shifted objective slightly negative near its
  minimiser; a negative value would break the log meta-objective. The gradient
  passes unchanged wherever value >= 0.
  """
  return tf.maximum(value, 0.0)


def format_number(value: float) -> str:
  """Short, stable spelling of a hyper-parameter for problem names (0.5, 2, 1e+03)."""
  return f"{value:g}"


class Problem:
  """Static description of one problem (shapes, batch size, noise, transform).

  Equality and hashing are by `name`, which is unique within the registry.

  Attributes:
    name: unique name, e.g. "quadratic_d20_noise0.5".
    family: one of FAMILIES.
    batch_size: minibatch size, or None for full-batch / dataless problems.
    noise_stdev: std of Gaussian noise added to every gradient entry (0 = none).
    transform: the transform applied by this problem ("sparse_0.99", "rescale_8",
      "log", "power_2", "sum(7)"), or None.
    minimum: the minimum value of full_loss, see `minimum_kind`.
    minimum_kind: one of MINIMUM_KINDS.
  """

  # Data entries whose leading axis indexes samples (minibatched together).
  batched_keys: tuple[str, ...] = ()

  def __init__(self, name: str, *, family: str, batch_size: int | None = None,
               noise_stdev: float = 0.0, transform: str | None = None,
               minimum: float = 0.0, minimum_kind: str = "exact"):
    if family not in FAMILIES:
      raise ValueError(f"{name}: unknown family {family!r}; expected one of {FAMILIES}")
    if minimum_kind not in MINIMUM_KINDS:
      raise ValueError(f"{name}: unknown minimum_kind {minimum_kind!r}")
    if batch_size is not None and (batch_size <= 0 or not self.batched_keys):
      raise ValueError(f"{name}: batch_size {batch_size} needs batched data")
    if noise_stdev < 0:
      raise ValueError(f"{name}: noise_stdev must be >= 0, got {noise_stdev}")
    self.name = name
    self.family = family
    self.batch_size = batch_size
    # Compile this problem in a function of its own, never in a shared size group
    # (meta/unroll.py `Unroller._plan`): a network's loss graph is large, and a group of them
    # multiplies the compile and the per-step cost of every member.
    self.compile_alone = family == NEURAL_NETWORK
    # Whether `parameter_masks` can mask entries (problems/net_families.py); static, so that
    # meta/unroll.py knows at trace time.
    self.masked_parameters = False
    self.noise_stdev = float(noise_stdev)
    self.transform = transform
    self.minimum = float(minimum)
    self.minimum_kind = minimum_kind

  # --- To implement in subclasses ---------------------------------------------

  def param_shapes(self) -> list[tuple[int, ...]]:
    raise NotImplementedError

  def objective(self, params: Sequence[tf.Tensor],
                batch: Mapping[str, tf.Tensor]) -> tf.Tensor:
    """Scalar float32 loss on `batch` (the full data or a minibatch); no checks."""
    raise NotImplementedError

  def sample_data(self, seed: int) -> dict[str, np.ndarray]:
    """One random instance's data (float32), deterministic in seed; {} if none."""
    self.rng(seed, DATA_STREAM)  # validates the seed
    return {}

  def init_params(self, seed: int) -> list[np.ndarray]:
    """Initial parameters, deterministic in seed. Default N(0, 1), as the reference."""
    rng = self.rng(seed, INIT_STREAM)
    return [rng.standard_normal(shape).astype(np.float32) for shape in self.param_shapes()]

  def initial_params(self, seed: int, data: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    """Initial parameters of the instance whose data is `data` (the trainer's entry point).

    Default: init_params(seed). Wrappers whose initialisation depends on the instance's
    data override it (problems.augment.Augmented maps the init through the instance's scales).
    """
    return self.init_params(seed)

  def minimizer(self, data: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    """A parameter list attaining `minimum` (minimum_kind "exact"), else None."""
    return None

  def padding_family(self) -> tuple | None:
    """A key shared by problems whose loss is one graph at a padded size, or None (default).

    A problem that returns a key promises: it has one parameter tensor; for two problems with
    the same key whose shapes differ, the larger one's objective, evaluated at the smaller
    one's parameters zero-padded at the end of the leading dimension and its data entries
    zero-padded at the end of every dimension, returns the smaller one's loss and, on the real
    entries, its gradient (zero on the padding). Constants that differ between them (a power,
    a scale, a matrix) are therefore data entries, and masks mark the real rows where zeros
    would change the loss. meta/unroll.py then runs them through one branch of a size
    group's compiled function (`_branch_key`); tests/test_unroll_buckets.py checks the promise
    for every default problem that makes it.
    """
    return None

  def parameter_masks(self, data: Mapping[str, tf.Tensor]) -> list[tf.Tensor] | None:
    """Per-instance masks of the parameters (float32 tensors of the parameter shapes, made from
    `data` with TF ops), or None (default: every entry is a parameter).

    An entry masked 0 is not a parameter of this instance (problems/net_families.py: a
    family's instance runs at the family's maximum shapes): it starts at zero, its gradient is
    zero, and meta/unroll.py keeps it out of the optimizer (no update, not part of any
    per-tensor or problem-wide statistic; a tensor with no entry left is no tensor).
    """
    return None

  def descent_direction(self, data: Mapping[str, np.ndarray]) -> list[np.ndarray] | None:
    """For minima at infinity: the direction d in which the infimum lies.

    full_loss(t * d) decreases towards `minimum` as t -> infinity, unless a
    subclass overrides `infimum_path` (a curved valley whose asymptotic
    direction is d).
    """
    return None

  def infimum_path(self, data: Mapping[str, np.ndarray], t: float) -> list[np.ndarray] | None:
    """A point at distance ~t along which full_loss decreases to `minimum` (t -> inf)."""
    direction = self.descent_direction(data)
    if direction is None:
      return None
    return [(t * d).astype(np.float32) for d in direction]

  # --- Shared machinery --------------------------------------------------------

  def rng(self, seed: int, stream: int) -> np.random.Generator:
    """This problem's numpy generator for one stream of instance `seed`."""
    return numpy_rng(seed, stream, self.name)

  def child_seed(self, seed: int, index: int) -> int:
    """Instance seed for sub-problem `index` of a composite problem."""
    return int(self.rng(seed, CHILD_STREAM + index).integers(2**31 - 1))

  def minibatch(self, data: Mapping[str, tf.Tensor], seed) -> Mapping[str, tf.Tensor]:
    """`batch_size` samples drawn uniformly with replacement from the batched entries.

    The reference reshuffles per epoch (sampling without replacement); uniform
    indices are cheaper under XLA and give the same expected loss.
    """
    if self.batch_size is None:
      return data
    num_samples = data[self.batched_keys[0]].shape[0]
    indices = tf.random.stateless_uniform(
        [self.batch_size], step_stream(seed, BATCH_STREAM),
        minval=0, maxval=num_samples, dtype=tf.int32, alg=RNG_ALGORITHM)
    return {key: tf.gather(value, indices) if key in self.batched_keys else value
            for key, value in data.items()}

  def perturb_gradients(self, grads: list[tf.Tensor], seed,
                        noise_stdev: tf.Tensor | None = None) -> list[tf.Tensor]:
    """Adds this problem's gradient noise (reference `Problem.gradients`).

    `noise_stdev` (a float32 scalar tensor) replaces `self.noise_stdev`: the bucketed unroll
    (meta/unroll.py) runs a problem and its noisy copies through one branch, with the noise
    level as data; a zero level adds exact zeros.
    """
    if noise_stdev is None:
      if self.noise_stdev == 0.0:
        return grads
      noise_stdev = self.noise_stdev
    noise_seed = step_stream(seed, NOISE_STREAM)
    return [grad + noise_stdev * standard_normal(grad.shape, step_stream(noise_seed, index))
            for index, grad in enumerate(grads)]

  def loss(self, params, data, seed=None) -> tf.Tensor:
    """Minibatch loss; equals full_loss for problems without minibatches."""
    params = self._checked(params)
    return self.objective(params, self.minibatch(data, seed))

  def full_loss(self, params, data) -> tf.Tensor:
    """Full-data objective (the meta-objective's f)."""
    return self.objective(self._checked(params), data)

  def gradients(self, params, data, seed,
                noise_stdev: tf.Tensor | None = None) -> tuple[tf.Tensor, list[tf.Tensor]]:
    """Minibatch loss and its gradients, with noise and masking applied.

    Differentiable again with respect to params (second derivatives): the
    gradients come from a GradientTape, and noise and masks are additive or
    multiplicative constants. `noise_stdev`: see `perturb_gradients` (only for problems
    whose noise is the base class's; meta/unroll.py checks).
    """
    params = self._checked(params)
    with tf.GradientTape() as tape:
      tape.watch(params)
      loss = self.objective(params, self.minibatch(data, seed))
    grads = tape.gradient(loss, params, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    if noise_stdev is None:
      return loss, self.perturb_gradients(list(grads), seed)
    return loss, self.perturb_gradients(list(grads), seed, noise_stdev)

  def check_params(self, params) -> None:
    """Eager check: shapes, dtype and finiteness; raises ValueError naming the tensor.

    XLA silently ignores tf.debugging.assert_all_finite, so the compiled losses
    check only (static) shapes; call this eagerly where finiteness matters.
    """
    self._check_finite(self._checked(params))

  @property
  def num_params(self) -> int:
    return sum(math.prod(shape) for shape in self.param_shapes())

  def _checked(self, params) -> list[tf.Tensor]:
    """Converts params to float32 tensors, checking count, dtype and static shapes."""
    expected = self.param_shapes()
    if isinstance(params, (tf.Tensor, np.ndarray)) or len(params) != len(expected):
      count = "a single tensor" if isinstance(params, (tf.Tensor, np.ndarray)) else len(params)
      raise ValueError(f"{self.name}: expected a list of {len(expected)} parameter "
                       f"tensors with shapes {expected}, got {count}")
    checked = []
    for index, (param, shape) in enumerate(zip(params, expected)):
      if isinstance(param, (np.ndarray, list, float, int)):
        param = np.asarray(param, dtype=np.float32)
      param = tf.convert_to_tensor(param)
      if param.dtype != tf.float32:
        raise ValueError(f"{self.name}: parameter {index} has dtype {param.dtype.name}, "
                         "expected float32")
      if param.shape.rank is None or tuple(param.shape.as_list()) != tuple(shape):
        raise ValueError(f"{self.name}: parameter {index} has shape {param.shape}, "
                         f"expected {tuple(shape)}")
      checked.append(param)
    if tf.executing_eagerly():
      self._check_finite(checked)
    return checked

  def _check_finite(self, params: list[tf.Tensor]) -> None:
    for index, param in enumerate(params):
      bad = int(np.size(param.numpy()) - np.isfinite(param.numpy()).sum())
      if bad:
        raise ValueError(f"{self.name}: parameter {index} (shape {tuple(param.shape)}) "
                         f"has {bad} non-finite value(s)")

  def __eq__(self, other):
    return isinstance(other, Problem) and other.name == self.name

  def __hash__(self):
    return hash(self.name)

  def __repr__(self):
    return f"<{type(self).__name__} {self.name}>"


def noise_suffix(noise_stdev: float) -> str:
  return f"_noise{format_number(noise_stdev)}" if noise_stdev else ""


def family_for(default_family: str, noise_stdev: float) -> str:
  """Noisy copies of full-batch problems belong to the noisy family (paper §4.1.3)."""
  return NOISY_MINIBATCH if noise_stdev else default_family
