"""Slow-convergence problems (paper §4.1.4) and the reference's Norm and MatMul problems.

- OutwardSnake: the many-dimensional oscillating valley with its minimum at infinity.
- DependencyChain: parameters in a sequence with very strong coupling.
- MinMaxWell: the loss depends only on the smallest and largest |θ_i|, so all but
  two gradient entries are zero and the gradient is discontinuous.
- Norm(d, p): the p-norm of a random linear residual.
- MatMulAlgorithm(n, k): a degree-6 polynomial whose zeros are n×n matrix
  multiplication algorithms with k multiplications.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from problems import base


class Norm(base.Problem):
  """(Σ_i (|Wx - y|_i + ε)^p)^(1/p), x of shape (d, 1), ε = 1e-6 (reference).

  As for Quadratic, y = W x* with x* ~ N(0, 1) (the reference draws y ~ N(0, 1);
  W is invertible a.s. either way). The minimum, at x*, is d^(1/p)·ε <= 2.7e-5
  rather than 0: the ε keeps the gradient of |·|^p defined at 0, as in the
  reference. The reference notes p < 1 gives NaN gradients.
  """

  def __init__(self, ndim: int, power: float, noise_stdev: float = 0.0):
    self.ndim, self.power = ndim, float(power)
    super().__init__(f"norm_d{ndim}_p{base.format_number(power)}"
                     + base.noise_suffix(noise_stdev),
                     family=base.family_for(base.SLOW_CONVERGENCE, noise_stdev),
                     noise_stdev=noise_stdev,
                     minimum=ndim**(1.0 / power) * base.EPSILON)

  def param_shapes(self):
    return [(self.ndim, 1)]

  def padding_family(self):
    return ("Norm",)   # the power is data, and a mask keeps padded rows' ε^p out of the sum

  def sample_data(self, seed):
    rng = self.rng(seed, base.DATA_STREAM)
    w = rng.standard_normal((self.ndim, self.ndim))
    return {"w": w.astype(np.float32),
            "y": (w @ rng.standard_normal((self.ndim, 1))).astype(np.float32),
            "mask": np.ones((self.ndim, 1), np.float32),
            "power": np.array([self.power], np.float32)}

  def objective(self, params, batch):
    residual = tf.matmul(batch["w"], params[0]) - batch["y"]
    power = batch["power"][0]
    terms = batch["mask"] * (tf.abs(residual) + base.EPSILON)**power
    return tf.reduce_sum(terms)**(1.0 / power)

  def minimizer(self, data):
    w, y = (np.asarray(data[key], np.float64) for key in ("w", "y"))
    return [np.linalg.solve(w, y).astype(np.float32)]


def _strassen() -> tuple[np.ndarray, np.ndarray]:
  """Strassen's 7 products as columns of θ_a, θ_b over row-major vec(a), vec(b)."""
  # Products M1..M7 = (u · vec a)(v · vec b), vec = (x11, x12, x21, x22).
  theta_a = [(1, 0, 0, 1), (0, 0, 1, 1), (1, 0, 0, 0), (0, 0, 0, 1),
             (1, 1, 0, 0), (-1, 0, 1, 0), (0, 1, 0, -1)]
  theta_b = [(1, 0, 0, 1), (1, 0, 0, 0), (0, 1, 0, -1), (-1, 0, 1, 0),
             (0, 0, 0, 1), (1, 1, 0, 0), (0, 0, 1, 1)]
  return np.array(theta_a, np.float32).T, np.array(theta_b, np.float32).T


def _naive(n: int) -> tuple[np.ndarray, np.ndarray]:
  """The schoolbook algorithm: one product a_il b_lm per (i, l, m), k = n³."""
  columns = [(i * n + l, l * n + m) for i in range(n) for l in range(n) for m in range(n)]
  theta_a = np.zeros((n * n, len(columns)), np.float32)
  theta_b = np.zeros((n * n, len(columns)), np.float32)
  for column, (row_a, row_b) in enumerate(columns):
    theta_a[row_a, column] = theta_b[row_b, column] = 1.0
  return theta_a, theta_b


class MatMulAlgorithm(base.Problem):
  """Find θ_a, θ_b (n², k) so that k products compute every n×n matrix product.

  With P = (A θ_a) ⊙ (B θ_b) over the batch of all n⁴ pairs of one-hot matrices
  (a, b), θ_c is the least-squares solution of P θ_c = C (C = vec(ab)), and the
  loss is ‖P θ_c - C‖². The loss is 0 exactly when (θ_a, θ_b, θ_c) is a matrix
  multiplication algorithm with k multiplications.

  Known minimum 0 (a lower bound in general):
    n = 2: k >= 7 attains 0 (Strassen, k = 7; schoolbook, k = 8: minimisers
      given); k <= 6 has no solution (Winograd 1971), so its minimum is > 0.
    n = 3: 0 is attained for 23 <= k <= 27 (Laderman 1976; no minimiser given)
      and approached but not attained for k = 21, 22 (border rank);
      unknown for k = 19, 20.
  Deviation: θ_c comes from solve(PᵀP, PᵀC) rather than inv(PᵀP) PᵀC; same
  value, better conditioned.
  """

  def __init__(self, n: int, k: int):
    if not n**2 <= k <= n**3:
      raise ValueError(f"need n² <= k <= n³, got n={n}, k={k}")
    self.n, self.k = n, k
    super().__init__(f"matmul_n{n}_k{k}", family=base.SLOW_CONVERGENCE,
                     minimum_kind="exact" if n == 2 and k in (7, 8) else "bound")
    onehots = np.identity(n * n).reshape(n * n, n, n)
    a = np.repeat(onehots, n * n, axis=0)
    b = np.tile(onehots, (n * n, 1, 1))
    self._a, self._b = (m.reshape(n**4, n * n).astype(np.float32) for m in (a, b))
    self._c = np.matmul(a, b).reshape(n**4, n * n).astype(np.float32)

  def param_shapes(self):
    return [(self.n**2, self.k), (self.n**2, self.k)]

  def init_params(self, seed):
    """N(0, 1) with each column scaled to unit L2 norm (reference)."""
    return [p / np.linalg.norm(p, axis=0, keepdims=True) for p in super().init_params(seed)]

  def objective(self, params, batch):
    products = (tf.matmul(tf.constant(self._a), params[0])
                * tf.matmul(tf.constant(self._b), params[1]))
    target = tf.constant(self._c)
    theta_c = tf.linalg.solve(tf.matmul(products, products, transpose_a=True),
                              tf.matmul(products, target, transpose_a=True))
    return tf.reduce_sum(tf.square(tf.matmul(products, theta_c) - target))

  def minimizer(self, data):
    if self.minimum_kind != "exact":
      return None
    return list(_strassen() if self.k == 7 else _naive(2))


class OutwardSnake(base.Problem):
  """A winding valley out to infinity: the reference's OutwardSnake.

  loss = mean_b x_b0 / (‖θ‖ + 1e-6) + mean_b Σ_i (x_b,i+1 (θ_{i+1} - π cos θ_i))²
  with x binary random data (which terms are active in a sample). The valley
  floor θ_{i+1} = π cos θ_i is a curve parameterised by θ_0; along it the second
  term is 0 and the first decays as 1/‖θ‖, so the infimum 0 lies at infinity
  (`infimum_path`), in the asymptotic direction e_0 (`descent_direction`).
  The ideal step length stays constant along the path.

  Deviation: batch means instead of the reference's batch sums, so the
  minibatch and full-data losses have the same scale.
  """

  batched_keys = ("x",)

  def __init__(self, ndim: int, num_samples: int, batch_size: int):
    self.ndim, self.num_samples = ndim, num_samples
    super().__init__(f"outward_snake_d{ndim}_n{num_samples}_b{batch_size}",
                     family=base.SLOW_CONVERGENCE, batch_size=batch_size,
                     minimum_kind="infinity")

  def param_shapes(self):
    return [(self.ndim,)]

  def sample_data(self, seed):
    """The reference's datasets.random_binary: x in {0, 1}^(N, d)."""
    rng = self.rng(seed, base.DATA_STREAM)
    return {"x": rng.integers(0, 2, (self.num_samples, self.ndim)).astype(np.float32)}

  def objective(self, params, batch):
    theta, x = params[0], batch["x"]
    radius = tf.sqrt(tf.reduce_sum(tf.square(theta)))
    radial = tf.reduce_mean(x[:, 0]) / (radius + 1e-6)
    valley = theta[1:] - math.pi * tf.cos(theta[:-1])
    return radial + tf.reduce_mean(tf.reduce_sum(tf.square(valley * x[:, 1:]), axis=1))

  def descent_direction(self, data):
    return [np.eye(1, self.ndim, 0, dtype=np.float32)[0]]

  def infimum_path(self, data, t):
    """The valley floor point with θ_0 = t."""
    theta = np.zeros(self.ndim)
    theta[0] = t
    for i in range(1, self.ndim):
      theta[i] = math.pi * math.cos(theta[i - 1])
    return [theta.astype(np.float32)]


class DependencyChain(base.Problem):
  """θ_0² + Σ_i θ_{i+1}² / (θ_i² + ε): each θ_{i+1} can only reach 0 after θ_i.

  θ has d + 1 entries; minimum 0 at θ = 0. The reference attaches a
  random_binary dataset and batch size that the objective never reads; here it
  is dataless.
  """

  def __init__(self, ndim: int):
    self.ndim = ndim
    super().__init__(f"dependency_chain_d{ndim}", family=base.SLOW_CONVERGENCE)

  def param_shapes(self):
    return [(self.ndim + 1,)]

  def padding_family(self):
    return ("DependencyChain",)   # trailing zeros add zero terms with zero gradients

  def objective(self, params, batch):
    theta = params[0]
    return theta[0]**2 + tf.reduce_sum(theta[1:]**2 / (theta[:-1]**2 + base.EPSILON))

  def minimizer(self, data):
    return [np.zeros(self.ndim + 1, np.float32)]


class MinMaxWell(base.Problem):
  """max_i θ_i² + 1 / min_i θ_i² - 2: only two gradient entries are non-zero.

  Minimum 0 where every |θ_i| = 1. Computed as (max - min) + (min - 1)² / min,
  the same function written so float32 round-off cannot make it negative.
  Deviation: the reference adds 1e-12 (minimum 1e-12); dropped.
  """

  def __init__(self, ndim: int):
    self.ndim = ndim
    super().__init__(f"min_max_well_d{ndim}", family=base.SLOW_CONVERGENCE)

  def param_shapes(self):
    return [(self.ndim,)]

  def padding_family(self):
    return ("MinMaxWell",)   # the mask keeps padded zeros out of the minimum

  def sample_data(self, seed):
    super().sample_data(seed)
    return {"mask": np.ones((self.ndim,), np.float32)}

  def objective(self, params, batch):
    squares = tf.square(params[0])
    smallest = tf.reduce_min(tf.where(batch["mask"] > 0, squares, np.inf))
    largest = tf.reduce_max(squares)
    return (largest - smallest) + tf.square(smallest - 1.0) / smallest

  def minimizer(self, data):
    return [np.ones(self.ndim, np.float32)]


MATMUL_SETTINGS = [(2, k) for k in range(5, 9)] + [(3, k) for k in range(19, 25)]
CHAIN_DIMS = (20, 12, 56, 64, 13)  # the reference's dimensions, each once


def default_problems() -> list[base.Problem]:
  """Norm (3) and MatMul (10) from the reference; snake, chain, well (15) from the paper."""
  return [
      Norm(27, 1.0), Norm(25, 2.0), Norm(22, 3.0),
      *[MatMulAlgorithm(n, k) for n, k in MATMUL_SETTINGS],
      *[OutwardSnake(*setting) for setting in base.DATA_SETTINGS[:5]],
      *[DependencyChain(ndim) for ndim in CHAIN_DIMS],
      *[MinMaxWell(ndim) for ndim in CHAIN_DIMS],
  ]


def off_problems() -> list[base.Problem]:
  return [OutwardSnake(*setting) for setting in base.DATA_SETTINGS[5:]]
