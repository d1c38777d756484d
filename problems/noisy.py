"""Noisy gradients and minibatch problems (paper §4.1.3).

- MinibatchQuadratic: the paper's "minibatch quadratic task, where the minibatch
  loss consisted of the square inner product of the parameters with random
  input vectors".
- Noisy copies of full-batch problems: gradient noise of std 0.1 to 2.0 added by
  `Problem.perturb_gradients` (the loss itself is not noised, as in the reference).
The noiseless logistic-regression problems are minibatched too (batches 20 to
100); they live in well_behaved.py.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from problems import base, literature, slow, well_behaved


class MinibatchQuadratic(base.Problem):
  """mean over the batch of (x_b · θ)², with x_b ~ N(0, I) random input vectors.

  θ has shape (d,). The full-data Hessian (2/N) XᵀX is positive definite when
  N >= d, so the unique minimum 0 is at θ = 0. Data as the reference's
  datasets.random_symmetric (each vector and its negative).

  Deviation: the reference's ProjectionQuadratic sums the *elementwise* squares
  Σ_b Σ_i (θ_i x_bi)² over the batch; this follows the paper's wording (square
  inner product) and takes the batch mean, so minibatch and full loss share a
  scale.
  """

  batched_keys = ("x",)

  def __init__(self, ndim: int, num_samples: int, batch_size: int):
    if num_samples < ndim or num_samples % 2:
      raise ValueError("need an even num_samples >= ndim for a unique minimum")
    self.ndim, self.num_samples = ndim, num_samples
    super().__init__(f"minibatch_quadratic_d{ndim}_n{num_samples}_b{batch_size}",
                     family=base.NOISY_MINIBATCH, batch_size=batch_size)

  def param_shapes(self):
    return [(self.ndim,)]

  def sample_data(self, seed):
    half = self.rng(seed, base.DATA_STREAM).standard_normal(
        (self.num_samples // 2, self.ndim))
    return {"x": np.concatenate([half, -half]).astype(np.float32)}

  def objective(self, params, batch):
    return tf.reduce_mean(tf.square(tf.linalg.matvec(batch["x"], params[0])))

  def minimizer(self, data):
    return [np.zeros(self.ndim, np.float32)]


def default_problems() -> list[base.Problem]:
  """The reference's noisy groups (23) plus five minibatch quadratics (28)."""
  return [
      # quadratic_problems_noisy minus its noiseless d = 25 (in well_behaved.py).
      well_behaved.Quadratic(20, noise_stdev=0.5),
      well_behaved.Quadratic(50, noise_stdev=1.0),
      well_behaved.Quadratic(100, noise_stdev=2.0),
      *well_behaved.bowl_group(noise_stdev=0.1),
      *well_behaved.logistic_regression_group(noise_stdevs=(0.5, 0.1, 0.1, 0.5)),
      *[function(noise_stdev=1.0) for function in literature.FUNCTIONS],
      slow.Norm(19, 1.0, noise_stdev=0.1), slow.Norm(26, 2.0, noise_stdev=0.1),
      slow.Norm(23, 3.0, noise_stdev=0.1),
      # Off in the reference, named by the paper.
      *[MinibatchQuadratic(*setting) for setting in base.DATA_SETTINGS[:5]],
  ]


def off_problems() -> list[base.Problem]:
  return [MinibatchQuadratic(*setting) for setting in base.DATA_SETTINGS[5:]]
