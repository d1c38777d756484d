"""The meta-objective: average log loss relative to the trajectory's initial loss (paper eq. 14).

Reference form (hrnn_reference.md §3, `scale_objective` with `use_log_objective=True`):

    L = mean_t log( f_t / (f_init + eps) + eps ),   eps = 1e-6,

over the n + 1 entries f(theta_start), f(theta_0 = theta_start), f(theta_1), ..., f(theta_{n-1}) of
a partial unroll of n steps: the full-data loss at the *pre-update* parameters of every step, with
theta_start counted twice and the result of the unroll's last update left to the next unroll.
f_init is the full-data loss at the start of the trajectory's first unroll, so every partial
unroll of a trajectory is normalised by the same value.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

EPSILON = 1e-6  # reference `scale_objective` eps.


def log_relative_loss(loss, initial_loss) -> tf.Tensor:
  """log(f / (f_init + eps) + eps): one term of eq. 14."""
  return tf.math.log(loss / (initial_loss + EPSILON) + EPSILON)


def meta_loss_numpy(losses, initial_loss: float) -> float:
  """Reference meta-loss of one unroll from its losses [f(theta_0), ..., f(theta_{n-1})].

  For tests and offline checks; the trainer computes the same sum inside the compiled unroll.
  theta_0 = theta_start enters twice, as in the reference.
  """
  losses = np.asarray(losses, np.float64)
  terms = np.log(np.concatenate([losses[:1], losses]) / (initial_loss + EPSILON) + EPSILON)
  return float(np.mean(terms))
