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

--breakdown: where a meta-training run's wall time goes, from a cold process. Runs
train_meta's Trainer for --seconds in a fresh child process per --compile_by variant (so every
variant pays its own compiles) and prints the ledger of meta/profile.py (Python tracing,
compile, unroll execution, meta-update, checkpointing, evaluation, data), meta-steps/s, inner
steps backpropagated per CPU-second, first-meta-step latency and peak / final RSS; then splits
one compile into TF->HLO lowering, HLO optimisation and code generation for --split_problems.
Writes benchmarks/results/meta_speed/breakdown_<tag>.{json,md}.

  python -m benchmarks.meta_speed --breakdown --seconds 600 --tag before
  python -m benchmarks.meta_speed --breakdown --seconds 1200 --split_problems "" \
      --revisions df25de6,HEAD --side_by_side --tag ab     # two commits, one core each
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
  flags.DEFINE_bool("breakdown", False, "Wall-time breakdown of a cold meta-training run.")
  flags.DEFINE_float("seconds", 600.0, "--breakdown: meta-training seconds per variant.")
  flags.DEFINE_string("compile_by", "", "--breakdown: comma-separated compile_by variants "
                      "(empty: the trainer's default); '<variant>+cache' turns on XLA's "
                      "persistent compilation cache (first such run cold, later ones warm).")
  flags.DEFINE_string("train_problems", "default", "--breakdown: the --problems of the run.")
  flags.DEFINE_string("split_problems", "bowl_k1,quadratic_d784,sum_quadratics7",
                      "--breakdown: problems whose first compile is split into stages.")
  flags.DEFINE_string("tag", "", "--breakdown: name of the results files.")
  flags.DEFINE_string("revisions", "", "--breakdown: comma-separated git revisions to compare "
                      "(each runs from a temporary checkout of that commit; empty: this tree).")
  flags.DEFINE_bool("side_by_side", False, "--breakdown: run the variants at the same time, "
                    "each pinned to its own core (compare timings only within one machine).")
  flags.DEFINE_enum("meta_loss", "full", ["full", "batch"], "--breakdown: the trainer's "
                    "--meta_loss (network tasks: batch, their recipe).")
  flags.DEFINE_float("sample_memory_every_secs", 30.0, "--breakdown: how often each variant "
                     "samples its resident set and C heap (the table shows every 5 minutes).")
  flags.DEFINE_string("child", "", "Internal: run one breakdown variant and print JSON.")
  flags.DEFINE_string("estimator_problems", "quadratic_d25,logreg_f100_sep1_b50",
                      "Problems of the PES vs TBPTT cost table ('' skips it).")
  flags.DEFINE_integer("estimator_steps", 50, "Inner steps per truncation in that table.")
  flags.DEFINE_integer("pes_particles", 8, "PES particles per task in that table.")


def main(argv):
  del argv
  if FLAGS.child:
    return _child(FLAGS.child)
  if FLAGS.breakdown:
    return _breakdown()
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


# --- breakdown of a cold meta-training run -------------------------------------------------

_PROCESS_START = time.perf_counter()


def _rss_mb(field: str) -> float:
  from meta import trainer as trainer_lib
  value = trainer_lib.process_memory_bytes(field)
  return value / 2**20 if value is not None else float("nan")


def _heap_mb() -> tuple[float, float]:
  """(in use, free) MB of glibc's heap; NaN without mallinfo2."""
  from meta import trainer as trainer_lib
  heap = trainer_lib.heap_bytes()
  return (float("nan"), float("nan")) if heap is None else (heap[0] / 2**20, heap[1] / 2**20)


class _MemorySampler:
  """Samples (seconds since process start, resident MB, heap in use MB, heap free MB) every
  `every` seconds on a daemon thread: whether the resident set still grows once everything is
  compiled, and whether the growth is memory in use or freed heap kept by the allocator."""

  def __init__(self, every: float):
    import threading
    self.samples, self._stop = [], threading.Event()
    self._every = every
    self._thread = threading.Thread(target=self._loop, daemon=True)
    self._thread.start()

  def _sample(self):
    self.samples.append((round(time.perf_counter() - _PROCESS_START, 1),
                         round(_rss_mb("VmRSS"), 1)) + tuple(round(v, 1) for v in _heap_mb()))

  def _loop(self):
    while not self._stop.wait(self._every):
      self._sample()

  def stop(self) -> list:
    self._stop.set()
    self._thread.join()
    self._sample()
    return self.samples


def _child(spec: str) -> None:
  """One variant in this (fresh) process: meta-train for --seconds, print the ledger as JSON."""
  import json
  import tempfile

  from meta import profile
  from meta import trainer as trainer_lib

  args = json.loads(spec)
  profile.LEDGER.reset(enabled=True)
  cpu0 = time.process_time()
  sampler = _MemorySampler(args.get("sample_memory_every_secs") or 30.0)
  extra = {}
  if args["compile_by"]:
    extra["compile_by"] = args["compile_by"]
  extra["meta_loss"] = args.get("meta_loss", "full")
  with tempfile.TemporaryDirectory() as train_dir:
    options = trainer_lib.Options(
        train_dir=train_dir, config="stable", problems=args["problems"], meta_l2=0.1,
        max_steps=10**9, checkpoint_every_secs=60.0, log_every_steps=10**9, seed=0, **extra)
    trainer = trainer_lib.Trainer(options)
    setup = time.perf_counter() - _PROCESS_START
    trainer.run(stop_after=1)
    first_step = time.perf_counter() - _PROCESS_START
    trainer.run(stop_after_secs=max(args["seconds"] - first_step, 0.0))
    wall = time.perf_counter() - _PROCESS_START
    cpu = time.process_time() - cpu0
    # The trainer's memory, before this benchmark reads the run's history back (an hour's
    # ~100,000 rows as Python dicts: ~150 MB, counted in the peak and final RSS before the
    # twelfth session).
    peak_rss, final_rss, series = _rss_mb("VmHWM"), _rss_mb("VmRSS"), sampler.stop()
    from meta import checkpoints
    history = checkpoints.read_history(train_dir)
    inner = sum(int(r["steps"]) for r in history)
    result = {
        "compile_by": args["compile_by"] or "default", "problems": args["problems"],
        "wall_secs": wall, "cpu_secs": cpu, "setup_secs": setup,
        "first_meta_step_secs": first_step, "meta_steps": trainer.step, "inner_steps": inner,
        "compiled_functions": trainer.unroller.num_compiled(),
        "problems_seen": len(trainer.unroller),
        "ledger": dict(profile.LEDGER.seconds), "ledger_counts": dict(profile.LEDGER.counts),
        "peak_rss_mb": peak_rss, "final_rss_mb": final_rss,
        "meta_loss": options.meta_loss,
        "memory_series": series,
        "split": _compile_split(args["split"], args["compile_by"] or "bucket",
                                args["problems"]),
    }
  print("BREAKDOWN_JSON " + json.dumps(result))


def _compile_split(names, compile_by: str, pool_spec: str) -> list:
  """For each problem's compiled unroll (its group's, when bucketed): trace, TF->HLO lowering,
  HLO optimisation, first call; max_steps differs from the run's, so each compile is fresh."""
  import tensorflow as tf

  import problems
  from learned_opt import config as config_lib
  from learned_opt import hrnn
  from meta import trainer as trainer_lib
  from meta import unroll as unroll_lib

  config = config_lib.stable()
  pool = trainer_lib.resolve_problems(pool_spec)
  meta = hrnn.MetaParams(config).as_dict()
  rows = []
  for name in names:
    problem = problems.get(name)
    data = unroll_lib.data_tensors(problem.sample_data(1))
    carry = unroll_lib.start_carry(problem, meta, config, data, 1, [1, 2])
    # A fresh Unroller setting (max_steps) so that nothing is cached from the run.
    unroller = unroll_lib.Unroller(config, max_steps=255, compile_by=compile_by, problems=pool)
    fn = unroller._compiled(problem, True)  # pylint: disable=protected-access
    tail = (tf.constant(32), tf.constant([3, 4]))
    branches = 1
    if compile_by == "bucket":
      group, bucket = unroller._bucket_args(problem, carry, data)  # pylint: disable=protected-access
      args = (dict(meta),) + bucket + tail
      branches = len(group.problems)
    else:
      args = (dict(meta), carry, dict(data)) + tail
    t0 = time.perf_counter()
    fn.get_concrete_function(*args)
    t1 = time.perf_counter()
    fn.experimental_get_compiler_ir(*args)(stage="hlo")
    t2 = time.perf_counter()
    fn.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
    t3 = time.perf_counter()
    float(fn(*args).meta_loss)
    t4 = time.perf_counter()
    float(fn(*args).meta_loss)
    t5 = time.perf_counter()
    rows.append({"problem": name, "branches": branches, "trace": t1 - t0,
                 "lower_to_hlo": t2 - t1,
                 "hlo_optimise": max((t3 - t2) - (t2 - t1), 0.0),
                 "first_call": t4 - t3, "execute": t5 - t4})
  return rows


def _breakdown() -> None:
  import json
  import shutil
  import tempfile

  variants = [v.strip() for v in FLAGS.compile_by.split(",")] if FLAGS.compile_by else [""]
  revisions = [r.strip() for r in FLAGS.revisions.split(",") if r.strip()] or [""]
  if len(variants) > 1 and len(revisions) > 1:
    raise app.UsageError("--compile_by and --revisions: give several of one of them, not both")
  if FLAGS.side_by_side and any(v.endswith("+cache") for v in variants):
    raise app.UsageError("--side_by_side with '+cache' variants: a warm cache needs the cold "
                         "run to finish first")
  split = [p.strip() for p in FLAGS.split_problems.split(",") if p.strip()]
  cache_dir = tempfile.mkdtemp(prefix="xla_cache_")
  trees = tempfile.mkdtemp(prefix="breakdown_trees_")
  runs = []
  cache_runs = 0
  try:
    for revision in revisions:
      cwd, commit = (_ROOT, None) if not revision else _worktree(revision, trees)
      for variant in variants:
        # "<compile_by>+cache": XLA's persistent compilation cache in a directory shared by the
        # variants of this invocation: the first such run fills it (cold), later ones read it.
        compile_by, _, cache = variant.partition("+")
        env = dict(os.environ)
        label = compile_by or "default"
        if cache == "cache":
          env["TF_XLA_FLAGS"] = (env.get("TF_XLA_FLAGS", "") +
                                 f" --tf_xla_persistent_cache_directory={cache_dir}").strip()
          label += " + XLA cache " + ("(cold)" if cache_runs == 0 else "(warm)")
          cache_runs += 1
        if commit:
          label = f"{revision} ({commit[:7]})" + ("" if label == "default" else f" {label}")
        spec = json.dumps({"compile_by": compile_by, "problems": FLAGS.train_problems,
                           "seconds": FLAGS.seconds, "split": split,
                           "meta_loss": FLAGS.meta_loss,
                           "sample_memory_every_secs": FLAGS.sample_memory_every_secs})
        runs.append({"label": label, "cwd": cwd, "env": env, "commit": commit,
                     "cmd": [sys.executable, "-m", "benchmarks.meta_speed", "--child", spec]})
    results = _run_children(runs, FLAGS.side_by_side)
  finally:
    shutil.rmtree(trees, ignore_errors=True)
    shutil.rmtree(cache_dir, ignore_errors=True)
    if revisions != [""]:
      _git(["worktree", "prune"], check=False)   # forget the checkouts just removed
  text = _breakdown_table(results)
  if FLAGS.side_by_side:
    text += ("\n\nThe variants ran side by side, each pinned to its own core "
             f"({len(results)} of {os.cpu_count()}).")
  print(text)
  out_dir = os.path.join(_ROOT, "benchmarks", "results", "meta_speed")
  os.makedirs(out_dir, exist_ok=True)
  tag = FLAGS.tag or "latest"
  with open(os.path.join(out_dir, f"breakdown_{tag}.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out_dir, f"breakdown_{tag}.md"), "w") as f:
    f.write(text + "\n")


def _git(args: list[str], check: bool = True) -> str:
  import subprocess
  proc = subprocess.run(["git", "-C", _ROOT] + args, capture_output=True, text=True,
                        check=False)
  if proc.returncode and check:
    raise app.UsageError(f"git {' '.join(args)} failed: {proc.stderr.strip()}")
  return proc.stdout.strip()


def _worktree(revision: str, parent: str) -> tuple[str, str]:
  """A detached checkout of `revision` (--revisions) under `parent`: (its path, its commit)."""
  try:
    commit = _git(["rev-parse", "--verify", "--quiet", f"{revision}^{{commit}}"])
  except app.UsageError:
    raise app.UsageError(f"--revisions: {revision!r} is not a commit of {_ROOT}") from None
  path = os.path.join(parent, commit[:12])
  if not os.path.exists(path):
    _git(["worktree", "add", "--detach", path, commit])
  return path, commit


def _run_children(runs: list[dict], side_by_side: bool) -> list[dict]:
  """Runs each child command (a dict: label, cmd, cwd, env, commit) and returns its parsed
  BREAKDOWN_JSON line, labelled. One after another; or all at once, child i pinned to core i,
  so that they share the machine's state (load, thermal, memory bandwidth) alike."""
  import json
  import subprocess

  cores = sorted(os.sched_getaffinity(0))
  if side_by_side and len(runs) > len(cores):
    raise app.UsageError(f"--side_by_side: {len(runs)} variants but {len(cores)} cores: "
                         "each variant needs a core of its own")

  def start(i, run):
    pin = (lambda core=cores[i]: os.sched_setaffinity(0, {core})) if side_by_side else None
    print(f"running {run['label']} in a fresh process"
          + (f" on core {cores[i]}" if side_by_side else ""), flush=True)
    return subprocess.Popen(run["cmd"], cwd=run["cwd"], env=run["env"], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=pin)

  def finish(run, proc):
    out, err = proc.communicate()
    lines = [l for l in out.splitlines() if l.startswith("BREAKDOWN_JSON ")]
    if proc.returncode or not lines:
      sys.stderr.write(err[-5000:])
      raise SystemExit(f"variant {run['label']!r} failed (exit {proc.returncode})")
    result = json.loads(lines[-1][len("BREAKDOWN_JSON "):])
    result["compile_by"] = run["label"]
    if run.get("commit"):
      result["revision"] = run["commit"]
    return result

  if side_by_side:
    procs = [start(i, run) for i, run in enumerate(runs)]
    return [finish(run, proc) for run, proc in zip(runs, procs)]
  return [finish(run, start(i, run)) for i, run in enumerate(runs)]


def _memory_series_table(results) -> str:
  """Resident set and C heap (in use / free) every 5 minutes, one column per variant."""
  if not any(r.get("memory_series") for r in results):
    return ""
  longest = max(r["wall_secs"] for r in results)
  marks = [m for m in range(300, int(longest) + 300, 300)]
  lines = ["", "", "Memory over the run (MB): resident set / C heap in use / C heap free "
           "(mallinfo2), the sample nearest each mark", "",
           "| minute | " + " | ".join(r["compile_by"] for r in results) + " |",
           "|---:|" + "---:|" * len(results)]
  for mark in marks:
    cells = []
    for r in results:
      series = r.get("memory_series") or []
      near = min(series, key=lambda s: abs(s[0] - mark)) if series else None
      cells.append("–" if near is None or abs(near[0] - mark) > 60
                   else f"{near[1]:.0f} / {near[2]:.0f} / {near[3]:.0f}")
    lines.append(f"| {mark // 60} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def _breakdown_table(results) -> str:
  from meta import profile

  lines = ["| | " + " | ".join(r["compile_by"] for r in results) + " |",
           "|---|" + "---:|" * len(results)]
  def row(label, fn):
    lines.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")
  row("wall time (s)", lambda r: f"{r['wall_secs']:.0f}")
  row("CPU time (s)", lambda r: f"{r['cpu_secs']:.0f}")
  for cat in profile.CATEGORIES:
    row(f"  {cat} (s, % of wall)", lambda r, c=cat: f"{r['ledger'].get(c, 0.0):.1f} "
        f"({100 * r['ledger'].get(c, 0.0) / r['wall_secs']:.0f} %)")
  row("  other: process start, imports, setup, logging (s)", lambda r: f"{r['wall_secs'] - sum(r['ledger'].values()):.1f}")
  row("problem set (--problems), --meta_loss", lambda r: f"{r.get('problems', 'default')}, "
      f"{r.get('meta_loss', 'full')}")
  row("compiled unroll functions", lambda r: str(r["compiled_functions"]))
  row("problems run", lambda r: str(r["problems_seen"]))
  row("meta-steps", lambda r: str(r["meta_steps"]))
  row("meta-steps / s", lambda r: f"{r['meta_steps'] / r['wall_secs']:.2f}")
  row("inner steps backpropagated", lambda r: f"{r['inner_steps']:,}")
  row("inner steps / CPU-second", lambda r: f"{r['inner_steps'] / r['cpu_secs']:.0f}")
  row("first meta-step after process start (s)", lambda r: f"{r['first_meta_step_secs']:.1f}")
  row("peak RSS (MB)", lambda r: f"{r['peak_rss_mb']:.0f}")
  row("final RSS (MB)", lambda r: f"{r['final_rss_mb']:.0f}")
  if any("release_memory_every_secs" in r for r in results):   # twelfth session's runs
    row("heap returned to the OS every (s; 0: after compiles only)",
        lambda r: f"{r['release_memory_every_secs']:g}" if "release_memory_every_secs" in r
        else "(after compiles only)")
  out = "\n".join(lines)
  out += _memory_series_table(results)
  split_lines = ["", "", "One problem's first compile, split (seconds): trace | TF->HLO lowering | "
                 "HLO optimisation | first call (all compile stages + execution) | execution",
                 "", "| variant | problem | trace | lower | HLO opt | first call | execute |",
                 "|---|---|---:|---:|---:|---:|---:|"]
  for r in results:
    for s in r["split"]:
      split_lines.append(f"| {r['compile_by']} | {s['problem']} ({s.get('branches', 1)}) | "
                         f"{s['trace']:.1f} | "
                         f"{s['lower_to_hlo']:.1f} | {s['hlo_optimise']:.1f} | "
                         f"{s['first_call']:.1f} | {s['execute']:.2f} |")
  return out + "\n".join(split_lines)


_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


if __name__ == "__main__":
  define_flags()
  app.run(main)
