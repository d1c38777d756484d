r"""Train Inception V3 / ResNet V2 on ImageNet with the learned optimizer or RMSProp (Fig. 8b).

Seed paper 1 (Wichrowska et al. 2017) §5.3: the learned optimizer, meta-trained only on small
problems, trains Inception V3 and ResNet V2 on ImageNet and lowers the training loss faster than
RMSProp with the original Inception V3 settings over the first 3000-5000 steps. This script runs
either side of that comparison; `python -m experiments.plot_curves` draws the figure.

ImageNet is read with tensorflow-datasets from TFRecords prepared once:
  tfds build imagenet2012 --data_dir=$DATA --manual_dir=$TARS   # TARS holds the ILSVRC2012 tars
(or pass --manual_dir=$TARS here on the first run).

One machine, all its GPUs (MirroredStrategy), the two runs of Fig. 8b for Inception V3:
  python eval_imagenet.py --model=inception_v3 --optimizer=learned --weights=default \
      --data_dir=$DATA --train_dir=runs/inception_learned --global_batch_size=256 \
      --train_steps=5000 --mixed_precision
  python eval_imagenet.py --model=inception_v3 --optimizer=rmsprop \
      --data_dir=$DATA --train_dir=runs/inception_rmsprop --global_batch_size=256 \
      --train_steps=5000 --mixed_precision
  python -m experiments.plot_curves \
      --runs=runs/inception_learned,runs/inception_rmsprop --out=fig8b_inception.png
ResNet V2: --model=resnet50_v2 (or resnet101_v2, resnet152_v2; 224 px by default).

A cluster of N machines (MultiWorkerMirroredStrategy; the paper used 25 synchronous workers):
run the same command on every machine with --strategy=multi_worker, a --train_dir on a shared
file system, and TF_CONFIG naming the cluster and this machine's index i:
  TF_CONFIG='{"cluster": {"worker": ["host0:2222", "host1:2222", ...]},
              "task": {"type": "worker", "index": i}}' \
  python eval_imagenet.py --strategy=multi_worker --model=inception_v3 --optimizer=learned \
      --data_dir=$DATA --train_dir=/shared/runs/inception_learned --global_batch_size=800
Worker 0 writes the CSV, TensorBoard summaries and checkpoints.

Smoke run without ImageNet (random images made in-graph), a few minutes on a CPU:
  python eval_imagenet.py --synthetic --model=resnet50_v2 --image_size=32 --num_classes=10 \
      --global_batch_size=8 --train_steps=20 --strategy=one_device --train_dir=/tmp/smoke

Re-running a command with the same --train_dir resumes from its last checkpoint; different
model/optimizer/size flags for an existing --train_dir are refused.
"""

from __future__ import annotations

import sys

from absl import app
from absl import flags
from absl import logging

from experiments import distribute
from experiments import imagenet_models
from experiments import imagenet_train

_NONE = "none"

flags.DEFINE_enum("model", "inception_v3", list(imagenet_models.MODELS), "Network to train.")
flags.DEFINE_enum("optimizer", "rmsprop", list(imagenet_train.OPTIMIZERS),
                  "learned: learned_opt.LearnedOptimizer; rmsprop: the original Inception V3 "
                  "settings; adam: Keras Adam.")
flags.DEFINE_string("weights", "default",
                    "Learned optimizer only: a shipped weights name, a path to a .npz written "
                    "by train_meta.py --export, or 'none' for the untrained initialisation.")
flags.DEFINE_string("learned_config", None,
                    "Learned optimizer only: the HRNN preset the weights must have been trained "
                    "with ('paper', 'stable'); default: whatever the file says.")
flags.DEFINE_float("learning_rate", None,
                   "Initial learning rate at --reference_batch_size (rmsprop: 0.045, adam: "
                   "1e-3); for the learned optimizer its initial step length (1e-3), unscaled.")
flags.DEFINE_enum("lr_scaling", "linear", list(imagenet_train.LR_SCALINGS),
                  "How rmsprop/adam learning rates scale with "
                  "global_batch_size / reference_batch_size.")
flags.DEFINE_integer("reference_batch_size", 32,
                     "Batch size --learning_rate refers to (32: Inception V3's replicas).")
flags.DEFINE_integer("image_size", None, "Input resolution; default 299 (Inception), 224 "
                     "(ResNet). Minimum 75 (Inception), 32 (ResNet).")
flags.DEFINE_integer("num_classes", 1000,
                     "Classes of the head; below 1000, only the first N ImageNet classes "
                     "(tfds label order) are trained on.")
flags.DEFINE_float("label_smoothing", None, "Default: the model's recipe (Inception 0.1, "
                   "ResNet 0).")
flags.DEFINE_float("weight_decay", None, "L2 coefficient on kernels, wd*||W||^2/2; default: "
                   "the model's recipe (Inception 4e-5, ResNet 1e-4).")
flags.DEFINE_integer("global_batch_size", 256, "Examples per step summed over all replicas.")
flags.DEFINE_bool("mixed_precision", False, "Compute in float16 (mixed_float16 policy) with "
                  "loss scaling; variables stay float32.")
flags.DEFINE_string("data_dir", None, "tfds data dir holding prepared imagenet2012/<version>/.")
flags.DEFINE_string("manual_dir", None, "Directory with ILSVRC2012_img_train.tar and "
                    "ILSVRC2012_img_val.tar; prepares --data_dir from them if needed.")
flags.DEFINE_bool("synthetic", False, "Random in-graph images instead of ImageNet.")
flags.DEFINE_integer("examples_per_epoch", 0, "Epoch length for the RMSProp decay; 0: the "
                     "train split's size (scaled by num_classes/1000).")
flags.DEFINE_integer("shuffle_buffer", 10_000, "Encoded examples in the shuffle buffer (it is "
                     "saved in checkpoints with --checkpoint_input_pipeline: ~110 kB each).")
flags.DEFINE_integer("seed", 0, "Seed of the initialisation and of the data stream.")
flags.DEFINE_enum("strategy", "mirrored", list(distribute.STRATEGIES),
                  "one_device, mirrored (all local GPUs), multi_worker (TF_CONFIG).")
flags.DEFINE_string("train_dir", None, "Where checkpoints, losses.csv, run_config.json and "
                    "TensorBoard summaries go; re-use it to resume.")
flags.DEFINE_integer("train_steps", 5000, "Train until this step.")
flags.DEFINE_integer("checkpoint_every", 500, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept (at least 2).")
flags.DEFINE_bool("checkpoint_input_pipeline", True, "Save the tf.data iterator in "
                  "checkpoints for an exact resume of the data stream (single machine).")
flags.DEFINE_integer("log_every", 10, "Steps between log lines.")
flags.mark_flag_as_required("train_dir")

FLAGS = flags.FLAGS


def config_from_flags() -> imagenet_train.RunConfig:
  """The RunConfig the command-line flags describe."""
  weights = FLAGS.weights
  if weights is not None and weights.lower() == _NONE:
    weights = None
  return imagenet_train.RunConfig(
      train_dir=FLAGS.train_dir, model=FLAGS.model, optimizer=FLAGS.optimizer, weights=weights,
      learned_config=FLAGS.learned_config, learning_rate=FLAGS.learning_rate,
      lr_scaling=FLAGS.lr_scaling, reference_batch_size=FLAGS.reference_batch_size,
      image_size=FLAGS.image_size, num_classes=FLAGS.num_classes,
      label_smoothing=FLAGS.label_smoothing, weight_decay=FLAGS.weight_decay,
      global_batch_size=FLAGS.global_batch_size, mixed_precision=FLAGS.mixed_precision,
      data_dir=FLAGS.data_dir, manual_dir=FLAGS.manual_dir, synthetic=FLAGS.synthetic,
      examples_per_epoch=FLAGS.examples_per_epoch, shuffle_buffer=FLAGS.shuffle_buffer,
      seed=FLAGS.seed, strategy=FLAGS.strategy, train_steps=FLAGS.train_steps,
      checkpoint_every=FLAGS.checkpoint_every, keep_checkpoints=FLAGS.keep_checkpoints,
      checkpoint_input_pipeline=FLAGS.checkpoint_input_pipeline, log_every=FLAGS.log_every)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    summary = imagenet_train.train(config_from_flags())
  except imagenet_train.SetupError as e:
    sys.exit(f"eval_imagenet.py: error: {e}")
  except imagenet_train.TrainingDiverged as e:
    sys.exit(f"eval_imagenet.py: training diverged: {e}")
  logging.info("done: step %d, loss %.4f; losses in %s", summary["step"], summary["loss"],
               summary["csv"])


if __name__ == "__main__":
  app.run(main)
