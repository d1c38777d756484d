"""Where the optimizer step's time goes: XLA's per-operation profile of `LearnedOptimizer`'s step.

`benchmarks.fit_time` says how much the step costs; this says which parts of it. It builds a
`LearnedOptimizer` on a `benchmarks.fit_time` model's variables, takes the exact XLA-compiled
step the Keras shell runs (`hrnn.step`, the finiteness check and the select, one function), and
runs it `--steps` times under TensorFlow's profiler with XLA's per-operation trace events on.
Each row of the table is one operation of the optimized HLO module (a fusion, a dot, a scatter,
...) with its output shape, the notable ops fused into it (transcendentals, gathers, scatters,
reductions, dots), its mean time per step and its share of the compiled step.

    python -m benchmarks.step_profile                                       # mlp_small, mlp_1m
    taskset -c 0 python -m benchmarks.step_profile --models mlp_small --top 20

XLA reads `--xla_cpu_enable_xprof_traceme` once, when TensorFlow starts, so this module adds
it to `XLA_FLAGS` before importing TensorFlow: run it as its own process. On more than one core
XLA runs large loops on several threads and the rows overlap in time; pin it to one core
(`taskset -c 0`) for an attribution that adds up. The trace events cost a little time
themselves, so time the step with `benchmarks.fit_time`, not with this.
"""

from __future__ import annotations

import os

_TRACE_FLAG = "--xla_cpu_enable_xprof_traceme=true"
if _TRACE_FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + _TRACE_FLAG).strip()

import collections   # noqa: E402  (after XLA_FLAGS, before TensorFlow)
import glob   # noqa: E402
import platform   # noqa: E402
import re   # noqa: E402
import shutil   # noqa: E402
import tempfile   # noqa: E402

from absl import app, flags   # noqa: E402
import keras   # noqa: E402
import numpy as np   # noqa: E402
import tensorflow as tf   # noqa: E402

import learned_opt   # noqa: E402
from benchmarks import fit_time   # noqa: E402

FLAGS = flags.FLAGS

# Ops worth naming in a fusion's description: what costs more than a multiply-add.
NOTABLE = ("exponential", "log", "log-plus-one", "logistic", "tanh", "sqrt", "rsqrt", "power",
           "divide", "gather", "scatter", "reduce", "reduce-window", "dot", "sort",
           "dynamic-slice", "dynamic-update-slice", "convert", "transpose", "concatenate")


def define_flags():
  """Flags of the command line only, so that importing this module defines none."""
  flags.DEFINE_list("models", ["mlp_small", "mlp_1m"],
                    f"benchmarks.fit_time models whose variables the step runs on, of "
                    f"{fit_time.MODELS}.")
  flags.DEFINE_bool("fused_step", True, "LearnedOptimizer(fused_step=...). XLA's trace events "
                    "do not cover the fused kernel (a custom call): with it, the rows add up to "
                    "the step's XLA part only; --nofused_step profiles the all-XLA step.")
  flags.DEFINE_integer("steps", 20, "Profiled steps (after 3 warm-up steps).")
  flags.DEFINE_integer("top", 25, "Rows per model (the rest are summed into one row).")
  flags.DEFINE_string("weights", "default", "LearnedOptimizer weights (the profile depends on "
                      "their config only).")
  flags.DEFINE_string("out", "benchmarks/results/step_profile.md",
                      "Where to write the tables (markdown); empty: print only.")


class HloOp(collections.namedtuple("HloOp", "name opcode shape notable")):
  """One instruction of the optimized module's entry computation."""


_INSTRUCTION = re.compile(
    r"^\s*(?:ROOT\s+)?%?(?P<name>[\w.\-]+)\s*=\s*(?P<shape>\S+?(?:\{[^}]*\})?)\s+"
    r"(?P<opcode>[\w\-]+)\((?P<rest>.*)$")


def parse_hlo(text: str) -> dict[str, HloOp]:
  """{instruction name: HloOp} for the entry computation of an optimized HLO module's text.

  A fusion's `notable` lists the NOTABLE ops of the computation it calls (with counts).
  """
  computations: dict[str, list[tuple[str, str, str, str]]] = {}
  entry, current = None, None
  for line in text.splitlines():
    header = re.match(r"^(ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$", line)
    if header and not line.startswith(" "):
      current = header.group(2)
      computations[current] = []
      if header.group(1):
        entry = current
      continue
    if line.startswith("}"):
      current = None
      continue
    m = _INSTRUCTION.match(line)
    if m and current is not None:
      shape = re.sub(r"\{[^}]*\}$", "", m.group("shape"))
      computations[current].append((m.group("name"), m.group("opcode"), shape, m.group("rest")))
  if entry is None:
    raise ValueError("no ENTRY computation in the HLO text")

  def notable_ops(computation: str, seen=()) -> collections.Counter:
    counts: collections.Counter = collections.Counter()
    for _, opcode, _, rest in computations.get(computation, []):
      if opcode in NOTABLE:
        counts[opcode] += 1
      for called in re.findall(r"(?:calls|to_apply)=%?([\w.\-]+)", rest):
        if called in computations and called not in seen:
          counts.update(notable_ops(called, seen + (computation,)))
    return counts

  ops = {}
  for name, opcode, shape, rest in computations[entry]:
    if opcode in ("parameter", "constant", "tuple", "get-tuple-element", "bitcast"):
      continue
    if opcode == "fusion":
      called = re.search(r"calls=%?([\w.\-]+)", rest)
      counts = notable_ops(called.group(1)) if called else collections.Counter()
    else:
      counts = collections.Counter({opcode: 1}) if opcode in NOTABLE else collections.Counter()
    notable = ", ".join(f"{op}×{n}" if n > 1 else op for op, n in sorted(counts.items()))
    ops[name] = HloOp(name, opcode, shape, notable)
  return ops


def step_function(model_name: str):
  """(compiled step, its arguments, parameter count) for `model_name`'s variables."""
  keras.utils.set_random_seed(0)
  model = fit_time.build_model(model_name)
  variables = [keras.Variable(v.numpy()) for v in model.trainable_variables]
  weights = None if FLAGS.weights in ("none", "None") else FLAGS.weights
  opt = learned_opt.LearnedOptimizer(1e-3, weights=weights, fused_step=FLAGS.fused_step)
  opt.build(variables)
  present = tuple(True for _ in variables)
  fn = opt._step_fn(present)   # the function the Keras shell calls every step
  rng = np.random.default_rng(1)
  grads = [tf.constant(1e-2 * rng.standard_normal(v.shape), tf.float32) for v in variables]
  args = (opt.meta_params(), opt.state(), grads, tf.constant(1.0))
  return fn, args, sum(int(np.prod(v.shape)) for v in variables)


def trace_events(run, steps: int) -> dict[str, float]:
  """{event name: total seconds} of the host CPU trace events while `run` runs `steps` times."""
  from tensorflow.tsl.profiler.protobuf import xplane_pb2   # ships with TensorFlow
  logdir = tempfile.mkdtemp(prefix="step_profile_")
  try:
    tf.profiler.experimental.start(logdir)
    try:
      for _ in range(steps):
        run()
    finally:
      tf.profiler.experimental.stop()
    space = xplane_pb2.XSpace()
    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    if not files:
      raise RuntimeError(f"the profiler wrote no trace under {logdir}")
    with open(files[0], "rb") as f:
      space.ParseFromString(f.read())
  finally:
    shutil.rmtree(logdir, ignore_errors=True)
  totals: collections.Counter = collections.Counter()
  for plane in space.planes:
    if not plane.name.startswith("/host:CPU"):
      continue
    names = {k: v.name for k, v in plane.event_metadata.items()}
    for line in plane.lines:
      for event in line.events:
        totals[names.get(event.metadata_id, "?")] += event.duration_ps * 1e-12
  return dict(totals)


def profile(model_name: str) -> dict:
  fn, args, params = step_function(model_name)
  hlo = fn.experimental_get_compiler_ir(*args)(stage="optimized_hlo")
  ops = parse_hlo(hlo)

  def run():
    out = fn(*args)
    out[2].numpy()   # wait for the step

  for _ in range(3):
    run()
  totals = trace_events(run, FLAGS.steps)
  executable = totals.get("CpuExecutable::ExecuteAsyncOnStream")
  rows = [{"name": name, "opcode": op.opcode, "shape": op.shape, "notable": op.notable,
           "seconds": totals[name] / FLAGS.steps}
          for name, op in ops.items() if name in totals]
  if executable is None or not rows:
    raise RuntimeError(
        "XLA's per-operation trace events are missing. XLA_FLAGS must contain "
        f"{_TRACE_FLAG} before TensorFlow starts: run `python -m benchmarks.step_profile` as "
        "its own process.")
  rows.sort(key=lambda r: -r["seconds"])
  return {"model": model_name, "params": params, "step_seconds": executable / FLAGS.steps,
          "rows": rows, "hlo_ops": len(ops),
          "fusions": sum(op.opcode == "fusion" for op in ops.values())}


def table(result: dict, top: int) -> str:
  step, params = result["step_seconds"], result["params"]
  rows = result["rows"]
  listed = sum(r["seconds"] for r in rows)
  out = [f"**{result['model']}** ({params:,} parameters): compiled step "
         f"{1e3 * step:.2f} ms, {1e9 * step / params:.0f} ns per parameter; "
         f"{result['hlo_ops']} HLO operations ({result['fusions']} fusions), "
         f"{len(rows)} traced, together {100 * listed / step:.0f} % of the step.", "",
         "| # | operation | kind | output | notable ops inside | µs / step | ns / param | share |",
         "|---:|---|---|---|---|---:|---:|---:|"]
  for i, r in enumerate(rows[:top], 1):
    out.append(f"| {i} | `{r['name']}` | {r['opcode']} | `{r['shape']}` | {r['notable'] or '–'} "
               f"| {1e6 * r['seconds']:.1f} | {1e9 * r['seconds'] / params:.1f} | "
               f"{100 * r['seconds'] / step:.1f} % |")
  rest = rows[top:]
  if rest:
    seconds = sum(r["seconds"] for r in rest)
    out.append(f"| | {len(rest)} more | | | | {1e6 * seconds:.1f} | "
               f"{1e9 * seconds / params:.1f} | {100 * seconds / step:.1f} % |")
  return "\n".join(out)


def main(argv):
  del argv
  for name in FLAGS.models:
    fit_time.build_model(name)   # fails early on a bad name
  if FLAGS.steps < 1 or FLAGS.top < 1:
    raise ValueError(f"--steps ({FLAGS.steps}) and --top ({FLAGS.top}) must be >= 1")
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  header = (f"CPU, {cores} of {os.cpu_count()} cores usable "
            f"({platform.processor() or platform.machine()}), TF {tf.__version__}, load average "
            f"{os.getloadavg()[0]:.1f}; weights {FLAGS.weights!r}; mean of {FLAGS.steps} steps "
            "with XLA's per-operation trace events on."
            + ("" if cores == 1 else " More than one usable core: rows overlap in time.")
            + (" Fused kernel on: its time is in the step but in no row." if FLAGS.fused_step
               else " Fused kernel off (--nofused_step): the all-XLA step."))
  texts = [header]
  for name in FLAGS.models:
    result = profile(name)
    texts.append(table(result, FLAGS.top))
  text = "\n\n".join(texts)
  print(text)
  if FLAGS.out:
    os.makedirs(os.path.dirname(FLAGS.out) or ".", exist_ok=True)
    with open(FLAGS.out, "w") as f:
      f.write(text + "\n")
    print(f"\nwrote {FLAGS.out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
