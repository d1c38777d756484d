"""Neural-network meta-training tasks on generated data (issue 13).

Why: an optimizer meta-trained only on the paper's synthetic ensemble learns that ensemble,
not neural-network training; every learned optimizer that generalises to networks (VeLO,
Celo) meta-trains on networks. This module is a family of small networks whose data are all
made from the instance seed, so that no real data set or natural text (which belong to
evaluation) ever enters meta-training.

Two levels, for compilation:
* The Python-static part of a task - architecture, layer sizes, activation, normalisation,
  loss, batch size, data shapes and generator kind - is one entry of a FINITE catalogue,
  `catalogue()` (43 structures, each a `Problem` with a unique name), so XLA compiles once per
  structure and never per instance.
* Everything continuous is drawn from the instance seed on the numpy side and reaches the
  loss as data arrays: teacher networks, mixture means and covariances, Markov chains and
  HMMs, image prototypes, input scale, label noise (in `sample_data`); initialisation scale
  (in `init_params`). `instance_info(seed)` reports these draws.

Axes of the catalogue (`python -m problems --nets` prints them and a sample of instances):
  architecture  MLP depth 1-8, width 8-256; linear / logistic / softmax heads; ConvNets with
                1-3 conv layers and max or average pooling; GRU and LSTM sequence models;
                one pre-norm self-attention block; autoencoders with a bottleneck
  activation    relu, tanh, sigmoid, elu, gelu, swish
  normalisation none, batch norm (training-mode batch statistics inside the loss), layer norm
  loss          softmax cross-entropy, sigmoid cross-entropy, MSE regression, reconstruction
  batch         8-512 samples, or the full batch
  data          random teacher networks, Gaussian mixtures with random covariances,
                low-dimensional manifolds, sequences (copy, reverse, sort, addition, bracket
                matching, Markov-chain and HMM character streams), class-conditional images
                (blobs, textures, strokes)

Tasks cost ~1k-50k parameters (most under 10k) and <= ~2 MB of data, so a meta-step stays
cheap on a CPU. The meta-objective evaluates the full-data loss at every inner step of a
minibatched task, so instances hold few samples (512-1024; 512 for the ConvNets). Like the rest of problems/, no task reads a file.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from problems import base

ACTIVATIONS = ("relu", "tanh", "sigmoid", "elu", "gelu", "swish")
NORMS = ("none", "batch", "layer")
LOSSES = ("softmax", "sigmoid", "mse", "reconstruction")
IMAGE_KINDS = ("blobs", "textures", "strokes")
SEQUENCE_KINDS = ("copy", "reverse", "sort", "addition", "brackets", "markov", "hmm")
VECTOR_KINDS = ("teacher", "mixture", "manifold")

# Instance draws (continuous; numpy side).
INIT_SCALE_RANGE = (0.5, 2.0)      # log-uniform multiplier of the variance-scaling init.
INPUT_SCALE_RANGE = (0.3, 3.0)     # log-uniform scale of vector inputs.
MAX_LABEL_NOISE = 0.2              # label-flip / target-noise level: 0 w.p. 1/2, else U(0, max).
NORM_EPSILON = 1e-3


def activation(name: str, x: tf.Tensor) -> tf.Tensor:
  if name == "relu":
    return tf.nn.relu(x)
  if name == "tanh":
    return tf.tanh(x)
  if name == "sigmoid":
    return tf.sigmoid(x)
  if name == "elu":
    return tf.nn.elu(x)
  if name == "gelu":
    return tf.nn.gelu(x, approximate=True)
  if name == "swish":
    return x * tf.sigmoid(x)
  raise ValueError(f"unknown activation {name!r}; expected one of {ACTIVATIONS}")


def normalise(x: tf.Tensor, kind: str, gain: tf.Tensor, bias: tf.Tensor) -> tf.Tensor:
  """Batch norm (statistics over every axis but the last, training mode) or layer norm."""
  axes = list(range(x.shape.rank - 1)) if kind == "batch" else [x.shape.rank - 1]
  mean = tf.reduce_mean(x, axis=axes, keepdims=True)
  variance = tf.reduce_mean(tf.square(x - mean), axis=axes, keepdims=True)
  return (x - mean) * tf.math.rsqrt(variance + NORM_EPSILON) * gain + bias


def softmax_cross_entropy(logits, labels, weights=None) -> tf.Tensor:
  losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits)
  if weights is None:
    return tf.reduce_mean(losses)
  weights = tf.broadcast_to(weights, tf.shape(losses))
  return tf.reduce_sum(losses * weights) / tf.reduce_sum(weights)


def sigmoid_cross_entropy(logits, labels) -> tf.Tensor:
  return tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))


def mean_squared_error(prediction, target) -> tf.Tensor:
  return tf.reduce_mean(tf.square(prediction - target))


def log_uniform(rng: np.random.Generator, low: float, high: float) -> float:
  return float(np.exp(rng.uniform(math.log(low), math.log(high))))


def label_noise_level(rng: np.random.Generator) -> float:
  return 0.0 if rng.random() < 0.5 else float(rng.uniform(0.0, MAX_LABEL_NOISE))


# ---------------------------------------------------------------------------------------
# Data generators (numpy, deterministic in the generator they are given).
# ---------------------------------------------------------------------------------------

def random_teacher(rng, x: np.ndarray, num_outputs: int, depth: int = 2,
                   width: int = 32) -> np.ndarray:
  """Outputs of a random tanh/relu network (He-scaled), standardised per output."""
  hidden = x
  nonlinearity = np.tanh if rng.random() < 0.5 else (lambda v: np.maximum(v, 0.0))
  for _ in range(depth):
    weights = rng.standard_normal((hidden.shape[1], width)) * np.sqrt(2.0 / hidden.shape[1])
    hidden = nonlinearity(hidden @ weights + 0.1 * rng.standard_normal(width))
  out = hidden @ rng.standard_normal((width, num_outputs))
  return (out - out.mean(0)) / (out.std(0) + 1e-6)


def correlated_inputs(rng, num_samples: int, num_features: int) -> np.ndarray:
  """x = z A with a random mixing A (random covariance), rows scaled to unit variance."""
  mixing = rng.standard_normal((num_features, num_features)) / np.sqrt(num_features)
  mixing += np.eye(num_features) * rng.uniform(0.2, 1.0)
  x = rng.standard_normal((num_samples, num_features)) @ mixing
  return x / (x.std(0) + 1e-6)


def gaussian_mixture(rng, num_samples: int, num_features: int, num_classes: int):
  """Class = component; means ~ N(0, sep^2 I), covariance L L^T with a random L."""
  separation = rng.uniform(0.5, 2.0)
  means = rng.standard_normal((num_classes, num_features)) * separation
  factors = rng.standard_normal((num_classes, num_features, num_features)) / np.sqrt(
      num_features) * rng.uniform(0.5, 1.5, size=(num_classes, 1, 1))
  labels = rng.integers(num_classes, size=num_samples)
  noise = rng.standard_normal((num_samples, num_features))
  x = means[labels] + np.einsum("nf,nfg->ng", noise, factors[labels])
  return x / (x.std(0) + 1e-6), labels


def manifold(rng, num_samples: int, num_features: int, intrinsic_dim: int):
  """Points near a random smooth `intrinsic_dim`-dimensional manifold in num_features dims,
  and the level of the off-manifold noise."""
  z = rng.uniform(-1.0, 1.0, size=(num_samples, intrinsic_dim)) * rng.uniform(1.0, 3.0)
  x = random_teacher(rng, z, num_features, depth=2, width=32)
  noise = rng.uniform(0.0, 0.1)
  return x + noise * rng.standard_normal(x.shape), noise


def flip_labels(rng, labels: np.ndarray, num_classes: int, level: float) -> np.ndarray:
  flip = rng.random(labels.shape) < level
  return np.where(flip, rng.integers(num_classes, size=labels.shape), labels)


def class_images(rng, kind: str, num_samples: int, size: int, num_classes: int):
  """Small class-conditional grey images [N, size, size, 1] in [~0, ~1] and labels."""
  labels = rng.integers(num_classes, size=num_samples)
  grid = np.arange(size, dtype=np.float64)
  yy, xx = np.meshgrid(grid, grid, indexing="ij")
  images = np.zeros((num_samples, size, size))
  if kind == "blobs":
    count = 3
    centres = rng.uniform(1.0, size - 2.0, size=(num_classes, count, 2))
    widths = rng.uniform(0.8, 2.5, size=(num_classes, count))
    for n, c in enumerate(labels):
      jitter = rng.normal(0.0, 0.7, size=(count, 2))
      for (cy, cx), width in zip(centres[c] + jitter, widths[c]):
        images[n] += rng.uniform(0.6, 1.0) * np.exp(
            -((yy - cy)**2 + (xx - cx)**2) / (2 * width**2))
  elif kind == "textures":
    angles = rng.uniform(0.0, np.pi, size=num_classes)
    frequencies = rng.uniform(0.4, 1.6, size=num_classes)
    for n, c in enumerate(labels):
      angle = angles[c] + rng.normal(0.0, 0.1)
      phase = rng.uniform(0.0, 2 * np.pi)
      images[n] = 0.5 + 0.5 * np.sin(frequencies[c] * (np.cos(angle) * xx + np.sin(angle) * yy)
                                     + phase)
  elif kind == "strokes":
    points = rng.uniform(1.0, size - 2.0, size=(num_classes, 3, 2))
    for n, c in enumerate(labels):
      polyline = points[c] + rng.normal(0.0, 0.6, size=(3, 2))
      width = rng.uniform(0.6, 1.2)
      distance = np.full((size, size), np.inf)
      for start, end in zip(polyline[:-1], polyline[1:]):
        direction = end - start
        t = np.clip(((yy - start[0]) * direction[0] + (xx - start[1]) * direction[1])
                    / (direction @ direction + 1e-9), 0.0, 1.0)
        d2 = (yy - start[0] - t * direction[0])**2 + (xx - start[1] - t * direction[1])**2
        distance = np.minimum(distance, d2)
      images[n] = np.exp(-distance / (2 * width**2))
  else:
    raise ValueError(f"unknown image kind {kind!r}; expected one of {IMAGE_KINDS}")
  images += rng.uniform(0.02, 0.2) * rng.standard_normal(images.shape)
  return images[..., None], labels


def dirichlet_rows(rng, rows: int, columns: int) -> np.ndarray:
  concentration = log_uniform(rng, 0.05, 1.0)
  return rng.dirichlet(np.full(columns, concentration), size=rows)


def sample_chain(rng, transitions: np.ndarray, num_samples: int, length: int) -> np.ndarray:
  """num_samples state sequences of a Markov chain (stationary-ish random start)."""
  states = np.empty((num_samples, length), np.int64)
  states[:, 0] = rng.integers(transitions.shape[0], size=num_samples)
  cumulative = np.cumsum(transitions, axis=1)
  for t in range(1, length):
    u = rng.random(num_samples)[:, None]
    states[:, t] = np.minimum((u > cumulative[states[:, t - 1]]).sum(1),
                              transitions.shape[0] - 1)
  return states


def sequences(rng, kind: str, num_samples: int, length: int, vocab: int):
  """(inputs [N, T], targets [N, T], mask [T]) for a sequence task; see `SequenceSpec`.

  copy / reverse / sort: T = 2L, inputs L symbols in 1..vocab-1 then L "go" tokens (0);
    targets on the second half (mask) are the symbols, reversed or sorted.
  addition: streaming base-B addition, least significant digit first; input token a*B + b,
    target (a + b + carry) mod B. vocab = B.
  brackets: two bracket types, tokens 0-3 = ( [ ) ]; target: depth of a valid prefix
    clipped to 3, or 4 once the prefix is invalid.
  markov / hmm: next-symbol prediction on a random Markov chain / HMM over `vocab` symbols.
  """
  mask = np.ones(length, np.float32)
  if kind in ("copy", "reverse", "sort"):
    half = length // 2
    symbols = rng.integers(1, vocab, size=(num_samples, half))
    inputs = np.concatenate([symbols, np.zeros_like(symbols)], axis=1)
    wanted = {"copy": symbols, "reverse": symbols[:, ::-1],
              "sort": np.sort(symbols, axis=1)}[kind]
    targets = np.concatenate([np.zeros_like(symbols), wanted], axis=1)
    mask[:half] = 0.0
  elif kind == "addition":
    a = rng.integers(vocab, size=(num_samples, length))
    b = rng.integers(vocab, size=(num_samples, length))
    inputs, targets = a * vocab + b, np.empty_like(a)
    carry = np.zeros(num_samples, np.int64)
    for t in range(length):
      total = a[:, t] + b[:, t] + carry
      targets[:, t], carry = total % vocab, total // vocab
  elif kind == "brackets":
    # Mostly valid strings: open with probability p, close the matching type with
    # probability q, otherwise a random token (which often breaks validity).
    inputs = np.empty((num_samples, length), np.int64)
    targets = np.empty((num_samples, length), np.int64)
    p_open, p_random = rng.uniform(0.4, 0.6), rng.uniform(0.02, 0.15)
    for n in range(num_samples):
      stack, valid = [], True
      for t in range(length):
        if rng.random() < p_random:
          token = int(rng.integers(4))
        elif not stack or rng.random() < p_open:
          token = int(rng.integers(2))
        else:
          token = 2 + stack[-1]
        if token < 2:
          stack.append(token)
        elif valid and stack and stack[-1] == token - 2:
          stack.pop()
        else:
          valid = False
        inputs[n, t] = token
        targets[n, t] = min(len(stack), 3) if valid else 4
  elif kind == "markov":
    chain = sample_chain(rng, dirichlet_rows(rng, vocab, vocab), num_samples, length + 1)
    inputs, targets = chain[:, :-1], chain[:, 1:]
  elif kind == "hmm":
    hidden_states = 4
    hidden = sample_chain(rng, dirichlet_rows(rng, hidden_states, hidden_states), num_samples,
                          length + 1)
    emissions = np.cumsum(dirichlet_rows(rng, hidden_states, vocab), axis=1)
    u = rng.random(hidden.shape)[..., None]
    symbols = np.minimum((u > emissions[hidden]).sum(-1), vocab - 1)
    inputs, targets = symbols[:, :-1], symbols[:, 1:]
  else:
    raise ValueError(f"unknown sequence kind {kind!r}; expected one of {SEQUENCE_KINDS}")
  return inputs.astype(np.int32), targets.astype(np.int32), mask


def sequence_vocab(kind: str, vocab: int) -> tuple[int, int]:
  """(input vocabulary, output classes) of a sequence task."""
  if kind == "addition":
    return vocab * vocab, vocab
  if kind == "brackets":
    return 4, 5
  return vocab, vocab


# ---------------------------------------------------------------------------------------
# Tasks.
# ---------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Param:
  """One parameter tensor: name, shape, kind ('weight', 'bias', 'gain', 'embedding'),
  fan_in and the variance gain of its init (2 for relu-like, 1 otherwise)."""
  name: str
  shape: tuple
  kind: str = "weight"
  fan_in: int = 1
  gain: float = 1.0


def init_gain(activation_name: str) -> float:
  return 2.0 if activation_name in ("relu", "elu", "gelu", "swish") else 1.0


class NetTask(base.Problem):
  """A network on generated data. Subclasses define `spec()` (list of Param), `make_data`,
  and `objective`. The minimum is unknown: 0 bounds every loss here."""

  def __init__(self, name: str, *, batch_size: int | None, num_samples: int, axes: dict):
    self.num_samples = int(num_samples)
    self.axes = dict(axes)   # the structure's values on each axis, for listing and tests
    super().__init__(name, family=base.NEURAL_NETWORK, batch_size=batch_size,
                     minimum=0.0, minimum_kind="bound")
    self._spec = self.spec()
    self._index = {param.name: index for index, param in enumerate(self._spec)}
    if len(self._index) != len(self._spec):
      raise RuntimeError(f"{name}: duplicate parameter names")

  def spec(self) -> list[Param]:
    raise NotImplementedError

  def make_data(self, rng: np.random.Generator) -> tuple[dict, dict]:
    """(data arrays, info about the draws) for one instance."""
    raise NotImplementedError

  def param_shapes(self):
    return [tuple(param.shape) for param in self._spec]

  def named(self, params: Sequence[tf.Tensor]) -> dict[str, tf.Tensor]:
    return {param.name: value for param, value in zip(self._spec, params)}

  def sample_data(self, seed):
    data, _ = self.make_data(self.rng(seed, base.DATA_STREAM))
    return {key: value.astype(np.int32 if value.dtype.kind in "iu" else np.float32)
            for key, value in data.items()}

  def init_scale(self, seed: int) -> float:
    return log_uniform(self.rng(seed, base.INIT_STREAM), *INIT_SCALE_RANGE)

  def init_params(self, seed):
    rng = self.rng(seed, base.INIT_STREAM)
    scale = log_uniform(rng, *INIT_SCALE_RANGE)
    params = []
    for param in self._spec:
      if param.kind == "weight":
        value = rng.standard_normal(param.shape) * scale * math.sqrt(param.gain / param.fan_in)
      elif param.kind == "embedding":
        value = rng.standard_normal(param.shape) * scale
      elif param.kind == "gain":
        value = np.ones(param.shape)
      else:
        value = np.zeros(param.shape)
      params.append(value.astype(np.float32))
    return params

  def instance_info(self, seed: int) -> dict:
    """The instance's continuous draws (for listings), e.g. label noise, init scale."""
    _, info = self.make_data(self.rng(seed, base.DATA_STREAM))
    return {**info, "init_scale": round(self.init_scale(seed), 3)}


def _dense_spec(prefix: str, fan_in: int, fan_out: int, gain: float) -> list[Param]:
  return [Param(f"{prefix}/w", (fan_in, fan_out), "weight", fan_in, gain),
          Param(f"{prefix}/b", (fan_out,), "bias")]


def _norm_spec(prefix: str, norm: str, width: int) -> list[Param]:
  if norm == "none":
    return []
  return [Param(f"{prefix}/gain", (width,), "gain"), Param(f"{prefix}/beta", (width,), "bias")]


class MLP(NetTask):
  """MLP (depth 0 = a linear / logistic / softmax head) on vector data.

  data "teacher": correlated inputs, targets from a random teacher network (argmax for
    softmax, signs for multi-label sigmoid, values + noise for MSE);
  data "mixture": a Gaussian mixture with random covariances, class = component.
  """

  batched_keys = ("x", "y")

  def __init__(self, depth: int, width: int, act: str, norm: str, loss: str, data: str,
               batch_size: int | None, num_features: int = 16, num_outputs: int = 4,
               num_samples: int = 1024):
    if act not in ACTIVATIONS or norm not in NORMS or loss not in LOSSES[:3] \
        or data not in VECTOR_KINDS[:2] or (loss == "mse" and data != "teacher"):
      raise ValueError(f"bad MLP structure {(act, norm, loss, data)}")
    self.depth, self.width, self.act, self.norm, self.loss_kind, self.data_kind = (
        depth, width, act, norm, loss, data)
    self.num_features, self.num_outputs = num_features, num_outputs
    kind = "linear head" if depth == 0 else "mlp"
    name = (f"net_mlp_d{depth}_w{width}_{act}_{norm}" if depth else "net_head") + (
        f"_{loss}_{data}_f{num_features}_o{num_outputs}_b{batch_size or 'full'}")
    super().__init__(name, batch_size=batch_size, num_samples=num_samples, axes={
        "architecture": kind, "depth": depth, "width": width if depth else 0,
        "activation": act if depth else "-", "norm": norm if depth else "none", "loss": loss,
        "data": data})

  def spec(self):
    spec, fan_in = [], self.num_features
    for layer in range(self.depth):
      spec += _dense_spec(f"h{layer}", fan_in, self.width, init_gain(self.act))
      spec += _norm_spec(f"h{layer}", self.norm, self.width)
      fan_in = self.width
    return spec + _dense_spec("out", fan_in, self.num_outputs, 1.0)

  def make_data(self, rng):
    noise = label_noise_level(rng)
    input_scale = log_uniform(rng, *INPUT_SCALE_RANGE)
    if self.data_kind == "mixture":
      x, labels = gaussian_mixture(rng, self.num_samples, self.num_features, self.num_outputs)
      labels = flip_labels(rng, labels, self.num_outputs, noise)
      # sigmoid: one-vs-rest targets of the same classes.
      y = labels if self.loss_kind == "softmax" else np.eye(self.num_outputs)[labels]
    else:
      x = correlated_inputs(rng, self.num_samples, self.num_features)
      out = random_teacher(rng, x, self.num_outputs, depth=int(rng.integers(1, 4)))
      if self.loss_kind == "softmax":
        y = flip_labels(rng, out.argmax(1), self.num_outputs, noise)
      elif self.loss_kind == "sigmoid":
        y = np.where(rng.random(out.shape) < noise, 1.0 - (out > 0), out > 0)
      else:
        y = out + noise * rng.standard_normal(out.shape)
    info = {"label_noise": round(noise, 3), "input_scale": round(input_scale, 3)}
    return {"x": x * input_scale, "y": y}, info

  def objective(self, params, batch):
    p = self.named(params)
    h = batch["x"]
    for layer in range(self.depth):
      h = tf.matmul(h, p[f"h{layer}/w"]) + p[f"h{layer}/b"]
      if self.norm != "none":
        h = normalise(h, self.norm, p[f"h{layer}/gain"], p[f"h{layer}/beta"])
      h = activation(self.act, h)
    out = tf.matmul(h, p["out/w"]) + p["out/b"]
    if self.loss_kind == "softmax":
      return softmax_cross_entropy(out, batch["y"])
    if self.loss_kind == "sigmoid":
      return sigmoid_cross_entropy(out, batch["y"])
    return mean_squared_error(out, batch["y"])


class ConvNet(NetTask):
  """1-3 conv layers (3x3, SAME), each followed by 2x2 max or average pooling, then a dense
  softmax head on the flattened features, on class-conditional generated images."""

  batched_keys = ("x", "y")

  def __init__(self, channels: tuple[int, ...], act: str, norm: str, pool: str, images: str,
               batch_size: int | None, size: int = 12, num_classes: int = 6,
               num_samples: int = 512):
    if pool not in ("max", "avg") or images not in IMAGE_KINDS or norm == "layer" \
        or size % (2 ** len(channels)):
      raise ValueError(f"bad ConvNet structure {(channels, norm, pool, images, size)}")
    self.channels, self.act, self.norm, self.pool, self.images = (
        tuple(channels), act, norm, pool, images)
    self.size, self.num_classes = size, num_classes
    name = (f"net_conv{len(channels)}_c{'-'.join(map(str, channels))}_{act}_{norm}_{pool}pool"
            f"_{images}{size}_k{num_classes}_b{batch_size or 'full'}")
    super().__init__(name, batch_size=batch_size, num_samples=num_samples, axes={
        "architecture": "convnet", "depth": len(channels), "width": max(channels),
        "activation": act, "norm": norm, "loss": "softmax", "data": images})

  def spec(self):
    spec, fan_in = [], 1
    for layer, width in enumerate(self.channels):
      spec.append(Param(f"c{layer}/w", (3, 3, fan_in, width), "weight", 9 * fan_in,
                        init_gain(self.act)))
      spec.append(Param(f"c{layer}/b", (width,), "bias"))
      spec += _norm_spec(f"c{layer}", self.norm, width)
      fan_in = width
    features = (self.size // 2 ** len(self.channels))**2 * fan_in
    return spec + _dense_spec("out", features, self.num_classes, 1.0)

  def make_data(self, rng):
    noise = label_noise_level(rng)
    x, labels = class_images(rng, self.images, self.num_samples, self.size, self.num_classes)
    return ({"x": x, "y": flip_labels(rng, labels, self.num_classes, noise)},
            {"label_noise": round(noise, 3)})

  def objective(self, params, batch):
    p = self.named(params)
    h = batch["x"]
    for layer, width in enumerate(self.channels):
      h = tf.nn.conv2d(h, p[f"c{layer}/w"], strides=1, padding="SAME") + p[f"c{layer}/b"]
      if self.norm != "none":
        h = normalise(h, self.norm, p[f"c{layer}/gain"], p[f"c{layer}/beta"])
      h = activation(self.act, h)
      # 2x2 pooling by reshape (twice differentiable under XLA, unlike MaxPoolGrad).
      size = h.shape[1] // 2
      h = tf.reshape(h, [-1, size, 2, size, 2, width])
      h = tf.reduce_max(h, axis=[2, 4]) if self.pool == "max" else tf.reduce_mean(h, [2, 4])
    logits = tf.matmul(tf.reshape(h, [-1, p["out/w"].shape[0]]), p["out/w"]) + p["out/b"]
    return softmax_cross_entropy(logits, batch["y"])


class _SequenceTask(NetTask):
  """Shared data and loss of the sequence models: per-position softmax CE under a mask."""

  batched_keys = ("x", "y")

  def __init__(self, name, kind, length, vocab, batch_size, num_samples, axes):
    if kind not in SEQUENCE_KINDS:
      raise ValueError(f"unknown sequence kind {kind!r}")
    self.kind, self.length, self.vocab = kind, length, vocab
    self.vocab_in, self.vocab_out = sequence_vocab(kind, vocab)
    super().__init__(name, batch_size=batch_size, num_samples=num_samples,
                     axes={**axes, "loss": "softmax", "data": kind})

  def make_data(self, rng):
    noise = label_noise_level(rng) if self.kind in ("markov", "hmm") else 0.0
    x, y, mask = sequences(rng, self.kind, self.num_samples, self.length, self.vocab)
    y = flip_labels(rng, y, self.vocab_out, noise)
    return {"x": x, "y": y, "mask": mask}, {"label_noise": round(noise, 3)}

  def one_hot(self, tokens):
    return tf.one_hot(tokens, self.vocab_in, dtype=tf.float32)   # dense gradients (no gather)


class RNN(_SequenceTask):
  """A GRU or LSTM (one layer, embedding by one-hot matmul, softmax head per position)."""

  def __init__(self, cell: str, hidden: int, kind: str, batch_size: int | None,
               length: int = 10, vocab: int = 6, embed: int = 8, num_samples: int = 1024):
    if cell not in ("gru", "lstm"):
      raise ValueError(f"unknown cell {cell!r}")
    self.cell, self.hidden, self.embed = cell, hidden, embed
    super().__init__(f"net_{cell}_h{hidden}_{kind}_t{length}_v{vocab}_b{batch_size or 'full'}",
                     kind, length, vocab, batch_size, num_samples,
                     {"architecture": cell, "depth": 1, "width": hidden,
                      "activation": "tanh", "norm": "none"})

  def spec(self):
    gates = 3 if self.cell == "gru" else 4
    return [Param("embed", (self.vocab_in, self.embed), "embedding"),
            Param("cell/wx", (self.embed, gates * self.hidden), "weight", self.embed),
            Param("cell/wh", (self.hidden, gates * self.hidden), "weight", self.hidden),
            Param("cell/b", (gates * self.hidden,), "bias"),
            *_dense_spec("out", self.hidden, self.vocab_out, 1.0)]

  def objective(self, params, batch):
    p = self.named(params)
    inputs = tf.einsum("ntv,ve->nte", self.one_hot(batch["x"]), p["embed"])
    projected = tf.einsum("nte,eg->ntg", inputs, p["cell/wx"]) + p["cell/b"]
    n = tf.shape(projected)[0]
    h = tf.zeros([n, self.hidden])
    c = tf.zeros([n, self.hidden])
    outputs = []
    for t in range(self.length):   # static length: unrolled in the graph
      if self.cell == "gru":
        xz, xr, xn = tf.split(projected[:, t], 3, axis=1)
        hz, hr, hn = tf.split(tf.matmul(h, p["cell/wh"]), 3, axis=1)
        z, r = tf.sigmoid(xz + hz), tf.sigmoid(xr + hr)
        h = (1.0 - z) * tf.tanh(xn + r * hn) + z * h
      else:
        i, f, g, o = tf.split(projected[:, t] + tf.matmul(h, p["cell/wh"]), 4, axis=1)
        c = tf.sigmoid(f + 1.0) * c + tf.sigmoid(i) * tf.tanh(g)
        h = tf.sigmoid(o) * tf.tanh(c)
      outputs.append(h)
    logits = tf.einsum("nth,hv->ntv", tf.stack(outputs, axis=1), p["out/w"]) + p["out/b"]
    return softmax_cross_entropy(logits, batch["y"], batch["mask"])


class Attention(_SequenceTask):
  """One pre-norm transformer block: single-head self-attention (causal for the next-symbol
  tasks) and a gelu MLP, both residual; learned positions; a final layer norm and head."""

  def __init__(self, dim: int, kind: str, batch_size: int | None, length: int = 10,
               vocab: int = 6, num_samples: int = 1024):
    self.dim = dim
    self.causal = kind in ("markov", "hmm", "addition", "brackets")
    super().__init__(f"net_attn_d{dim}_{kind}_t{length}_v{vocab}_b{batch_size or 'full'}",
                     kind, length, vocab, batch_size, num_samples,
                     {"architecture": "attention", "depth": 1, "width": dim,
                      "activation": "gelu", "norm": "layer"})

  def spec(self):
    d = self.dim
    spec = [Param("embed", (self.vocab_in, d), "embedding"),
            Param("position", (self.length, d), "embedding", 1, 1.0)]
    spec += _norm_spec("ln1", "layer", d)
    spec += [Param(f"attn/{k}", (d, d), "weight", d) for k in ("q", "k", "v", "o")]
    spec += _norm_spec("ln2", "layer", d)
    spec += _dense_spec("mlp1", d, 2 * d, 2.0) + _dense_spec("mlp2", 2 * d, d, 1.0)
    spec += _norm_spec("ln3", "layer", d)
    return spec + _dense_spec("out", d, self.vocab_out, 1.0)

  def init_params(self, seed):
    # Token and position embeddings at 1/sqrt(2) so that their sum has unit scale.
    params = super().init_params(seed)
    for index in (self._index["embed"], self._index["position"]):
      params[index] = (params[index] / np.sqrt(2.0)).astype(np.float32)
    return params

  def objective(self, params, batch):
    p = self.named(params)
    h = tf.einsum("ntv,vd->ntd", self.one_hot(batch["x"]), p["embed"]) + p["position"]
    a = normalise(h, "layer", p["ln1/gain"], p["ln1/beta"])
    q, k, v = (tf.einsum("ntd,de->nte", a, p[f"attn/{name}"]) for name in "qkv")
    scores = tf.einsum("nsd,ntd->nst", q, k) / math.sqrt(self.dim)
    if self.causal:
      allowed = np.tril(np.ones((self.length, self.length), bool))
      scores = tf.where(allowed, scores, -1e9)
    mixed = tf.einsum("nst,ntd->nsd", tf.nn.softmax(scores, axis=-1), v)
    h = h + tf.einsum("ntd,de->nte", mixed, p["attn/o"])
    a = normalise(h, "layer", p["ln2/gain"], p["ln2/beta"])
    a = activation("gelu", tf.einsum("ntd,de->nte", a, p["mlp1/w"]) + p["mlp1/b"])
    h = h + tf.einsum("nte,ed->ntd", a, p["mlp2/w"]) + p["mlp2/b"]
    h = normalise(h, "layer", p["ln3/gain"], p["ln3/beta"])
    logits = tf.einsum("ntd,dv->ntv", h, p["out/w"]) + p["out/b"]
    return softmax_cross_entropy(logits, batch["y"], batch["mask"])


class Autoencoder(NetTask):
  """Encoder widths -> bottleneck -> mirrored decoder (linear output), reconstruction MSE,
  on points near a random low-dimensional manifold."""

  batched_keys = ("x",)

  def __init__(self, widths: tuple[int, ...], bottleneck: int, act: str, norm: str,
               batch_size: int | None, num_features: int = 32, intrinsic_dim: int = 2,
               num_samples: int = 1024):
    self.widths, self.bottleneck, self.act, self.norm = tuple(widths), bottleneck, act, norm
    self.num_features, self.intrinsic_dim = num_features, intrinsic_dim
    name = (f"net_ae_f{num_features}_h{'-'.join(map(str, widths))}_z{bottleneck}_{act}_{norm}"
            f"_m{intrinsic_dim}_b{batch_size or 'full'}")
    super().__init__(name, batch_size=batch_size, num_samples=num_samples, axes={
        "architecture": "autoencoder", "depth": 2 * len(widths) + 2,
        "width": max(widths), "activation": act, "norm": norm, "loss": "reconstruction",
        "data": "manifold"})

  def _sizes(self):
    return ((self.num_features,) + self.widths + (self.bottleneck,) + self.widths[::-1]
            + (self.num_features,))

  def spec(self):
    sizes, spec = self._sizes(), []
    for layer, (fan_in, fan_out) in enumerate(zip(sizes[:-1], sizes[1:])):
      last = layer == len(sizes) - 2
      spec += _dense_spec(f"l{layer}", fan_in, fan_out, 1.0 if last else init_gain(self.act))
      if not last and layer != len(self.widths):   # hidden layers; not the bottleneck
        spec += _norm_spec(f"l{layer}", self.norm, fan_out)
    return spec

  def make_data(self, rng):
    x, noise = manifold(rng, self.num_samples, self.num_features, self.intrinsic_dim)
    return {"x": x}, {"off_manifold_noise": round(noise, 3)}

  def objective(self, params, batch):
    p = self.named(params)
    sizes = self._sizes()
    h = batch["x"]
    for layer in range(len(sizes) - 1):
      h = tf.matmul(h, p[f"l{layer}/w"]) + p[f"l{layer}/b"]
      if layer == len(sizes) - 2:
        break
      if f"l{layer}/gain" in p:
        h = normalise(h, self.norm, p[f"l{layer}/gain"], p[f"l{layer}/beta"])
      if layer != len(self.widths):
        h = activation(self.act, h)   # the bottleneck code itself is linear
    return mean_squared_error(h, batch["x"])


def catalogue() -> list[NetTask]:
  """The family's 43 structures. Every structure is one compiled function."""
  return [
      # MLPs: depth 1-8, width 8-256, every activation, norms, three losses, two data kinds.
      MLP(1, 64, "relu", "none", "softmax", "teacher", 32),
      MLP(2, 64, "tanh", "none", "softmax", "mixture", 64),
      MLP(3, 32, "sigmoid", "none", "sigmoid", "teacher", 128),
      MLP(4, 64, "elu", "batch", "softmax", "teacher", 64),
      MLP(2, 128, "gelu", "layer", "mse", "teacher", 256, num_features=32),
      MLP(8, 16, "relu", "layer", "softmax", "mixture", 32),
      MLP(6, 32, "swish", "none", "mse", "teacher", 16),
      MLP(1, 256, "relu", "none", "softmax", "mixture", 512, num_features=32, num_outputs=8),
      MLP(5, 24, "tanh", "batch", "sigmoid", "mixture", 128),
      MLP(3, 8, "relu", "none", "softmax", "teacher", None, num_features=128, num_outputs=8,
          num_samples=256),
      MLP(2, 48, "sigmoid", "layer", "softmax", "teacher", 8),
      MLP(1, 16, "elu", "none", "mse", "teacher", None, num_features=64, num_samples=256),
      MLP(8, 32, "gelu", "batch", "softmax", "teacher", 64),
      MLP(4, 112, "relu", "none", "sigmoid", "teacher", 32, num_features=8),
      MLP(3, 64, "swish", "layer", "softmax", "mixture", 16, num_outputs=10),
      MLP(2, 96, "elu", "batch", "mse", "teacher", 128, num_features=24, num_outputs=6),
      MLP(7, 20, "tanh", "layer", "sigmoid", "teacher", 64),
      # Heads: linear regression, logistic regression, softmax regression.
      MLP(0, 0, "relu", "none", "mse", "teacher", 32, num_features=128, num_outputs=8),
      MLP(0, 0, "relu", "none", "sigmoid", "mixture", None, num_features=64, num_outputs=16,
          num_samples=512),
      MLP(0, 0, "relu", "none", "softmax", "mixture", 64, num_features=96, num_outputs=10),
      # ConvNets: 1-3 conv layers, max / average pooling, three image kinds.
      ConvNet((8,), "relu", "none", "max", "blobs", 32),
      ConvNet((8, 16), "relu", "batch", "max", "textures", 64),
      ConvNet((8, 8, 16), "elu", "none", "max", "strokes", 32, size=16),
      ConvNet((4, 8), "tanh", "none", "avg", "strokes", 128),
      ConvNet((16,), "swish", "none", "avg", "textures", None, num_samples=256),
      ConvNet((8, 16, 16), "relu", "batch", "avg", "blobs", 16, size=16),
      ConvNet((8, 16), "gelu", "none", "max", "blobs", 256, num_classes=10),
      # Recurrent sequence models.
      RNN("gru", 32, "copy", 64),
      RNN("lstm", 32, "reverse", 32),
      RNN("gru", 24, "addition", 128, length=8, vocab=3),
      RNN("lstm", 16, "brackets", 64, length=12),
      RNN("gru", 32, "markov", 32, length=12, vocab=12),
      RNN("lstm", 32, "hmm", 128, length=12, vocab=10),
      RNN("gru", 16, "sort", 16),
      # One self-attention block.
      Attention(16, "sort", 32),
      Attention(24, "markov", 64, length=12, vocab=12),
      Attention(16, "reverse", 128),
      Attention(16, "hmm", 16, length=12, vocab=10),
      # Autoencoders with a bottleneck.
      Autoencoder((16,), 2, "relu", "none", 64),
      Autoencoder((32,), 4, "tanh", "batch", 128, num_features=64, intrinsic_dim=4),
      Autoencoder((16,), 2, "elu", "layer", None, num_features=32, num_samples=256),
      Autoencoder((24, 12), 3, "swish", "none", 32, num_features=48, intrinsic_dim=3),
      Autoencoder((20,), 2, "sigmoid", "none", 256, num_features=40),
  ]


AXES = ("architecture", "depth", "width", "activation", "norm", "loss", "data")


def axis_values(tasks: Sequence[NetTask]) -> dict[str, list]:
  """Every value each axis takes over `tasks` (plus batch size), sorted."""
  def order(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))
  values = {axis: sorted({task.axes[axis] for task in tasks}, key=order) for axis in AXES}
  values["batch"] = sorted({task.batch_size or 0 for task in tasks})
  return values
