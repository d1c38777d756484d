"""`--strategy` resolved by one function, and the chief/worker split of who writes what.

* `one_device`: the first GPU, or the CPU when there is none.
* `mirrored`: synchronous data parallelism over every local GPU (MirroredStrategy).
* `multi_worker`: synchronous data parallelism over several machines
  (MultiWorkerMirroredStrategy), each reading its cluster and role from the TF_CONFIG
  environment variable, e.g. on worker 0 of two:
    TF_CONFIG='{"cluster": {"worker": ["host0:12345", "host1:12345"]},
                "task": {"type": "worker", "index": 0}}'
  Every worker runs the same command with the same --train_dir (a shared file system);
  worker 0 is the chief and writes the CSV, summaries and checkpoints.
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("one_device", "mirrored", "multi_worker")


def make_strategy(name: str) -> tf.distribute.Strategy:
  """The tf.distribute strategy called `name` (one of STRATEGIES)."""
  # Physical, not logical, devices: listing logical ones starts the runtime, after which
  # MultiWorkerMirroredStrategy can no longer configure its collective ops.
  gpus = tf.config.list_physical_devices("GPU")
  if name == "one_device":
    return tf.distribute.OneDeviceStrategy("/gpu:0" if gpus else "/cpu:0")
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise ValueError("--strategy=multi_worker needs the TF_CONFIG environment variable "
                       "describing the cluster and this worker's index (see eval_imagenet.py)")
    implementation = (tf.distribute.experimental.CommunicationImplementation.NCCL if gpus
                      else tf.distribute.experimental.CommunicationImplementation.RING)
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(
            implementation=implementation))
  raise ValueError(f"unknown strategy {name!r}; known: {', '.join(STRATEGIES)}")


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
  return strategy.extended._in_multi_worker_mode()  # pylint: disable=protected-access


def is_chief(strategy: tf.distribute.Strategy) -> bool:
  """True on the one process that writes logs and checkpoints."""
  if not is_multi_worker(strategy):
    return True
  tf_config = json.loads(os.environ.get("TF_CONFIG", "{}"))
  task = tf_config.get("task", {})
  if "chief" in tf_config.get("cluster", {}):
    return task.get("type") == "chief"
  return task.get("type") == "worker" and task.get("index", 0) == 0


def worker_tag(strategy: tf.distribute.Strategy) -> str:
  """A name unique to this process within the cluster, e.g. 'worker_3'."""
  if not is_multi_worker(strategy):
    return "local"
  task = json.loads(os.environ["TF_CONFIG"]).get("task", {})
  return f"{task.get('type', 'worker')}_{task.get('index', 0)}"
