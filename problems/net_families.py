"""Network families: instances that differ in size and structure, one compiled function each.

Why (issue 12): problems/net_tasks.py fixes every size in the structure, so its 43 structures
compile into 43 functions, and a new width is a new compile. Here a *family* fixes only maximum
sizes and a batch size; each instance (data seed) draws its own depth, width, number of input
features and outputs, activation, normalisation, loss and data, and runs at the family's
maximum shapes with masks. So the whole family is one graph: one compiled function serves
every instance, and the five MLP families below (`families()`) cover depths 1-8, widths
12-128, six activations, three normalisations and three losses with five compiles.

What an instance is. The parameters have the family's maximum shapes; the entries outside
the instance's own network (units past its width, layers past its depth, input rows past its
features, output columns past its outputs, the normalisation's gain and offset when it has
none) are *masked*: `parameter_masks(data)` marks them, they start at zero, their gradient is
zero, and the meta-trainer keeps them out of the optimizer's sight (meta/unroll.py gives them
the padding slot: no update, no part of any per-tensor or problem-wide statistic). The loss is
exactly that of the instance's own network (`instance_mlp(seed)`, a problems/net_tasks.MLP of
the drawn sizes on the same data; tests/test_net_families.py holds the two to float
round-off, loss, gradient and optimizer trajectory):
  * hidden units past the width have zero weights and bias, so zero pre-activations; their
    activation is multiplied by the unit mask (sigmoid(0) = 1/2 would otherwise leak out);
  * layers past the depth pass their input through (`tf.where` on the layer mask);
  * layer norm takes masked means over the real units; batch norm is per unit anyway;
  * softmax logits past the outputs are -1e9 (probability exactly 0), and the sigmoid and
    squared-error losses are masked means over the real outputs;
  * activation, normalisation and loss are chosen by one-hot data entries through
    `tf.switch_case`: the graph holds all of them, an instance computes its own only.

Cost: the optimizer runs over the family's maximum parameter count whatever the instance
draws, so the families keep their ranges narrow (widths within 2x, depths within 4/3x): an
instance's own parameters are 23-100 % of its family's, 52-72 % on average. Everything the instance draws comes
from its data seed on the numpy side, like the rest of problems/ (no file is read).
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import tensorflow as tf

from problems import base
from problems import net_tasks

S = "structure/"          # data keys of an instance's drawn structure (float32 one-hots, masks)
DATA_KINDS = ("teacher", "mixture")
MASKED_LOGIT = -1e9


class MLPFamily(net_tasks.NetTask):
  """MLPs of depth `depth[0]..depth[1]`, width `width[0]..width[1]` (log-uniform), inputs
  `features[0]..features[1]`, outputs `outputs[0]..outputs[1]`, any activation, normalisation
  and loss, on teacher or Gaussian-mixture data, at one batch size: one graph for all."""

  batched_keys = ("x", "labels", "targets")

  def __init__(self, label: str, *, depth: tuple[int, int], width: tuple[int, int],
               features: tuple[int, int], outputs: tuple[int, int], batch_size: int | None,
               num_samples: int = 1024):
    ranges = {"depth": depth, "width": width, "features": features, "outputs": outputs}
    for what, (low, high) in ranges.items():
      if not 1 <= low <= high:
        raise ValueError(f"MLPFamily {label}: {what} range {low}..{high} is empty or < 1")
    if outputs[0] < 2:
      raise ValueError(f"MLPFamily {label}: at least 2 outputs (softmax), got {outputs}")
    self.ranges = ranges
    self.max_depth, self.max_width = depth[1], width[1]
    self.max_features, self.max_outputs = features[1], outputs[1]
    super().__init__(f"netfam_mlp_{label}_b{batch_size or 'full'}", batch_size=batch_size,
                     num_samples=num_samples, axes={
                         "architecture": "mlp family", "depth": f"{depth[0]}-{depth[1]}",
                         "width": f"{width[0]}-{width[1]}", "activation": "any",
                         "norm": "any", "loss": "softmax/sigmoid/mse",
                         "data": "teacher/mixture"})
    self.masked_parameters = True

  def spec(self):
    spec, fan_in = [], self.max_features
    for layer in range(self.max_depth):
      spec += [net_tasks.Param(f"h{layer}/w", (fan_in, self.max_width), "weight", fan_in),
               net_tasks.Param(f"h{layer}/b", (self.max_width,), "bias"),
               net_tasks.Param(f"h{layer}/gain", (self.max_width,), "gain"),
               net_tasks.Param(f"h{layer}/beta", (self.max_width,), "bias")]
      fan_in = self.max_width
    return spec + [net_tasks.Param("out/w", (fan_in, self.max_outputs), "weight", fan_in),
                   net_tasks.Param("out/b", (self.max_outputs,), "bias")]

  # --- an instance --------------------------------------------------------------------------

  def draw(self, rng: np.random.Generator) -> dict:
    """The instance's structure (first draws of its data stream)."""
    low, high = self.ranges["width"]
    structure = {
        "depth": int(rng.integers(self.ranges["depth"][0], self.ranges["depth"][1] + 1)),
        "width": int(min(high, max(low, round(net_tasks.log_uniform(rng, low, high))))),
        "features": int(rng.integers(self.ranges["features"][0],
                                     self.ranges["features"][1] + 1)),
        "outputs": int(rng.integers(self.ranges["outputs"][0], self.ranges["outputs"][1] + 1)),
        "act": net_tasks.ACTIVATIONS[int(rng.integers(len(net_tasks.ACTIVATIONS)))],
        "norm": net_tasks.NORMS[int(rng.integers(len(net_tasks.NORMS)))],
        "loss": net_tasks.LOSSES[int(rng.integers(3))],
    }
    structure["data"] = ("teacher" if structure["loss"] == "mse"
                         else DATA_KINDS[int(rng.integers(len(DATA_KINDS)))])
    return structure

  def _mlp(self, structure: dict) -> net_tasks.MLP:
    return net_tasks.MLP(structure["depth"], structure["width"], structure["act"],
                         structure["norm"], structure["loss"], structure["data"],
                         self.batch_size, num_features=structure["features"],
                         num_outputs=structure["outputs"], num_samples=self.num_samples)

  def structure(self, seed: int) -> dict:
    return self.draw(self.rng(seed, base.DATA_STREAM))

  def instance_mlp(self, seed: int) -> net_tasks.MLP:
    """The instance's own network: a net_tasks.MLP of the drawn sizes, whose data is this
    instance's data without the padding (`unpadded`)."""
    return self._mlp(self.structure(seed))

  def make_data(self, rng):
    structure = self.draw(rng)
    data, info = self._mlp(structure).make_data(rng)
    s, f, o = self.num_samples, structure["features"], structure["outputs"]
    x = np.zeros((s, self.max_features))
    x[:, :f] = data["x"]
    labels = np.zeros((s,), np.int32)
    targets = np.zeros((s, self.max_outputs))
    if structure["loss"] == "softmax":
      labels = data["y"].astype(np.int32)
    else:
      targets[:, :o] = data["y"]

    def one_hot(value, values):
      return np.asarray([float(value == v) for v in values])

    def first(count, size):
      return (np.arange(size) < count).astype(np.float64)

    out = {"x": x, "labels": labels, "targets": targets,
           S + "act": one_hot(structure["act"], net_tasks.ACTIVATIONS),
           S + "norm": one_hot(structure["norm"], net_tasks.NORMS),
           S + "loss": one_hot(structure["loss"], net_tasks.LOSSES[:3]),
           S + "layers": first(structure["depth"], self.max_depth),
           S + "units": first(structure["width"], self.max_width),
           S + "features": first(f, self.max_features),
           S + "outputs": first(o, self.max_outputs)}
    return out, {**{k: structure[k] for k in ("depth", "width", "features", "outputs", "act",
                                               "norm", "loss", "data")}, **info}

  def unpadded(self, seed: int, data: Mapping) -> dict:
    """This instance's data as its own network (`instance_mlp`) takes it."""
    structure = self.structure(seed)
    y = (np.asarray(data["labels"]) if structure["loss"] == "softmax"
         else np.asarray(data["targets"])[:, :structure["outputs"]])
    return {"x": np.asarray(data["x"])[:, :structure["features"]], "y": y}

  def unpad_params(self, params, structure: dict) -> list[np.ndarray]:
    """The instance's own network's parameters (in `instance_mlp`'s order) from the family's."""
    named = {p.name: np.asarray(v) for p, v in zip(self._spec, params)}
    d, w, f, o = (structure[k] for k in ("depth", "width", "features", "outputs"))
    out = []
    for layer in range(d):
      out.append(named[f"h{layer}/w"][:f if layer == 0 else w, :w])
      out.append(named[f"h{layer}/b"][:w])
      if structure["norm"] != "none":
        out += [named[f"h{layer}/gain"][:w], named[f"h{layer}/beta"][:w]]
    return out + [named["out/w"][:w, :o], named["out/b"][:o]]

  # --- masks and initialisation -------------------------------------------------------------

  def parameter_masks(self, data):
    """Per tensor, 1 where the entry belongs to the instance's network, else 0 (float32
    tensors from the instance's data; see the module docstring)."""
    units = tf.cast(data[S + "units"], tf.float32)
    layers = tf.cast(data[S + "layers"], tf.float32)
    rows = tf.cast(data[S + "features"], tf.float32)
    outputs = tf.cast(data[S + "outputs"], tf.float32)
    normed = 1.0 - tf.cast(data[S + "norm"], tf.float32)[0]
    masks = []
    for layer in range(self.max_depth):
      on = layers[layer] * units
      masks += [rows[:, None] * on[None, :], on, on * normed, on * normed]
      rows = units
    return masks + [units[:, None] * outputs[None, :], outputs]

  def initial_params(self, seed, data):
    """The variance-scaling init of the instance's own network (fan-ins and gain from its
    drawn sizes and activation), zero on the masked entries."""
    rng = self.rng(seed, base.INIT_STREAM)
    scale = net_tasks.log_uniform(rng, *net_tasks.INIT_SCALE_RANGE)
    act = net_tasks.ACTIVATIONS[int(np.argmax(data[S + "act"]))]
    fan_in = {0: float(np.sum(data[S + "features"])), 1: float(np.sum(data[S + "units"]))}
    masks = [m.numpy() for m in self.parameter_masks(
        {k: tf.constant(v) for k, v in data.items() if k.startswith(S)})]
    params = []
    for param, mask in zip(self._spec, masks):
      if param.kind == "weight":
        gain = 1.0 if param.name == "out/w" else net_tasks.init_gain(act)
        first = param.name == "h0/w"
        value = (rng.standard_normal(param.shape) * scale
                 * math.sqrt(gain / fan_in[0 if first else 1]))
      elif param.kind == "gain":
        value = np.ones(param.shape)
      else:
        value = np.zeros(param.shape)
      params.append((value * mask).astype(np.float32))
    return params

  def init_params(self, seed):
    return self.initial_params(seed, self.sample_data(seed))

  # --- the loss -----------------------------------------------------------------------------

  def objective(self, params, batch):
    p = self.named(params)
    units = tf.cast(batch[S + "units"], tf.float32)
    layers = tf.cast(batch[S + "layers"], tf.float32)
    act = tf.argmax(batch[S + "act"], output_type=tf.int32)
    norm = tf.argmax(batch[S + "norm"], output_type=tf.int32)
    h = batch["x"]
    for layer in range(self.max_depth):
      z = tf.matmul(h, p[f"h{layer}/w"]) + p[f"h{layer}/b"]
      z = tf.switch_case(norm, self._norms(z, units, p[f"h{layer}/gain"], p[f"h{layer}/beta"]))
      a = tf.switch_case(act, [lambda name=name: net_tasks.activation(name, z)
                               for name in net_tasks.ACTIVATIONS]) * units
      h = a if layer == 0 else tf.where(layers[layer] > 0, a, h)
    out = tf.matmul(h, p["out/w"]) + p["out/b"]
    outputs = tf.cast(batch[S + "outputs"], tf.float32)
    count = tf.cast(tf.shape(out)[0], tf.float32) * tf.reduce_sum(outputs)

    def softmax():
      return net_tasks.softmax_cross_entropy(tf.where(outputs > 0, out, MASKED_LOGIT),
                                             batch["labels"])

    def sigmoid():
      return tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(
          labels=batch["targets"], logits=out) * outputs) / count

    def squared():
      return tf.reduce_sum(tf.square(out - batch["targets"]) * outputs) / count
    return tf.switch_case(tf.argmax(batch[S + "loss"], output_type=tf.int32),
                          [softmax, sigmoid, squared])

  @staticmethod
  def _norms(z, units, gain, beta) -> list:
    """none, batch norm, layer norm (masked means over the real units) of z, as branches."""
    def layer_norm():
      count = tf.reduce_sum(units)
      mean = tf.reduce_sum(z * units, axis=-1, keepdims=True) / count
      variance = tf.reduce_sum(tf.square(z - mean) * units, axis=-1, keepdims=True) / count
      return (z - mean) * tf.math.rsqrt(variance + net_tasks.NORM_EPSILON) * gain + beta
    return [lambda: z, lambda: net_tasks.normalise(z, "batch", gain, beta), layer_norm]


def families() -> list[MLPFamily]:
  """The MLP families: five compiled functions for depths 1-8 and widths 12-128. The ranges are
  narrow because the optimizer pays for a family's maximum size (module docstring)."""
  return [
      MLPFamily("d1", depth=(1, 1), width=(48, 96), features=(24, 48), outputs=(2, 10),
                batch_size=32),
      MLPFamily("d2", depth=(2, 2), width=(32, 64), features=(8, 32), outputs=(2, 10),
                batch_size=64),
      MLPFamily("d3_4", depth=(3, 4), width=(24, 40), features=(8, 24), outputs=(2, 8),
                batch_size=64),
      MLPFamily("d6_8", depth=(6, 8), width=(12, 20), features=(8, 16), outputs=(2, 6),
                batch_size=32),
      MLPFamily("wide", depth=(2, 2), width=(96, 128), features=(16, 32), outputs=(2, 10),
                batch_size=128),
  ]
