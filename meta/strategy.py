"""`--strategy` string -> tf.distribute strategy (one function, as tensorflow/models does).

  default           no strategy: one process, one device.
  mirrored          MirroredStrategy over this machine's devices (logical CPUs in tests).
  multi_worker      MultiWorkerMirroredStrategy; the cluster comes from TF_CONFIG.
  parameter_server  ParameterServerStrategy; the cluster comes from TF_CONFIG (or a resolver
                    passed in, as the tests do). This process is the coordinator ("chief").
"""

from __future__ import annotations

import json
import os

import tensorflow as tf

NAMES = ("default", "mirrored", "multi_worker", "parameter_server")


def check_name(name: str) -> str:
  if name not in NAMES:
    raise ValueError(f"unknown --strategy {name!r}; choose one of {', '.join(NAMES)}")
  return name


def check_cluster(name: str) -> None:
  """Up-front check that a cluster strategy has a usable TF_CONFIG (clear error otherwise)."""
  if name not in ("multi_worker", "parameter_server"):
    return
  raw = os.environ.get("TF_CONFIG")
  if not raw:
    raise ValueError(f"--strategy={name} needs the cluster in the TF_CONFIG environment "
                     "variable (see train_meta.py's docstring for an example)")
  try:
    tf_config = json.loads(raw)
    cluster = tf_config["cluster"]
    task = tf_config["task"]
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"TF_CONFIG is not valid JSON with 'cluster' and 'task': {e}") from e
  if name == "parameter_server":
    for job in ("worker", "ps"):
      if not cluster.get(job):
        raise ValueError(f"--strategy=parameter_server needs a {job!r} job in TF_CONFIG")
    if task.get("type") not in ("chief", "worker", "ps", "evaluator"):
      raise ValueError(f"TF_CONFIG task type {task.get('type')!r} is not one of chief/worker/ps")


def get_strategy(name: str, cluster_resolver=None):
  """The strategy for `name` (None for "default")."""
  check_name(name)
  if name == "default":
    return None
  if name == "mirrored":
    devices = [d.name for d in tf.config.list_logical_devices("GPU")] or \
        [d.name for d in tf.config.list_logical_devices("CPU")]
    return tf.distribute.MirroredStrategy(
        devices=devices, cross_device_ops=tf.distribute.ReductionToOneDevice())
  if name == "multi_worker":
    return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=cluster_resolver)
  resolver = cluster_resolver or tf.distribute.cluster_resolver.TFConfigClusterResolver()
  return tf.distribute.experimental.ParameterServerStrategy(resolver)


def is_chief(strategy) -> bool:
  """Whether this process writes checkpoints, summaries and exports."""
  if strategy is None or isinstance(strategy, tf.distribute.MirroredStrategy):
    return True
  if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
    resolver = strategy.cluster_resolver
    return (resolver.task_type in (None, "chief")
            or (resolver.task_type == "worker" and resolver.task_id == 0
                and "chief" not in resolver.cluster_spec().as_dict()))
  return True  # parameter server: the coordinator
