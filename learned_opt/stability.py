"""Stability of the optimizer's training dynamics on a noisy quadratic (seed paper 2 §3).

The noisy quadratic model: loss_t(θ) = ½ (θ - ξ_t)ᵀ H (θ - ξ_t), ξ_t ~ N(0, σ² I), H diagonal with
a chosen spectrum. We run the optimizer (the functional hrnn.step, the same code Keras runs)
for `horizon` steps (the meta-training horizon), then linearise the one-step map of the JOINT
vector z = (θ, optimizer state) at that point, with the noise at its mean:

    z_{t+1} = F(z_t)   ->   J = dF/dz,   ρ = max |eig(J)|.

ρ ≤ 1 means perturbations of parameters and state do not grow (every eigenvalue inside the
unit circle); ρ > 1 means the learned dynamics amplify them, which is what makes meta-gradients
explode and long runs diverge (Harrison et al. 2022, Theorem 1 for the linear case). Note that
the HRNN has one neutral mode by construction: shifting every log step length by the same
amount changes no input feature (they see the log step length relative to its mean), so that
shift persists with eigenvalue 1. A tolerance of 1e-3 is applied when calling ρ ≤ 1.

We then continue the run to 10x and 100x the horizon and report whether the loss stays bounded
(finite and below 10x its initial value), and how far the mean log step length drifts above
its value at the horizon. That uniform shift of the log step lengths is the HRNN's neutral
mode (below), so nothing in the linearisation pulls it back: an optimizer that never learned
to shrink its step near convergence lets it climb (issue 16: +5e-4 per step on the demo task,
until a step throws the model off). A drift above ln 10 (a 10x longer step than at the
horizon) is flagged.

    python -m learned_opt.stability --weights default
    python -m learned_opt.stability --weights none --config stable --learning_rate 1e-3
    python -m learned_opt.stability --weights none --config stable --set blackbox_gain_init=-5  # unstable
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import weights as weights_lib

RHO_TOLERANCE = 1e-3
MAX_DRIFT = math.log(10.0)   # flag a mean log step length this far above its value at H
_STATE_FIELDS = hrnn.PER_PARAMETER_FIELDS + ("tensor_hidden", "global_hidden")


class NoisyQuadratic(NamedTuple):
  eigenvalues: np.ndarray   # diagonal of H
  noise: float              # σ of the minibatch noise ξ

  @classmethod
  def make(cls, dim: int = 20, min_eig: float = 1e-2, max_eig: float = 1.0, noise: float = 0.1):
    return cls(np.geomspace(max_eig, min_eig, dim).astype(np.float32), float(noise))

  def loss(self, theta):
    return 0.5 * tf.reduce_sum(self.eigenvalues * tf.square(theta))

  def gradient(self, theta, xi):
    return self.eigenvalues * (theta - xi)


class Report(NamedTuple):
  rho: float                 # spectral radius of the joint (θ, state) dynamics
  rho_params: float          # spectral radius of the θ-θ block alone
  eigenvalues: np.ndarray
  stable: bool
  loss_ratios: dict          # {multiple_of_horizon: max loss / initial loss}
  bounded: dict              # {multiple_of_horizon: bool}
  log_lr: dict = {}          # {multiple_of_horizon (1 = H): mean log step length there}
  drift: float = math.nan    # max over (H, last multiple x H] of mean log step length - at H
  drift_ok: bool = True      # drift <= max_drift (MAX_DRIFT unless given)

  def as_dict(self):
    return {"rho": self.rho, "rho_params": self.rho_params, "stable": self.stable,
            "loss_ratios": {str(k): v for k, v in self.loss_ratios.items()},
            "bounded": {str(k): v for k, v in self.bounded.items()},
            "log_lr": {str(k): v for k, v in self.log_lr.items()}, "drift": self.drift,
            "drift_ok": self.drift_ok}


def _pack(theta, state: hrnn.State) -> tf.Tensor:
  # float32 throughout: a bfloat16-stored state (lean) is linearised in float32.
  return tf.concat([tf.reshape(theta, [-1])] + [
      tf.reshape(tf.cast(getattr(state, f), tf.float32), [-1]) for f in _STATE_FIELDS], axis=0)


def _unpack(z, template: hrnn.State, dim: int):
  theta, offset, values = z[:dim], dim, {}
  for f in _STATE_FIELDS:
    ref = getattr(template, f)
    size = int(np.prod(ref.shape))
    values[f] = tf.cast(tf.reshape(z[offset:offset + size], ref.shape), ref.dtype)
    offset += size
  return theta, template._replace(**values)


def analyse(meta, cfg: hrnn.HRNNConfig, problem: NoisyQuadratic, learning_rate: float = 1e-3,
            horizon: int = 1000, multiples=(10, 100), seed: int = 0,
            jit_compile: bool = True, max_drift: float = MAX_DRIFT) -> Report:
  """Linearised spectral radius after `horizon` steps, long-run boundedness and drift."""
  meta = {k: tf.constant(v, tf.float32) for k, v in meta.items()}
  dim = len(problem.eigenvalues)
  layout = hrnn.Layout([(dim,)])
  rng = np.random.default_rng(seed)
  theta0 = tf.constant(rng.standard_normal(dim), tf.float32)

  @tf.function(jit_compile=jit_compile, reduce_retracing=True, autograph=False)
  def run(theta, state, xis):
    def body(i, theta, state, worst, top):
      grad = problem.gradient(theta, xis[i])
      (update,), state = hrnn.step(meta, state, [grad], cfg, layout)
      theta = theta - update
      loss = problem.loss(theta)
      worst = tf.where(tf.math.is_finite(loss), tf.maximum(worst, loss), np.inf)
      log_lr = tf.reduce_mean(state.log_lr)
      top = tf.where(tf.math.is_finite(log_lr), tf.maximum(top, log_lr), top)
      return i + 1, theta, state, worst, top
    _, theta, state, worst, top = tf.while_loop(
        lambda i, *_: i < tf.shape(xis)[0], body,
        (0, theta, state, tf.constant(0.0), tf.constant(-np.inf)))
    return theta, state, worst, top

  def noise(steps):
    return tf.constant(problem.noise * rng.standard_normal((steps, dim)), tf.float32)

  state = hrnn.init_state(meta, layout, cfg, math.log(learning_rate))
  initial_loss = float(problem.loss(theta0))
  theta, state, _, _ = run(theta0, state, noise(horizon))
  log_lr = {1: float(tf.reduce_mean(state.log_lr))}

  # Linearise the one-step map at (θ_H, state_H), noise at its mean.
  z = _pack(theta, state)
  step_count = state.step

  def one_step(z):
    theta, st = _unpack(z, state, dim)
    st = st._replace(step=step_count)
    grad = problem.gradient(theta, tf.zeros_like(theta))
    (update,), st = hrnn.step(meta, st, [grad], cfg, layout)
    return _pack(theta - update, st)

  with tf.GradientTape() as tape:
    tape.watch(z)
    z_next = one_step(z)
  jacobian = tape.jacobian(z_next, z).numpy().astype(np.float64)
  if not np.all(np.isfinite(jacobian)):
    eigenvalues = np.array([np.inf])
  else:
    eigenvalues = np.linalg.eigvals(jacobian)
  rho = float(np.max(np.abs(eigenvalues)))
  block = jacobian[:dim, :dim]
  rho_params = float(np.max(np.abs(np.linalg.eigvals(block)))) if np.all(np.isfinite(block)) \
      else math.inf

  # Long runs: continue from the horizon to multiples of it.
  loss_ratios, bounded = {}, {}
  done = horizon
  worst_so_far, top_log_lr = 0.0, log_lr[1]
  for multiple in sorted(multiples):
    steps = multiple * horizon - done
    theta, state, worst, top = run(theta, state, noise(steps))
    worst_so_far = max(worst_so_far, float(worst))
    top_log_lr = max(top_log_lr, float(top))
    done = multiple * horizon
    ratio = worst_so_far / initial_loss
    loss_ratios[multiple] = ratio
    bounded[multiple] = bool(math.isfinite(ratio) and ratio < 10.0)
    log_lr[multiple] = float(tf.reduce_mean(state.log_lr))
  drift = top_log_lr - log_lr[1]
  return Report(rho=rho, rho_params=rho_params, eigenvalues=eigenvalues,
                stable=bool(rho <= 1.0 + RHO_TOLERANCE), loss_ratios=loss_ratios,
                bounded=bounded, log_lr=log_lr, drift=drift,
                drift_ok=bool(math.isfinite(drift) and drift <= max_drift))


def table(reports: dict, max_drift: float = MAX_DRIFT) -> str:
  """The markdown table of `python -m learned_opt.stability` (reports at multiples 10, 100)."""
  lines = ["| weights | ρ(joint) | ρ(θ block) | ρ ≤ 1 | max loss/initial, 10H | 100H | "
           "bounded 10H / 100H | mean log step length H / 10H / 100H | max drift above H | "
           f"drift ≤ {max_drift:.3g} |", "|---|---:|---:|---|---:|---:|---|---:|---:|---|"]
  for name, r in reports.items():
    log_lr = " / ".join(f"{r.log_lr[m]:+.2f}" for m in (1, 10, 100))
    lines.append(
        f"| {name} | {r.rho:.4f} | {r.rho_params:.4f} | {'yes' if r.stable else 'NO'} | "
        f"{r.loss_ratios[10]:.3g} | {r.loss_ratios[100]:.3g} | "
        f"{'yes' if r.bounded[10] else 'NO'} / {'yes' if r.bounded[100] else 'NO'} | "
        f"{log_lr} | {r.drift:+.2f} | {'yes' if r.drift_ok else 'NO'} |")
  return "\n".join(lines)


def plot(reports: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, len(reports), figsize=(4.2 * len(reports), 4.2), squeeze=False)
  circle = np.exp(1j * np.linspace(0, 2 * np.pi, 400))
  for ax, (name, report) in zip(axes[0], reports.items()):
    ax.plot(circle.real, circle.imag, "k-", lw=0.8)
    ev = report.eigenvalues[np.isfinite(report.eigenvalues)]
    ax.scatter(ev.real, ev.imag, s=10, color="tab:red" if not report.stable else "tab:blue")
    lim = max(1.2, float(np.max(np.abs(ev))) * 1.1 if ev.size else 1.2)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_aspect("equal")
    ax.set_title(f"{name}\nρ = {report.rho:.4f}", fontsize=9)
    ax.set_xlabel("Re λ")
  axes[0][0].set_ylabel("Im λ")
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=120)
  plt.close(fig)


def load_meta(spec: str, config_name: str | None, overrides: dict, seed: int = 0):
  """(meta numpy dict, config) from a weights spec or 'none' (untrained)."""
  if spec.lower() == "none":
    cfg = dataclasses.replace(config_lib.get(config_name), **overrides)
    return hrnn.init_meta_params(cfg, seed), cfg
  loaded = weights_lib.load(spec)
  if overrides:
    raise ValueError("--set overrides only apply to untrained (--weights none) optimizers")
  return loaded.meta, loaded.config


def parse_overrides(items) -> dict:
  """['field=value', ...] -> {field: typed value} for HRNNConfig."""
  fields = {f.name: f for f in dataclasses.fields(config_lib.HRNNConfig)}
  overrides = {}
  for item in items:
    name, sep, text = item.partition("=")
    if not sep or name not in fields:
      raise ValueError(f"--set {item!r}: expected field=value with a field of HRNNConfig "
                       f"({sorted(fields)})")
    default = getattr(config_lib.HRNNConfig(), name)
    if isinstance(default, bool):
      overrides[name] = text.lower() in ("1", "true", "yes")
    else:
      overrides[name] = type(default)(float(text)) if isinstance(default, (int, float)) else text
  return overrides


def main(argv=None):
  from absl import app, flags
  flags.DEFINE_list("weights", ["default"], "Weights specs (shipped names, paths, or 'none').")
  flags.DEFINE_string("config", "paper", "Preset for --weights none.")
  flags.DEFINE_list("set", [], "Config overrides field=value for --weights none, e.g. "
                    "blackbox_gain_init=-5 (a deliberately unstable, ascending optimizer).")
  flags.DEFINE_float("learning_rate", 1e-3, "Initial step length.")
  flags.DEFINE_integer("dim", 20, "Dimension of the noisy quadratic.")
  flags.DEFINE_float("min_eig", 1e-2, "Smallest Hessian eigenvalue.")
  flags.DEFINE_float("max_eig", 1.0, "Largest Hessian eigenvalue.")
  flags.DEFINE_float("noise", 0.1, "Std of the minibatch noise ξ.")
  flags.DEFINE_integer("horizon", 1000, "Meta-training horizon (steps before linearising).")
  flags.DEFINE_string("out", "benchmarks/results/stability.png", "Eigenvalue plot.")
  flags.DEFINE_bool("jit", True, "Compile the runs with XLA (faster for long horizons).")
  flags.DEFINE_float("max_drift", MAX_DRIFT, "Flag a mean log step length that rises more than "
                     "this (nats) above its value at the horizon (default ln 10).")
  FLAGS = flags.FLAGS

  def run(argv):
    del argv
    problem = NoisyQuadratic.make(FLAGS.dim, FLAGS.min_eig, FLAGS.max_eig, FLAGS.noise)
    overrides = parse_overrides(FLAGS.set)
    reports = {}
    for spec in FLAGS.weights:
      meta, cfg = load_meta(spec, FLAGS.config, overrides)
      name = spec if spec.lower() != "none" else f"untrained {FLAGS.config}"
      reports[name] = analyse(meta, cfg, problem, FLAGS.learning_rate, FLAGS.horizon,
                              jit_compile=FLAGS.jit, max_drift=FLAGS.max_drift)
    print(f"noisy quadratic: d={FLAGS.dim}, eig(H) in [{FLAGS.min_eig}, {FLAGS.max_eig}], "
          f"σ={FLAGS.noise}, horizon H={FLAGS.horizon}, initial step {FLAGS.learning_rate}\n")
    print(table(reports, FLAGS.max_drift))
    plot(reports, FLAGS.out)
    with open(os.path.splitext(FLAGS.out)[0] + ".json", "w") as f:
      json.dump({k: r.as_dict() for k, r in reports.items()}, f, indent=1)
    print(f"\nplot: {FLAGS.out}")

  app.run(run, argv)


if __name__ == "__main__":
  main()
