"""Truncated partial unrolls of the hierarchical RNN on one problem, with their meta-gradient.

Seed paper 1 §4.2-4.4, hrnn_reference.md §3. One partial unroll is n optimizer steps on one
problem instance, starting from carried parameters and optimizer state (`Carry`). Its
meta-loss is eq. 14 in the reference form (meta/objective.py) and its meta-gradient is full
backpropagation through the n steps, truncated at the unroll's start: the carried parameters
and state are constants here, so no gradient crosses unroll boundaries.

Speed. The whole unroll - inner loop, meta-loss and meta-gradient - is ONE
`tf.function(jit_compile=True)` call. The inner loop is a `tf.while_loop` with a *dynamic*
trip count (`num_steps` is a tensor) bounded by a static `maximum_iterations`, so one XLA
compilation per problem *name* serves every unroll length and every instance (data are
arguments, never captured constants). The loop also stops early when the loss stops being
finite (the reference's finite check), which ends that trajectory.

Second derivatives (reference `use_second_derivatives`, on by default) flow through the
problem gradients; `second_derivatives=False` applies `tf.stop_gradient` to them.
"""

from __future__ import annotations

from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from learned_opt import hrnn
from learned_opt.config import HRNNConfig
from meta import objective


class Carry(NamedTuple):
  """What a trajectory carries from one partial unroll to the next."""
  params: list            # problem parameters (the variables' values phi).
  state: hrnn.State       # optimizer state.
  initial_loss: tf.Tensor # f_init: full-data loss at the trajectory start.


class UnrollOutput(NamedTuple):
  meta_loss: tf.Tensor          # eq. 14 over this unroll (NaN/Inf if the problem diverged).
  meta_grads: dict              # d meta_loss / d meta-params ({} when gradients are off).
  carry: Carry                  # parameters and state after the unroll.
  steps: tf.Tensor              # int32: steps actually run (< num_steps if it diverged).
  final_loss: tf.Tensor         # full-data loss after the last update.
  finite: tf.Tensor             # bool: meta-loss and parameters finite.
  log_lr_mean: tf.Tensor        # statistics of the per-parameter log step lengths at the end.
  log_lr_std: tf.Tensor
  log_lr_min: tf.Tensor
  log_lr_max: tf.Tensor


def start_carry(problem, meta: Mapping[str, tf.Tensor], config: HRNNConfig, data,
                init_seed: int, log_lr_seed, lr_range=(1e-6, 1e-2),
                state: hrnn.State | None = None) -> Carry:
  """Carry at a trajectory start: fresh parameters, f_init, and fresh state unless given.

  Args:
    log_lr_seed: int32 [2] seed of `hrnn.sample_initial_log_lr` (reference §1.6 distribution).
    state: optimizer state to keep instead of a fresh one (reset rule, see meta/trainer.py).
  """
  layout = hrnn.Layout(problem.param_shapes())
  params = [tf.constant(p) for p in problem.initial_params(int(init_seed), data)]
  if state is None:
    log_lr = hrnn.sample_initial_log_lr(layout, tf.constant(log_lr_seed, tf.int32),
                                        lr_range=lr_range, max_log_lr=config.max_log_lr)
    state = hrnn.init_state(meta, layout, config, log_lr)
  initial_loss = _full_loss(problem, params, data)
  return Carry(params, state, initial_loss)


def _full_loss(problem, params, data):
  # Compiled so that eager and XLA values of f_init agree with what the unroll computes.
  return _compiled_full_loss(problem)(list(params), dict(data))


_FULL_LOSS_CACHE: dict[str, Callable] = {}


def _compiled_full_loss(problem):
  if problem.name not in _FULL_LOSS_CACHE:
    _FULL_LOSS_CACHE[problem.name] = tf.function(
        lambda params, data: problem.full_loss(params, data), jit_compile=True)
  return _FULL_LOSS_CACHE[problem.name]


def unroll(problem, meta: Mapping[str, tf.Tensor], carry: Carry, data, num_steps, seed,
           config: HRNNConfig, *, max_steps: int, second_derivatives: bool = True,
           compute_gradients: bool = True) -> UnrollOutput:
  """One partial unroll (uncompiled; `Unroller` compiles it per problem name).

  Args:
    meta: meta-parameter values (tensors, not variables: the function is pure).
    num_steps: int32 scalar tensor, 1 <= num_steps <= max_steps.
    seed: int32 [2]; step i of the unroll uses stateless_fold_in(seed, i) for its minibatch,
      noise and masks.
    max_steps: static bound of the while loop (sizes XLA's gradient accumulators).
  """
  layout = hrnn.Layout(problem.param_shapes())
  meta = {k: tf.convert_to_tensor(v) for k, v in meta.items()}
  num_steps = tf.minimum(tf.cast(num_steps, tf.int32), max_steps)
  seed = tf.cast(seed, tf.int32)
  needs_full_loss = problem.batch_size is not None

  def loss_at(params, state):
    return problem.full_loss(hrnn.true_params(params, state, layout), data)

  def body_and_loss():
    initial_loss = tf.convert_to_tensor(carry.initial_loss, tf.float32)
    start_term = objective.log_relative_loss(loss_at(carry.params, carry.state), initial_loss)

    def cond(i, params, state, total):
      return tf.logical_and(i < num_steps, tf.math.is_finite(total))

    def body(i, params, state, total):
      minibatch_loss, grads = problem.gradients(
          params, data, tf.random.experimental.stateless_fold_in(seed, i))
      if not second_derivatives:
        grads = [tf.stop_gradient(g) for g in grads]
      # Full-batch problems: the minibatch loss *is* the full loss at these parameters (noise
      # and masks touch only the gradients); attention would evaluate at theta instead.
      if needs_full_loss or config.use_attention:
        loss = loss_at(params, state)
      else:
        loss = minibatch_loss
      total = total + objective.log_relative_loss(loss, initial_loss)
      out = hrnn.step(meta, state, grads, config, layout)
      params = [p - u for p, u in zip(params, out.updates)]
      return i + 1, params, out.state, total

    steps, params, state, total = tf.while_loop(
        cond, body, (tf.constant(0), list(carry.params), carry.state, start_term),
        maximum_iterations=max_steps)
    meta_loss = total / (tf.cast(steps, tf.float32) + 1.0)
    return meta_loss, steps, params, state

  if compute_gradients:
    with tf.GradientTape() as tape:
      tape.watch(meta)
      meta_loss, steps, params, state = body_and_loss()
    meta_grads = tape.gradient(meta_loss, meta,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
  else:
    meta_loss, steps, params, state = body_and_loss()
    meta_grads = {}
  final_loss = loss_at(params, state)
  finite = tf.math.is_finite(meta_loss)
  for p in params:
    finite = tf.logical_and(finite, tf.reduce_all(tf.math.is_finite(p)))
  log_lr = state.log_lr
  mean = tf.reduce_mean(log_lr)
  return UnrollOutput(
      meta_loss=meta_loss, meta_grads=dict(meta_grads),
      carry=Carry(params, state, carry.initial_loss), steps=steps, final_loss=final_loss,
      finite=finite, log_lr_mean=mean,
      log_lr_std=tf.sqrt(tf.reduce_mean(tf.square(log_lr - mean))),
      log_lr_min=tf.reduce_min(log_lr), log_lr_max=tf.reduce_max(log_lr))


_COMPILED: dict[tuple, Callable] = {}


class Unroller:
  """Caches one compiled unroll function per problem name (and mode).

  Args:
    mode: "xla" (tf.function(jit_compile=True), the default and fastest on CPU),
      "function" (tf.function without XLA) or "eager" (benchmarks and debugging).
  """

  MODES = ("xla", "function", "eager")

  def __init__(self, config: HRNNConfig, *, max_steps: int, second_derivatives: bool = True,
               mode: str = "xla"):
    if mode not in self.MODES:
      raise ValueError(f"unknown unroll mode {mode!r}; choose one of {self.MODES}")
    if max_steps < 1:
      raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    self.config = config
    self.max_steps = int(max_steps)
    self.second_derivatives = bool(second_derivatives)
    self.mode = mode
    self._names: set = set()

  def function_for(self, problem, compute_gradients: bool = True) -> Callable:
    # Process-wide cache: every Unroller with the same settings (trainers, evaluation,
    # tests) shares one compiled function per problem name.
    key = (self.config.to_json(), self.max_steps, self.second_derivatives, self.mode,
           problem.name, compute_gradients)
    self._names.add(problem.name)
    if key not in _COMPILED:
      def fn(meta, carry, data, num_steps, seed):
        return unroll(problem, meta, carry, data, num_steps, seed, self.config,
                      max_steps=self.max_steps, second_derivatives=self.second_derivatives,
                      compute_gradients=compute_gradients)
      if self.mode != "eager":
        fn = tf.function(fn, jit_compile=self.mode == "xla", reduce_retracing=False)
      _COMPILED[key] = fn
    return _COMPILED[key]

  def __call__(self, problem, meta, carry: Carry, data, num_steps, seed,
               compute_gradients: bool = True) -> UnrollOutput:
    fn = self.function_for(problem, compute_gradients)
    return fn(dict(meta), carry, dict(data), tf.constant(num_steps, tf.int32),
              tf.constant(seed, tf.int32))

  def __len__(self):
    """Number of problems this unroller has run (each compiled once per process)."""
    return len(self._names)


def data_tensors(data: Mapping[str, np.ndarray]) -> dict[str, tf.Tensor]:
  return {k: tf.constant(v) for k, v in data.items()}


def carry_to_numpy(carry: Carry) -> dict[str, np.ndarray]:
  """Flat {name: array} of a carry (for checkpoints); inverse of `carry_from_numpy`."""
  out = {f"param/{i}": np.asarray(p) for i, p in enumerate(carry.params)}
  for field, value in zip(hrnn.State._fields, carry.state):
    out[f"state/{field}"] = np.asarray(value)
  out["initial_loss"] = np.asarray(carry.initial_loss)
  return out


def carry_from_numpy(arrays: Mapping[str, np.ndarray], num_params: int) -> Carry:
  params = [tf.constant(arrays[f"param/{i}"]) for i in range(num_params)]
  state = hrnn.State(*[tf.constant(arrays[f"state/{f}"]) for f in hrnn.State._fields])
  return Carry(params, state, tf.constant(arrays["initial_loss"]))
