"""The reference's small sigmoid MLPs on random_mlp data: present, OFF by default.

The paper's claim is that the optimizer saw no neural networks in
meta-training (reference §5 item 5: its default pool nevertheless held 12 MLPs
plus 3 sparse-gradient MLPs). These are in `all_problems()` only, so held-out
benchmarks on networks stay held out.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from problems import base, transforms, well_behaved


def random_mlp_data(rng: np.random.Generator, num_samples: int, num_features: int,
                    num_layers: int = 6, width: int = 20) -> tuple[np.ndarray, np.ndarray]:
  """The reference's datasets.random_mlp: x ~ N(0, 1); label = [output 0 of a random
  ReLU net (weights N(0, 2/n_features)) > 0]."""
  x = rng.standard_normal((num_samples, num_features))
  hidden, fan_in = x, num_features
  for _ in range(num_layers):
    weights = rng.standard_normal((fan_in, width)) * np.sqrt(2.0) / np.sqrt(num_features)
    hidden, fan_in = np.maximum(hidden @ weights, 0.0), width
  return x.astype(np.float32), (hidden[:, 0] > 0).astype(np.float32)


class FullyConnected(base.Problem):
  """Sigmoid MLP, 2 classes, the reference's FullyConnected with its classifier loss
  (see well_behaved.sigmoid_cross_entropy_with_l2) and init. Minimum unknown (> 0)."""

  batched_keys = ("x", "labels")

  def __init__(self, num_features: int, hidden_sizes: tuple[int, ...], batch_size: int,
               num_samples: int = 1000):
    self.num_features, self.hidden_sizes, self.num_samples = (
        num_features, tuple(hidden_sizes), num_samples)
    super().__init__(f"mlp_f{num_features}_h{'-'.join(map(str, hidden_sizes))}_b{batch_size}",
                     family=base.NEURAL_NETWORK, batch_size=batch_size, minimum_kind="bound")

  def param_shapes(self):
    sizes = (self.num_features,) + self.hidden_sizes + (2,)
    return [shape for fan_in, fan_out in zip(sizes[:-1], sizes[1:])
            for shape in ((fan_in, fan_out), (fan_out,))]

  def sample_data(self, seed):
    x, labels = random_mlp_data(self.rng(seed, base.DATA_STREAM), self.num_samples,
                                self.num_features)
    return {"x": x, "labels": labels}

  def init_params(self, seed):
    return well_behaved.scaled_normal_init(self.param_shapes(),
                                           self.rng(seed, base.INIT_STREAM))

  def objective(self, params, batch):
    activations = batch["x"]
    for layer in range(0, len(params), 2):
      if layer:
        activations = tf.sigmoid(activations)
      activations = tf.matmul(activations, params[layer]) + params[layer + 1]
    return well_behaved.sigmoid_cross_entropy_with_l2(activations, batch["labels"], params)


# The reference's fully_connected_random_2_class_problems: (features, hidden, batch).
MLP_SETTINGS = ((8, (8, 5), 10), (12, (8, 5, 3), 200), (5, (4, 4, 4, 4), 100),
                (11, (4, 5, 6), 64), (9, (8,), 128), (7, (8, 5), 16), (8, (32, 64), 10),
                (12, (16, 8, 3), 200), (5, (8, 8, 8, 8), 100), (11, (10, 12, 12), 64),
                (9, (32,), 128), (7, (32, 64), 16))


def off_problems() -> list[base.Problem]:
  """12 MLPs and the reference's 3 sparse-gradient MLPs (all off by default)."""
  mlps = [FullyConnected(*setting) for setting in MLP_SETTINGS]
  return mlps + [transforms.SparseGradients(mlp) for mlp in mlps[:3]]
