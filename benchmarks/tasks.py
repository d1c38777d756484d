"""Held-out benchmark tasks: small networks on scikit-learn's bundled (offline) data sets.

None of these is in the meta-training ensemble (`python -m problems --list`: no neural
networks, no real data). Each task is a pure loss `loss(params, x, y)` over a list of
parameter tensors, a fixed initialisation drawn from a seed, and a train/test split, so that
every optimizer starts from the same point and sees the same minibatches:

  mlp_relu, mlp_sigmoid       64-100-100-10 MLP on digits (paper Fig. 3 analogue)
  conv_relu, conv_sigmoid     2-layer ConvNet on 8x8x1 digits (paper Fig. 8a analogue)
  logreg_breast_cancer        logistic regression on standardised breast_cancer, full batch
  attention_digits            1-layer self-attention classifier, digits rows as 8 tokens of 8
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
import tensorflow as tf

LossFn = Callable[[Sequence[tf.Tensor], tf.Tensor, tf.Tensor], tf.Tensor]
LogitsFn = Callable[[Sequence[tf.Tensor], tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class Task:
  """One held-out training problem.

  Attributes:
    name: registry key, e.g. "mlp_relu".
    description: one line for tables and plots.
    x_train, y_train, x_test, y_test: float32 inputs, int32 labels.
    init: the initial parameters (float32), identical for every optimizer.
    logits: model output; [N, classes] (softmax) or [N] (binary, sigmoid).
    batch_size: minibatch size, or None for full-batch training.
    xla: whether the training loop compiles faster-running with XLA (see benchmarks.quality).
  """
  name: str
  description: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  init: list[np.ndarray]
  logits: LogitsFn
  batch_size: int | None
  xla: bool = True

  @property
  def binary(self) -> bool:
    return self.init[-1].shape == (1,)

  @property
  def num_params(self) -> int:
    return sum(int(np.prod(p.shape)) for p in self.init)

  def loss(self, params, x, y) -> tf.Tensor:
    """Mean cross-entropy on (x, y)."""
    logits = self.logits(params, x)
    if self.binary:
      return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(
          tf.cast(y, tf.float32), logits))
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))

  def accuracy(self, params, x, y) -> float:
    logits = self.logits([tf.constant(p) for p in params], tf.constant(x)).numpy()
    predicted = (logits > 0).astype(np.int32) if self.binary else logits.argmax(-1)
    return float(np.mean(predicted == y))


# ---- data -------------------------------------------------------------------------------------

def _split(x, y, seed, test_fraction=0.2):
  """Fixed random train/test split."""
  order = np.random.default_rng(seed).permutation(len(x))
  num_test = int(round(test_fraction * len(x)))
  test, train = order[:num_test], order[num_test:]
  return x[train], y[train], x[test], y[test]


def digits(seed: int):
  """scikit-learn digits: 1797 8x8 images, pixels scaled to [0, 1]."""
  from sklearn.datasets import load_digits
  x, y = load_digits(return_X_y=True)
  return _split((x / 16.0).astype(np.float32), y.astype(np.int32), seed)


def breast_cancer(seed: int):
  """scikit-learn breast_cancer: 569 x 30, standardised with the training set's statistics."""
  from sklearn.datasets import load_breast_cancer
  x, y = load_breast_cancer(return_X_y=True)
  x_train, y_train, x_test, y_test = _split(x, y.astype(np.int32), seed)
  mean, std = x_train.mean(0), x_train.std(0) + 1e-8
  return ((x_train - mean) / std).astype(np.float32), y_train, \
      ((x_test - mean) / std).astype(np.float32), y_test


# ---- initialisation ---------------------------------------------------------------------------

def glorot(rng: np.random.Generator, shape, fan_in: int, fan_out: int) -> np.ndarray:
  limit = math.sqrt(6.0 / (fan_in + fan_out))
  return rng.uniform(-limit, limit, shape).astype(np.float32)


def dense_init(rng, sizes) -> list[np.ndarray]:
  params = []
  for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
    params += [glorot(rng, (fan_in, fan_out), fan_in, fan_out), np.zeros(fan_out, np.float32)]
  return params


ACTIVATIONS = {"relu": tf.nn.relu, "sigmoid": tf.sigmoid}


# ---- models -----------------------------------------------------------------------------------

def mlp(activation: str, seed: int, hidden=(100, 100), batch_size=128) -> Task:
  act = ACTIVATIONS[activation]
  x_train, y_train, x_test, y_test = digits(seed)

  def logits(params, x):
    for layer in range(0, len(params) - 2, 2):
      x = act(tf.matmul(x, params[layer]) + params[layer + 1])
    return tf.matmul(x, params[-2]) + params[-1]

  init = dense_init(np.random.default_rng([seed, 1]), (64, *hidden, 10))
  return Task(f"mlp_{activation}", f"MLP 64-{'-'.join(map(str, hidden))}-10 {activation}, "
              f"digits, batch {batch_size}", x_train, y_train, x_test, y_test, init, logits,
              batch_size)


def conv(activation: str, seed: int, channels=(16, 32), batch_size=128) -> Task:
  act = ACTIVATIONS[activation]
  x_train, y_train, x_test, y_test = digits(seed)
  x_train, x_test = x_train.reshape(-1, 8, 8, 1), x_test.reshape(-1, 8, 8, 1)
  rng = np.random.default_rng([seed, 2])
  c1, c2 = channels
  init = [glorot(rng, (3, 3, 1, c1), 9, 9 * c1), np.zeros(c1, np.float32),
          glorot(rng, (3, 3, c1, c2), 9 * c1, 9 * c2), np.zeros(c2, np.float32),
          *dense_init(rng, (2 * 2 * c2, 10))]

  def logits(params, x):
    for layer in (0, 2):  # 8x8 -> 4x4 -> 2x2
      x = act(tf.nn.conv2d(x, params[layer], 1, "SAME") + params[layer + 1])
      x = tf.nn.max_pool2d(x, 2, 2, "VALID")
    x = tf.reshape(x, [-1, 2 * 2 * c2])
    return tf.matmul(x, params[4]) + params[5]

  return Task(f"conv_{activation}", f"ConvNet conv3x3x{c1}-pool-conv3x3x{c2}-pool-dense "
              f"{activation}, digits 8x8x1, batch {batch_size}", x_train, y_train, x_test,
              y_test, init, logits, batch_size,
              # XLA's CPU convolutions (and their gradients) ran 4-10x slower than TF's here.
              xla=False)


def logistic_regression(seed: int) -> Task:
  x_train, y_train, x_test, y_test = breast_cancer(seed)
  init = dense_init(np.random.default_rng([seed, 3]), (30, 1))

  def logits(params, x):
    return tf.squeeze(tf.matmul(x, params[0]), -1) + params[1]

  return Task("logreg_breast_cancer", "logistic regression, standardised breast_cancer, "
              "full batch", x_train, y_train, x_test, y_test, init, logits, None)


def attention(seed: int, width=32, batch_size=128) -> Task:
  """Single-head self-attention over the 8 rows of a digit (8 tokens of 8 features)."""
  x_train, y_train, x_test, y_test = digits(seed)
  x_train, x_test = x_train.reshape(-1, 8, 8), x_test.reshape(-1, 8, 8)
  rng = np.random.default_rng([seed, 4])
  embed = dense_init(rng, (8, width))
  position = (0.02 * rng.standard_normal((8, width))).astype(np.float32)
  qkvo = [glorot(rng, (width, width), width, width) for _ in range(4)]
  init = [*embed, position, *qkvo, *dense_init(rng, (width, 64, 10))]

  def logits(params, x):
    w_embed, b_embed, position, wq, wk, wv, wo, w1, b1, w2, b2 = params
    tokens = tf.einsum("ntf,fd->ntd", x, w_embed) + b_embed + position
    q, k, v = (tf.einsum("ntd,de->nte", tokens, w) for w in (wq, wk, wv))
    weights = tf.nn.softmax(tf.einsum("nsd,ntd->nst", q, k) / math.sqrt(width), axis=-1)
    tokens = tokens + tf.einsum("nst,ntd,de->nse", weights, v, wo)
    pooled = tf.reduce_mean(tokens, axis=1)
    return tf.matmul(tf.nn.relu(tf.matmul(pooled, w1) + b1), w2) + b2

  return Task("attention_digits", f"1-layer self-attention (width {width}), digits rows as "
              f"8 tokens, batch {batch_size}", x_train, y_train, x_test, y_test, init, logits,
              batch_size)


BUILDERS: dict[str, Callable[[int], Task]] = {
    "mlp_relu": lambda seed: mlp("relu", seed),
    "mlp_sigmoid": lambda seed: mlp("sigmoid", seed),
    "conv_relu": lambda seed: conv("relu", seed),
    "conv_sigmoid": lambda seed: conv("sigmoid", seed),
    "logreg_breast_cancer": logistic_regression,
    "attention_digits": attention,
}


def get(name: str, seed: int = 0) -> Task:
  if name not in BUILDERS:
    raise ValueError(f"unknown task {name!r}; known: {sorted(BUILDERS)}")
  return BUILDERS[name](seed)
