r"""Inner steps per second of a meta-training partial unroll: eager vs tf.function vs XLA.

Each measurement is what the trainer runs per meta-step: an unroll of --steps optimizer steps
on one problem instance, its meta-loss (eq. 14) and the meta-gradient by backpropagation with
second derivatives (--nogradients: forward only). Same process, one problem at a time; the
first call (trace / XLA compilation) is timed separately and excluded from the rate.

  python benchmarks/meta_speed.py
  python benchmarks/meta_speed.py --problems quadratic_d25,quadratic_d2048 --steps 100
  python benchmarks/meta_speed.py --modes function,xla --config stable --nogradients
"""

from __future__ import annotations

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app
from absl import flags

FLAGS = flags.FLAGS


def define_flags():
  """Flags of the command line only, so that importing this module defines none."""
  flags.DEFINE_string("problems", "bowl_k1,quadratic_d25,logreg_f100_sep1_b50,quadratic_d784",
                      "Comma-separated problem names.")
  flags.DEFINE_string("modes", "eager,function,xla", "Comma-separated: eager, function, xla.")
  flags.DEFINE_integer("steps", 64, "Inner steps per unroll (eager uses --eager_steps).")
  flags.DEFINE_integer("eager_steps", 8, "Inner steps per unroll in eager mode (it is slow).")
  flags.DEFINE_integer("repeats", 3, "Timed unrolls per (problem, mode); the median is shown.")
  flags.DEFINE_enum("config", "paper", ["paper", "stable"], "Optimizer preset.")
  flags.DEFINE_bool("gradients", True, "Include the meta-gradient (what meta-training does).")


def main(argv):
  del argv
  import numpy as np
  import tensorflow as tf

  import problems
  from learned_opt import config as config_lib
  from learned_opt import hrnn
  from meta import unroll as unroll_lib

  config = config_lib.get(FLAGS.config)
  meta = hrnn.MetaParams(config).as_dict()
  modes = [m.strip() for m in FLAGS.modes.split(",") if m.strip()]
  rows = []
  for name in [p.strip() for p in FLAGS.problems.split(",") if p.strip()]:
    problem = problems.get(name)
    data = unroll_lib.data_tensors(problem.sample_data(1))
    carry = unroll_lib.start_carry(problem, meta, config, data, 1, [1, 2])
    rates = {}
    for mode in modes:
      steps = FLAGS.eager_steps if mode == "eager" else FLAGS.steps
      unroller = unroll_lib.Unroller(config, max_steps=max(steps, 1), mode=mode)
      start = time.perf_counter()
      out = unroller(problem, meta, carry, data, steps, [3, 4], FLAGS.gradients)
      float(out.meta_loss)
      first = time.perf_counter() - start
      times = []
      for r in range(FLAGS.repeats):
        start = time.perf_counter()
        out = unroller(problem, meta, carry, data, steps, [5, r], FLAGS.gradients)
        float(out.meta_loss)
        times.append(time.perf_counter() - start)
      rates[mode] = (steps / float(np.median(times)), first)
    rows.append((name, problem.num_params, rates))

  what = "unroll + meta-gradient (2nd derivatives)" if FLAGS.gradients else "unroll only"
  print(f"\ninner steps/s, {what}, config {FLAGS.config}, {FLAGS.steps} steps per unroll "
        f"(eager {FLAGS.eager_steps}), median of {FLAGS.repeats}; first call in brackets\n")
  header = f"| {'problem':<22} | {'params':>6} | " + " | ".join(f"{m:>18}" for m in modes)
  print(header + " |")
  print("|" + "-" * 24 + "|" + "-" * 8 + "|" + "|".join("-" * 20 for _ in modes) + "|")
  for name, num_params, rates in rows:
    cells = " | ".join(f"{rates[m][0]:>8,.0f} [{rates[m][1]:>5.1f}s]" for m in modes)
    print(f"| {name:<22} | {num_params:>6} | {cells} |")


if __name__ == "__main__":
  define_flags()
  app.run(main)
