"""The meta-training loop: sample problems, run partial unrolls, apply RMSProp, checkpoint.

The loop asks an estimator (meta/estimators/, `--estimator`) for each meta-step and records
what it reports. What follows describes truncated BPTT (estimators/tbptt.py, the default);
PES over a population of long trajectories is described in estimators/pes.py. `--meta_optimizer
adam` replaces RMSProp (meta/meta_optimizer.py).

Seed paper 1 §4.2-4.5, hrnn_reference.md §3. One meta-step = one partial unroll = one
meta-gradient update (the reference's global_step counts partial unrolls too).

Loop structure (reference MO/TO):
* A problem is drawn from the pool (`problems.sample`: uniformly, or for `--problems mix:R` a
  fraction R from the nets set and the rest from the paper set); each replica gets its own
  random instance of it (data seed). `trajectories_per_problem` trajectories (reference
  `num_meta_iterations` 5; default here 1) are run on it, each from freshly initialised
  parameters.
* A trajectory has num_unrolls = min_num_unrolls + round(Exp(num_unrolls_scale)) partial
  unrolls; each has min_unroll_steps + round(Exp(unroll_steps_scale)) steps, clipped to
  max_unroll_steps (the static bound of the compiled loop; the clip is ours).
* Parameters, optimizer state and f_init carry across the partial unrolls of a trajectory;
  no gradient crosses unroll boundaries.
* Reset rule (reference `reset_rnn_params`=True): the optimizer state is reset (init vectors,
  zero EMAs, fresh random initial log step lengths, hrnn.sample_initial_log_lr over lr_range)
  at the first trajectory of each problem only; later trajectories on the same problem start
  from fresh parameters but keep the optimizer state. Departure: we keep the state at the END
  of the previous trajectory; the reference kept the one from the start of its last unroll
  (an artefact of its propagate op). With the default of one trajectory per problem, the
  state is reset at every trajectory start. `reset_state_every_trajectory` forces that.
* A replica whose meta-loss or parameters are not finite contributes no meta-gradient and its
  trajectory ends (the reference's finite check); if no replica is finite, the meta-step is
  skipped (counted as `skipped`).

Synchronous strategies (default / mirrored / multi_worker): every replica runs the SAME
problem (so all replicas execute one compiled function with one set of shapes) on its own
instance, data, initialisation, initial log step lengths and minibatch seeds; the finite
meta-gradients are summed across replicas and divided by the number of finite ones.
Parameter server: the coordinator keeps one independent trajectory per worker (each with its
own problem) and schedules unroll+update closures; every closure applies its own RMSProp
update to the PS-held meta-parameters, asynchronously, like the paper's workers.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import tensorflow as tf
from tensorflow.core.framework import summary_pb2

import problems as problems_lib
from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import weights as weights_lib
from meta import checkpoints
from meta import estimators
from meta import meta_optimizer
from meta import profile
from meta import strategy as strategy_lib
from meta import unroll as unroll_lib

log = logging.getLogger("train_meta")


@dataclasses.dataclass
class Options:
  """Meta-training options; train_meta.py maps its flags one-to-one onto these fields."""
  train_dir: str = ""
  config: str = "paper"
  problems: str = "default"
  max_steps: int = 100_000
  # Stop (checkpointed) once the run's recorded CPU time reaches this many hours; counted
  # across resumes and hand-overs, like max_steps. 0: no limit.
  max_cpu_hours: float = 0.0
  # Unroll distributions. Reference: num_unrolls_scale 40, min_num_unrolls 1,
  # unroll_steps_scale 200, min_unroll_steps 50. Defaults are ~10x smaller for a CPU.
  num_unrolls_scale: float = 5.0
  min_num_unrolls: int = 1
  unroll_steps_scale: float = 30.0
  min_unroll_steps: int = 20
  max_unroll_steps: int = 256
  trajectories_per_problem: int = 1
  reset_state_every_trajectory: bool = False
  lr_min: float = 1e-6
  lr_max: float = 1e-2
  second_derivatives: bool = True
  # f of a minibatched problem's per-step meta-objective: "full" data or the step's "batch"
  # (meta/unroll.py META_LOSSES; "batch" skips a full-data forward pass per inner step).
  meta_loss: str = "full"
  # Estimator (meta/estimators/): "tbptt" (the fields above) or "pes" (the fields below).
  estimator: str = "tbptt"
  # TBPTT population: trajectories (tasks) advanced by every meta-step, whose meta-gradients
  # are averaged into one update (1: the reference's one problem per meta-step).
  tbptt_tasks: int = 1
  # PES population (peers.md §1.4, learned_optimization's stock recipe: 16 tasks, truncations
  # of 50, lengths log-uniform in 100-10,000). Particles are per task, in antithetic pairs.
  num_tasks: int = 8
  pes_particles: int = 2
  pes_sigma: float = 0.01
  trajectory_min_steps: int = 100
  trajectory_max_steps: int = 10_000
  truncation_min_steps: int = 50
  truncation_max_steps: int = 200
  # Meta-optimizer: "rmsprop" (reference) or "adam" (PES recipe; Adam's epsilon is 1e-8).
  meta_optimizer: str = "rmsprop"
  adam_beta1: float = 0.9
  adam_beta2: float = 0.999
  # RMSProp / Adam settings. Reference: lr 1e-6, eps 1e-20 with many asynchronous workers.
  meta_learning_rate: float = 1e-3
  rms_decay: float = 0.9
  rms_epsilon: float = 1e-10
  gradient_clip: float = 1e4
  meta_l2: float = 0.0
  # Per-meta-parameter learning-rate multipliers, "PATTERN=SCALE,..." over meta-parameter
  # names (meta_optimizer.parse_lr_scales); "" = one learning rate for all.
  meta_lr_scales: str = ""
  seed: int = 0
  init_seed: int = 0
  # Warm start: a fresh run's meta-parameters are read from this weights file (a shipped name
  # or a path; its config must be --config's) instead of drawn from --init_seed.
  init_weights: str = ""
  strategy: str = "default"
  unroll_mode: str = "xla"
  # "bucket": problems of one padded size share a compiled unroll (meta/unroll.py `_Group`);
  # "problem": one compiled unroll per problem (the pre-bucketing behaviour).
  compile_by: str = "bucket"
  checkpoint_every_secs: float = 60.0
  checkpoint_every_steps: int = 0
  keep_checkpoints: int = 3
  log_every_steps: int = 1
  # TensorBoard scalars every this many meta-steps (history.csv keeps every meta-step): nine
  # eager summary writes per meta-step were part of the trainer's Python overhead.
  summary_every_steps: int = 10
  export: str = ""
  # XLA keeps every compiled executable for the life of the process, ~800 memory maps per
  # problem, and Linux caps a process at vm.max_map_count maps (65530 by default: about 80
  # problems). Past this budget the trainer checkpoints and asks to be continued in a fresh
  # process (train_meta.py re-executes itself). 0: 90% of vm.max_map_count.
  max_memory_maps: int = 0
  # Resident memory (GB) past which the trainer hands over the same way. XLA's executables
  # are never freed: a compiled network structure holds ~0.7 GB (measured 2026-12-06), so a
  # --problems nets run grows by that with every structure it draws, and was OOM-killed at
  # 23 GB. Checked after a meta-step that compiled something. 0: half of physical memory.
  max_memory_gb: float = 0.0
  # Validation suite (meta/validation.py): every N meta-steps (0: off), keeping
  # exports/best.npz by its score; steps per validation task.
  validate_every: int = 0
  validation_steps: int = 300
  validation_tasks: str = ""      # comma-separated names from meta/validation.py; "" = all
  # Long-horizon guard (meta/validation.py's LongHorizonGuard) a new best must pass before it
  # is exported: steps per guard task; -1: 10 x validation_steps; 0: off.
  guard_steps: int = -1

  def effective_guard_steps(self) -> int:
    return 10 * self.validation_steps if self.guard_steps < 0 else self.guard_steps

  def validate(self, resuming: bool = False) -> None:
    """Raises ValueError naming the bad option (before any work).

    resuming: the run has a checkpoint, so --init_weights is not read (RESUME_NO_EFFECT) and
    not checked: a shipped name it recorded may since name a file of another config.
    """
    errors = []
    def need(ok, message):
      if not ok:
        errors.append(message)
    need(bool(self.train_dir), "--train_dir is required")
    need(self.config in config_lib.PRESETS,
         f"--config must be one of {sorted(config_lib.PRESETS)}, got {self.config!r}")
    need(self.max_steps >= 0, f"--max_steps must be >= 0, got {self.max_steps}")
    need(self.max_cpu_hours >= 0, f"--max_cpu_hours must be >= 0, got {self.max_cpu_hours}")
    need(self.summary_every_steps >= 1,
         f"--summary_every_steps must be >= 1, got {self.summary_every_steps}")
    need(self.max_memory_maps >= 0,
         f"--max_memory_maps must be >= 0 (0: automatic), got {self.max_memory_maps}")
    need(self.max_memory_gb >= 0,
         f"--max_memory_gb must be >= 0 (0: automatic), got {self.max_memory_gb}")
    need(self.num_unrolls_scale >= 0, "--num_unrolls_scale must be >= 0")
    need(self.min_num_unrolls >= 1, "--min_num_unrolls must be >= 1")
    need(self.unroll_steps_scale >= 0, "--unroll_steps_scale must be >= 0")
    need(self.min_unroll_steps >= 1, "--min_unroll_steps must be >= 1")
    need(self.max_unroll_steps >= self.min_unroll_steps,
         "--max_unroll_steps must be >= --min_unroll_steps")
    need(self.trajectories_per_problem >= 1, "--trajectories_per_problem must be >= 1")
    need(0 < self.lr_min < self.lr_max, f"need 0 < --lr_min < --lr_max, got "
         f"{self.lr_min}, {self.lr_max}")
    need(self.meta_learning_rate > 0, "--meta_learning_rate must be > 0")
    need(self.estimator in estimators.NAMES,
         f"--estimator must be one of {estimators.NAMES}, got {self.estimator!r}")
    need(self.tbptt_tasks >= 1, f"--tbptt_tasks must be >= 1, got {self.tbptt_tasks}")
    need(self.tbptt_tasks == 1 or (self.estimator == "tbptt" and self.strategy == "default"),
         f"--tbptt_tasks {self.tbptt_tasks} needs --estimator tbptt and --strategy default "
         "(the strategies spread one problem over replicas or workers instead)")
    need(self.meta_optimizer in meta_optimizer.NAMES,
         f"--meta_optimizer must be one of {meta_optimizer.NAMES}, got {self.meta_optimizer!r}")
    need(0 <= self.adam_beta1 < 1 and 0 <= self.adam_beta2 < 1,
         "--adam_beta1 and --adam_beta2 must be in [0, 1)")
    if self.estimator == "pes":
      need(self.num_tasks >= 1, f"--num_tasks must be >= 1, got {self.num_tasks}")
      need(self.pes_particles >= 2 and self.pes_particles % 2 == 0,
           f"--pes_particles must be a positive even number (antithetic pairs), got "
           f"{self.pes_particles}")
      need(self.pes_sigma > 0, f"--pes_sigma must be > 0, got {self.pes_sigma}")
      need(1 <= self.truncation_min_steps <= self.truncation_max_steps,
           "need 1 <= --truncation_min_steps <= --truncation_max_steps, got "
           f"{self.truncation_min_steps}, {self.truncation_max_steps}")
      need(1 <= self.trajectory_min_steps <= self.trajectory_max_steps,
           "need 1 <= --trajectory_min_steps <= --trajectory_max_steps, got "
           f"{self.trajectory_min_steps}, {self.trajectory_max_steps}")
    need(0 <= self.rms_decay < 1, "--rms_decay must be in [0, 1)")
    need(self.rms_epsilon >= 0, "--rms_epsilon must be >= 0")
    need(self.gradient_clip > 0, "--gradient_clip must be > 0")
    need(self.meta_l2 >= 0, "--meta_l2 must be >= 0")
    if self.config in config_lib.PRESETS:
      try:
        meta_optimizer.parse_lr_scales(
            self.meta_lr_scales, hrnn.meta_param_shapes(config_lib.PRESETS[self.config]()))
      except ValueError as e:
        errors.append(str(e))
    need(self.strategy in strategy_lib.NAMES,
         f"--strategy must be one of {strategy_lib.NAMES}, got {self.strategy!r}")
    need(self.unroll_mode in unroll_lib.Unroller.MODES,
         f"--unroll_mode must be one of {unroll_lib.Unroller.MODES}, got {self.unroll_mode!r}")
    need(self.meta_loss in unroll_lib.META_LOSSES,
         f"--meta_loss must be one of {unroll_lib.META_LOSSES}, got {self.meta_loss!r}")
    need(self.compile_by in unroll_lib.COMPILE_BY,
         f"--compile_by must be one of {unroll_lib.COMPILE_BY}, got {self.compile_by!r}")
    need(self.checkpoint_every_secs >= 0 and self.checkpoint_every_steps >= 0,
         "checkpoint intervals must be >= 0")
    need(self.keep_checkpoints >= 1, "--keep_checkpoints must be >= 1")
    need(self.validate_every >= 0, f"--validate_every must be >= 0, got {self.validate_every}")
    need(self.validation_steps >= 1,
         f"--validation_steps must be >= 1, got {self.validation_steps}")
    need(self.guard_steps in (-1, 0) or self.guard_steps >= 10,
         f"--guard_steps must be -1 (10 x --validation_steps), 0 (off) or >= 10, "
         f"got {self.guard_steps}")
    if not errors and self.init_weights and not resuming:
      try:
        weights_lib.load_for(self.init_weights, config_lib.get(self.config))
      except (OSError, ValueError) as e:
        errors.append(f"--init_weights: {e}")
    if not errors and self.validate_every:
      from meta import validation
      try:
        validation.select(self.validation_tasks)
      except ValueError as e:
        errors.append(str(e))
    if not errors:
      try:
        resolve_problems(self.problems)
      except ValueError as e:
        errors.append(str(e))
    if errors:
      raise ValueError("bad options: " + "; ".join(errors))


def resolve_problems(spec: str) -> list:
  """The pool of --problems `spec`; see `resolve_problem_set`."""
  return resolve_problem_set(spec)[0]


def resolve_problem_set(spec: str) -> tuple[list, np.ndarray | None]:
  """(pool, sampling probabilities or None for uniform) of a --problems spec.

  "paper" (alias "default": the 109 problems of seed paper 1), "nets" (problems/net_tasks.py
  under task augmentation), "netfam" (problems/net_families.py under task augmentation),
  "mix" / "mix:R" (paper and nets; a fraction R of the draws, default 0.5, are nets, each set
  uniform inside), "mixfam" / "mixfam:R" (the same with netfam for nets), "all" (paper +
  off-by-default problems), or a comma-separated list of problem names and family names.
  """
  if spec in ("default", "paper"):
    return problems_lib.default_problems(), None
  if spec == "all":
    return problems_lib.all_problems(), None
  if spec == "nets":
    return problems_lib.nets_problems(), None
  if spec == "netfam":
    return problems_lib.netfam_problems(), None
  for name, networks in (("mix", problems_lib.nets_problems),
                         ("mixfam", problems_lib.netfam_problems)):
    if spec != name and not spec.startswith(name + ":"):
      continue
    try:
      ratio = float(spec[len(name) + 1:]) if spec != name else 0.5
    except ValueError:
      ratio = math.nan
    if not 0.0 < ratio < 1.0:
      raise ValueError(f"--problems {spec!r}: the networks fraction R of {name}:R must be a "
                       "number strictly between 0 and 1 (use 'paper', 'nets' or 'netfam' for "
                       "0 or 1)")
    paper, nets = problems_lib.default_problems(), networks()
    weights = np.array([(1.0 - ratio) / len(paper)] * len(paper) + [ratio / len(nets)] * len(nets))
    return paper + nets, weights / weights.sum()
  chosen = []
  for item in [s.strip() for s in spec.split(",") if s.strip()]:
    if item in problems_lib.FAMILIES:
      chosen += [p for p in problems_lib.default_problems() if p.family == item]
    else:
      try:
        chosen.append(problems_lib.get(item))
      except KeyError as e:
        raise ValueError(f"--problems: {e.args[0]}") from None
  if not chosen:
    raise ValueError(f"--problems {spec!r} selects no problem")
  return list(dict.fromkeys(chosen)), None


# Flags that a resumed run cannot honour (its state comes from the checkpoint), and why.
RESUME_NO_EFFECT = {
    "seed": "the sampling RNG state is restored from the checkpoint",
    "init_seed": "the meta-parameters are restored from the checkpoint",
    "init_weights": "the meta-parameters are restored from the checkpoint",
}

def repo_relative(path) -> str:
  """`path` relative to the repository when inside it (provenance must not name this machine's
  directories), else as given."""
  root = Path(__file__).resolve().parent.parent
  try:
    return str(Path(path).expanduser().resolve().relative_to(root))
  except ValueError:
    return str(path)


_START_UP_CLAIMED = False   # whether a Trainer of this process already counts its start-up CPU
# Set by train_meta.py before it re-executes itself: the process CPU time already recorded by
# the previous image (the kernel keeps counting across exec).
CPU_BEFORE_EXEC_ENV = "LEARNED_OPT_CPU_BEFORE_EXEC"


def _cpu_before_exec() -> float:
  try:
    return max(0.0, float(os.environ.pop(CPU_BEFORE_EXEC_ENV, "0")))
  except ValueError:
    return 0.0


MAPS_PER_PROBLEM = 900   # measured: ~800 memory maps per XLA-compiled problem (unroll + loss)


def memory_map_count() -> int | None:
  """Memory maps this process holds (Linux), or None where /proc is not available."""
  try:
    with open("/proc/self/maps", "rb") as f:
      return sum(1 for _ in f)
  except OSError:
    return None


def process_memory_bytes(field: str = "VmRSS") -> int | None:
  """A memory figure of this process from Linux's /proc/self/status ("VmRSS": resident now,
  "VmHWM": peak resident), or None where it is not available."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith(field + ":"):
          return int(line.split()[1]) * 1024
  except (OSError, ValueError, IndexError):
    pass
  return None


def heap_bytes() -> tuple[int, int] | None:
  """(in use, free) bytes of glibc's heap (mallinfo2: small and large blocks), or None where
  that is not available. Unlike the resident set, "in use" does not hide growth in freed heap
  that is reused."""
  import ctypes   # pylint: disable=import-outside-toplevel

  class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
  try:
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallInfo2
    info = libc.mallinfo2()
  except (OSError, AttributeError):
    return None
  return int(info.uordblks + info.hblkhd), int(info.fordblks)


def release_free_memory() -> bool:
  """Returns memory the C heap has freed to the operating system (glibc's malloc_trim); False
  where that is not available. An XLA compile frees about as much as its executable keeps
  (measured: a 16-branch group's compile left ~1 GB freed but resident, which malloc_trim
  returned), so the trainer calls this after every meta-step that compiled a function."""
  try:
    import ctypes   # pylint: disable=import-outside-toplevel
    ctypes.CDLL("libc.so.6").malloc_trim(0)
  except (OSError, AttributeError):
    return False
  return True


def physical_memory_bytes() -> int | None:
  try:
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
  except (OSError, ValueError, AttributeError):
    return None


def memory_map_limit() -> int | None:
  """The kernel's per-process cap on memory maps (vm.max_map_count), or None if unknown."""
  try:
    return int(Path("/proc/sys/vm/max_map_count").read_text())
  except (OSError, ValueError):
    return None


def git_commit() -> str | None:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
                          capture_output=True, text=True, timeout=10, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    return None


# --------------------------------------------------------------------------------------------
# Sampling plan (all randomness of the loop comes from one numpy Generator).
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Trajectory:
  """One trajectory on one problem, for R replicas (JSON-able except `carries`)."""
  problem: str
  data_seeds: list            # per replica: instance (data) seed, fixed for the problem.
  trajectory_index: int       # 0 .. trajectories_per_problem - 1 on this problem.
  init_seeds: list            # per replica: parameter initialisation seed.
  num_unrolls: int
  unroll_index: int = 0
  carries: dict = dataclasses.field(default_factory=dict)  # replica id -> Carry

  def header(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("carries")
    return d


def _int_seed(rng) -> int:
  return int(rng.integers(2**31 - 1))


class Sampler:
  """Draws problems, trajectory lengths and seeds; its state goes into checkpoints."""

  def __init__(self, options: Options, pool: list, num_replicas: int, weights=None):
    self.options = options
    self.pool = pool
    self.weights = weights   # sampling probabilities per pool entry, None: uniform
    self.num_replicas = num_replicas
    self.rng = np.random.default_rng(options.seed)

  def num_unrolls(self) -> int:
    o = self.options
    return o.min_num_unrolls + int(round(self.rng.exponential(o.num_unrolls_scale))) \
        if o.num_unrolls_scale > 0 else o.min_num_unrolls

  def unroll_steps(self) -> int:
    o = self.options
    extra = int(round(self.rng.exponential(o.unroll_steps_scale))) if o.unroll_steps_scale else 0
    return min(o.min_unroll_steps + extra, o.max_unroll_steps)

  def step_seeds(self) -> list:
    return [[int(s) for s in self.rng.integers(-2**31, 2**31 - 1, size=2)]
            for _ in range(self.num_replicas)]

  def draw_problem(self, rng: np.random.Generator | None = None) -> str:
    """The name of a problem drawn from the pool at the run's mix ratio (`weights`).

    Every estimator draws its problems here (with its own rng where it keeps one), so that a
    mixed set's ratio holds for all of them: two draw sites, one of which ignored the weights,
    once gave PES and the TBPTT population a uniform draw.
    """
    return problems_lib.sample(self.rng if rng is None else rng, self.pool, self.weights).name

  def with_replicas(self, num_replicas: int) -> "Sampler":
    """A sampler of the same pool, weights and random stream for `num_replicas` replicas."""
    other = Sampler(self.options, self.pool, num_replicas, self.weights)
    other.rng = self.rng   # share the stream (and its checkpointed state)
    return other

  def next_trajectory(self, previous: Trajectory | None) -> Trajectory:
    o = self.options
    if previous is not None and previous.trajectory_index + 1 < o.trajectories_per_problem:
      problem, data_seeds = previous.problem, previous.data_seeds
      index = previous.trajectory_index + 1
    else:
      problem = self.draw_problem()
      data_seeds = [_int_seed(self.rng) for _ in range(self.num_replicas)]
      index = 0
    init_seeds = [_int_seed(self.rng) for _ in range(self.num_replicas)]
    return Trajectory(problem, data_seeds, index, init_seeds, self.num_unrolls())

  def state_json(self) -> str:
    return json.dumps(self.rng.bit_generator.state)

  def restore(self, text: str) -> None:
    self.rng.bit_generator.state = json.loads(text)


# --------------------------------------------------------------------------------------------
# The trainer.
# --------------------------------------------------------------------------------------------

class Trainer:
  """Builds everything from `Options`, restores the latest checkpoint, runs, exports.

  Args:
    cluster_resolver: for parameter_server / multi_worker when not using TF_CONFIG (tests).
    strategy: an already built strategy (overrides options.strategy's construction).
    problem_pool: Problem objects to sample from instead of options.problems.
  """

  def __init__(self, options: Options, cluster_resolver=None, strategy=None,
               problem_pool: list | None = None, read_only: bool = False):
    # read_only: only restore and export (train_meta.py --export_only). Nothing in train_dir
    # is written, so it is safe while another process is meta-training in that directory.
    options.validate(resuming=bool(options.train_dir) and checkpoints.has_checkpoint(
        Path(options.train_dir).expanduser()))
    self.options = options
    self.read_only = read_only
    self.config = config_lib.get(options.config)
    # problem_pool: explicit Problem objects instead of --problems (tests, custom ensembles).
    if problem_pool:
      self.pool, self.weights = list(problem_pool), None
    else:
      self.pool, self.weights = resolve_problem_set(options.problems)
    self.problems_by_name = {p.name: p for p in self.pool}
    if strategy is None and options.strategy != "default":
      if cluster_resolver is None:
        strategy_lib.check_cluster(options.strategy)
      strategy = strategy_lib.get_strategy(options.strategy, cluster_resolver)
    self.strategy = strategy
    self.is_ps = isinstance(strategy, tf.distribute.experimental.ParameterServerStrategy)
    self.chief = strategy_lib.is_chief(strategy)
    self.train_dir = Path(options.train_dir).expanduser()

    # Up-front checks: nothing below runs if these fail.
    if self.chief:
      if not read_only:
        checkpoints.check_writable(self.train_dir, "--train_dir")
      if options.export:
        export = Path(options.export).expanduser()
        if export.is_dir():
          raise ValueError(f"--export {export} is a directory; give the weights file's path, "
                           f"e.g. --export {export / 'weights.npz'}")
        checkpoints.check_writable(export.parent or ".", "directory of --export")
    self.recorded = checkpoints.check_run_config(self.train_dir, self.config)

    if self.is_ps:
      resolver = (cluster_resolver or strategy.cluster_resolver
                  or tf.distribute.cluster_resolver.TFConfigClusterResolver())
      self.num_replicas = len(resolver.cluster_spec().as_dict()["worker"])
    else:
      self.num_replicas = strategy.num_replicas_in_sync if strategy is not None else 1
    self.sampler = Sampler(options, self.pool, self.num_replicas, self.weights)
    self.unroller = unroll_lib.Unroller(
        self.config, max_steps=options.max_unroll_steps,
        second_derivatives=options.second_derivatives, mode=options.unroll_mode,
        compile_by=options.compile_by, problems=self.pool, meta_loss=options.meta_loss)

    scope = strategy.scope() if strategy is not None else _null_scope()
    with scope:
      self.meta = hrnn.MetaParams(self.config, seed=options.init_seed)
      self.optimizer = meta_optimizer.build(
          options.meta_optimizer, self.meta.variables_by_name, options.meta_learning_rate,
          decay=options.rms_decay, epsilon=options.rms_epsilon, clip=options.gradient_clip,
          l2=options.meta_l2, beta1=options.adam_beta1, beta2=options.adam_beta2,
          lr_scales=options.meta_lr_scales)
    self.train_state = checkpoints.TrainState()
    self.checkpoint = tf.train.Checkpoint(meta=self.meta, meta_optimizer=self.optimizer,
                                          train_state=self.train_state)
    checkpoint_dir = self.train_dir / "checkpoints"
    if not self.chief:  # MultiWorkerMirrored: every worker saves, only the chief's is kept.
      checkpoint_dir = self.train_dir / "worker_tmp" / f"task_{_task_id(strategy)}"
    self.manager = tf.train.CheckpointManager(self.checkpoint, str(checkpoint_dir),
                                              max_to_keep=options.keep_checkpoints)
    self._local_ids = self._local_replica_ids()
    self._apply = tf.function(lambda grads: self.optimizer.apply(
        grads, self.meta.variables_by_name))
    self._data_cache: dict[tuple, dict] = {}
    # The meta-gradient estimator (meta/estimators/): holds the in-flight trajectories.
    self.estimator = estimators.build(options.estimator, self)
    self.needs_fresh_process = False
    self.init_record = None   # set by a warm start (--init_weights)
    # The commit of the code this process runs (read now: HEAD may move while it trains).
    self.code_commit = git_commit()
    # Set (e.g. by a SIGTERM handler) to end run() after the current meta-step, checkpointed.
    self.stop_requested = False
    global _START_UP_CLAIMED
    # The first trainer of a process counts from its start (imports, setup); a later one from
    # its own construction.
    self._cpu_mark = time.process_time() if _START_UP_CLAIMED else _cpu_before_exec()
    _START_UP_CLAIMED = True
    limit = memory_map_limit()
    kernel_budget = int(0.9 * limit) if limit else 0
    self.map_budget = options.max_memory_maps or kernel_budget
    physical = physical_memory_bytes()
    self.memory_budget = (int(options.max_memory_gb * 2**30) if options.max_memory_gb
                          else (physical // 2 if physical else 0))
    self.can_hand_over = self.strategy is None or isinstance(
        self.strategy, tf.distribute.MirroredStrategy)
    if (self.chief and not read_only and kernel_budget and options.max_steps
        and self._functions_to_compile() * MAPS_PER_PROBLEM > kernel_budget):
      log.warning(
          "vm.max_map_count is %d; compiling all %d unroll functions needs about %d memory maps, and "
          "XLA never frees them. %s Raise the limit to avoid this: "
          "sudo sysctl -w vm.max_map_count=%d", limit, self._functions_to_compile(),
          self._functions_to_compile() * MAPS_PER_PROBLEM,
          "train_meta.py will checkpoint and continue in a fresh process (recompiling) when "
          "the budget is reached." if self.can_hand_over else
          "This strategy cannot continue in a fresh process by itself: the run will fail "
          "when the limit is reached (resume it by re-running the command).",
          max(262144, 2 * self._functions_to_compile() * MAPS_PER_PROBLEM))
    self._restore()

  # --- bookkeeping ----------------------------------------------------------------------

  def _functions_to_compile(self) -> int:
    """Compiled unrolls the whole pool needs: one per problem, or one per size group."""
    if self.options.compile_by == "bucket":
      return self.unroller.num_groups()
    return len(self.pool)

  def _local_replica_ids(self) -> list[int]:
    if self.strategy is None or self.is_ps:
      return list(range(self.num_replicas)) if self.is_ps else [0]
    ids = self.strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(ctx.replica_id_in_sync_group))
    return [int(t) for t in self.strategy.experimental_local_results(ids)]

  def _restore(self) -> None:
    checkpoint_dir = Path(self.manager.directory)
    if not self.chief:  # non-chief workers of a multi-worker run restore the chief's.
      checkpoint_dir = self.train_dir / "checkpoints"
    if self.chief and not self.read_only:
      for stale in checkpoints.stale_temp_dirs(checkpoint_dir):
        log.warning("removing %s: the shards of a checkpoint save that was interrupted", stale)
        shutil.rmtree(stale, ignore_errors=True)
    restored = self._restore_latest_readable(checkpoint_dir)
    if restored is None and self.options.init_weights:
      self._warm_start()
    if self.chief and not self.read_only:
      checkpoints.trim_history(self.train_dir, int(self.train_state.step.numpy()))
      self._record_run_config(restored)

  def _warm_start(self) -> None:
    """Sets the meta-parameters of a fresh run from --init_weights (checked in validate();
    the loader refuses a file whose meta-parameters do not match the config)."""
    try:
      loaded = weights_lib.load_for(self.options.init_weights, self.config)
    except (OSError, ValueError) as e:   # validate() skipped it: the checkpoints are unreadable
      raise ValueError(f"--init_weights: {e}") from e
    for name, variable in self.meta.variables_by_name.items():
      variable.assign(loaded.meta[name])
    parent = loaded.provenance or {}
    # Kept in run_config.json: a shipped name may later name another file.
    self.init_record = {"weights": repo_relative(loaded.path), **{
        k: parent[k] for k in ("meta_steps", "cpu_hours", "cpu_hours_total", "train_dir",
                               "git_commit", "init_weights", "switched_on") if k in parent}}
    log.info("warm start: meta-parameters from %s (%s meta-steps)", loaded.path,
             parent.get("meta_steps"))

  def _restore_latest_readable(self, checkpoint_dir: Path) -> str | None:
    """Restores the newest checkpoint that reads; an unreadable one falls back to the previous.

    Like tf.train.CheckpointManager users expect from a kept history of checkpoints: a
    truncated or corrupt latest checkpoint (a full disk, a copy cut short) costs the steps
    since the previous one, not the run. Each fallback is logged with the file and the error.
    """
    state = tf.train.get_checkpoint_state(str(checkpoint_dir))
    candidates = list(state.all_model_checkpoint_paths) if state is not None else []
    if state is not None and state.model_checkpoint_path not in candidates:
      candidates.append(state.model_checkpoint_path)
    failures = []
    for path in reversed(candidates):
      try:
        checkpoint = self.checkpoint
        if not checkpoints.has_cpu_time(path):   # written before cpu_time was recorded
          checkpoint = tf.train.Checkpoint(meta=self.meta, meta_optimizer=self.optimizer,
                                           train_state=checkpoints.legacy_view(self.train_state))
        checkpoint.restore(path).assert_existing_objects_matched()
        self.sampler.restore(self.train_state.sampler.numpy().decode())
        self.estimator.unpack(self.train_state.trajectories.numpy())
      except Exception as e:  # noqa: BLE001 - corrupt files raise many types (IndexError, ...)
        failures.append(f"{path} ({type(e).__name__}: {str(e).splitlines()[0][:200]})")
        log.warning("checkpoint %s is unreadable: %s", path, failures[-1])
        continue
      if failures:
        log.warning("resuming from %s, the latest readable checkpoint; unreadable and skipped: "
                    "%s", path, "; ".join(failures))
      log.info("restored %s at meta-step %d", path, int(self.train_state.step.numpy()))
      return path
    if failures:
      raise ValueError(f"no readable checkpoint in {checkpoint_dir}: {'; '.join(failures)}. "
                       "Move them away to start afresh, or use a fresh --train_dir")
    return None

  def _record_run_config(self, restored: str | None) -> None:
    """Writes run_config.json for a fresh run; a resume appends to resumes.jsonl instead.

    The original record is never rewritten. Flags that differ from it are recorded, and those
    that cannot act on a resumed run (RESUME_NO_EFFECT) are warned about.
    """
    options = dataclasses.asdict(self.options)
    if restored is None or self.recorded is None:
      record = {"config": self.config.to_dict(), "config_preset": self.options.config,
                "options": options}
      if self.init_record is not None:
        record["init"] = self.init_record
      checkpoints.write_json_atomic(self.train_dir / checkpoints.RUN_CONFIG, record)
      return
    recorded = self.recorded.get("options", {})
    changed = {k: [recorded[k], v] for k, v in options.items()
               if k in recorded and recorded[k] != v}
    no_effect = sorted(k for k in changed if k in RESUME_NO_EFFECT)
    for k in no_effect:
      log.warning("--%s %r differs from the run's recorded %r and has no effect on a resumed "
                  "run: %s (%s keeps the original flags)", k, changed[k][1], changed[k][0],
                  RESUME_NO_EFFECT[k], checkpoints.RUN_CONFIG)
    others = {k: v for k, v in changed.items() if k not in no_effect}
    if others:
      log.info("resuming with changed flags: %s", ", ".join(
          f"--{k} {new!r} (was {old!r})" for k, (old, new) in others.items()))
    checkpoints.append_json_line(self.train_dir / checkpoints.RESUMES, {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "step": self.step,
        "checkpoint": restored, "options": options, "changed": changed,
        "no_effect": no_effect})

  def save(self) -> None:
    with profile.LEDGER.time("checkpoint"):
      self.train_state.sampler.assign(self.sampler.state_json())
      self.train_state.trajectories.assign(self.estimator.pack())
      self.manager.save(checkpoint_number=int(self.train_state.step.numpy()))

  @property
  def step(self) -> int:
    return int(self.train_state.step.numpy())

  @property
  def trajectory(self):
    """TBPTT's in-flight trajectory (synchronous strategies)."""
    return self.estimator.trajectory

  def train_step(self) -> dict:
    """One synchronous meta-step of the estimator. Returns its diagnostics."""
    (info,) = self.estimator.step()
    return info

  # --- one synchronous meta-step --------------------------------------------------------

  def _data(self, problem, seed):
    """An instance's data as tensors, cached while the trainer stays on that instance."""
    key = (problem.name, int(seed))
    if key not in self._data_cache:
      if len(self._data_cache) > 4 * self.num_replicas:
        self._data_cache.clear()
      self._data_cache[key] = unroll_lib.data_tensors(problem.sample_data(int(seed)))
    return self._data_cache[key]

  def _info(self, problem, trajectory, outs, num_steps, elapsed, skipped) -> dict:
    values = list(outs.values())
    def mean(f):
      xs = [float(f(o)) for o in values]
      return float(np.mean(xs))
    steps = sum(int(o.steps) for o in values)
    relative = [float(o.final_loss) / (float(o.carry.initial_loss) + 1e-6) for o in values]
    return {
        "step": self.step + 1, "problem": problem.name, "family": problem.family,
        "replicas": len(values), "unroll": trajectory.unroll_index,
        "num_unrolls": trajectory.num_unrolls, "steps": num_steps,
        "meta_loss": mean(lambda o: o.meta_loss),
        "final_relative_loss": float(np.mean(relative)),
        "log_lr_mean": mean(lambda o: o.log_lr_mean),
        "log_lr_std": mean(lambda o: o.log_lr_std),
        "log_lr_min": min(float(o.log_lr_min) for o in values),
        "log_lr_max": max(float(o.log_lr_max) for o in values),
        "skipped": int(skipped),
        "inner_steps_per_sec": steps / max(elapsed, 1e-9),
    }

  # --- the loop --------------------------------------------------------------------------

  def run(self, stop_after: int | None = None, stop_after_secs: float | None = None) -> dict:
    """Meta-trains until max_steps (or `stop_after` steps / `stop_after_secs` seconds of this
    call); exports if asked."""
    o = self.options
    writer = tf.summary.create_file_writer(str(self.train_dir / "summaries")) \
        if self.chief else tf.summary.create_noop_writer()
    history = checkpoints.History(self.train_dir) if self.chief else None
    coordinator = (tf.distribute.experimental.coordinator.ClusterCoordinator(self.strategy)
                   if self.is_ps else None)
    last_save_time, last_save_step = time.time(), self.step
    wall_start, wall_base = time.time(), float(self.train_state.wall_time.numpy())
    # From the previous run() call, or from the process start (imports, tracing, compiles).
    cpu_start, cpu_base = self._cpu_mark, float(self.train_state.cpu_time.numpy())
    done_here, last_info = 0, {}
    if self.step < o.max_steps and self.chief:
      log.info("meta-training from step %d to %d on %d problem(s), %d replica(s), "
               "strategy %s", self.step, o.max_steps, len(self.pool), self.num_replicas,
               o.strategy)
    try:
      while (self.step < o.max_steps and not self.stop_requested and not self._cpu_spent()
             and (stop_after is None or done_here < stop_after)
             and (stop_after_secs is None or time.time() - wall_start < stop_after_secs)):
        compiled = self.estimator.num_compiled()
        infos = self.estimator.step(coordinator)
        done_here += len(infos)
        self.train_state.wall_time.assign(_array(wall_base + time.time() - wall_start))
        self.train_state.cpu_time.assign(_array(cpu_base + time.process_time() - cpu_start))
        for info in infos:
          info["wall_time"] = float(self.train_state.wall_time.numpy())
          info["cpu_time"] = float(self.train_state.cpu_time.numpy())
          last_info = info
          if self.chief:
            self._maybe_validate(info, writer)
            history.write(info)
            if info["step"] % o.summary_every_steps == 0:
              self._summaries(writer, info)
            if info["step"] % max(1, o.log_every_steps) == 0:
              log.info(_progress_line(info, self.estimator.num_compiled()))
        if self._should_save(last_save_time, last_save_step):
          self.save()
          last_save_time, last_save_step = time.time(), self.step
        newly_compiled = self.estimator.num_compiled() != compiled
        if newly_compiled:
          release_free_memory()
        over = (self._over_budget() if newly_compiled
                and self.can_hand_over and self.step < o.max_steps else None)
        if over:
          log.info("this process holds %s, %d functions compiled: checkpointing at meta-step "
                   "%d to continue in a fresh process", over, self.estimator.num_compiled(),
                   self.step)
          self.needs_fresh_process = True
          break
    finally:
      if history is not None:
        history.close()
      writer.flush()
    self._cpu_mark = time.process_time()
    if self.step != last_save_step or self.manager.latest_checkpoint is None:
      self.save()
    if o.export and self.chief and not self.needs_fresh_process:
      self.export(o.export)
    return last_info

  def _cpu_spent(self) -> bool:
    """Whether the run's recorded CPU time has reached --max_cpu_hours."""
    limit = self.options.max_cpu_hours
    spent = limit > 0 and float(self.train_state.cpu_time.numpy()) >= limit * 3600.0
    if spent and self.chief:
      log.info("the run's CPU time reached --max_cpu_hours %g: stopping at meta-step %d",
               limit, self.step)
    return spent

  def _over_budget(self) -> str | None:
    """What this process holds beyond --max_memory_maps or --max_memory_gb, if anything."""
    maps = memory_map_count() if self.map_budget else None
    if maps is not None and maps >= self.map_budget:
      return f"{maps} memory maps (budget {self.map_budget})"
    resident = process_memory_bytes() if self.memory_budget else None
    if resident is not None and resident >= self.memory_budget:
      return (f"{resident / 2**30:.1f} GB resident (budget "
              f"{self.memory_budget / 2**30:.1f} GB)")
    return None

  def _should_save(self, last_time, last_step) -> bool:
    o = self.options
    want = ((o.checkpoint_every_steps and self.step - last_step >= o.checkpoint_every_steps)
            or (o.checkpoint_every_secs and time.time() - last_time >= o.checkpoint_every_secs))
    if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
      # Every worker must take part in a save: agree on the decision (any worker's clock).
      flag = self.strategy.run(lambda: tf.constant(float(bool(want))))
      want = float(self.strategy.reduce(tf.distribute.ReduceOp.SUM, flag, axis=None)) > 0
    return bool(want)

  def _summaries(self, writer, info) -> None:
    with writer.as_default(step=info["step"]):
      _scalar("meta_loss", info["meta_loss"])
      _scalar(f"meta_loss_by_family/{info['family']}", info["meta_loss"])
      _scalar("final_relative_loss", info["final_relative_loss"])
      for k in ("log_lr_mean", "log_lr_std", "log_lr_min", "log_lr_max"):
        _scalar(f"step_length/{k}", info[k])
      _scalar("throughput/inner_steps_per_sec", info["inner_steps_per_sec"])
      _scalar("skipped_meta_steps", info["skipped"])

  def _maybe_validate(self, info, writer) -> None:
    """Every --validate_every meta-steps: the validation score into `info` (history.csv) and
    TensorBoard, and exports/best.npz (+ best.json) when the score is the run's best."""
    every = self.options.validate_every
    if not every or info["step"] % every:
      return
    from meta import validation   # imported only by runs that validate
    if getattr(self, "_validator", None) is None:
      self._validator = validation.Validator(
          self.config, self.train_dir, self.options.validation_steps,
          validation.select(self.options.validation_tasks))
    meta = {k: v.numpy() for k, v in self.meta.variables_by_name.items()}
    result = self._validator(meta)
    info["validation_score"] = result["score"]
    with writer.as_default(step=info["step"]):
      _scalar("validation/score", result["score"])
      for name, task in result["tasks"].items():
        _scalar(f"validation/log_ratio/{name}", task["log_ratio"])
    guard_steps = self.options.effective_guard_steps()
    archived = validation.archive_incomparable(self.train_dir, result["tasks"],
                                               self.options.validation_steps, guard_steps)
    if archived is not None:
      log.warning("exports/best.npz was scored on another validation suite or guard; kept as %s",
                  archived.with_suffix(".npz"))
    record = validation.best_record(self.train_dir)
    better = validation.is_better(result["score"], record)
    log.info("validation at meta-step %d: score %+.4f (best %s)%s", info["step"],
             result["score"], "none" if record is None else f"{record['score']:+.4f}",
             "  (new best: guard next)" if better and guard_steps
             else "  -> exports/best.npz" if better else "")
    guard = None
    if better and guard_steps:
      if getattr(self, "_guard", None) is None:
        self._guard = validation.LongHorizonGuard(self.config, guard_steps)
      guard = self._guard(meta)
      validation.append_guard_log(self.train_dir, info["step"], result["score"], guard)
      if guard["passed"]:
        log.info("long-horizon guard (%d steps) passed -> exports/best.npz", guard_steps)
      else:
        log.warning("meta-step %d scores %+.4f but fails the long-horizon guard (%d steps): "
                    "%s; not exported", info["step"], result["score"], guard_steps,
                    validation.guard_summary(guard))
        better = False
    if better:
      summary = {"score": result["score"], "meta_step": info["step"],
                 "rule": "mean ln(final loss / Adam(2e-3)) over meta/validation.py's suite",
                 "validation_steps": self.options.validation_steps, "tasks": result["tasks"]}
      if guard is not None:
        summary["guard"] = guard
      exports = self.train_dir / validation.BEST_DIR
      self.export(exports / validation.BEST_FILE, extra_provenance={"validation": summary})
      checkpoints.write_json_atomic(exports / validation.BEST_RECORD, summary)

  def export(self, path, extra_provenance: dict | None = None) -> Path:
    """Writes the current meta-parameters as a weights file (learned_opt.weights format)."""
    options = dataclasses.asdict(self.options)
    if self.read_only and self.recorded:
      options = self.recorded.get("options", options)   # the run's flags, not the exporter's
    options = {**options, **{k: repo_relative(options[k])
                             for k in ("train_dir", "export", "init_weights") if options.get(k)}}
    init = {}
    record = self.init_record or (self.recorded or {}).get("init")
    if record:
      parent_hours = record.get("cpu_hours_total", record.get("cpu_hours")) or 0.0
      init = {"init_weights": record, "cpu_hours_total": round(
          float(self.train_state.cpu_time.numpy()) / 3600.0 + parent_hours, 4)}
    provenance = {
        "trainer": "train_meta.py", "options": options,
        "config_preset": self.options.config, "meta_steps": self.step,
        "wall_time_secs": float(self.train_state.wall_time.numpy()),
        "cpu_hours": round(float(self.train_state.cpu_time.numpy()) / 3600.0, 4),
        "git_commit": self.code_commit, "train_dir": repo_relative(self.train_dir),
        "exported_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        **init, **(extra_provenance or {}),
    }
    values = {k: np.asarray(v.numpy()) for k, v in self.meta.variables_by_name.items()}
    out = weights_lib.save(Path(path).expanduser(), values, self.config, provenance)
    log.info("exported meta-parameters at meta-step %d to %s", self.step, out)
    return out


_SCALAR_METADATA = summary_pb2.SummaryMetadata(
    plugin_data=summary_pb2.SummaryMetadata.PluginData(plugin_name="scalars")
).SerializeToString()


def _scalar(tag: str, value: float) -> None:
  """A TensorBoard scalar without importing tensorboard (tf.summary.scalar needs it)."""
  tf.summary.write(tag, _array(value, np.float32), metadata=_SCALAR_METADATA)


def _array(value, dtype=np.float64) -> np.ndarray:
  """A 0-d array of a Python number, to hand to TF instead of the number itself.

  TF's eager runtime caches the tensor it makes from a Python int or float, keyed by the value,
  for the life of the process (pywrap's TFE_TensorHandleCache), and never evicts: ~0.7 KB per
  distinct value (measured: 100,000 assigns of distinct floats to a variable, +70 MB; of 0-d
  arrays, +0.1 MB). Fed the wall and CPU time at every meta-step and the TensorBoard scalars,
  that cache was the trainer's slow growth over an hour (~2 KB per meta-step; twelfth
  session, found with heaptrack)."""
  return np.asarray(value, dtype)


def _progress_line(info, compiled) -> str:
  return (f"step {info['step']:>6}  {info['problem'][:34]:<34} unroll {info['unroll']:>3}/"
          f"{info['num_unrolls']:<3} n={info['steps']:<4} meta_loss {info['meta_loss']:+.4f}  "
          f"f/f0 {info['final_relative_loss']:.3g}  log_lr {info['log_lr_mean']:+.2f}"
          f"±{info['log_lr_std']:.2f}  {info['inner_steps_per_sec']:,.0f} steps/s"
          f"{'  SKIPPED' if info['skipped'] else ''}  [{compiled} compiled]")


def _task_id(strategy) -> int:
  try:
    return int(strategy.cluster_resolver.task_id or 0)
  except AttributeError:
    return 0


class _null_scope:
  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False


def evaluate(meta_values, problem_list, seeds, num_steps: int, config,
             lr_range=(1e-6, 1e-2), unroller: unroll_lib.Unroller | None = None) -> float:
  """Mean meta-objective (eq. 14) of one fresh num_steps unroll per (problem, seed).

  Fixed instances, initial log step lengths and minibatch seeds: comparable across
  meta-parameters (the test of "meta-training lowers the meta-loss").
  """
  unroller = unroller or unroll_lib.Unroller(config, max_steps=num_steps)
  losses = []
  for problem in problem_list:
    for seed in seeds:
      data = unroll_lib.data_tensors(problem.sample_data(int(seed)))
      carry = unroll_lib.start_carry(problem, meta_values, config, data, seed, [seed, 11],
                                     lr_range=lr_range)
      out = unroller(problem, meta_values, carry, data, num_steps, [seed, 13],
                     compute_gradients=False)
      losses.append(float(out.meta_loss))
  return float(np.mean(losses))
