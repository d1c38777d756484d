r"""Meta-trains the hierarchical RNN optimizer (seed paper 1 §4, hrnn_reference.md §3).

By default (--estimator tbptt) truncated backpropagation through partial unrolls on the
problem ensemble (problems/), with second derivatives, the log meta-objective of eq. 14,
RMSProp on the meta-parameters (or PES and Adam, below),
checkpoints that resume exactly, TensorBoard summaries, and export to a weights file that
`learned_opt.LearnedOptimizer(weights=PATH)` loads. The pieces live in meta/.

One machine (2 CPU cores is enough to see progress within minutes):

  python train_meta.py --train_dir /tmp/lo_run                 # default problem set (paper)
  python train_meta.py --train_dir /tmp/lo_mix --problems mix:0.5   # + networks (issue 13)
  python train_meta.py --train_dir /tmp/lo_run --max_steps 2000 --export /tmp/lo.npz
  python train_meta.py --train_dir /tmp/lo_run --export /tmp/lo.npz --export_only
  python train_meta.py --train_dir /tmp/lo_stable --config stable --meta_l2 0.1
  python train_meta.py --train_dir /tmp/lo_run --validate_every 250   # keeps exports/best.npz
  python train_meta.py --train_dir /tmp/lo_ft --config lean --init_weights W.npz  # warm start
  tensorboard --logdir /tmp/lo_run/summaries

Re-running the same command resumes from the last checkpoint (train_dir/checkpoints) and
continues exactly as if never stopped. Flags left out take the values the run last ran with,
so `python train_meta.py --train_dir DIR` alone resumes a run (and `--train_dir DIR --export F
--export_only` exports it); a flag given overrides the record. An unreadable latest checkpoint falls back to the
previous one (with a warning naming it); run_config.json keeps the run's original flags and
each resume appends its own to resumes.jsonl (warning about flags it cannot honour, --seed).

Reference (paper-scale) unroll and meta-optimizer settings:

  python train_meta.py --train_dir DIR --num_unrolls_scale 40 --min_num_unrolls 1 \
      --unroll_steps_scale 200 --min_unroll_steps 50 --max_unroll_steps 2048 \
      --trajectories_per_problem 5 --meta_learning_rate 1e-6 --rms_epsilon 1e-20

Long horizons with PES (meta/estimators/pes.py; learned_optimization's recipe: a population
of 8 tasks, trajectories log-uniform in 100-10,000 inner steps, truncations of 50-200, outer
Adam with a gradient clip):

  python train_meta.py --train_dir DIR --estimator pes --num_tasks 8 --pes_particles 2 \
      --pes_sigma 0.01 --trajectory_min_steps 100 --trajectory_max_steps 10000 \
      --truncation_min_steps 50 --truncation_max_steps 200 \
      --meta_optimizer adam --meta_learning_rate 3e-4 --gradient_clip 3

All devices of one machine, synchronous (each replica its own instance of the step's problem):

  python train_meta.py --train_dir DIR --strategy mirrored

A cluster, synchronous (run on every host; same flags and shared --train_dir, e.g. NFS/GCS):

  TF_CONFIG='{"cluster": {"worker": ["host1:2222", "host2:2222"]},
              "task": {"type": "worker", "index": 0}}' \
    python train_meta.py --train_dir /shared/run --strategy multi_worker
  (index 1 on host2; worker 0 is the chief and writes checkpoints, summaries, exports)

A cluster, asynchronous like the paper's RMSProp workers (parameter servers hold the
meta-parameters and RMSProp slots; every worker applies its own updates):

  # on each ps / worker host: a plain TF server
  TF_CONFIG='{"cluster": {"chief": ["c:2222"], "worker": ["w0:2222", "w1:2222"],
              "ps": ["p0:2222"]}, "task": {"type": "worker", "index": 0}}' \
    python -c "import json,os,tensorflow as tf; c=json.loads(os.environ['TF_CONFIG']); \
      tf.distribute.Server(tf.train.ClusterSpec(c['cluster']), job_name=c['task']['type'], \
      task_index=c['task']['index'], protocol='grpc').join()"
  # on the chief (the coordinator): same TF_CONFIG with "task": {"type": "chief", "index": 0}
    python train_meta.py --train_dir /shared/run --strategy parameter_server
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from pathlib import Path

from absl import app
from absl import flags

from learned_opt import config as config_lib
from meta import checkpoints
from meta import trainer as trainer_lib

_D = trainer_lib.Options()

FLAGS = flags.FLAGS
flags.DEFINE_string("train_dir", None, "Directory for checkpoints, summaries, history.csv and "
                    "run_config.json. Re-running with the same directory resumes.")
flags.DEFINE_enum("config", _D.config, sorted(config_lib.PRESETS),
                  "Optimizer preset: paper (seed paper 1), stable (+ seed paper 2 fixes) or "
                  "lean (stable with 8 floats of state per parameter).")
flags.DEFINE_string("problems", _D.problems,
                    "Problem set: 'paper' (alias 'default': the 109 problems of seed paper 1), "
                    "'nets' (43 small networks on generated data, with task augmentation; "
                    "python -m problems --list --nets), 'netfam' (5 MLP families whose "
                    "instances draw their own sizes and structure, one compiled function per "
                    "family, with task augmentation), 'mix' or 'mix:R' (paper and nets, a "
                    "fraction R of the draws nets; mix = mix:0.5), 'mixfam' or 'mixfam:R' (the "
                    "same with netfam), 'all' (paper + off-by-default problems), or a "
                    "comma-separated list of problem names and family names (python -m "
                    "problems --list).")
flags.DEFINE_integer("max_steps", _D.max_steps, "Total meta-steps (= partial unrolls = "
                     "meta-gradient updates), counted across resumes. 0: no training.")
flags.DEFINE_float("max_cpu_hours", _D.max_cpu_hours, "Stop, checkpointed, once the run's "
                   "recorded CPU time (counted across resumes, as in history.csv's cpu_time) "
                   "reaches this many hours. 0: no limit.")
flags.DEFINE_float("num_unrolls_scale", _D.num_unrolls_scale,
                   "Partial unrolls per trajectory = min_num_unrolls + round(Exp(scale)). "
                   "Reference: 40.")
flags.DEFINE_integer("min_num_unrolls", _D.min_num_unrolls, "Reference: 1.")
flags.DEFINE_float("unroll_steps_scale", _D.unroll_steps_scale,
                   "Steps per partial unroll = min_unroll_steps + round(Exp(scale)). "
                   "Reference: 200.")
flags.DEFINE_integer("min_unroll_steps", _D.min_unroll_steps, "Reference: 50.")
flags.DEFINE_integer("max_unroll_steps", _D.max_unroll_steps,
                     "Clip of the steps per unroll: the static bound of the compiled loop "
                     "(sizes the backprop buffers; not in the reference).")
flags.DEFINE_integer("trajectories_per_problem", _D.trajectories_per_problem,
                     "Trajectories per sampled problem (reference num_meta_iterations: 5). The "
                     "optimizer state is reset only at a problem's first trajectory.")
flags.DEFINE_bool("reset_state_every_trajectory", _D.reset_state_every_trajectory,
                  "Reset the optimizer state at every trajectory start.")
flags.DEFINE_float("lr_min", _D.lr_min, "Initial learning rates are drawn over "
                   "[lr_min, lr_max] (triangular in log, hrnn_reference.md §1.6).")
flags.DEFINE_float("lr_max", _D.lr_max, "See --lr_min.")
flags.DEFINE_bool("second_derivatives", _D.second_derivatives,
                  "Backpropagate through the problem gradients (false: stop_gradient).")
flags.DEFINE_enum("meta_loss", _D.meta_loss, ["full", "batch"],
                  "f of a minibatched problem's per-step meta-objective: the loss on all of the "
                  "instance's data (full) or on the step's own minibatch (batch: no extra "
                  "forward pass; what learned_optimization and Celo use).")
flags.DEFINE_enum("estimator", _D.estimator, ["tbptt", "pes"],
                  "Meta-gradient estimator: tbptt (truncated backprop through one partial "
                  "unroll, seed paper 1) or pes (persistent evolution strategies over a "
                  "population of long trajectories; meta/estimators/pes.py).")
flags.DEFINE_integer("tbptt_tasks", _D.tbptt_tasks, "TBPTT: trajectories (tasks) that every "
                     "meta-step advances by one partial unroll each, their meta-gradients "
                     "averaged into one update (1: one problem per meta-step, the reference).")
flags.DEFINE_integer("num_tasks", _D.num_tasks, "PES: trajectories (tasks) in the population; "
                     "one meta-step averages one truncation of each.")
flags.DEFINE_integer("pes_particles", _D.pes_particles, "PES: particles per task, in "
                     "antithetic pairs (even; a multiple of 2 x replicas under mirrored / "
                     "multi_worker).")
flags.DEFINE_float("pes_sigma", _D.pes_sigma, "PES: standard deviation of the perturbations "
                   "of the meta-parameters.")
flags.DEFINE_integer("trajectory_min_steps", _D.trajectory_min_steps, "PES: trajectory "
                     "lengths (inner steps) are log-uniform in [min, max].")
flags.DEFINE_integer("trajectory_max_steps", _D.trajectory_max_steps, "See "
                     "--trajectory_min_steps.")
flags.DEFINE_integer("truncation_min_steps", _D.truncation_min_steps, "PES: steps per "
                     "truncation are uniform in [min, max] (max: the compiled loop's bound).")
flags.DEFINE_integer("truncation_max_steps", _D.truncation_max_steps, "See "
                     "--truncation_min_steps.")
flags.DEFINE_enum("meta_optimizer", _D.meta_optimizer, ["rmsprop", "adam"],
                  "rmsprop (reference) or adam (PES recipe: learned_optimization uses Adam "
                  "3e-4 with a gradient clip; see --gradient_clip).")
flags.DEFINE_float("adam_beta1", _D.adam_beta1, "Adam's first-moment decay.")
flags.DEFINE_float("adam_beta2", _D.adam_beta2, "Adam's second-moment decay.")
flags.DEFINE_float("meta_learning_rate", _D.meta_learning_rate,
                   "RMSProp learning rate. Reference: 1e-6 (with ~1000 async workers); 1e-3 "
                   "gives visible progress in minutes on one CPU.")
flags.DEFINE_float("rms_decay", _D.rms_decay, "RMSProp decay (reference 0.9).")
flags.DEFINE_float("rms_epsilon", _D.rms_epsilon, "RMSProp epsilon (reference 1e-20; "
                   "1e-10 is TF1's default).")
flags.DEFINE_float("gradient_clip", _D.gradient_clip, "Elementwise meta-gradient clip after "
                   "zeroing non-finite entries (reference 1e4).")
flags.DEFINE_float("meta_l2", _D.meta_l2, "L2 coefficient on the optimizer's own "
                   "meta-parameters (seed paper 2's weight decay; not on problem parameters).")
flags.DEFINE_string("meta_lr_scales", _D.meta_lr_scales, "Per-meta-parameter learning-rate "
                    "multipliers, 'PATTERN=SCALE,...' with fnmatch patterns over meta-parameter "
                    "names, e.g. 'log_lr_anchor=30,nominal/*=30' (last match wins; others 1).")
flags.DEFINE_integer("seed", _D.seed, "Seed of problem / length / instance sampling.")
flags.DEFINE_integer("init_seed", _D.init_seed, "Seed of the meta-parameter initialisation.")
flags.DEFINE_string("init_weights", _D.init_weights, "Warm start: a fresh run's "
                    "meta-parameters come from this weights file (shipped name or path, made "
                    "for --config) instead of --init_seed. Ignored on resume.")
flags.DEFINE_enum("strategy", _D.strategy, ["default", "mirrored", "multi_worker",
                                            "parameter_server"], "tf.distribute strategy.")
flags.DEFINE_enum("unroll_mode", _D.unroll_mode, ["xla", "function", "eager"],
                  "How unrolls run: xla (fastest on CPU), function, eager.")
flags.DEFINE_enum("compile_by", _D.compile_by, ["bucket", "problem"],
                  "bucket: problems of one padded size share one compiled unroll (a handful "
                  "of compiles for the whole pool); problem: one compiled unroll per problem.")
flags.DEFINE_float("checkpoint_every_secs", _D.checkpoint_every_secs,
                   "Checkpoint interval in seconds (0: off).")
flags.DEFINE_integer("checkpoint_every_steps", _D.checkpoint_every_steps,
                     "Checkpoint interval in meta-steps (0: off).")
flags.DEFINE_integer("keep_checkpoints", _D.keep_checkpoints, "Checkpoints kept.")
flags.DEFINE_integer("log_every_steps", _D.log_every_steps, "Console progress interval.")
flags.DEFINE_integer("summary_every_steps", _D.summary_every_steps,
                     "TensorBoard scalars every this many meta-steps (history.csv has all).")
flags.DEFINE_integer("max_memory_maps", _D.max_memory_maps, "Memory maps this process may hold "
                     "before it checkpoints and continues in a fresh one (XLA never frees a "
                     "compiled problem's ~800 maps; Linux caps them at vm.max_map_count). "
                     "0: 90 percent of vm.max_map_count.")
flags.DEFINE_float("max_memory_gb", _D.max_memory_gb, "Resident memory (GB) this process may "
                   "hold before it checkpoints and continues in a fresh one (XLA never frees a "
                   "compiled function; a network structure holds ~0.7 GB). 0: half of the "
                   "machine's physical memory.")
flags.DEFINE_integer("validate_every", _D.validate_every, "Run the validation suite "
                     "(meta/validation.py) every N meta-steps and keep exports/best.npz by its "
                     "score (mean ln(final loss / Adam(2e-3)), lower is better). 0: off.")
flags.DEFINE_integer("validation_steps", _D.validation_steps, "Optimizer steps per validation "
                     "task.")
flags.DEFINE_string("validation_tasks", _D.validation_tasks, "Comma-separated validation task "
                    "names (meta/validation.py); empty or 'v2': all 14; 'v1': the "
                    "first 10 (the suite of runs before 2026-12-03).")
flags.DEFINE_integer("guard_steps", _D.guard_steps, "Long-horizon guard: a new best "
                     "validation score is exported only if the optimizer also stays finite, "
                     "spike-free and without a climbing step length for this many steps on "
                     "three validation tasks (meta/validation.py). -1: 10 x "
                     "--validation_steps; 0: off.")
flags.DEFINE_string("export", "", "Write a weights file here at the end (learned_opt format).")
flags.DEFINE_bool("export_only", False, "Only export the latest checkpoint of --train_dir "
                  "to --export. Writes nothing in --train_dir, so it is safe while a run "
                  "is meta-training there.")


# Flags that never come from a resumed run's record: where to write, and what to do now.
_NOT_FROM_RECORD = ("train_dir", "export")


def options_from_flags() -> trainer_lib.Options:
  """Options from the command line. Resuming a run (its train_dir has a checkpoint), a flag
  not given takes the value the run last ran with, so `--train_dir DIR` alone resumes or
  exports it; a flag given on the command line overrides the record (and is logged)."""
  options = trainer_lib.Options()
  recorded = (checkpoints.recorded_options(Path(FLAGS.train_dir).expanduser())
              if FLAGS.train_dir else None) or {}
  taken = []
  for field in options.__dataclass_fields__:
    if field not in FLAGS:
      continue
    if not FLAGS[field].present and field in recorded and field not in _NOT_FROM_RECORD:
      setattr(options, field, recorded[field])
      if recorded[field] != FLAGS[field].default:
        taken.append(f"--{field} {recorded[field]!r}")
    else:
      setattr(options, field, getattr(FLAGS, field) if getattr(FLAGS, field) is not None
              else getattr(options, field))
  if taken:
    logging.getLogger("train_meta").info("resuming %s with its recorded flags: %s",
                                         FLAGS.train_dir, " ".join(taken))
  if FLAGS.export_only:
    if not FLAGS.export:
      raise ValueError("--export_only needs --export PATH")
    if not FLAGS.train_dir:
      raise ValueError("--export_only needs the --train_dir to export from")
    options.max_steps = 0
  return options


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
  logging.getLogger("train_meta").setLevel(logging.INFO)
  try:
    options = options_from_flags()
    trainer = trainer_lib.Trainer(options, read_only=FLAGS.export_only)
  except ValueError as e:
    print(f"train_meta.py: error: {e}", file=sys.stderr)
    return 2
  if FLAGS.export_only:
    if trainer.manager.latest_checkpoint is None:
      print(f"train_meta.py: error: no checkpoint in {options.train_dir} to export",
            file=sys.stderr)
      return 2
    trainer.export(options.export)
    return 0
  def stop(signum, frame):   # finish the meta-step in flight, checkpoint, exit
    logging.getLogger("train_meta").info(
        "%s: stopping after this meta-step and checkpointing", signal.Signals(signum).name)
    trainer.stop_requested = True
  for signum in (signal.SIGTERM, signal.SIGINT):
    signal.signal(signum, stop)
  trainer.run()
  if trainer.stop_requested:
    return 0
  if trainer.needs_fresh_process:
    # XLA's compiled executables are only released with the process: continue the run
    # (bit-exactly, from the checkpoint just written) in a fresh one.
    logging.getLogger("train_meta").info("continuing in a fresh process: %s",
                                         " ".join(sys.argv))
    sys.stdout.flush()
    sys.stderr.flush()
    # The kernel carries the process's CPU time across exec; the new image must not count
    # what this one already recorded.
    os.environ[trainer_lib.CPU_BEFORE_EXEC_ENV] = repr(time.process_time())
    os.execv(sys.executable, [sys.executable] + sys.argv)
  return 0


if __name__ == "__main__":
  flags.mark_flag_as_required("train_dir")
  app.run(lambda argv: sys.exit(main(argv)))
