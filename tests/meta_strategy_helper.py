"""Subprocess helper for tests/test_train_meta.py: runs a short meta-training under a strategy.

  python tests/meta_strategy_helper.py mirrored TRAIN_DIR STEPS
  python tests/meta_strategy_helper.py parameter_server TRAIN_DIR STEPS
  python tests/meta_strategy_helper.py mirrored TRAIN_DIR STEPS '{"estimator": "pes"}'
Prints one JSON line: {"step": ..., "finite": ..., "replicas": ..., "changed": ...}.
"""

import json
import os
import socket
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np
import tensorflow as tf


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def main():
  import faulthandler
  faulthandler.dump_traceback_later(500, exit=True)  # a hang prints its stacks
  kind, train_dir, steps = sys.argv[1], sys.argv[2], int(sys.argv[3])
  resolver = None
  if kind == "mirrored":
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
  elif kind == "parameter_server":
    # In-process local cluster on 127.0.0.1: 2 workers, 1 ps, this process the chief.
    spec = {"worker": [f"127.0.0.1:{free_port()}" for _ in range(2)],
            "ps": [f"127.0.0.1:{free_port()}"], "chief": [f"127.0.0.1:{free_port()}"]}
    cluster = tf.train.ClusterSpec(spec)
    # In-process servers share this process's thread pools; with 2 cores the default
    # inter-op pool deadlocks remote variable reads, so give every server its own threads.
    tf.config.threading.set_inter_op_parallelism_threads(8)
    server_config = tf.compat.v1.ConfigProto(inter_op_parallelism_threads=8)
    for job in ("worker", "ps"):
      for index in range(len(spec[job])):
        tf.distribute.Server(cluster, job_name=job, task_index=index, protocol="grpc",
                             config=server_config, start=True)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
        cluster, task_type="chief", task_id=0, rpc_layer="grpc")
  from meta import trainer as trainer_lib
  values = dict(train_dir=train_dir, problems="quadratic_d25", max_steps=steps,
                strategy=kind, checkpoint_every_steps=2,
                unroll_steps_scale=10, min_unroll_steps=10, max_unroll_steps=64)
  values.update(json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})  # e.g. PES options
  options = trainer_lib.Options(**values)
  trainer = trainer_lib.Trainer(options, cluster_resolver=resolver)
  before = {k: v.numpy() for k, v in trainer.meta.variables_by_name.items()}
  info = trainer.run()
  after = {k: v.numpy() for k, v in trainer.meta.variables_by_name.items()}
  print(json.dumps({
      "step": trainer.step, "replicas": trainer.num_replicas,
      "finite": bool(all(np.all(np.isfinite(v)) for v in after.values())),
      "changed": bool(any(not np.array_equal(before[k], after[k]) for k in before)),
      "meta_loss": info.get("meta_loss"),
      "checkpoint": trainer.manager.latest_checkpoint}))


if __name__ == "__main__":
  main()
