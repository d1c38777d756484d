"""Training loop of eval_imagenet.py: seed paper 1 §5.3 / Fig. 8b, learned optimizer vs RMSProp.

One `RunConfig` describes a run. `train(config)` checks everything that can be wrong with the
input (data directory, model name and size, optimizer weights file, an existing train_dir of a
different run) before it builds the network, then runs a custom synchronous data-parallel loop:
a tf.function step under `strategy.run`, per-step loss to `train_dir/losses.csv` and TensorBoard,
and `tf.train.CheckpointManager` checkpoints every `checkpoint_every` steps.

Resuming is exact: the checkpoint holds the model, the optimizer (slots, step count, the learned
optimizer's RNN state), the step counter and, on a single machine, the tf.data iterator; the CSV
is cut back to the restored step before new rows are appended, so no step appears twice.
(tf.distribute's multi-worker iterators cannot be checkpointed in TF 2.21: with
--strategy=multi_worker a resumed run continues on a freshly seeded data stream.)

The RMSProp baseline uses the settings the original Inception V3 was trained with (Szegedy et
al. 2016 §8): decay 0.9, momentum 0.9, epsilon 1.0, learning rate 0.045 multiplied by 0.94 every
two epochs. That learning rate belongs to a batch of 32 (each of their 50 asynchronous replicas
applied its own batch-32 gradient), so it is scaled with the global batch size relative to 32.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from typing import Any

from absl import logging
import keras
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

from experiments import distribute
from experiments import imagenet_data
from experiments import imagenet_models
from experiments import run_files

OPTIMIZERS = ("learned", "rmsprop", "adam")
LR_SCALINGS = ("linear", "sqrt", "none")
DEFAULT_LEARNING_RATES = {"rmsprop": 0.045, "adam": 1e-3, "learned": 1e-3}
# Szegedy et al. 2016 §8 (Inception V3): RMSProp(decay 0.9, eps 1.0), lr 0.045 x 0.94 per 2
# epochs; momentum 0.9 from the TF-slim / tensorflow-models training scripts.
RMSPROP_RHO = 0.9
RMSPROP_MOMENTUM = 0.9
RMSPROP_EPSILON = 1.0
RMSPROP_DECAY_RATE = 0.94
RMSPROP_DECAY_EPOCHS = 2.0

CSV_NAME = run_files.CSV_NAME
RUN_CONFIG_NAME = run_files.RUN_CONFIG_NAME
CHECKPOINT_SUBDIR = "checkpoints"
TENSORBOARD_SUBDIR = "tensorboard"

# Flags whose change makes a train_dir a different experiment (or a checkpoint of a different
# structure): resuming with any of them changed is refused.
IDENTITY_KEYS = ("model", "optimizer", "weights", "learned_config", "learning_rate",
                 "lr_scaling", "reference_batch_size", "image_size", "num_classes",
                 "label_smoothing", "weight_decay", "global_batch_size", "mixed_precision",
                 "synthetic", "seed", "data_iterator_in_checkpoint")


class SetupError(ValueError):
  """Bad input found before training starts; the message says what and where."""


class TrainingDiverged(RuntimeError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass
class RunConfig:
  """Everything that defines one run; eval_imagenet.py's flags map onto it one to one."""

  train_dir: str
  model: str = "inception_v3"
  optimizer: str = "rmsprop"
  weights: str | None = "default"    # learned only: shipped name, path, or None (untrained)
  learned_config: str | None = None  # learned only: expected HRNN preset; None = the file's
  learning_rate: float | None = None  # None: DEFAULT_LEARNING_RATES[optimizer]
  lr_scaling: str = "linear"         # rmsprop/adam: scale lr by global/reference batch size
  reference_batch_size: int = 32
  image_size: int | None = None      # None: the model's own (299 / 224)
  num_classes: int = 1000
  label_smoothing: float | None = None  # None: the model's recipe
  weight_decay: float | None = None     # None: the model's recipe
  global_batch_size: int = 256
  mixed_precision: bool = False
  data_dir: str | None = None
  manual_dir: str | None = None
  synthetic: bool = False
  examples_per_epoch: int = 0        # 0: from the data (ImageNet size for --synthetic)
  shuffle_buffer: int = 10_000
  seed: int = 0
  strategy: str = "mirrored"
  train_steps: int = 5000
  checkpoint_every: int = 500
  keep_checkpoints: int = 3
  checkpoint_input_pipeline: bool = True
  log_every: int = 10

  def resolved(self) -> RunConfig:
    """A copy with every None default filled in from the model's recipe; validates."""
    if self.model not in imagenet_models.MODELS:
      raise SetupError(f"unknown --model={self.model!r}; known: "
                       f"{', '.join(imagenet_models.MODELS)}")
    if self.optimizer not in OPTIMIZERS:
      raise SetupError(f"unknown --optimizer={self.optimizer!r}; known: {', '.join(OPTIMIZERS)}")
    if self.lr_scaling not in LR_SCALINGS:
      raise SetupError(f"unknown --lr_scaling={self.lr_scaling!r}; known: "
                       f"{', '.join(LR_SCALINGS)}")
    if self.strategy not in distribute.STRATEGIES:
      raise SetupError(f"unknown --strategy={self.strategy!r}; known: "
                       f"{', '.join(distribute.STRATEGIES)}")
    spec = imagenet_models.spec(self.model)
    out = dataclasses.replace(
        self,
        image_size=self.image_size or spec.default_image_size,
        learning_rate=(self.learning_rate if self.learning_rate is not None
                       else DEFAULT_LEARNING_RATES[self.optimizer]),
        label_smoothing=(spec.label_smoothing if self.label_smoothing is None
                         else self.label_smoothing),
        weight_decay=spec.weight_decay if self.weight_decay is None else self.weight_decay,
        weights=self.weights if self.optimizer == "learned" else None,
        learned_config=self.learned_config if self.optimizer == "learned" else None)
    try:
      imagenet_models.check_image_size(out.model, out.image_size)
    except imagenet_models.ModelError as e:
      raise SetupError(str(e)) from e
    positive = {"global_batch_size": out.global_batch_size, "train_steps": out.train_steps,
                "checkpoint_every": out.checkpoint_every, "log_every": out.log_every,
                "reference_batch_size": out.reference_batch_size,
                "shuffle_buffer": out.shuffle_buffer}
    for name, value in positive.items():
      if value < 1:
        raise SetupError(f"--{name}={value} must be at least 1")
    if not (out.learning_rate > 0 and math.isfinite(out.learning_rate)):
      raise SetupError(f"--learning_rate={out.learning_rate} must be positive")
    if not 0.0 <= out.label_smoothing < 1.0:
      raise SetupError(f"--label_smoothing={out.label_smoothing} must be in [0, 1)")
    if out.weight_decay < 0.0:
      raise SetupError(f"--weight_decay={out.weight_decay} must be non-negative")
    if out.keep_checkpoints < 2:
      # Keep the previous checkpoint while the next one is written.
      raise SetupError(f"--keep_checkpoints={out.keep_checkpoints} must be at least 2")
    if not out.synthetic and not out.data_dir:
      raise SetupError("--data_dir is required unless --synthetic")
    return out

  def scaled_learning_rate(self) -> float:
    """The initial learning rate the optimizer is built with (after batch-size scaling)."""
    if self.optimizer == "learned" or self.lr_scaling == "none":
      # The learned optimizer's learning rate is its initial step length, which the RNN then
      # adapts (paper §3.2.4), so it is not tied to the batch size.
      return self.learning_rate
    ratio = self.global_batch_size / self.reference_batch_size
    return self.learning_rate * (ratio if self.lr_scaling == "linear" else math.sqrt(ratio))


# ---- train_dir bookkeeping ------------------------------------------------------------------


def _identity(config: RunConfig, data_iterator_in_checkpoint: bool) -> dict[str, Any]:
  values = dataclasses.asdict(config)
  values["data_iterator_in_checkpoint"] = data_iterator_in_checkpoint
  return {k: values[k] for k in IDENTITY_KEYS}


def check_train_dir(config: RunConfig, data_iterator_in_checkpoint: bool) -> bool:
  """Refuse a train_dir that holds a different run. Returns True if it holds this run."""
  path = os.path.join(config.train_dir, RUN_CONFIG_NAME)
  has_checkpoint = tf.train.latest_checkpoint(
      os.path.join(config.train_dir, CHECKPOINT_SUBDIR)) is not None
  if not os.path.exists(path):
    if has_checkpoint:
      raise SetupError(f"--train_dir={config.train_dir} holds checkpoints but no "
                       f"{RUN_CONFIG_NAME}, so it cannot be checked to be this run; "
                       "use a new --train_dir")
    return False
  try:
    with open(path) as f:
      recorded = json.load(f)["identity"]
  except (OSError, ValueError, KeyError, TypeError) as e:
    raise SetupError(f"{path} is unreadable ({e}); use a new --train_dir") from e
  wanted = _identity(config, data_iterator_in_checkpoint)
  differences = [f"{k}: train_dir has {recorded.get(k)!r}, flags give {wanted[k]!r}"
                 for k in IDENTITY_KEYS if recorded.get(k) != wanted[k]]
  if differences:
    raise SetupError(f"--train_dir={config.train_dir} holds a different run ({path}); refusing "
                     f"to resume it with: " + "; ".join(differences)
                     + ". Use a new --train_dir or the recorded flags.")
  return True


# ---- optimizer and step ---------------------------------------------------------------------


def make_optimizer(config: RunConfig, steps_per_epoch: int) -> keras.optimizers.Optimizer:
  """The optimizer of `config`; a bad learned-optimizer weights file raises SetupError."""
  lr = config.scaled_learning_rate()
  if config.optimizer == "rmsprop":
    schedule = keras.optimizers.schedules.ExponentialDecay(
        lr, decay_steps=max(1, round(RMSPROP_DECAY_EPOCHS * steps_per_epoch)),
        decay_rate=RMSPROP_DECAY_RATE, staircase=True)
    # Departure: TF1's RMSPropOptimizer (used for the original network) started the mean
    # square at 1, Keras starts it at 0; with epsilon 1.0 inside the square root the first
    # steps differ by at most a factor sqrt(2).
    optimizer = keras.optimizers.RMSprop(schedule, rho=RMSPROP_RHO, momentum=RMSPROP_MOMENTUM,
                                         epsilon=RMSPROP_EPSILON)
  elif config.optimizer == "adam":
    optimizer = keras.optimizers.Adam(lr)
  else:
    try:
      from learned_opt import LearnedOptimizer  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      raise SetupError(f"--optimizer=learned needs the learned_opt package: {e}") from e
    try:
      optimizer = LearnedOptimizer(learning_rate=lr, weights=config.weights,
                                   config=config.learned_config)
    except (ValueError, OSError) as e:  # OSError includes FileNotFoundError
      raise SetupError(f"--optimizer=learned --weights={config.weights} "
                       f"--learned_config={config.learned_config}: {e}") from e
  if config.mixed_precision:
    optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
  return optimizer


def _scalar_summary(tag: str, value, step: int) -> None:
  """A TensorBoard scalar, written without needing the tensorboard package installed."""
  metadata = summary_pb2.SummaryMetadata(
      plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars"),
      data_class=summary_pb2.DATA_CLASS_SCALAR)
  tf.summary.write(tag, tf.cast(value, tf.float32), step=step, metadata=metadata)


def _current_lr(optimizer) -> tf.Tensor:
  return tf.cast(optimizer.learning_rate, tf.float32)


# ---- the run --------------------------------------------------------------------------------


def _steps_per_epoch(config: RunConfig, builder) -> int:
  if config.examples_per_epoch:
    examples = config.examples_per_epoch
  elif builder is None:
    examples = imagenet_data.IMAGENET_TRAIN_EXAMPLES
  else:
    examples = imagenet_data.examples_per_epoch(builder, config.num_classes)
  return max(1, examples // config.global_batch_size)


def train(config: RunConfig) -> dict[str, Any]:
  """Run (or resume) the training run `config`; returns a summary of where it ended.

  Raises:
    SetupError: bad input, found before the network is built.
    TrainingDiverged: the loss became non-finite (the last checkpoint is left intact).
  """
  config = config.resolved()
  multi_worker = config.strategy == "multi_worker"
  if multi_worker and config.manual_dir:
    raise SetupError("--manual_dir with --strategy=multi_worker: prepare the TFRecords once "
                     "(tfds build imagenet2012 --manual_dir=...) before starting the workers")
  try:
    # First: MultiWorkerMirroredStrategy must exist before any other TensorFlow op runs.
    strategy = distribute.make_strategy(config.strategy)
  except ValueError as e:
    raise SetupError(str(e)) from e
  replicas = strategy.num_replicas_in_sync
  if config.global_batch_size % replicas:
    raise SetupError(f"--global_batch_size={config.global_batch_size} is not divisible by the "
                     f"{replicas} replicas of --strategy={config.strategy}")
  chief = distribute.is_chief(strategy)
  os.makedirs(config.train_dir, exist_ok=True)
  data_iterator_in_checkpoint = config.checkpoint_input_pipeline and not multi_worker
  resuming = check_train_dir(config, data_iterator_in_checkpoint)

  builder = None
  if not config.synthetic:
    try:
      if config.manual_dir:
        imagenet_data.prepare_from_manual_dir(config.data_dir, config.manual_dir)
      builder = imagenet_data.open_imagenet(config.data_dir, config.num_classes)
    except imagenet_data.DataError as e:
      raise SetupError(str(e)) from e
  steps_per_epoch = _steps_per_epoch(config, builder)

  keras.utils.set_random_seed(config.seed)
  previous_policy = keras.mixed_precision.global_policy()
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    with strategy.scope():
      # The optimizer first: a bad weights file fails in a second, not after building the net.
      optimizer = make_optimizer(config, steps_per_epoch)
      model = imagenet_models.build_model(config.model, config.image_size, config.num_classes)
      optimizer.build(model.trainable_variables)
      step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
  finally:
    keras.mixed_precision.set_global_policy(previous_policy)

  dataset_kwargs = dict(image_size=config.image_size, num_classes=config.num_classes)

  def make_dataset(batch_size, input_context, seed):
    if config.synthetic:
      return imagenet_data.synthetic_dataset(batch_size=batch_size, seed=seed,
                                             input_context=input_context, **dataset_kwargs)
    return imagenet_data.imagenet_train_dataset(
        builder, batch_size=batch_size, seed=seed, shuffle_buffer=config.shuffle_buffer,
        input_context=input_context, **dataset_kwargs)

  checkpoint_dir = os.path.join(config.train_dir, CHECKPOINT_SUBDIR)
  latest = tf.train.latest_checkpoint(checkpoint_dir)  # check_train_dir vetted its run
  trackables = dict(model=model, optimizer=optimizer, step=step)
  if multi_worker:
    # Peek at the step to seed a fresh stream that does not replay the data already seen.
    start_hint = (int(tf.train.load_variable(latest, "step/.ATTRIBUTES/VARIABLE_VALUE"))
                  if latest else 0)
    dataset = strategy.distribute_datasets_from_function(
        lambda ctx: make_dataset(ctx.get_per_replica_batch_size(config.global_batch_size), ctx,
                                 config.seed + start_hint))
    iterator = iter(dataset)
  else:
    # One input pipeline for all local replicas: a plain tf.data iterator, which (unlike
    # tf.distribute's) can be checkpointed. Its batches are split across replicas below.
    with tf.device("/cpu:0"):
      iterator = iter(make_dataset(config.global_batch_size, None, config.seed))
    if data_iterator_in_checkpoint:
      trackables["data"] = iterator
  checkpoint = tf.train.Checkpoint(**trackables)
  if latest:
    checkpoint.restore(latest).assert_existing_objects_matched()
    logging.info("resumed %s at step %d", latest, int(step.numpy()))
  start_step = int(step.numpy())

  write_dir = (config.train_dir if chief
               else os.path.join(config.train_dir, f"tmp_{distribute.worker_tag(strategy)}"))
  # Non-chief workers must take part in saving (it is collective) but their copies are thrown
  # away; every worker restores from the chief's directory above.
  manager = tf.train.CheckpointManager(
      checkpoint, os.path.join(write_dir, CHECKPOINT_SUBDIR),
      max_to_keep=config.keep_checkpoints, step_counter=step)

  train_step = _make_train_step(strategy, model, optimizer, step, config,
                                split_batches=not multi_worker and replicas > 1)

  if chief and not resuming:
    run_files.write_json_atomically(os.path.join(config.train_dir, RUN_CONFIG_NAME), {
        "identity": _identity(config, data_iterator_in_checkpoint),
        "run": dataclasses.asdict(config),
        "derived": {"initial_learning_rate": config.scaled_learning_rate(),
                    "steps_per_epoch": steps_per_epoch, "replicas": replicas,
                    "optimizer_class": type(optimizer).__name__,
                    "weights_provenance": getattr(
                        getattr(optimizer, "inner_optimizer", optimizer),
                        "weights_provenance", None),
                    "parameters": int(model.count_params()),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
    })
  loss_log = (run_files.LossLog(os.path.join(config.train_dir, CSV_NAME), start_step)
              if chief else None)
  writer = (tf.summary.create_file_writer(os.path.join(config.train_dir, TENSORBOARD_SUBDIR))
            if chief else tf.summary.create_noop_file_writer())

  logging.info("training %s with %s from step %d to %d: global batch %d over %d replicas, "
               "initial lr %g, %d steps per epoch", config.model, config.optimizer, start_step,
               config.train_steps, config.global_batch_size, replicas,
               config.scaled_learning_rate(), steps_per_epoch)
  current = start_step
  loss_value = float("nan")
  tick, tick_step = time.time(), current
  try:
    while current < config.train_steps:
      loss, cross_entropy, lr = train_step(iterator)
      current += 1
      loss_value = float(loss.numpy())
      now = time.time()
      if loss_log:
        loss_log.append(step=current, loss=repr(loss_value), wall_time=f"{now:.3f}",
                        lr=repr(float(lr.numpy())),
                        cross_entropy=repr(float(cross_entropy.numpy())))
      with writer.as_default():
        _scalar_summary("loss", loss_value, current)
        _scalar_summary("cross_entropy", cross_entropy, current)
        _scalar_summary("learning_rate", lr, current)
      if not math.isfinite(loss_value):
        raise TrainingDiverged(
            f"the training loss is {loss_value} at step {current}; the last checkpoint "
            f"({manager.latest_checkpoint}) is left as it was")
      if current % config.log_every == 0 or current == config.train_steps:
        rate = (current - tick_step) / max(now - tick, 1e-9)
        logging.info("step %d: loss %.4f, lr %.4g, %.2f steps/s", current, loss_value,
                     float(lr.numpy()), rate)
        tick, tick_step = now, current
      if current % config.checkpoint_every == 0 or current == config.train_steps:
        manager.save(checkpoint_number=current)
        writer.flush()
  finally:
    if loss_log:
      loss_log.close()
    writer.close()
    if not chief:
      shutil.rmtree(write_dir, ignore_errors=True)
  return {"step": current, "start_step": start_step, "loss": loss_value,
          "train_dir": config.train_dir, "csv": os.path.join(config.train_dir, CSV_NAME),
          "checkpoint": manager.latest_checkpoint}


def _make_train_step(strategy, model, optimizer, step, config: RunConfig, split_batches: bool):
  """The tf.function taking one synchronous step; returns (loss, cross_entropy, lr)."""
  kernels = imagenet_models.decayed_kernels(model)
  replicas = strategy.num_replicas_in_sync
  per_replica = config.global_batch_size // replicas

  def replica_step(images, labels):
    with tf.GradientTape() as tape:
      logits = model(images, training=True)
      per_example = imagenet_models.cross_entropy(labels, logits, config.num_classes,
                                                  config.label_smoothing)
      cross_entropy = tf.nn.compute_average_loss(
          per_example, global_batch_size=config.global_batch_size)
      penalty = tf.nn.scale_regularization_loss(
          imagenet_models.l2_penalty(kernels, config.weight_decay))
      loss = cross_entropy + penalty
      scaled_loss = optimizer.scale_loss(loss)  # loss scaling under mixed precision
    grads = tape.gradient(scaled_loss, model.trainable_variables)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss, cross_entropy

  def split(batch):
    return strategy.experimental_distribute_values_from_function(
        lambda ctx: batch[ctx.replica_id_in_sync_group * per_replica:
                          (ctx.replica_id_in_sync_group + 1) * per_replica])

  # No autograph: the step has no data-dependent Python control flow to convert.
  @tf.function(autograph=False)
  def train_step(iterator):
    lr = _current_lr(optimizer)  # the rate this step uses (read before the update)
    images, labels = next(iterator)
    if split_batches:
      images, labels = split(images), split(labels)
    loss, cross_entropy = strategy.run(replica_step, args=(images, labels))
    step.assign_add(1)
    total = tf.distribute.ReduceOp.SUM
    return (strategy.reduce(total, loss, axis=None),
            strategy.reduce(total, cross_entropy, axis=None), lr)

  return train_step
