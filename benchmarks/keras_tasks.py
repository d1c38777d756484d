"""The held-out Keras tasks of the optimizer benchmark (benchmarks/suite.py, issue 17).

Each task is a `keras.Model` trained by `model.fit`, the path a user takes, so an optimizer is
measured inside Keras' own loop with its own jit choices and callbacks. The set is built to
tell optimizers apart, not to flatter one: MLPs of depth 2-8 with relu / tanh / sigmoid / gelu
(including the 8-layer tanh MLP on which the meta-trained default is known to lose), ConvNets
with BatchNorm, an embedding model with sparse gradients, a GRU character LM and a small
transformer LM on text that ships inside installed packages, an autoencoder, regression nets,
logistic regression, a 1.1M-parameter wide net, three 10,000-step runs, batch sizes 8 to 1024
and one mixed-precision task.

Data are offline only and never used by meta-training or validation (tests/test_suite.py
checks the tags): scikit-learn's bundled sets (digits, breast_cancer, diabetes, iris, wine,
linnerud), two texts shipped with the installed software (Python's LICENSE.txt and
scikit-learn's dataset descriptions, recorded by path and SHA-256), and two generated sets of
kinds that the meta-training generators (teacher nets, Gaussian mixtures, manifolds, synthetic
sequences, blob/texture/stroke images) and the validation suite (meta/validation.py) do not
use: pendulum trajectories from an ODE, and membership of the Mandelbrot set.

A task's `version` is part of every cache key (benchmarks/suite.py): bump it whenever the
task's data, model, loss, steps or batch size change.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import hashlib
import os
from typing import Callable

import keras
import numpy as np


@dataclasses.dataclass(frozen=True)
class Data:
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  source_hash: str = ""      # SHA-256 of a packaged text (part of the cache key), else ""


@dataclasses.dataclass(frozen=True)
class KerasTask:
  """One benchmark task.

  Attributes:
    name: registry key.
    version: bump on any change of data, model, loss, steps or batch size (cache key).
    description: one line for tables.
    data_source: where the data come from, e.g. "sklearn:digits", "text:python_license",
      "generated:pendulum" (the overlap test compares these across the three sets).
    architecture: model kind, e.g. "mlp8_tanh", "convnet_bn", "gru_lm".
    data: seed -> Data.
    model: (Data) -> an uncompiled keras.Model (built under keras.utils.set_random_seed).
    kind: "classification" (logits, sparse labels; test metric accuracy), "binary" (one
      logit; accuracy), "regression" (MSE; test metric MSE) or "sequence" (per-token logits;
      accuracy).
    steps: training steps; batch_size: minibatch size.
    mixed_precision: build and train under the "mixed_float16" policy.
    jit_compile: model.compile's jit_compile ("auto" = Keras' choice, as a user gets it).
  """
  name: str
  version: int
  description: str
  data_source: str
  architecture: str
  data: Callable[[int], Data]
  model: Callable[[Data], keras.Model]
  kind: str
  steps: int
  batch_size: int
  mixed_precision: bool = False
  jit_compile: bool | str = "auto"

  def loss(self):
    if self.kind == "regression":
      return keras.losses.MeanSquaredError()
    if self.kind == "binary":
      return keras.losses.BinaryCrossentropy(from_logits=True)
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  def metric(self):
    """(name, keras metric, higher_is_better) of the test-set metric."""
    if self.kind == "regression":
      return "mse", keras.metrics.MeanSquaredError(name="mse"), False
    if self.kind == "binary":
      return "accuracy", keras.metrics.BinaryAccuracy(name="accuracy", threshold=0.0), True
    return "accuracy", keras.metrics.SparseCategoricalAccuracy(name="accuracy"), True


# ---- data -------------------------------------------------------------------------------------

def _split(x, y, seed, test_fraction=0.2):
  order = np.random.default_rng([seed, 99]).permutation(len(x))
  num_test = int(round(test_fraction * len(x)))
  test, train = order[:num_test], order[num_test:]
  return x[train], y[train], x[test], y[test]


def _standardise(x_train, x_test):
  mean, std = x_train.mean(0), x_train.std(0) + 1e-8
  return ((x_train - mean) / std).astype(np.float32), ((x_test - mean) / std).astype(np.float32)


@functools.cache
def _sklearn(name: str):
  import sklearn.datasets as d
  loader = {"digits": d.load_digits, "breast_cancer": d.load_breast_cancer,
            "diabetes": d.load_diabetes, "iris": d.load_iris, "wine": d.load_wine,
            "linnerud": d.load_linnerud}[name]
  x, y = loader(return_X_y=True)
  return np.asarray(x, np.float64), np.asarray(y)


def digits(seed: int) -> Data:
  x, y = _sklearn("digits")
  return Data(*_split((x / 16.0).astype(np.float32), y.astype(np.int32), seed))


def digits_images(seed: int) -> Data:
  d = digits(seed)
  return Data(d.x_train.reshape(-1, 8, 8, 1), d.y_train, d.x_test.reshape(-1, 8, 8, 1),
              d.y_test)


def digits_tokens(seed: int) -> Data:
  """Digits as 64 tokens: token = 17 * pixel position + intensity (0..16), 1088 ids."""
  x, y = _sklearn("digits")
  tokens = (np.arange(64) * 17 + x.astype(np.int64)).astype(np.int32)
  return Data(*_split(tokens, y.astype(np.int32), seed))


def digits_autoencoder(seed: int) -> Data:
  d = digits(seed)
  return Data(d.x_train, d.x_train, d.x_test, d.x_test)


def standardised(name: str, dtype=np.int32) -> Callable[[int], Data]:
  def load(seed: int) -> Data:
    x, y = _sklearn(name)
    x_train, y_train, x_test, y_test = _split(x, y.astype(dtype), seed)
    x_train, x_test = _standardise(x_train, x_test)
    return Data(x_train, y_train, x_test, y_test)
  return load


def regression(name: str) -> Callable[[int], Data]:
  """Standardised inputs and targets (targets with the training set's statistics)."""
  def load(seed: int) -> Data:
    x, y = _sklearn(name)
    y = y.reshape(len(y), -1)
    x_train, y_train, x_test, y_test = _split(x, y, seed)
    x_train, x_test = _standardise(x_train, x_test)
    y_train, y_test = _standardise(y_train, y_test)
    return Data(x_train, y_train, x_test, y_test)
  return load


def pendulum(seed: int, num_samples: int = 4096) -> Data:
  """Angle of a damped nonlinear pendulum at time t from (theta0, omega0, t): an ODE solved
  by RK4, not a network, mixture or manifold."""
  rng = np.random.default_rng([seed, 11])
  theta0 = rng.uniform(-2.5, 2.5, num_samples)
  omega0 = rng.uniform(-2.0, 2.0, num_samples)
  t_end = rng.uniform(0.0, 6.0, num_samples)
  steps, damping = 200, 0.15
  theta, omega, dt = theta0.copy(), omega0.copy(), t_end / steps

  def f(th, om):
    return om, -np.sin(th) - damping * om
  for _ in range(steps):
    k1 = f(theta, omega)
    k2 = f(theta + 0.5 * dt * k1[0], omega + 0.5 * dt * k1[1])
    k3 = f(theta + 0.5 * dt * k2[0], omega + 0.5 * dt * k2[1])
    k4 = f(theta + dt * k3[0], omega + dt * k3[1])
    theta = theta + dt / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
    omega = omega + dt / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
  x = np.stack([theta0 / 2.5, omega0 / 2.0, t_end / 3.0 - 1.0], 1).astype(np.float32)
  y = theta.reshape(-1, 1).astype(np.float32)
  return Data(*_split(x, y, seed))


def mandelbrot(seed: int, num_samples: int = 8192, iterations: int = 60) -> Data:
  """Whether c = x + iy (in [-2, 0.6] x [-1.2, 1.2]) is in the Mandelbrot set (binary)."""
  rng = np.random.default_rng([seed, 12])
  c = rng.uniform(-2.0, 0.6, num_samples) + 1j * rng.uniform(-1.2, 1.2, num_samples)
  z = np.zeros_like(c)
  inside = np.ones(num_samples, bool)
  for _ in range(iterations):
    z = np.where(inside, z * z + c, z)
    inside &= np.abs(z) <= 2.0
  x = np.stack([(c.real + 0.7) / 1.3, c.imag / 1.2], 1).astype(np.float32)
  return Data(*_split(x, inside.astype(np.int32), seed))


def python_license_path() -> str:
  """Python's own LICENSE.txt, shipped with every CPython installation."""
  import sysconfig
  path = os.path.join(sysconfig.get_paths()["stdlib"], "LICENSE.txt")
  if not os.path.exists(path):
    raise FileNotFoundError(f"the char-LM task reads Python's LICENSE.txt, not found at {path}")
  return path


def sklearn_descr_paths() -> list[str]:
  """scikit-learn's dataset descriptions (sklearn/datasets/descr/*.rst), sorted."""
  import sklearn
  paths = sorted(glob.glob(os.path.join(os.path.dirname(sklearn.__file__), "datasets",
                                        "descr", "*.rst")))
  if not paths:
    raise FileNotFoundError("the transformer-LM task reads scikit-learn's "
                            "datasets/descr/*.rst; none found")
  return paths


VOCAB = 96   # printable ASCII 32..126 -> 1..95, anything else (newline, tabs, unicode) -> 0


def char_windows(text: str, seq_len: int, seed: int, stride: int = 4) -> Data:
  """Next-character windows; the last 10% of the text is the test set."""
  codes = np.frombuffer(text.encode("ascii", "replace"), np.uint8).astype(np.int32)
  ids = np.where((codes >= 32) & (codes < 127), codes - 31, 0).astype(np.int32)
  cut = int(0.9 * len(ids))

  def windows(part):
    starts = np.arange(0, len(part) - seq_len - 1, stride)
    index = starts[:, None] + np.arange(seq_len + 1)
    w = part[index]
    return w[:, :-1], w[:, 1:]
  x_train, y_train = windows(ids[:cut])
  x_test, y_test = windows(ids[cut:])
  del seed  # the split is by position; the seed only drives init and minibatch order
  return Data(x_train, y_train, x_test, y_test,
              hashlib.sha256(text.encode()).hexdigest()[:16])


def license_text(seed: int, seq_len: int = 48) -> Data:
  with open(python_license_path(), encoding="utf-8", errors="replace") as f:
    return char_windows(f.read(), seq_len, seed)


def descr_text(seed: int, seq_len: int = 32) -> Data:
  text = []
  for path in sklearn_descr_paths():
    with open(path, encoding="utf-8", errors="replace") as f:
      text.append(f.read())
  return char_windows("\n".join(text), seq_len, seed)


# ---- models -----------------------------------------------------------------------------------

def mlp(hidden, activation, outputs, name="mlp"):
  def build(data: Data) -> keras.Model:
    layers = [keras.Input(data.x_train.shape[1:])]
    layers += [keras.layers.Dense(width, activation=activation) for width in hidden]
    layers.append(keras.layers.Dense(outputs))
    return keras.Sequential(layers, name=name)
  return build


def linear(outputs):
  return mlp((), None, outputs, name="linear")


def conv_bn(channels, outputs=10):
  def build(data: Data) -> keras.Model:
    layers = [keras.Input(data.x_train.shape[1:])]
    for index, width in enumerate(channels):
      layers += [keras.layers.Conv2D(width, 3, padding="same", use_bias=False),
                 keras.layers.BatchNormalization(), keras.layers.Activation("relu")]
      if index % 2 == 1 or len(channels) == 2:
        layers.append(keras.layers.MaxPooling2D(2))
    layers += [keras.layers.GlobalAveragePooling2D(), keras.layers.Dense(outputs)]
    return keras.Sequential(layers, name="convnet_bn")
  return build


def embedding_bag(vocab=64 * 17, width=32, outputs=10):
  """Embedding (sparse gradients: only the 64 looked-up rows per sample) -> mean -> MLP."""
  def build(data: Data) -> keras.Model:
    return keras.Sequential([
        keras.Input((64,), dtype="int32"),
        keras.layers.Embedding(vocab, width),
        keras.layers.GlobalAveragePooling1D(),
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(outputs)], name="embedding_bag")
  return build


def gru_lm(width=128, embed=32):
  def build(data: Data) -> keras.Model:
    return keras.Sequential([
        keras.Input((data.x_train.shape[1],), dtype="int32"),
        keras.layers.Embedding(VOCAB, embed),
        keras.layers.GRU(width, return_sequences=True),
        keras.layers.Dense(VOCAB)], name="gru_lm")
  return build


def transformer_lm(width=64, heads=4):
  """One pre-norm causal transformer block (attention + MLP) with learned positions."""
  def build(data: Data) -> keras.Model:
    seq_len = data.x_train.shape[1]
    tokens = keras.Input((seq_len,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, width)(tokens)
    positions = keras.layers.Embedding(seq_len, width)(keras.ops.arange(seq_len))
    x = x + positions
    h = keras.layers.LayerNormalization()(x)
    h = keras.layers.MultiHeadAttention(heads, width // heads)(h, h, use_causal_mask=True)
    x = x + h
    h = keras.layers.LayerNormalization()(x)
    h = keras.layers.Dense(4 * width, activation="gelu")(h)
    x = x + keras.layers.Dense(width)(h)
    x = keras.layers.LayerNormalization()(x)
    return keras.Model(tokens, keras.layers.Dense(VOCAB)(x), name="transformer_lm")
  return build


def autoencoder(code=8):
  def build(data: Data) -> keras.Model:
    return keras.Sequential([
        keras.Input((64,)), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(code), keras.layers.Dense(32, activation="relu"),
        keras.layers.Dense(64, activation="sigmoid")], name="autoencoder")
  return build


# ---- the registry -----------------------------------------------------------------------------

def _tasks() -> list[KerasTask]:
  T = KerasTask
  return [
      T("mlp2_relu_digits", 1, "MLP 64-128-10 relu, digits, batch 32", "sklearn:digits",
        "mlp2_relu", digits, mlp((128,), "relu", 10), "classification", 2000, 32),
      T("mlp4_gelu_digits", 1, "MLP 4x64 gelu, digits, batch 64", "sklearn:digits",
        "mlp4_gelu", digits, mlp((64,) * 4, "gelu", 10), "classification", 2000, 64),
      T("mlp8_tanh_digits", 1, "MLP 8x64 tanh, digits, batch 128", "sklearn:digits",
        "mlp8_tanh", digits, mlp((64,) * 8, "tanh", 10), "classification", 2000, 128),
      T("mlp3_sigmoid_wine", 1, "MLP 3x32 sigmoid, wine, batch 16", "sklearn:wine",
        "mlp3_sigmoid", standardised("wine"), mlp((32,) * 3, "sigmoid", 3),
        "classification", 2000, 16),
      T("mlp8_relu_breast_cancer", 1, "MLP 8x32 relu, breast_cancer, batch 8",
        "sklearn:breast_cancer", "mlp8_relu", standardised("breast_cancer", np.float32),
        mlp((32,) * 8, "relu", 1), "binary", 2000, 8),
      T("mlp2_tanh_iris", 1, "MLP 4-16-3 tanh, iris, batch 8", "sklearn:iris", "mlp2_tanh",
        standardised("iris"), mlp((16,), "tanh", 3), "classification", 2000, 8),
      T("logreg_breast_cancer", 1, "logistic regression, breast_cancer, batch 64",
        "sklearn:breast_cancer", "linear", standardised("breast_cancer", np.float32),
        linear(1), "binary", 2000, 64),
      T("softmax_regression_digits", 1, "multinomial logistic regression, digits, batch 256",
        "sklearn:digits", "linear", digits, linear(10), "classification", 2000, 256),
      T("convbn_digits", 1, "ConvNet 2x(conv3x3-BN-relu) 16/32 + pool, digits 8x8x1, batch 64",
        "sklearn:digits", "convnet_bn", digits_images, conv_bn((16, 32)), "classification",
        1000, 64),
      T("convbn4_digits", 1, "ConvNet 4x(conv3x3-BN-relu) 16-16-32-32, digits, batch 256",
        "sklearn:digits", "convnet_bn", digits_images, conv_bn((16, 16, 32, 32)),
        "classification", 600, 256),
      T("embedding_bag_digits", 1, "Embedding(1088x32, sparse grads)-mean-64-10, digits as "
        "pixel tokens, batch 64", "sklearn:digits", "embedding_bag", digits_tokens,
        embedding_bag(), "classification", 2000, 64),
      T("gru_lm_python_license", 1, "GRU(128) char LM, Python's LICENSE.txt, 48 chars, "
        "batch 32", "text:python_license", "gru_lm", license_text, gru_lm(),
        "sequence", 1000, 32),
      T("transformer_lm_sklearn_descr", 1, "1-block causal transformer (d 64, 4 heads) char "
        "LM, scikit-learn dataset descriptions, 32 chars, batch 32", "text:sklearn_descr",
        "transformer_lm", descr_text, transformer_lm(), "sequence", 1000, 32),
      T("autoencoder_digits", 1, "autoencoder 64-32-8-32-64 (sigmoid out, MSE), digits, "
        "batch 128", "sklearn:digits", "autoencoder", digits_autoencoder, autoencoder(),
        "regression", 2000, 128),
      T("regression_diabetes", 1, "MLP 10-64-64-1 relu regression (MSE), diabetes, batch 32",
        "sklearn:diabetes", "mlp2_relu_regression", regression("diabetes"),
        mlp((64, 64), "relu", 1), "regression", 2000, 32),
      T("regression_linnerud", 1, "MLP 3-16-3 tanh regression (MSE), linnerud (20 samples), "
        "batch 8", "sklearn:linnerud", "mlp1_tanh_regression", regression("linnerud"),
        mlp((16,), "tanh", 3), "regression", 1000, 8),
      T("pendulum_mlp", 1, "MLP 3-64-64-64-1 gelu regression, damped pendulum angle (RK4), "
        "batch 128", "generated:pendulum_ode", "mlp3_gelu_regression", pendulum,
        mlp((64,) * 3, "gelu", 1), "regression", 2000, 128),
      T("mandelbrot_mlp", 1, "MLP 2-4x64-1 relu, Mandelbrot set membership, batch 1024",
        "generated:mandelbrot", "mlp4_relu", mandelbrot, mlp((64,) * 4, "relu", 1),
        "binary", 1000, 1024),
      T("wide_mlp_digits", 1, "wide MLP 64-1024-1024-10 relu (1.1M params), digits, "
        "batch 256", "sklearn:digits", "mlp2_relu_wide", digits,
        mlp((1024, 1024), "relu", 10), "classification", 600, 256),
      T("mixed_precision_mlp_digits", 1, "MLP 64-256-256-10 relu under mixed_float16 (loss "
        "scaling), digits, batch 128", "sklearn:digits", "mlp2_relu", digits,
        mlp((256, 256), "relu", 10), "classification", 1000, 128, mixed_precision=True),
      T("long_mlp2_relu_digits", 1, "MLP 64-128-10 relu, digits, batch 32, 10k steps",
        "sklearn:digits", "mlp2_relu", digits, mlp((128,), "relu", 10), "classification",
        10000, 32),
      T("long_regression_diabetes", 1, "MLP 10-64-64-1 relu regression, diabetes, batch 64, "
        "10k steps", "sklearn:diabetes", "mlp2_relu_regression", regression("diabetes"),
        mlp((64, 64), "relu", 1), "regression", 10000, 64),
      T("long_mlp3_tanh_wine", 1, "MLP 3x32 tanh, wine, batch 16, 10k steps", "sklearn:wine",
        "mlp3_tanh", standardised("wine"), mlp((32,) * 3, "tanh", 3), "classification",
        10000, 16),
  ]


TASKS: dict[str, KerasTask] = {t.name: t for t in _tasks()}


def get(name: str) -> KerasTask:
  if name not in TASKS:
    raise ValueError(f"unknown task {name!r}; known: {sorted(TASKS)}")
  return TASKS[name]
