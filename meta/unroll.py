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
problem gradients; `second_derivatives=False` applies `tf.stop_gradient` to them. The
backward pass recomputes each step's problem gradient from the step's parameters instead of
keeping its intermediates (`_recomputed`), except for networks: the same meta-gradient, less
to keep per step.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np
import tensorflow as tf

from learned_opt import hrnn
from learned_opt.config import HRNNConfig
from meta import objective
from meta import profile
from problems import base as problems_base


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
                state: hrnn.State | None = None, unroller=None) -> Carry:
  """Carry at a trajectory start: fresh parameters, f_init, and fresh state unless given.

  Args:
    log_lr_seed: int32 [2] seed of `hrnn.sample_initial_log_lr` (reference §1.6 distribution).
    state: optimizer state to keep instead of a fresh one (reset rule, see meta/trainer.py).
    unroller: computes f_init with its compiled loss (one per group when bucketed); else a
      compiled loss per problem.
  """
  layout = hrnn.Layout(problem.param_shapes())
  params = [tf.constant(p) for p in problem.initial_params(int(init_seed), data)]
  if state is None:
    log_lr = hrnn.sample_initial_log_lr(layout, tf.constant(log_lr_seed, tf.int32),
                                        lr_range=lr_range, max_log_lr=config.max_log_lr)
    state = hrnn.init_state(meta, layout, config, log_lr)
  if unroller is not None:
    initial_loss = unroller.full_loss(problem, params, data)
  else:
    initial_loss = _full_loss(problem, params, data)
  return Carry(params, state, initial_loss)


def _full_loss(problem, params, data):
  # Compiled so that eager and XLA values of f_init agree with what the unroll computes.
  fresh = problem.name not in _FULL_LOSS_CACHE
  return profile.call(_compiled_full_loss(problem), (list(params), dict(data)), fresh,
                      exec_category="data")


_FULL_LOSS_CACHE: dict[str, Callable] = {}


def _compiled_full_loss(problem):
  if problem.name not in _FULL_LOSS_CACHE:
    def full_loss(params, data):
      return problem.full_loss(params, data)
    _FULL_LOSS_CACHE[problem.name] = compile_fn(full_loss, "xla")
  return _FULL_LOSS_CACHE[problem.name]


_QUIET = threading.local()   # .depth > 0: this thread is inside no_op_tracebacks()
_QUIET_INSTALLED: list = []  # [True] once TF's op constructor is wrapped


def _install_quiet_switch() -> bool:
  """Wraps TF's private op constructor, once, so that it skips the stack trace while the calling
  thread is inside `no_op_tracebacks`; False (nothing done) where the constructor lacks the
  `extract_traceback` argument."""
  if _QUIET_INSTALLED:
    return True
  from tensorflow.python.framework import ops  # pylint: disable=import-outside-toplevel
  create = getattr(ops, "_create_c_op", None)
  try:
    if create is None or "extract_traceback" not in inspect.signature(create).parameters:
      return False
  except (TypeError, ValueError):
    return False

  @functools.wraps(create)
  def create_c_op(*args, **kwargs):
    if getattr(_QUIET, "depth", 0):
      kwargs["extract_traceback"] = False
    return create(*args, **kwargs)
  ops._create_c_op = create_c_op  # pylint: disable=protected-access
  _QUIET_INSTALLED.append(True)
  return True


@contextlib.contextmanager
def no_op_tracebacks():
  """Ops this thread creates inside do not record the Python stack that created them.

  TensorFlow keeps, for every traced op, the Python stack at its creation (for "defined at"
  lines in graph-execution errors). A compiled unroll's graph has tens of thousands of ops with
  its meta-gradient, and those traces were ~20 % of what the process keeps for the life of
  the functions: the default problem set's 16 groups (eighth session's code), all compiled,
  held 5.6 GB with them and 4.5 GB without, and compiled in ~7 % less CPU time. Errors raised
  while tracing keep their Python tracebacks; only a runtime error inside the compiled
  function loses the "defined at" lines. Other threads, and ops outside, are untouched;
  nesting is fine. A no-op where TF's private op constructor has another signature.
  """
  _install_quiet_switch()
  _QUIET.depth = getattr(_QUIET, "depth", 0) + 1
  try:
    yield
  finally:
    _QUIET.depth -= 1


def compile_fn(fn: Callable, mode: str) -> Callable:
  """`fn` as the meta-trainer compiles it: tf.function (XLA for mode "xla"), traced without
  op tracebacks (`no_op_tracebacks`) and without autograph (the unrolls use tf.while_loop and
  tf.switch_case explicitly; converting their source cost ~25 % of the tracing CPU); mode
  "eager" returns `fn` itself."""
  if mode == "eager":
    return fn

  @functools.wraps(fn)
  def traced(*args, **kwargs):
    with no_op_tracebacks():
      return fn(*args, **kwargs)
  return tf.function(traced, jit_compile=mode == "xla", reduce_retracing=False, autograph=False)


class _Target(NamedTuple):
  """What the unroll loop needs from a problem, on the flat parameter vector."""
  gradients: Callable   # (flat params, step seed) -> (objective loss or None, flat gradient)
  full_loss: Callable   # flat params -> full-data loss
  segments: hrnn.Segments
  needs_full_loss: bool # the meta-objective's f is the full loss (minibatch problems)
  recompute: bool       # the meta-gradient recomputes the gradients (`_recomputed`)


def _recompute(problems) -> bool:
  """Whether the meta-gradient recomputes these problems' gradients instead of keeping their
  intermediates: yes, except for networks (`Problem.compile_alone`). Measured (CPU per 64-step
  unroll with meta-gradient, one core, identical meta-gradients): a group of 16 small
  problems 37 -> 25 ms, `logreg_f100_sep1_b50` alone 56 -> 40 ms, at the same compile time;
  a GRU network 3.25 -> 3.54 s and its compile 62 -> 387 CPU-s (the Hessian-vector product
  through its own sequence loop), so networks keep their intermediates."""
  return not any(getattr(p, "compile_alone", False) for p in problems)


def _masked_segments(ids, element_mask, tensor_mask, parameter_mask):
  """Segments of an instance that masks some of its parameters (`Problem.parameter_masks`):
  masked rows get no update and no weight in any per-tensor or problem-wide statistic, and a
  tensor with no row left is no tensor (tensor mask 0)."""
  element_mask = element_mask * parameter_mask
  counts = tf.math.unsorted_segment_sum(element_mask, ids, int(tensor_mask.shape[0]))
  tensor_mask = tensor_mask * tf.cast(counts > 0, tf.float32)
  return hrnn.Segments.padded(ids, counts, element_mask, tensor_mask, masked_rows=True)


def _flat_parameter_mask(problem, layout: hrnn.Layout, data, rows: int) -> tf.Tensor:
  """The instance's parameter masks as one flat float32 vector of `rows` (0 past the layout)."""
  masks = [tf.cast(m, tf.float32) for m in problem.parameter_masks(data)]
  return tf.pad(layout.flatten(masks), [[0, rows - layout.total]])


def _problem_target(problem, data, meta_loss: str = "full") -> _Target:
  """The target of one problem at its own size (no padding)."""
  layout = hrnn.Layout(problem.param_shapes())
  segments, mask = hrnn.Segments.from_layout(layout), None
  if problem.masked_parameters:
    mask = _flat_parameter_mask(problem, layout, data, layout.total)
    segments = _masked_segments(segments.ids, tf.ones([layout.total]),
                                tf.ones([layout.num_tensors]), mask)

  def gradients(flat, step_seed):
    loss, grads = problem.gradients(layout.unflatten(flat), data, step_seed)
    grad = layout.flatten(grads)
    return loss, grad if mask is None else grad * mask

  return _Target(gradients, lambda flat: problem.full_loss(layout.unflatten(flat), data),
                 segments, problem.batch_size is not None and meta_loss == "full",
                 _recompute([problem]))


def unroll(problem, meta: Mapping[str, tf.Tensor], carry: Carry, data, num_steps, seed,
           config: HRNNConfig, *, max_steps: int, second_derivatives: bool = True,
           compute_gradients: bool = True, meta_loss: str = "full") -> UnrollOutput:
  """One partial unroll of one problem (uncompiled; `Unroller` compiles it).

  Args:
    meta: meta-parameter values (tensors, not variables: the function is pure).
    num_steps: int32 scalar tensor, 1 <= num_steps <= max_steps.
    seed: int32 [2]; step i of the unroll uses stateless_fold_in(seed, i) for its minibatch,
      noise and masks.
    max_steps: static bound of the while loop (sizes XLA's gradient accumulators).
    meta_loss: the f of a minibatched problem's meta-objective at each inner step: "full"
      (the loss on all of the instance's data) or "batch" (the loss of the step's own
      minibatch, already computed for the gradient: no extra forward pass). See META_LOSSES.
  """
  _check_meta_loss(meta_loss)
  layout = hrnn.Layout(problem.param_shapes())
  out = _unroll_flat(_problem_target(problem, data, meta_loss), meta, layout.flatten(carry.params),
                     carry.state, carry.initial_loss, num_steps, seed, config,
                     max_steps=max_steps, second_derivatives=second_derivatives,
                     compute_gradients=compute_gradients)
  flat_params = out.carry.params[0]
  return out._replace(carry=Carry(layout.unflatten(flat_params), out.carry.state,
                                  carry.initial_loss))


# The per-step f of the meta-objective for minibatched problems. "full": the whole instance's
# loss at every step (exact, but one extra forward pass over all the data: 16-32x the step's
# own cost on the network tasks, whose instances hold 512-1024 samples at batch 32).
# "batch": the loss of the minibatch the step's gradient came from (at the same parameters),
# as learned_optimization's truncated trainers and Celo use; unbiased for the full loss, noisy
# per step but averaged over a truncation. Full-batch problems are the same under both.
META_LOSSES = ("full", "batch")


def _check_meta_loss(meta_loss: str) -> None:
  if meta_loss not in META_LOSSES:
    raise ValueError(f"unknown meta_loss {meta_loss!r}; choose one of {META_LOSSES}")


def _unroll_flat(target: _Target, meta, params, state, initial_loss, num_steps, seed,
                 config: HRNNConfig, *, max_steps: int, second_derivatives: bool,
                 compute_gradients: bool) -> UnrollOutput:
  """The unroll loop on a flat parameter vector [N] (the carry's params is [flat])."""
  seg = target.segments
  meta = {k: tf.convert_to_tensor(v) for k, v in meta.items()}
  num_steps = tf.minimum(tf.cast(num_steps, tf.int32), max_steps)
  seed = tf.cast(seed, tf.int32)
  initial_loss = tf.convert_to_tensor(initial_loss, tf.float32)

  def theta(flat, state):
    """True parameters from the variables' values (they differ only with attention)."""
    if state.attention_offset.shape[0] == 0:
      return flat
    return flat - state.attention_offset

  def body_and_loss():
    start_term = objective.log_relative_loss(target.full_loss(theta(params, state)),
                                             initial_loss)

    def cond(i, flat, state, total):
      return tf.logical_and(i < num_steps, tf.math.is_finite(total))

    gradients = target.gradients
    if compute_gradients and target.recompute:
      gradients = _recomputed(gradients)
    step = _recomputed_step(config, seg) if compute_gradients else functools.partial(
        _plain_step, config=config, seg=seg)

    def body(i, flat, state, total):
      minibatch_loss, grad = gradients(flat, tf.random.experimental.stateless_fold_in(seed, i))
      if not second_derivatives:
        grad = tf.stop_gradient(grad)
      # Full-batch problems: the minibatch loss *is* the full loss at these parameters (noise
      # and masks touch only the gradients); attention would evaluate at theta instead.
      if target.needs_full_loss or config.use_attention:
        loss = target.full_loss(theta(flat, state))
      else:
        loss = minibatch_loss
      total = total + objective.log_relative_loss(loss, initial_loss)
      update, state = step(meta, state, grad)
      return i + 1, flat - update, state, total

    steps, flat, new_state, total = tf.while_loop(
        cond, body, (tf.constant(0), params, state, start_term),
        maximum_iterations=max_steps)
    meta_loss = total / (tf.cast(steps, tf.float32) + 1.0)
    return meta_loss, steps, flat, new_state

  if compute_gradients:
    with tf.GradientTape() as tape:
      tape.watch(meta)
      meta_loss, steps, flat, new_state = body_and_loss()
    meta_grads = tape.gradient(meta_loss, meta,
                               unconnected_gradients=tf.UnconnectedGradients.ZERO)
  else:
    meta_loss, steps, flat, new_state = body_and_loss()
    meta_grads = {}
  final_loss = target.full_loss(theta(flat, new_state))
  finite = tf.logical_and(tf.math.is_finite(meta_loss),
                          tf.reduce_all(tf.math.is_finite(flat)))
  log_lr = new_state.log_lr
  mean = seg.element_mean(log_lr)
  if seg.element_mask is None:
    low, high = tf.reduce_min(log_lr), tf.reduce_max(log_lr)
  else:
    real = seg.element_mask > 0
    low = tf.reduce_min(tf.where(real, log_lr, np.inf))
    high = tf.reduce_max(tf.where(real, log_lr, -np.inf))
  return UnrollOutput(
      meta_loss=meta_loss, meta_grads=dict(meta_grads),
      carry=Carry([flat], new_state, initial_loss), steps=steps, final_loss=final_loss,
      finite=finite, log_lr_mean=mean,
      log_lr_std=tf.sqrt(seg.element_mean(tf.square(log_lr - mean))),
      log_lr_min=low, log_lr_max=high)


def _plain_step(meta, state, grad, *, config, seg):
  return hrnn.step_flat(meta, state, grad, config, seg)


def _recomputed_step(config: HRNNConfig, seg) -> Callable:
  """`hrnn.step_flat(meta, state, grad)` whose backward pass recomputes the step from its inputs.

  The inner loop's gradient otherwise keeps every intermediate of every optimizer step (the
  features, the three GRUs' gates, the direction before its normalisation: ~190 floats per
  parameter and step with the paper preset) in accumulators sized by the loop's static bound,
  and TF's CPU allocator pool keeps the largest such buffer a process ever used: measured on
  `quadratic_d2048` (max_steps 256), 525 MB kept after one unroll, 134 MB with the system
  allocator. Recomputed, the loop keeps the step's inputs only (its state and gradient), and
  the backward pass runs the step once more: the same meta-gradient, the forward step twice.
  """
  fields = [f for f in hrnn.State._fields if f != "step"]

  def step(meta, state, grad):
    keys = sorted(meta)
    n, k = len(keys), len(fields)

    def call(inputs):
      values = dict(zip(fields, inputs[n:n + k]))
      update, new = hrnn.step_flat(dict(zip(keys, inputs[:n])),
                                   hrnn.State(step=state.step, **values), inputs[n + k],
                                   config, seg)
      # Float32 across the boundary: bfloat16-stored fields (`config.state_dtype`) as inputs
      # and outputs made XLA's recomputed backward pass 2x slower; the values are the same.
      return [update] + [tf.cast(getattr(new, f), tf.float32) for f in fields]

    fn = _recomputed_in_backward(lambda *inputs: call(list(inputs)))
    outputs = fn(*[meta[key] for key in keys],
                 *[tf.cast(getattr(state, f), tf.float32) for f in fields], grad)
    stored = {f: tf.cast(value, getattr(state, f).dtype) for f, value in zip(fields, outputs[1:])}
    return outputs[0], hrnn.State(step=state.step + 1, **stored)
  return step


def _recomputed(gradients: Callable) -> Callable:
  """`gradients(flat, step_seed)` whose backward pass recomputes it from its inputs.

  Without this, the gradient of the inner loop keeps every intermediate of the problem's
  gradient computation at every step - for a group's switch, every branch's intermediates,
  zeros for the branches not taken - as one stacked accumulator each. Recomputed, the loop keeps
  only the flat parameters and the step seed, and the backward pass of a step evaluates the
  problem's gradient once more (a Hessian-vector product through it): the same values.
  """
  return _recomputed_in_backward(lambda flat, step_seed: list(gradients(flat, step_seed)))


def _recomputed_in_backward(fn: Callable) -> Callable:
  """`fn(*tensors) -> list of tensors` whose backward pass runs `fn` again from its inputs,
  under a tape, instead of keeping its intermediates (`_recomputed`, `_recomputed_step`).
  Floating-point inputs get their gradients; the others (seeds) none."""
  @tf.custom_gradient
  def wrapped(*inputs):
    def backward(*d_outputs):
      floating = [x for x in inputs if x.dtype.is_floating]
      with tf.GradientTape() as tape:
        tape.watch(floating)
        again = fn(*inputs)
      d_outputs = [tf.zeros_like(y) if d is None else d for y, d in zip(again, d_outputs)]
      grads = iter(tape.gradient(again, floating, output_gradients=d_outputs,
                                 unconnected_gradients=tf.UnconnectedGradients.ZERO))
      return [next(grads) if x.dtype.is_floating else None for x in inputs]
    return fn(*inputs), backward
  return wrapped


_COMPILED: dict[tuple, Callable] = {}

# Size buckets: a problem of N parameters runs padded to max(MIN_ROWS, next power of 2 >= N)
# rows, in a group of at most MAX_BRANCHES branches (one compiled function per group). A
# problem and its noisy copies share one branch (`_branch_key`). Measured limits shape the
# groups. XLA's compile time and memory grow faster than linearly with the branches (16 small
# ones: 35 CPU-s; 24 composite ones: 160 CPU-s and 3.6 GB). On the default set, all groups
# compiled in one process (one core each, side by side, system allocator): at most 16
# branches, 8 groups, 470 CPU-s, 4.0 GB peak (the 16-branch group of composites alone
# 174 CPU-s and +1.2 GB while compiling); at most 8, 13 groups, 416 CPU-s, 3.3 GB peak and
# 0.26 GB less kept afterwards. The last, partly filled group of a size moves up into the next
# size's groups, if that size is at most CARRY_UP_ROWS, instead of compiling on its own: at
# those sizes the padded rows cost little. Data cost the other branches nothing: it is
# unpacked outside the loop (`_Group.target`), and the meta-gradient recomputes a step's
# problem gradient (`_recomputed`) instead of stacking every branch's intermediates at every
# step (before that, minibatched problems with much batched data had to compile alone: 6 of
# them in one function ran 10x slower per step; now the same 6 in one group run no slower
# than alone). Networks (`Problem.compile_alone`) get a group of their own: a group of network
# structures did not finish compiling.
MIN_ROWS = 64
MAX_BRANCHES = 8
CARRY_UP_ROWS = 512
_DATA_DTYPES = (np.float32, np.int32)


def padded_rows(num_params: int) -> int:
  return max(MIN_ROWS, 1 << max(int(num_params) - 1, 0).bit_length())


def _shared_noise(problem) -> bool:
  """Whether the problem's gradient noise is the base class's (a level times N(0, 1) on every
  entry), so that the level can be a tensor (`Problem.gradients(noise_stdev=...)`)."""
  kind = type(problem)
  return (kind.gradients is problems_base.Problem.gradients
          and kind.perturb_gradients is problems_base.Problem.perturb_gradients)


def _branch_key(problem) -> tuple:
  """Problems with one key compute the same loss graph from their data, and share a branch of
  a group's switch:
  - problems of one padding family (`Problem.padding_family`: one parameter tensor, constants
    as data), of equal trailing dimensions and batch size, whatever their leading dimension
    ("norm_d19_p1", "norm_d27_p1", "norm_d22_p3_noise0.1"): the branch evaluates the largest
    one's loss on the others' parameters and data zero-padded to its shapes (`_Group`);
  - a problem and its noisy copies ("logreg_f10_sep2_b100", "logreg_f10_sep2_b100_noise0.5"),
    whose names differ only in the noise suffix.
  Where the noise is the base class's, the noise level is data; otherwise it is part of the
  key."""
  family = problem.padding_family()
  if family is not None:
    shapes = problem.param_shapes()
    if len(shapes) != 1 or not shapes[0]:
      raise ValueError(f"{problem.name}: a padding family needs one parameter tensor of rank "
                       f">= 1, got shapes {shapes}")
    noise = () if _shared_noise(problem) else (problem.noise_stdev,)
    entries = tuple((key, len(shape), kind) for key, shape, kind, _ in
                    _data_spec(problem).entries)
    return ("pad", family, tuple(shapes[0][1:]), problem.batch_size, entries, noise)
  suffix = problems_base.noise_suffix(problem.noise_stdev)
  if not _shared_noise(problem) or (suffix and not problem.name.endswith(suffix)):
    return ("problem", problem.name)
  stem = problem.name[:len(problem.name) - len(suffix)]
  return ("noise", type(problem).__module__, type(problem).__qualname__, stem,
          tuple(tuple(s) for s in problem.param_shapes()), problem.batch_size,
          _data_spec(problem).entries)


class _DataSpec(NamedTuple):
  """Static layout of one problem's data dict inside a group's flat data buffers."""
  entries: tuple            # (key, shape, dtype index, offset)
  sizes: tuple              # total elements per dtype


_DATA_SPECS: dict[str, _DataSpec] = {}


def _data_spec(problem, data=None) -> _DataSpec:
  """The problem's data layout (from one sample instance; every instance has these shapes)."""
  if problem.name not in _DATA_SPECS:
    if data is None:
      data = problem.sample_data(0)
    entries, sizes = [], [0] * len(_DATA_DTYPES)
    for key in sorted(data):
      value = np.asarray(data[key])
      kinds = [i for i, d in enumerate(_DATA_DTYPES) if value.dtype == d]
      if not kinds:
        raise ValueError(f"{problem.name}: data entry {key!r} has dtype {value.dtype}; the "
                         "bucketed unroll packs float32 and int32 data only")
      entries.append((key, tuple(value.shape), kinds[0], sizes[kinds[0]]))
      sizes[kinds[0]] += int(value.size)
    _DATA_SPECS[problem.name] = _DataSpec(tuple(entries), tuple(sizes))
  return _DATA_SPECS[problem.name]


class _Group:
  """Problems that share one compiled unroll: same padded size, a switch over their branches.

  The compiled function takes the problem's branch in the group, its padded flat parameters
  and state, its segment ids / counts / masks and its data packed into one float32 and one
  int32 buffer, all as tensors; `tf.switch_case` picks the branch's loss. A branch serves one
  problem, or a problem and its noisy copies (`_branch_key`), whose noise level then rides at
  the end of the float32 buffer. Everything else - the inner loop, the hRNN step, the
  meta-objective and the meta-gradient - is traced and compiled once for the group.
  """

  def __init__(self, problems):
    self.problems = list(problems)
    self.index = {p.name: i for i, p in enumerate(self.problems)}
    self.specs = [_data_spec(p) for p in self.problems]
    keys = [_branch_key(p) for p in self.problems]
    members: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
      members.setdefault(key, []).append(i)
    # A representative problem index per branch: the largest member (padding families), whose
    # loss the branch computes for all of them.
    self.branches = [max(group, key=lambda i: self.problems[i].num_params)
                     for group in members.values()]
    for rep, (key, group) in zip(self.branches, members.items()):
      for i in group:
        if key[0] == "pad":
          self._check_fits(i, rep)
    self.branch_of = {self.problems[i].name: b
                      for b, group in enumerate(members.values()) for i in group}
    self.rep_of = {self.problems[i].name: rep
                   for rep, group in zip(self.branches, members.values()) for i in group}
    # Per branch: the noise level is data where members differ in it (base-class noise only).
    self.noise_as_data = [
        len(group) > 1 and _shared_noise(self.problems[rep])
        and len({self.problems[i].noise_stdev for i in group}) > 1
        for rep, group in zip(self.branches, members.values())]
    self.rows = padded_rows(max(p.num_params for p in self.problems))
    self.slots = max(len(p.param_shapes()) for p in self.problems) + 1
    self.buffer_sizes = [max(1, max(self._packed_sizes(p)[k] for p in self.problems))
                         for k in range(len(_DATA_DTYPES))]
    self.layouts = [hrnn.Layout(p.param_shapes()) for p in self.problems]
    self.key = (self.rows, tuple(p.name for p in self.problems))
    # An instance that masks parameters (a network family's) sets the segments from its data,
    # inside the compiled function; such a problem shares its group with no other.
    self.masked = any(p.masked_parameters for p in self.problems)
    if self.masked and len(self.problems) > 1:
      raise ValueError("a problem with parameter masks compiles alone; group "
                       f"{[p.name for p in self.problems]} mixes it with others")

  def _check_fits(self, i: int, rep: int) -> None:
    """A padding family's member must fit its branch's representative: same rank and trailing
    dimensions, a leading dimension no larger, and each data entry no larger in any dimension."""
    if i == rep:
      return
    small, large = self.problems[i], self.problems[rep]
    (shape,), (rep_shape,) = small.param_shapes(), large.param_shapes()
    fits = len(shape) == len(rep_shape) and shape[0] <= rep_shape[0]
    fits = fits and tuple(shape[1:]) == tuple(rep_shape[1:])
    rep_entries = {key: value for key, *value in self.specs[rep].entries}
    for key, data_shape, kind, _ in self.specs[i].entries:
      want = rep_entries.get(key)
      fits = fits and want is not None and want[1] == kind and len(want[0]) == len(data_shape)
      fits = fits and all(a <= b for a, b in zip(data_shape, want[0]))
    if not fits:
      raise ValueError(f"{small.name} does not pad into {large.name} (padding family "
                       f"{small.padding_family()}): parameter shapes {shape} vs {rep_shape}, "
                       f"data {self.specs[i].entries} vs {self.specs[rep].entries}")

  def _noise_slot(self, problem) -> bool:
    return self.noise_as_data[self.branch_of[problem.name]]

  def _packed_sizes(self, problem) -> list[int]:
    """Elements per dtype of the problem's packed data: its data padded to its branch's
    representative, plus the noise level at the end of the float32 part where its branch takes
    the level as data."""
    sizes = list(self.specs[self.rep_of[problem.name]].sizes)
    sizes[0] += int(self._noise_slot(problem))
    return sizes

  # --- per problem, outside the compiled function ----------------------------------------

  def segments_arrays(self, problem) -> dict[str, np.ndarray]:
    layout = self.layouts[self.index[problem.name]]
    n, t = layout.total, layout.num_tensors
    ids = np.full([self.rows], t, np.int32)           # padding rows: a slot of their own.
    ids[:n] = np.repeat(np.arange(t, dtype=np.int32), layout.sizes)
    counts = np.zeros([self.slots], np.float32)
    counts[:t] = layout.sizes
    counts[t] = self.rows - n
    element_mask = np.zeros([self.rows], np.float32)
    element_mask[:n] = 1.0
    tensor_mask = np.zeros([self.slots], np.float32)
    tensor_mask[:t] = 1.0
    return {"ids": ids, "counts": counts, "element_mask": element_mask,
            "tensor_mask": tensor_mask}

  def pack_data(self, problem, data) -> list[tf.Tensor]:
    spec = _data_spec(problem, data)
    for key, shape, _, _ in spec.entries:
      if tuple(np.shape(data[key])) != shape:
        raise ValueError(f"{problem.name}: data entry {key!r} has shape "
                         f"{tuple(np.shape(data[key]))}, but this problem's instances have "
                         f"{shape}")
    parts: list[list] = [[] for _ in _DATA_DTYPES]
    # In the representative's layout, each entry zero-padded to its shape (padding families).
    for key, shape, kind, _ in self.specs[self.rep_of[problem.name]].entries:
      value = tf.convert_to_tensor(data[key])
      if tuple(value.shape) != shape:
        value = tf.pad(value, [[0, want - have] for have, want in zip(value.shape, shape)])
      parts[kind].append(tf.reshape(tf.cast(value, _DATA_DTYPES[kind]), [-1]))
    if self._noise_slot(problem):
      parts[0].append(tf.constant([problem.noise_stdev], tf.float32))
    buffers = []
    for kind, (dtype, size) in enumerate(zip(_DATA_DTYPES, self._packed_sizes(problem))):
      pad = tf.zeros([self.buffer_sizes[kind] - size], dtype)
      buffers.append(tf.concat(parts[kind] + [pad], axis=0))
    return buffers

  def pad_carry(self, problem, carry: Carry) -> Carry:
    layout = self.layouts[self.index[problem.name]]
    extra = self.rows - layout.total
    flat = tf.pad(layout.flatten(carry.params), [[0, extra]])
    state = carry.state
    rows = {f: _pad_rows(getattr(state, f), extra) for f in hrnn.PER_PARAMETER_FIELDS}
    tensor_hidden = _pad_rows(state.tensor_hidden, self.slots - layout.num_tensors)
    return Carry([flat], state._replace(tensor_hidden=tensor_hidden, **rows),
                 carry.initial_loss)

  def unpad_carry(self, problem, padded: Carry, initial_loss) -> Carry:
    layout = self.layouts[self.index[problem.name]]
    n, t = layout.total, layout.num_tensors
    state = padded.state
    rows = {f: getattr(state, f)[:n] if getattr(state, f).shape[0] else getattr(state, f)
            for f in hrnn.PER_PARAMETER_FIELDS}
    state = state._replace(tensor_hidden=state.tensor_hidden[:t], **rows)
    params = layout.unflatten(padded.params[0][:n])
    return Carry(params, state, initial_loss)

  def unpad_output(self, problem, out: UnrollOutput, carry: Carry) -> UnrollOutput:
    return out._replace(carry=self.unpad_carry(problem, out.carry, carry.initial_loss))

  # --- inside the compiled function ------------------------------------------------------

  def target(self, index, buffers, segments_arrays, meta_loss: str = "full") -> _Target:
    rows = self.rows

    def problem_data(i):
      spec, data = self.specs[i], {}
      for key, shape, kind, offset in spec.entries:
        size = int(np.prod(shape, dtype=np.int64))
        data[key] = tf.reshape(buffers[kind][offset:offset + size], shape)
      return data

    # Unpacked here, outside the inner loop: the branches capture their data as loop
    # invariants. Unpacked inside a branch, a data tensor the backward pass needs (a design
    # matrix) is an intermediate of the switch, and the loop's gradient stacks every branch's
    # intermediates at every step (zeros for the branches not taken): measured, a 5,000 x 56
    # minibatch problem ran 4x slower alone that way.
    datas = [problem_data(rep) for rep in self.branches]
    noises = [buffers[0][self.specs[rep].sizes[0]] if noisy else None
              for rep, noisy in zip(self.branches, self.noise_as_data)]

    def unflatten(i, flat):
      return self.layouts[i].unflatten(flat[:self.layouts[i].total])

    def pad(i, flat):
      return tf.pad(flat, [[0, rows - self.layouts[i].total]])

    def gradients(flat, step_seed):
      def branch(b):
        i = self.branches[b]
        problem = self.problems[i]
        def fn():
          data, params = datas[b], unflatten(i, flat)
          if noises[b] is None:
            loss, grads = problem.gradients(params, data, step_seed)
          else:
            loss, grads = problem.gradients(params, data, step_seed, noise_stdev=noises[b])
          if problem.batch_size is not None and meta_loss == "full":   # the objective's f
            loss = problem.full_loss(params, data)
          return loss, pad(i, self.layouts[i].flatten(grads))
        return fn
      loss, grad = tf.switch_case(index, [branch(b) for b in range(len(self.branches))])
      # Rows past the problem's own (a smaller member of a padding family) get exact zeros,
      # where the representative's gradient noise would otherwise land.
      return loss, grad * element_mask

    def full_loss(flat):
      def branch(b):
        i = self.branches[b]
        return lambda: self.problems[i].full_loss(unflatten(i, flat), datas[b])
      return tf.switch_case(index, [branch(b) for b in range(len(self.branches))])

    if self.masked:
      problem, layout = self.problems[0], self.layouts[0]
      segments = _masked_segments(
          segments_arrays["ids"], segments_arrays["element_mask"],
          segments_arrays["tensor_mask"],
          _flat_parameter_mask(problem, layout, datas[0], rows))
    else:
      segments = hrnn.Segments.padded(**segments_arrays)
    element_mask = segments.element_mask
    # Minibatch problems' objective loss is computed inside their branch, so the loop never
    # needs a second switch for it (needs_full_loss=False); attention evaluates at theta.
    return _Target(gradients, full_loss, segments, False, _recompute(self.problems))


class PaddedCarry:
  """The carry a group's unroll returns, kept padded: the next unroll of the same problem in
  the same group takes it as it is, and `params` / `state` unpad it only when something reads
  them (a checkpoint, a state kept for the next trajectory). Between the partial unrolls of a
  trajectory this skips the eager pad and unpad ops (with the trainer's sparser summaries, a
  bowl_k1 meta-step went from 19.4 to 13.2 ms)."""

  def __init__(self, group: _Group, problem, padded: Carry):
    self.group, self.problem, self.padded = group, problem, padded
    self._unpadded: Carry | None = None

  def carry(self) -> Carry:
    if self._unpadded is None:
      self._unpadded = self.group.unpad_carry(self.problem, self.padded, self.initial_loss)
    return self._unpadded

  @property
  def initial_loss(self) -> tf.Tensor:
    return self.padded.initial_loss

  @property
  def params(self) -> list:
    return self.carry().params

  @property
  def state(self) -> hrnn.State:
    return self.carry().state


def group_unroll(group: _Group, meta, carry: Carry, inputs, num_steps, seed,
                 config: HRNNConfig, *, max_steps: int, second_derivatives: bool = True,
                 compute_gradients: bool = True, meta_loss: str = "full") -> UnrollOutput:
  """`unroll` for a problem of a size group (uncompiled): `carry` padded by
  `group.pad_carry`, `inputs` = (packed data buffers, segment arrays, index in the group) as
  `Unroller.bucket_inputs` gives them. The output stays padded (`group.unpad_output`)."""
  buffers, segments, index = inputs
  target = group.target(index, buffers, segments, meta_loss)
  return _unroll_flat(target, meta, carry.params[0], carry.state, carry.initial_loss,
                      num_steps, seed, config, max_steps=max_steps,
                      second_derivatives=second_derivatives,
                      compute_gradients=compute_gradients)


def _pad_rows(x: tf.Tensor, extra: int) -> tf.Tensor:
  if x.shape[0] == 0 or extra == 0:
    return x
  return tf.pad(x, [[0, extra]] + [[0, 0]] * (x.shape.rank - 1))


COMPILE_BY = ("problem", "bucket")


class Unroller:
  """Compiled partial unrolls, cached process-wide.

  Args:
    mode: "xla" (tf.function(jit_compile=True), the default and fastest on CPU),
      "function" (tf.function without XLA) or "eager" (benchmarks and debugging).
    compile_by: "problem" - one compiled function per problem name; "bucket" - the problems
      of `problems` are grouped by padded size (`padded_rows`) and each group shares one
      compiled function (see `_Group`), so a pool of ~100 problems compiles into a handful.
      A problem outside `problems` gets a group of its own.
    problems: the pool to group ("bucket" only).
  """

  MODES = ("xla", "function", "eager")

  def __init__(self, config: HRNNConfig, *, max_steps: int, second_derivatives: bool = True,
               mode: str = "xla", compile_by: str = "problem", problems=None,
               meta_loss: str = "full"):
    if mode not in self.MODES:
      raise ValueError(f"unknown unroll mode {mode!r}; choose one of {self.MODES}")
    if compile_by not in COMPILE_BY:
      raise ValueError(f"unknown compile_by {compile_by!r}; choose one of {COMPILE_BY}")
    if max_steps < 1:
      raise ValueError(f"max_steps must be >= 1, got {max_steps}")
    self.config = config
    self.max_steps = int(max_steps)
    self.second_derivatives = bool(second_derivatives)
    _check_meta_loss(meta_loss)
    self.meta_loss = meta_loss
    self.mode = mode
    self.compile_by = compile_by
    self._names: set = set()
    self._keys: set = set()
    self._groups: dict[str, _Group] = {}
    self._segments: dict[str, tuple] = {}   # problem name -> (segment tensors, index)
    self._packed: dict[str, tuple] = {}     # problem name -> (data dict, packed buffers)
    if compile_by == "bucket" and problems:
      self._plan(problems)

  def _plan(self, problems) -> None:
    """Groups the pool: by padded size, at most MAX_BRANCHES branches each (see MAX_BRANCHES
    for which problems go alone and which move up a size)."""
    by_rows: dict[int, list] = {}
    for problem in sorted({p.name: p for p in problems}.values(), key=lambda p: p.name):
      by_rows.setdefault(padded_rows(problem.num_params), []).append(problem)

    def alone(p):
      return getattr(p, "compile_alone", False)

    def branches(members):   # problems by branch, in order
      out: dict[tuple, list] = {}
      for p in members:
        out.setdefault(_branch_key(p), []).append(p)
      return list(out.values())

    def add(members):
      group = _Group(members)
      for problem in group.problems:
        self._groups[problem.name] = group

    carried: list = []         # branches moving up from a smaller size
    sizes = sorted(by_rows)
    for rows in sizes:
      light = carried + branches([p for p in by_rows[rows] if not alone(p)])
      heavy = branches([p for p in by_rows[rows] if alone(p)])
      chunks = [light[i:i + MAX_BRANCHES] for i in range(0, len(light), MAX_BRANCHES)]
      carried = []
      larger = [r for r in sizes if r > rows]
      if chunks and len(chunks[-1]) < MAX_BRANCHES and larger and larger[0] <= CARRY_UP_ROWS:
        carried = chunks.pop()
      for chunk in chunks + [[b] for b in heavy]:
        add([p for branch in chunk for p in branch])

  def group_for(self, problem) -> _Group:
    if problem.name not in self._groups:
      self._groups[problem.name] = _Group([problem])
    return self._groups[problem.name]

  def num_groups(self) -> int:
    return len({id(g) for g in self._groups.values()})

  def _key(self, problem, compute_gradients: bool) -> tuple:
    what = (problem.name if self.compile_by == "problem"
            else ("group",) + self.group_for(problem).key)
    return (self.config.to_json(), self.max_steps, self.second_derivatives, self.mode,
            what, compute_gradients, self.meta_loss)

  def _compile(self, fn):
    return compile_fn(fn, self.mode)

  def _compiled(self, problem, compute_gradients: bool) -> Callable:
    # Process-wide cache: every Unroller with the same settings (trainers, evaluation,
    # tests) shares one compiled function per problem name (or per group).
    key = self._key(problem, compute_gradients)
    self._names.add(problem.name)
    self._keys.add(key)
    if key not in _COMPILED:
      config, max_steps = self.config, self.max_steps
      second_derivatives, meta_loss = self.second_derivatives, self.meta_loss
      if self.compile_by == "problem":
        def fn(meta, carry, data, num_steps, seed):
          return unroll(problem, meta, carry, data, num_steps, seed, config,
                        max_steps=max_steps, second_derivatives=second_derivatives,
                        compute_gradients=compute_gradients, meta_loss=meta_loss)
      else:
        group = self.group_for(problem)
        def fn(meta, carry, buffers, segments, index, num_steps, seed):
          return group_unroll(group, meta, carry, (buffers, segments, index), num_steps, seed,
                              config, max_steps=max_steps,
                              second_derivatives=second_derivatives,
                              compute_gradients=compute_gradients, meta_loss=meta_loss)
      _COMPILED[key] = self._compile(fn)
    return _COMPILED[key]

  def _bucket_inputs(self, problem, data):
    """The group, and the problem's packed data, segments and index as tensors.

    Segments are static per problem and the trainer hands in the same data dict for every
    unroll of an instance, so both are built once (the packed data per dict object, which is
    kept referenced so its identity cannot be reused) instead of at every meta-step.
    """
    group = self.group_for(problem)
    if not tf.executing_eagerly():   # traced (parameter-server closures): graph tensors only
      return (group, group.pack_data(problem, data),
              {k: tf.constant(v) for k, v in group.segments_arrays(problem).items()},
              tf.constant(group.branch_of[problem.name], tf.int32))
    if problem.name not in self._segments:
      self._segments[problem.name] = (
          {k: tf.constant(v) for k, v in group.segments_arrays(problem).items()},
          tf.constant(group.branch_of[problem.name], tf.int32))
    packed = self._packed.get(problem.name)
    if packed is None or packed[0] is not data:
      packed = self._packed[problem.name] = (data, group.pack_data(problem, data))
    segments, index = self._segments[problem.name]
    return group, packed[1], segments, index

  def bucket_inputs(self, problem, data) -> tuple:
    """(group, (packed data buffers, segment arrays, index)) of `problem` for `group_unroll`
    (compile_by "bucket")."""
    group, buffers, segments, index = self._bucket_inputs(problem, data)
    return group, (buffers, segments, index)

  def _bucket_args(self, problem, carry, data):
    group, buffers, segments, index = self._bucket_inputs(problem, data)
    if (isinstance(carry, PaddedCarry) and carry.group is group
        and carry.problem.name == problem.name):
      padded = carry.padded
    else:
      padded = group.pad_carry(problem, carry)
    return group, (padded, buffers, segments, index)

  def function_for(self, problem, compute_gradients: bool = True) -> Callable:
    """fn(meta, carry, data, num_steps, seed) -> UnrollOutput for `problem` (traceable)."""
    fn = self._compiled(problem, compute_gradients)
    if self.compile_by == "problem":
      return fn

    def call(meta, carry, data, num_steps, seed):
      group, args = self._bucket_args(problem, carry, data)
      out = fn(meta, args[0], args[1], args[2], args[3], num_steps, seed)
      return group.unpad_output(problem, out, carry)
    return call

  def __call__(self, problem, meta, carry: Carry, data, num_steps, seed,
               compute_gradients: bool = True) -> UnrollOutput:
    fresh = self._key(problem, compute_gradients) not in _COMPILED
    fn = self._compiled(problem, compute_gradients)
    tail = (tf.constant(num_steps, tf.int32), tf.constant(seed, tf.int32))
    if self.compile_by == "problem":
      args = (dict(meta), carry, dict(data)) + tail
    else:
      group, bucket = self._bucket_args(problem, carry, data)
      args = (dict(meta),) + bucket + tail
    out = profile.call(fn, args, fresh)
    if self.compile_by == "bucket":
      out = out._replace(carry=PaddedCarry(group, problem, out.carry))
    return out

  def full_loss(self, problem, params, data) -> tf.Tensor:
    """Compiled full-data loss (f_init), through the group's function when bucketed."""
    if self.compile_by == "problem":
      return _full_loss(problem, params, data)
    group = self.group_for(problem)
    key = ("full_loss", self.mode) + group.key
    fresh = key not in _COMPILED
    if fresh:
      def fn(flat, buffers, segments, index):
        target = group.target(index, buffers, segments)
        return target.full_loss(flat)
      _COMPILED[key] = self._compile(fn)
    self._keys.add(key)
    _, buffers, segments, index = self._bucket_inputs(problem, data)
    layout = group.layouts[group.index[problem.name]]
    flat = tf.pad(layout.flatten([tf.convert_to_tensor(p) for p in params]),
                  [[0, group.rows - layout.total]])
    return profile.call(_COMPILED[key], (flat, buffers, segments, index), fresh,
                        exec_category="data")

  def num_compiled(self) -> int:
    """Compiled functions this unroller has used: unrolls, plus the f_init losses."""
    per_problem_losses = len(_FULL_LOSS_CACHE) if self.compile_by == "problem" else 0
    return len(self._keys) + per_problem_losses

  def __len__(self):
    """Number of problems this unroller has run."""
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
