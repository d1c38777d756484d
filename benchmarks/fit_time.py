"""What `LearnedOptimizer` costs a user in `model.fit`: compile time, step time, µs per parameter.

`benchmarks/step_time.py` times a hand-written loop on a ConvNet whose convolutions dwarf any
optimizer, compile excluded. This one times the user's path, `model.compile(...); model.fit(...)`,
on four models that stress different parts of the step:

| model | what it stresses |
|---|---|
| `mlp_small` (26k params, batch 32) | fixed per-step overhead (the digits-size MLP of demo.py) |
| `convnet` (12.8k params, batch 128) | the paper's Fig. 7 ConvNet, gradient-bound |
| `mlp_1m` (1.06M params, batch 32) | the per-parameter cost: optimizer-bound |
| `many_vars` (102 variables, 15k params) | per-variable overhead (graph size, segment reductions) |

For each model, optimizer (Adam, SGD, LearnedOptimizer, all in this process, freshly built from
the same seed) and `jit_compile` setting (off, on; Keras' default `"auto"` is off on CPU and on
with a GPU) it reports:

* first epoch: wall and CPU (process) seconds of the first `fit` call of `--first_steps` steps,
  i.e. tracing + compilation + those steps;
* steady state: median over `--repeats` `fit` calls of `--steps` steps, ms per step (wall and
  CPU; CPU time is less disturbed by other processes on a shared machine);
* the optimizer alone, µs per parameter per step, two ways: (a) the model's steady step with
  this optimizer minus with SGD, divided by the parameter count (what a user pays); (b)
  `optimizer.apply(grads)` timed directly in a `tf.function` with the same `jit_compile`
  (no model, fixed gradients).

Prints a markdown table and writes JSON (`--out`). First epochs are compiled from scratch unless
`LEARNED_OPT_XLA_CACHE` is set (`benchmarks.first_epoch` measures that cache).

    python -m benchmarks.fit_time                                  # everything (~10 min)
    python -m benchmarks.fit_time --models mlp_1m --jit off --optimizers adam,learned
    python -m benchmarks.fit_time --models mlp_small --jit off --steps_per_execution 100 \
        --first_steps 100 --steps 500 --optimizers adam,sgd,learned,learned_tf
"""

from __future__ import annotations

import json
import os
import platform
import time

from absl import app, flags
import keras
import numpy as np
import tensorflow as tf

import learned_opt
from benchmarks.step_time import convnet

FLAGS = flags.FLAGS

MODELS = ("mlp_small", "convnet", "mlp_1m", "many_vars")
BATCH = {"mlp_small": 32, "convnet": 128, "mlp_1m": 32, "many_vars": 32}


def define_flags():
  """Flags of the command line only, so that importing this module defines none."""
  flags.DEFINE_list("models", list(MODELS), f"Models to time, of {MODELS}.")
  flags.DEFINE_list("optimizers", ["adam", "sgd", "learned"], "Optimizers to time: adam, "
                    "sgd, learned (the default: fused kernel on CPU), learned_xla "
                    "(fused_step=False: the step as XLA-compiled TF ops), learned_tf "
                    "(jit_step=False: plain TF ops).")
  flags.DEFINE_list("jit", ["off", "on"], "jit_compile settings to time (off, on).")
  flags.DEFINE_integer("first_steps", 10, "Steps of the first (compiling) epoch.")
  flags.DEFINE_integer("steps_per_execution", 1, "model.compile's steps_per_execution. 1 "
                       "(Keras' default) runs one Python-dispatched step at a time, whose fixed "
                       "cost (~6 ms for mlp_small here) hides part of a slow optimizer; larger "
                       "values loop inside one graph call, which is what a tuned input pipeline "
                       "sees. Must divide --first_steps and --steps.")
  flags.DEFINE_integer("steps", 20, "Steps per timed fit call.")
  flags.DEFINE_integer("repeats", 3, "Timed fit calls; the median is reported.")
  flags.DEFINE_string("weights", "default", "LearnedOptimizer weights (timing does not depend "
                      "on their values, only on their config).")
  flags.DEFINE_string("config", None, "LearnedOptimizer config preset (with --weights none).")
  flags.DEFINE_string("out", "benchmarks/results/fit_time.json", "Where to write the JSON.")


def build_model(name: str) -> keras.Model:
  if name == "mlp_small":   # 64 -> 128 -> 128 -> 10: 26,122 parameters, 6 variables.
    return keras.Sequential([keras.Input((64,)), keras.layers.Dense(128, activation="relu"),
                             keras.layers.Dense(128, activation="relu"), keras.layers.Dense(10)])
  if name == "convnet":
    return convnet()
  if name == "mlp_1m":      # 1024 -> 1024 -> 10: 1,059,850 parameters.
    return keras.Sequential([keras.Input((1024,)), keras.layers.Dense(1024, activation="relu"),
                             keras.layers.Dense(10)])
  if name == "many_vars":   # 50 narrow layers: 102 variables.
    layers = [keras.Input((64,))]
    layers += [keras.layers.Dense(16, activation="tanh") for _ in range(50)]
    layers.append(keras.layers.Dense(10))
    return keras.Sequential(layers)
  raise ValueError(f"--models: unknown model {name!r}; choose from {MODELS}")


def make_optimizer(name: str):
  if name == "adam":
    return keras.optimizers.Adam(1e-3)
  if name == "sgd":
    return keras.optimizers.SGD(1e-2)
  if name in ("learned", "learned_xla", "learned_tf"):
    weights = None if FLAGS.weights in (None, "none", "None") else FLAGS.weights
    return learned_opt.LearnedOptimizer(1e-3, weights=weights, config=FLAGS.config,
                                        jit_step=name != "learned_tf",
                                        fused_step=name == "learned")
  raise ValueError(f"--optimizers: unknown optimizer {name!r}")


def data(model: keras.Model, batch: int, steps: int):
  rng = np.random.default_rng(0)
  x = rng.standard_normal((batch * steps, *model.input_shape[1:])).astype(np.float32)
  y = rng.integers(0, 10, batch * steps)
  return x, y


def clocks():
  return time.perf_counter(), time.process_time()


def time_fit(model_name: str, opt_name: str, jit: bool) -> dict:
  keras.utils.set_random_seed(0)
  model = build_model(model_name)
  batch = BATCH[model_name]
  model.compile(optimizer=make_optimizer(opt_name), jit_compile=jit,
                loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                steps_per_execution=FLAGS.steps_per_execution)
  n_first, n_steps = FLAGS.first_steps, FLAGS.steps
  x, y = data(model, batch, max(n_first, n_steps))
  w0, c0 = clocks()
  model.fit(x[:batch * n_first], y[:batch * n_first], batch_size=batch, epochs=1, verbose=0,
            shuffle=False)
  w1, c1 = clocks()
  walls, cpus = [], []
  for _ in range(FLAGS.repeats):
    s0, p0 = clocks()
    model.fit(x[:batch * n_steps], y[:batch * n_steps], batch_size=batch, epochs=1, verbose=0,
              shuffle=False)
    s1, p1 = clocks()
    walls.append((s1 - s0) / n_steps)
    cpus.append((p1 - p0) / n_steps)
  n_params = sum(int(np.prod(v.shape)) for v in model.trainable_variables)
  return {"model": model_name, "optimizer": opt_name, "jit": jit, "batch": batch,
          "params": n_params, "variables": len(model.trainable_variables),
          "steps_per_execution": FLAGS.steps_per_execution,
          "first_epoch_wall_s": w1 - w0, "first_epoch_cpu_s": c1 - c0,
          "step_ms": 1e3 * float(np.median(walls)), "step_cpu_ms": 1e3 * float(np.median(cpus)),
          **time_apply(model, opt_name, jit)}


def time_apply(model: keras.Model, opt_name: str, jit: bool) -> dict:
  """Median wall and CPU µs of one `optimizer.apply(grads, variables)` (no model)."""
  keras.utils.set_random_seed(1)
  variables = [keras.Variable(v.numpy()) for v in model.trainable_variables]
  opt = make_optimizer(opt_name)
  opt.build(variables)
  grads = [tf.random.normal(v.shape) * 1e-2 for v in variables]

  @tf.function(jit_compile=jit)
  def apply():
    opt.apply(grads, variables)

  for _ in range(3):
    apply()
  reps = max(3, FLAGS.steps // 2)
  walls, cpus = [], []
  for _ in range(FLAGS.repeats):
    w0, c0 = clocks()
    for _ in range(reps):
      apply()
    variables[0].numpy()
    w1, c1 = clocks()
    walls.append((w1 - w0) / reps)
    cpus.append((c1 - c0) / reps)
  return {"apply_us": 1e6 * float(np.median(walls)),
          "apply_cpu_us": 1e6 * float(np.median(cpus))}


def table(rows: list[dict]) -> str:
  """Markdown table; ratios use CPU time (robust on a shared machine), the µs columns both.

  Wall time is what a user waits for, and on more than one core XLA runs the optimizer's
  large elementwise loops in parallel, so its wall time is below its CPU time there.
  """
  out = ["| model | params | vars | batch | jit | optimizer | first epoch s (CPU s) | "
         "step ms (CPU ms) | step / Adam (CPU) | first epoch / Adam (CPU) | "
         "opt. µs/param: fit − SGD, wall (CPU) | opt. µs/param: apply, wall (CPU) |",
         "|---|---:|---:|---:|---|---|---:|---:|---:|---:|---:|---:|"]
  for r in rows:
    def peer(name):
      return next((p for p in rows if (p["model"], p["jit"], p["optimizer"])
                   == (r["model"], r["jit"], name)), None)
    adam, sgd = peer("adam"), peer("sgd")
    ratio = f"{r['step_cpu_ms'] / adam['step_cpu_ms']:.2f}" if adam else "–"
    first = "first_epoch_cpu_s" if adam and np.isfinite(
        [r["first_epoch_cpu_s"], adam["first_epoch_cpu_s"]]).all() else "first_epoch_wall_s"
    first_ratio = f"{r[first] / adam[first]:.2f}" if adam else "–"
    apply_cpu = (f" ({r['apply_cpu_us'] / r['params']:.3f})" if "apply_cpu_us" in r else "")
    minus_sgd = (f"{1e3 * (r['step_ms'] - sgd['step_ms']) / r['params']:.3f} "
                 f"({1e3 * (r['step_cpu_ms'] - sgd['step_cpu_ms']) / r['params']:.3f})"
                 if sgd and r["optimizer"] != "sgd" else "–")
    out.append(
        f"| {r['model']} | {r['params']:,} | {r['variables']} | {r['batch']} | "
        f"{'on' if r['jit'] else 'off'} | {r['optimizer']} | {r['first_epoch_wall_s']:.1f} "
        f"({r['first_epoch_cpu_s']:.1f}) | {r['step_ms']:.1f} ({r['step_cpu_ms']:.1f}) | "
        f"{ratio} | {first_ratio} | {minus_sgd} | {r['apply_us'] / r['params']:.3f}{apply_cpu} |")
  return "\n".join(out)


def main(argv):
  del argv
  for name in FLAGS.models:
    build_model(name)   # fails early on a bad name
  jits = []
  for j in FLAGS.jit:
    if j not in ("off", "on"):
      raise ValueError(f"--jit: expected off or on, got {j!r}")
    jits.append(j == "on")
  spe = FLAGS.steps_per_execution
  if spe < 1 or FLAGS.first_steps % spe or FLAGS.steps % spe:
    raise ValueError(f"--steps_per_execution {spe}: must be >= 1 and divide --first_steps "
                     f"({FLAGS.first_steps}) and --steps ({FLAGS.steps})")
  rows = []
  for model_name in FLAGS.models:
    for jit in jits:
      for opt_name in FLAGS.optimizers:
        row = time_fit(model_name, opt_name, jit)
        rows.append(row)
        print(f"{model_name:10s} jit={'on ' if jit else 'off'} {opt_name:8s} first epoch "
              f"{row['first_epoch_wall_s']:6.1f} s  step {row['step_ms']:8.2f} ms "
              f"(CPU {row['step_cpu_ms']:8.2f})  apply {row['apply_us']:9.1f} µs "
              f"(CPU {row['apply_cpu_us']:9.1f})", flush=True)
  load = os.getloadavg()
  header = (f"CPU, {os.cpu_count()} cores ({platform.processor() or platform.machine()}), "
            f"TF {tf.__version__}, Keras {keras.__version__}, load average at the end "
            f"{load[0]:.1f}; steps_per_execution {FLAGS.steps_per_execution}; "
            f"first epoch = {FLAGS.first_steps} steps incl. compile; "
            f"steady = median of {FLAGS.repeats} x {FLAGS.steps} steps.")
  text = table(rows)
  print("\n" + header + "\n\n" + text)
  if FLAGS.out:
    write_results(FLAGS.out, {"header": header, "rows": rows, "flags": {
        k: FLAGS[k].value for k in ("models", "optimizers", "jit", "first_steps", "steps",
                                    "repeats", "steps_per_execution", "weights", "config")}},
                  header, text)


def write_results(out: str, payload: dict, header: str, text: str) -> None:
  """`payload` as JSON at `out`, and the header and table as markdown beside it (.md)."""
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out, "w") as f:
    json.dump(payload, f, indent=1)
  with open(os.path.splitext(out)[0] + ".md", "w") as f:
    f.write(header + "\n\n" + text + "\n")
  print(f"\nwrote {out}")


if __name__ == "__main__":
  define_flags()
  app.run(main)
