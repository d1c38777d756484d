"""Well-behaved convex problems (paper §4.1.2): quadratic bowls and logistic regression.

- Quadratic(d): ½‖Wx - y‖² with W ~ N(0,1)^{d×d} (random coupling).
- Bowl(κ, angle): ½‖A x‖², A = sqrt(diag(κ, 1)) R(angle), a 2-D bowl with
  condition number κ and rotation.
- LogisticRegression: the reference's SoftmaxRegression(n, 2) on generated,
  mostly linearly separable data (see `classification_data`).
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from problems import base

L2_REG_SCALE = 1e-3  # the reference's --l2_reg_scale


class Quadratic(base.Problem):
  """½‖Wx - y‖², x of shape (d, 1).

  Deviation: the reference draws y ~ N(0, 1); here y = W x* with x* ~ N(0, 1),
  so the minimum 0 is attained at a known, well-scaled x*. (The reference's W
  is invertible almost surely too, so its minimum is also 0, at W⁻¹y; same
  Hessian WᵀW, only the location of the minimiser differs.)
  """

  batched_keys = ()

  def __init__(self, ndim: int, noise_stdev: float = 0.0):
    self.ndim = ndim
    super().__init__(f"quadratic_d{ndim}" + base.noise_suffix(noise_stdev),
                     family=base.family_for(base.WELL_BEHAVED, noise_stdev),
                     noise_stdev=noise_stdev)

  def param_shapes(self):
    return [(self.ndim, 1)]

  def sample_data(self, seed):
    rng = self.rng(seed, base.DATA_STREAM)
    w = rng.standard_normal((self.ndim, self.ndim))
    x_star = rng.standard_normal((self.ndim, 1))
    return {"w": w.astype(np.float32), "y": (w @ x_star).astype(np.float32)}

  def padding_family(self):
    return ("Quadratic",)   # zero rows and columns of W and zeros in y add nothing

  def objective(self, params, batch):
    return 0.5 * tf.reduce_sum(tf.square(tf.matmul(batch["w"], params[0]) - batch["y"]))

  def minimizer(self, data):
    w, y = (np.asarray(data[key], np.float64) for key in ("w", "y"))
    return [np.linalg.solve(w, y).astype(np.float32)]


class Bowl(base.Problem):
  """½‖A x‖² with A = sqrt(diag(κ, 1)) R(angle); x of shape (2, 1); minimum 0 at 0."""

  def __init__(self, condition_number: float, angle: float = 0.0, noise_stdev: float = 0.0):
    if condition_number <= 0:
      raise ValueError(f"condition number must be positive, got {condition_number}")
    rotation = f"_rot{format(math.degrees(angle), 'g')}" if angle else ""
    super().__init__(f"bowl_k{base.format_number(condition_number)}{rotation}"
                     + base.noise_suffix(noise_stdev),
                     family=base.family_for(base.WELL_BEHAVED, noise_stdev),
                     noise_stdev=noise_stdev)
    cos, sin = math.cos(angle), math.sin(angle)
    self.matrix = (np.sqrt(np.diag([condition_number, 1.0]))
                   @ np.array([[cos, -sin], [sin, cos]])).astype(np.float32)

  def param_shapes(self):
    return [(2, 1)]

  def padding_family(self):
    return ("Bowl",)   # one shape; the matrix is data, so the four bowls share a branch

  def sample_data(self, seed):
    super().sample_data(seed)
    return {"matrix": self.matrix.copy()}

  def objective(self, params, batch):
    return 0.5 * tf.reduce_sum(tf.square(tf.matmul(batch["matrix"], params[0])))

  def minimizer(self, data):
    return [np.zeros((2, 1), np.float32)]


def classification_data(rng: np.random.Generator, num_samples: int, num_features: int,
                        class_sep: float, flip_fraction: float = 0.01
                        ) -> tuple[np.ndarray, np.ndarray]:
  """Two-class data in the manner of sklearn's make_classification.

  Same recipe as the reference's datasets.random (make_classification with
  n_informative = n_features, n_redundant = 0 and its defaults: two Gaussian
  clusters per class at distinct vertices of a hypercube of side 2·class_sep,
  each cluster with a random linear covariance, 1% of labels redrawn), written
  in numpy so meta-training does not need sklearn. Not bit-identical to
  sklearn, and drawn per instance (the reference fixed random_state=123).

  Returns:
    features (num_samples, num_features) and labels (num_samples,) in {0, 1}, float32.
  """
  num_clusters = 4  # 2 classes x 2 clusters per class
  vertices = set()
  while len(vertices) < num_clusters:
    vertices.add(tuple(rng.integers(0, 2, num_features)))
  centroids = (np.array(sorted(vertices), np.float64) * 2 - 1) * class_sep
  sizes = [num_samples // num_clusters + (k < num_samples % num_clusters)
           for k in range(num_clusters)]
  features, labels = [], []
  for cluster, size in enumerate(sizes):
    covariance = 2 * rng.uniform(size=(num_features, num_features)) - 1
    features.append(rng.standard_normal((size, num_features)) @ covariance + centroids[cluster])
    labels.append(np.full(size, cluster % 2))
  features, labels = np.concatenate(features), np.concatenate(labels)
  flip = rng.uniform(size=num_samples) < flip_fraction
  labels[flip] = rng.integers(0, 2, flip.sum())
  order = rng.permutation(num_samples)
  return features[order].astype(np.float32), labels[order].astype(np.float32)


def sigmoid_cross_entropy_with_l2(logits: tf.Tensor, labels: tf.Tensor, params) -> tf.Tensor:
  """The reference's SoftmaxClassifier loss for 2 classes.

  Sigmoid cross-entropy on logits[:, 0] only (the second logit column is
  unused, as in the reference), plus L2_REG_SCALE x the mean over parameter
  tensors of Σθ².
  """
  losses = tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits[:, 0])
  l2 = tf.reduce_mean(tf.stack([tf.reduce_sum(tf.square(p)) for p in params]))
  return tf.reduce_mean(losses) + L2_REG_SCALE * l2


def scaled_normal_init(shapes, rng: np.random.Generator) -> list[np.ndarray]:
  """The reference's SoftmaxClassifier init: N(0, 1) x 1.2 / sqrt(shape[0])."""
  return [(rng.standard_normal(shape) * 1.2 / np.sqrt(shape[0])).astype(np.float32)
          for shape in shapes]


class LogisticRegression(base.Problem):
  """The reference's SoftmaxRegression(n_features, 2), minibatched.

  Params W (n, 2) and b (2,); loss = sigmoid cross-entropy on logit 0 + L2
  (see `sigmoid_cross_entropy_with_l2`). Strictly convex, so the minimiser is
  unique, but its value depends on the instance: `minimum` 0 is a lower bound,
  and `minimizer` computes the minimiser numerically (L-BFGS in float64).
  """

  batched_keys = ("x", "labels")

  def __init__(self, num_features: int, class_sep: float, batch_size: int,
               noise_stdev: float = 0.0, num_samples: int = 1000):
    self.num_features, self.class_sep, self.num_samples = num_features, class_sep, num_samples
    super().__init__(
        f"logreg_f{num_features}_sep{base.format_number(class_sep)}_b{batch_size}"
        + base.noise_suffix(noise_stdev),
        family=base.family_for(base.WELL_BEHAVED, noise_stdev),
        batch_size=batch_size, noise_stdev=noise_stdev, minimum_kind="bound")

  def param_shapes(self):
    return [(self.num_features, 2), (2,)]

  def sample_data(self, seed):
    x, labels = classification_data(self.rng(seed, base.DATA_STREAM),
                                    self.num_samples, self.num_features, self.class_sep)
    return {"x": x, "labels": labels}

  def init_params(self, seed):
    return scaled_normal_init(self.param_shapes(), self.rng(seed, base.INIT_STREAM))

  def objective(self, params, batch):
    logits = tf.matmul(batch["x"], params[0]) + params[1]
    return sigmoid_cross_entropy_with_l2(logits, batch["labels"], params)

  def minimizer(self, data):
    from scipy import optimize  # only needed here; scipy comes with scikit-learn

    x = np.asarray(data["x"], np.float64)
    labels = np.asarray(data["labels"], np.float64)
    n = self.num_features

    def value_and_grad(theta):
      weights, bias = theta[:2 * n].reshape(n, 2), theta[2 * n:]
      logit = x @ weights[:, 0] + bias[0]
      # Stable log(1 + e^z) - y z, the sigmoid cross-entropy.
      value = np.mean(np.logaddexp(0, logit) - labels * logit)
      residual = (1 / (1 + np.exp(-logit)) - labels) / len(labels)
      grad_weights = np.zeros_like(weights)
      grad_weights[:, 0] = x.T @ residual
      grad_bias = np.array([residual.sum(), 0.0])
      # L2 term: scale x mean over the two tensors of Σθ².
      value += L2_REG_SCALE * 0.5 * (np.sum(weights**2) + np.sum(bias**2))
      grad = np.concatenate([grad_weights.ravel(), grad_bias]) + L2_REG_SCALE * theta
      return value, grad

    result = optimize.minimize(value_and_grad, np.zeros(2 * n + 2), jac=True,
                               method="L-BFGS-B",
                               options={"maxiter": 5000, "gtol": 1e-9, "ftol": 1e-14})
    theta = result.x
    return [theta[:2 * n].reshape(n, 2).astype(np.float32), theta[2 * n:].astype(np.float32)]


def default_problems() -> list[base.Problem]:
  """Noiseless well-behaved entries of the reference's default pool (15)."""
  return [
      # quadratic_problems_noisy holds one noiseless entry (d = 25); the rest are in noisy.py.
      Quadratic(25),
      # quadratic_problems_large.
      Quadratic(784), Quadratic(1024), Quadratic(2048),
      *bowl_group(noise_stdev=0.0),
      *logistic_regression_group(noise_stdevs=(0.0, 0.0, 0.0, 0.0)),
  ]


def bowl_group(noise_stdev: float) -> list[base.Problem]:
  return [Bowl(0.1, noise_stdev=noise_stdev), Bowl(1.0, noise_stdev=noise_stdev),
          Bowl(5.0, noise_stdev=noise_stdev),
          Bowl(5.0, angle=math.pi / 4, noise_stdev=noise_stdev)]


def logistic_regression_group(noise_stdevs) -> list[base.Problem]:
  """The reference's softmax_2_class_problems: (features, separation, batch)."""
  settings = ((10, 2.0, 100), (100, 1.0, 50), (200, 1.5, 20), (256, 1.5, 100))
  return [LogisticRegression(features, sep, batch, noise_stdev=noise)
          for (features, sep, batch), noise in zip(settings, noise_stdevs)]


def off_problems() -> list[base.Problem]:
  """The reference's plain quadratic group, off by default (d = 25 is already on)."""
  return [Quadratic(20), Quadratic(50), Quadratic(100)]
