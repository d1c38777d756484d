"""The first epoch of `model.fit` in a fresh process: no compilation cache, a cold one, a warm one.

A user's first epoch pays for tracing and compiling the train step; with `LearnedOptimizer`
also for compiling the optimizer's own XLA step (~90 fused loops). `import learned_opt` keeps
compiled executables on disk (`learned_opt.compile_cache`), so a later process (the same
script run again, a resumed job) loads them. This benchmark measures all three cases, each in
a process of its own, for Keras Adam and `LearnedOptimizer()` on the `benchmarks.fit_time`
models:

* `off`: `LEARNED_OPT_XLA_CACHE=0`, what every run paid before the cache;
* `cold`: an empty cache directory (the first run; it also writes the entries);
* `warm`: the same directory again (every later run of the same model).

Adam gets the same three cases: with `jit_compile` its train step is an XLA function too, and
the cache keeps it as well. Each row is the first `fit` call of `--first_steps` steps, wall
and CPU seconds, median over `--repeats` rounds; a round runs off, cold and warm back to back
for Adam, then for the learned optimizer.

    python -m benchmarks.first_epoch                              # ~10 min
    python -m benchmarks.first_epoch --models mlp_small --jit off --repeats 1
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile

from absl import app, flags
import numpy as np

FLAGS = flags.FLAGS
CASES = ("off", "cold", "warm")


def define_flags():
  """Flags of the command line only, so that importing this module defines none."""
  from benchmarks import fit_time
  flags.DEFINE_list("models", ["mlp_small", "many_vars", "mlp_1m"],
                    f"benchmarks.fit_time models, of {fit_time.MODELS}.")
  flags.DEFINE_list("jit", ["off", "on"], "model.compile jit_compile settings (off, on).")
  flags.DEFINE_list("optimizers", ["adam", "learned"], "adam, learned, learned_xla "
                    "(fused_step=False).")
  flags.DEFINE_integer("first_steps", 10, "Steps of the first fit call (compile included).")
  flags.DEFINE_integer("repeats", 2, "Rounds; the median is reported.")
  flags.DEFINE_string("out", "benchmarks/results/first_epoch.json", "Where to write the JSON "
                      "(and a .md beside it).")
  flags.DEFINE_string("child", None, "Internal: model,optimizer,jit to time in this process.")


def child(spec: str) -> None:
  """Times one first epoch in this (fresh) process and prints it as a JSON line."""
  import time
  model_name, opt_name, jit = spec.split(",")
  # learned_opt configured the cache when define_flags imported benchmarks.fit_time, before
  # app.run and TensorFlow's first operation.
  import learned_opt
  import keras
  from benchmarks import fit_time
  keras.utils.set_random_seed(0)
  model = fit_time.build_model(model_name)
  opt = (keras.optimizers.Adam(1e-3) if opt_name == "adam" else
         learned_opt.LearnedOptimizer(fused_step=opt_name == "learned"))
  model.compile(optimizer=opt, jit_compile=jit == "on",
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  batch = fit_time.BATCH[model_name]
  x, y = fit_time.data(model, batch, FLAGS.first_steps)
  w0, c0 = time.perf_counter(), time.process_time()
  model.fit(x, y, batch_size=batch, epochs=1, verbose=0, shuffle=False)
  w1, c1 = time.perf_counter(), time.process_time()
  print("RESULT " + json.dumps({"wall_s": w1 - w0, "cpu_s": c1 - c0,
                                "cache": learned_opt.compile_cache.directory()}), flush=True)


def run_child(model: str, opt: str, jit: str, cache: str) -> dict:
  env = dict(os.environ, LEARNED_OPT_XLA_CACHE=cache, TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("TF_XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, "-m", "benchmarks.first_epoch", f"--child={model},{opt},{jit}",
       f"--first_steps={FLAGS.first_steps}"], env=env, capture_output=True, text=True,
      timeout=1800)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
  if proc.returncode or not lines:
    raise RuntimeError(f"first_epoch child {model},{opt},{jit} (cache {cache}) failed:\n"
                       f"{proc.stderr[-3000:]}")
  return json.loads(lines[-1][len("RESULT "):])


def table(rows: list[dict]) -> str:
  out = ["| model | jit | optimizer | no cache: wall s (CPU s) | cold cache | warm cache | "
         "learned / Adam: no cache | cold | warm |", "|---|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    adam = next((a for a in rows if (a["model"], a["jit"], a["optimizer"])
                 == (r["model"], r["jit"], "adam")), None)
    cells = [f"{r[c]['wall_s']:.2f} ({r[c]['cpu_s']:.2f})" for c in CASES]
    ratios = ([f"{r[c]['wall_s'] / adam[c]['wall_s']:.2f}" for c in CASES]
              if adam and r["optimizer"] != "adam" else ["–"] * 3)
    out.append(f"| {r['model']} | {r['jit']} | {r['optimizer']} | " + " | ".join(cells + ratios)
               + " |")
  return "\n".join(out)


def main(argv):
  del argv
  if FLAGS.child:
    child(FLAGS.child)
    return
  from benchmarks import fit_time
  for name in FLAGS.models:
    fit_time.build_model(name)       # fails early on a bad name
  for j in FLAGS.jit:
    if j not in ("off", "on"):
      raise ValueError(f"--jit: expected off or on, got {j!r}")
  for o in FLAGS.optimizers:
    if o not in ("adam", "learned", "learned_xla"):
      raise ValueError(f"--optimizers: expected adam, learned or learned_xla, got {o!r}")
  rows = []
  for model in FLAGS.models:
    for jit in FLAGS.jit:
      runs = {o: {c: [] for c in CASES} for o in FLAGS.optimizers}
      for _ in range(FLAGS.repeats):
        for opt in FLAGS.optimizers:
          cache = tempfile.mkdtemp(prefix="first_epoch_cache_")
          try:
            for case in CASES:
              result = run_child(model, opt, jit, "0" if case == "off" else cache)
              if (result["cache"] is None) != (case == "off"):
                raise RuntimeError(f"child ran with cache {result['cache']} for case {case}")
              runs[opt][case].append(result)
              print(f"{model:10s} jit={jit:3s} {opt:8s} {case:4s} {result['wall_s']:6.2f} s "
                    f"(CPU {result['cpu_s']:6.2f})", flush=True)
          finally:
            shutil.rmtree(cache, ignore_errors=True)
      for opt in FLAGS.optimizers:
        rows.append({"model": model, "jit": jit, "optimizer": opt, "runs": runs[opt], **{
            c: {k: float(np.median([r[k] for r in runs[opt][c]])) for k in ("wall_s", "cpu_s")}
            for c in CASES}})
  load = os.getloadavg()
  header = (f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"load average at the end {load[0]:.1f}; first fit call of {FLAGS.first_steps} "
            f"steps in a fresh process, median of {FLAGS.repeats} rounds; wall ratios.")
  text = table(rows)
  print("\n" + header + "\n\n" + text)
  if FLAGS.out:
    fit_time.write_results(FLAGS.out, {"header": header, "rows": rows}, header, text)


if __name__ == "__main__":
  define_flags()
  app.run(main)
