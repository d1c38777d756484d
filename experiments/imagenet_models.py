"""The ImageNet networks of seed paper 1 §5.3 / Fig. 8b and the objective they are trained on.

Inception V3 (Szegedy et al. 2016) and ResNet V2 (He et al. 2016) come from keras.applications,
built with `weights=None` (trained from scratch) and a logits head of `num_classes` units. The
training objective is the same for every optimizer: label-smoothed softmax cross-entropy plus an
L2 penalty on the convolution and dense kernels, with each network's published recipe:

* Inception V3: label smoothing 0.1, weight decay 4e-5 (Szegedy et al. 2016 §7-8; TF-slim).
* ResNet V2: no label smoothing, weight decay 1e-4 (He et al. 2016).

Weight decay uses the TF-slim / tensorflow-models convention `wd * sum(||W||^2) / 2`
(`tf.nn.l2_loss`) over kernels only: biases and batch-norm parameters are not decayed.
"""

from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf


class ModelError(ValueError):
  """A model name or input size the networks cannot be built with."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """How to build one network and the recipe it was published with."""

  application: str          # constructor name in keras.applications
  default_image_size: int   # resolution it was trained at
  min_image_size: int       # smallest input keras.applications accepts
  weight_decay: float       # L2 coefficient, slim convention (see module docstring)
  label_smoothing: float


MODELS: dict[str, ModelSpec] = {
    "inception_v3": ModelSpec("InceptionV3", 299, 75, 4e-5, 0.1),
    "resnet50_v2": ModelSpec("ResNet50V2", 224, 32, 1e-4, 0.0),
    "resnet101_v2": ModelSpec("ResNet101V2", 224, 32, 1e-4, 0.0),
    "resnet152_v2": ModelSpec("ResNet152V2", 224, 32, 1e-4, 0.0),
}


def spec(name: str) -> ModelSpec:
  """The ModelSpec of `name`, or a ModelError listing the known names."""
  if name not in MODELS:
    raise ModelError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
  return MODELS[name]


def check_image_size(name: str, image_size: int) -> None:
  """Raise ModelError if `name` cannot take `image_size` x `image_size` inputs."""
  minimum = spec(name).min_image_size
  if image_size < minimum:
    raise ModelError(f"--image_size={image_size} is too small for {name}: keras.applications "
                     f"needs at least {minimum} px")


def build_model(name: str, image_size: int, num_classes: int) -> keras.Model:
  """A freshly initialised network mapping [-1, 1] images to float logits.

  The softmax is left out (classifier_activation=None) so the loss works on logits, which is
  stabler and keeps mixed-precision outputs out of float16 softmax.
  """
  check_image_size(name, image_size)
  if num_classes < 2:
    raise ModelError(f"--num_classes={num_classes}: need at least 2 classes")
  constructor = getattr(keras.applications, spec(name).application)
  return constructor(weights=None, include_top=True, input_shape=(image_size, image_size, 3),
                     classes=num_classes, classifier_activation=None)


def decayed_kernels(model: keras.Model) -> list:
  """The variables weight decay applies to: kernels of convolution and dense layers."""
  kernels = []
  for layer in model.layers:
    if isinstance(layer, keras.Model):
      kernels.extend(decayed_kernels(layer))
      continue
    kernel = getattr(layer, "kernel", None)
    if kernel is not None and kernel.trainable:
      kernels.append(kernel)
  return kernels


def l2_penalty(kernels, weight_decay: float) -> tf.Tensor:
  """weight_decay * sum ||W||^2 / 2 over `kernels`, in float32."""
  if not kernels or weight_decay == 0.0:
    return tf.constant(0.0, tf.float32)
  return weight_decay * tf.add_n([tf.nn.l2_loss(tf.cast(k, tf.float32)) for k in kernels])


def cross_entropy(labels: tf.Tensor, logits: tf.Tensor, num_classes: int,
                  label_smoothing: float) -> tf.Tensor:
  """Per-example softmax cross-entropy with label smoothing, in float32."""
  one_hot = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
  return keras.losses.categorical_crossentropy(
      one_hot, tf.cast(logits, tf.float32), from_logits=True, label_smoothing=label_smoothing)
