r"""Inner steps per second of a meta-training partial unroll: eager vs tf.function vs XLA.

Each measurement is what the trainer runs per meta-step: an unroll of --steps optimizer steps
on one problem instance, its meta-loss (eq. 14) and the meta-gradient by backpropagation with
second derivatives (--nogradients: forward only). Same process, one problem at a time; the
first call (trace / XLA compilation) is timed separately and excluded from the rate. A second
table (report_estimators) gives the cost of a PES meta-step beside a TBPTT one, and their memory.

  python benchmarks/meta_speed.py
  python benchmarks/meta_speed.py --problems quadratic_d25,quadratic_d2048 --steps 100
  python benchmarks/meta_speed.py --modes function,xla --config stable --nogradients
  python -m benchmarks.meta_speed --problems bowl_k1 --modes xla --pes_particles 8  # + PES vs TBPTT
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
  flags.DEFINE_string("estimator_problems", "quadratic_d25,logreg_f100_sep1_b50",
                      "Problems of the PES vs TBPTT cost table ('' skips it).")
  flags.DEFINE_integer("estimator_steps", 50, "Inner steps per truncation in that table.")
  flags.DEFINE_integer("pes_particles", 8, "PES particles per task in that table.")


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
  if FLAGS.estimator_problems:
    report_estimators([p.strip() for p in FLAGS.estimator_problems.split(",") if p.strip()],
                      FLAGS.config, FLAGS.estimator_steps, FLAGS.pes_particles, FLAGS.repeats)


# --------------------------------------------------------------------------------------------
# PES vs truncated BPTT: cost per meta-step, per inner step, and peak memory (issue 14).
# --------------------------------------------------------------------------------------------

def _estimator_cell(estimator, problem_name, config_name, steps, particles, repeats, queue):
  """Runs in a fresh process, so that its peak resident memory is its own.

  tbptt: one unroll of `steps` inner steps with the meta-gradient (2nd derivatives), what a
  TBPTT meta-step costs per replica. pes: `particles` forward-only unrolls of `steps` steps
  in one compiled call, what a PES meta-step costs per task. "setup": builds the same inputs
  and runs nothing (the memory baseline).
  """
  import resource

  import numpy as np
  import tensorflow as tf

  import problems
  from learned_opt import config as config_lib
  from learned_opt import hrnn
  from meta import unroll as unroll_lib
  from meta.estimators import pes

  config = config_lib.get(config_name)
  problem = problems.get(problem_name)
  meta = hrnn.MetaParams(config).as_dict()
  data = unroll_lib.data_tensors(problem.sample_data(1))
  carry = unroll_lib.start_carry(problem, meta, config, data, 1, [1, 2])
  if estimator == "tbptt":
    unroller = unroll_lib.Unroller(config, max_steps=steps)
    def call(r):
      return float(unroller(problem, meta, carry, data, steps, [5, r]).meta_loss)
  elif estimator == "pes":
    fn = pes.task_function(problem, config, max_steps=steps, num_particles=particles)
    carries = pes.stack_carry(carry, particles)
    xi = {k: tf.zeros([particles] + v.shape.as_list()) for k, v in meta.items()}
    def call(r):
      out = fn(meta, xi, carries, data, tf.constant(steps), tf.constant([5, r]),
               tf.constant([7, r]), tf.constant(0), tf.constant(False), tf.constant(0.01),
               tf.constant(particles))
      return float(out[1])
  else:
    call = None
  first, times = 0.0, []
  if call is not None:
    start = time.perf_counter()
    call(0)
    first = time.perf_counter() - start
    for r in range(repeats):
      wall, cpu = time.perf_counter(), time.process_time()
      call(r + 1)
      times.append((time.process_time() - cpu, time.perf_counter() - wall))
  cpu, wall = (np.median([t[0] for t in times]), np.median([t[1] for t in times])) \
      if times else (0.0, 0.0)
  queue.put(dict(params=problem.num_params, first=first, cpu=float(cpu), wall=float(wall),
                 peak_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0))


def _in_fresh_process(*args) -> dict:
  import multiprocessing
  context = multiprocessing.get_context("spawn")
  queue = context.Queue()
  process = context.Process(target=_estimator_cell, args=args + (queue,))
  process.start()
  result = queue.get()
  process.join()
  return result


def report_estimators(problem_names, config_name, steps, particles, repeats) -> list[dict]:
  """Prints the PES vs TBPTT table; each cell is measured in a fresh process."""
  rows = []
  for name in problem_names:
    base = _in_fresh_process("setup", name, config_name, steps, particles, repeats)
    for estimator, count in (("tbptt", 1), ("pes", particles)):
      cell = _in_fresh_process(estimator, name, config_name, steps, particles, repeats)
      cell.update(problem=name, estimator=estimator, particles=count,
                  per_inner_us=1e6 * cell["cpu"] / (steps * count),
                  extra_mib=cell["peak_mib"] - base["peak_mib"])
      rows.append(cell)
  print(f"\nPES vs truncated BPTT, config {config_name}, one truncation of {steps} inner steps "
        f"per task: TBPTT = 1 unroll + meta-gradient (2nd derivatives), PES = {particles} "
        f"forward-only particles in one compiled call. CPU = process time, median of "
        f"{repeats}; peak memory = peak RSS of a fresh process minus that of one that only "
        "builds the inputs (compilation included)\n")
  print("| problem                | params | estimator | particles | CPU s / meta-step | "
        "wall s / meta-step | CPU us / inner step | first call s | peak MiB over setup |")
  print("|" + "|".join("-" * w for w in (24, 8, 11, 11, 19, 20, 21, 14, 21)) + "|")
  for r in rows:
    print(f"| {r['problem']:<22} | {r['params']:>6} | {r['estimator']:<9} | {r['particles']:>9} "
          f"| {r['cpu']:>17.3f} | {r['wall']:>18.3f} | {r['per_inner_us']:>19.1f} | "
          f"{r['first']:>12.1f} | {r['extra_mib']:>19.0f} |")
  return rows


if __name__ == "__main__":
  define_flags()
  app.run(main)
