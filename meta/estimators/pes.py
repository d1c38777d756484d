"""Persistent evolution strategies (PES) over a population of long inner trajectories.

Vicol, Metz & Sohl-Dickstein 2021; learned_optimization's `outer_trainers/truncated_pes.py`
and its stock recipe (peers.md §1.4). Why: truncated BPTT (tbptt.py) differentiates one
truncation only and is biased toward greedy, short-horizon behaviour; its meta-gradients also
explode on long unrolls. PES sees the whole trajectory with forward passes only.

The estimator. Each particle i runs the inner training with perturbed meta-parameters
theta + eps_i, eps_i ~ N(0, sigma^2 I) drawn afresh at every truncation, and keeps its own
inner state (carry) across the truncations of its trajectory. It also keeps the sum of the
perturbations it has used since the trajectory started, xi_i. For the meta-loss L_i of the
current truncation,

    g = 1 / (P sigma^2) * sum_i xi_i L_i

is an unbiased estimate of the gradient (of the Gaussian-smoothed meta-loss) with respect to
theta through the whole trajectory so far, not just the truncation. Particles come in
antithetic pairs (+eps, -eps with the same minibatches), so xi_- = -xi_+ and a pair
contributes xi_+ (L_+ - L_-) / (2 sigma^2): no baseline needed. At a trajectory boundary the
carries and the xi are reset together. A pair with a non-finite loss or parameters contributes
nothing and ends its task's trajectory.

The population (learned_optimization's truncated trainers): `num_tasks` task slots, each on
its own problem from the pool, each with `pes_particles` particles. One meta-step runs one
truncation (50-200 steps) in every slot and averages the estimate over all of them, so one
meta-update sees >= 8 tasks at different points of their training. A slot's trajectory length
is log-uniform in [trajectory_min_steps, trajectory_max_steps] (up to 10,000 inner steps);
when it ends the slot draws a new problem, instance and initialisation. The slots' first
trajectories are cut to a uniform fraction of their drawn length so that the population's
trajectories end at staggered times (learned_optimization's random initial iteration offset).
The meta-loss of a truncation is meta/objective.py's mean log(f / f_init): normalised per task
by the loss at its trajectory's start, so tasks of different scales weigh alike.

Compiled functions: `tf.function(jit_compile=True)` around a `tf.while_loop` over the
particles, each a forward-only unroll; P particles cost about P forward passes in one call (the
particle loop's trip count is a run-time value, so XLA does not unroll it). With
`--compile_by bucket` (the default) there is one function per size group of the pool and
particle count, shared by the group's problems exactly as TBPTT's unrolls are (meta/unroll.py's
`_Group`: padded flat parameters and state, segment masks, packed data and the problem's index
as inputs); the carries of a slot are then kept padded to the group's rows. With `--compile_by
problem` there is one function per (problem, particles). The start state's learned initial
hidden states are computed inside with each particle's perturbed theta (so PES sees their
gradient too).

Strategies. mirrored / multi_worker: every replica runs the same tasks on its own share of the
particles (whole antithetic pairs; --pes_particles must be a multiple of 2 x replicas), the
sums are all-reduced once per meta-step. parameter_server: one closure per task on a worker,
the coordinator sums and applies one synchronous update per meta-step (learned_optimization's
PES is synchronous too; the TBPTT path is asynchronous like the paper).

Departures from learned_optimization: the default truncation length is drawn uniformly in
50-200 per task and meta-step instead of a constant 50 (matching TBPTT's variable unrolls); a
slot's particles share one problem instance and minibatch seed (common random numbers).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Callable, NamedTuple

import numpy as np
import tensorflow as tf

from learned_opt import hrnn
from meta import checkpoints
from meta import unroll as unroll_lib

NUM_STATS = 6  # steps, final_loss, log_lr_mean, log_lr_std, log_lr_min, log_lr_max


# --------------------------------------------------------------------------------------------
# The pure estimator (used by the trainer below and by the tests on toy problems).
# --------------------------------------------------------------------------------------------

class Truncation(NamedTuple):
  weighted: dict       # {name: [P, ...]} xi_i * L_i / sigma^2, zero where the pair is invalid.
  losses: tf.Tensor    # [P] meta-loss of each particle on this truncation.
  valid: tf.Tensor     # [P] bool: both particles of the pair finite.
  carries: Any         # stacked per-particle carries after the truncation.
  xi: dict             # {name: [P, ...]} accumulated perturbations after the truncation.
  aux: tf.Tensor       # [P, ...] what `truncate` returned as aux.


def perturbation(theta, noise_seed, pair, sigma) -> dict:
  """eps of antithetic pair `pair`: sigma * N(0, I) per meta-parameter (stateless).

  Deterministic in (noise_seed, pair) within one mode; XLA's stateless generator gives other
  numbers than TensorFlow's, so a run keeps its --unroll_mode (as it must for exact resume).
  """
  seed = tf.random.experimental.stateless_fold_in(tf.cast(noise_seed, tf.int32), pair)
  return {k: sigma * tf.random.stateless_normal(
      tf.shape(theta[k]), tf.random.experimental.stateless_fold_in(seed, index))
          for index, k in enumerate(sorted(theta))}


def truncation(truncate: Callable, theta: dict, xi: dict, carries, sigma, noise_seed,
               pair_offset=0, aux_signature=tf.TensorSpec([], tf.float32),
               trip_count=None) -> Truncation:
  """One PES truncation of P particles (P even; particles 2j, 2j+1 are pair pair_offset + j).

  Args:
    truncate: (theta_i, carry_i) -> (loss, finite, carry_i', aux) for one particle.
    theta: {name: tensor} unperturbed meta-parameters.
    xi: {name: [P, ...]} accumulated perturbations (zeros at a trajectory start).
    carries: per-particle inner states, every leaf stacked on a leading [P] axis.
    noise_seed: int32 [2]; the perturbation of pair j depends on (noise_seed, j) only, so
      particles give the same numbers whichever replica runs them.
    trip_count: int32 tensor equal to P, passed in at run time: a loop over the particles
      whose trip count XLA cannot see is not unrolled into P copies of the unroll at compile
      time (a static one made a compile of 8 particles take many minutes).
  """
  num_particles = int(tf.nest.flatten(xi)[0].shape[0])
  if num_particles % 2:
    raise ValueError(f"PES needs antithetic pairs: {num_particles} particles")
  sigma = tf.cast(sigma, tf.float32)

  def one(args):
    index, xi_i, carry_i = args
    sign = 1.0 - 2.0 * tf.cast(index % 2, tf.float32)
    eps = perturbation(theta, noise_seed, pair_offset + index // 2, sigma)
    theta_i = {k: theta[k] + sign * eps[k] for k in theta}
    xi_i = {k: xi_i[k] + sign * eps[k] for k in xi_i}
    loss, finite, carry_i, aux = truncate(theta_i, carry_i)
    return tf.cast(loss, tf.float32), tf.cast(finite, tf.bool), carry_i, xi_i, aux

  per_particle = lambda t: tf.TensorSpec(t.shape[1:], t.dtype)
  signature = (tf.TensorSpec([], tf.float32), tf.TensorSpec([], tf.bool),
               tf.nest.map_structure(per_particle, carries),
               tf.nest.map_structure(per_particle, xi), aux_signature)
  losses, finite, carries, xi, aux = _particle_loop(
      one, num_particles, num_particles if trip_count is None else trip_count,
      (xi, carries), signature)
  finite = tf.logical_and(finite, tf.math.is_finite(losses))
  pair_ok = tf.reduce_all(tf.reshape(finite, [-1, 2]), axis=1)
  valid = tf.reshape(tf.stack([pair_ok, pair_ok], axis=1), [-1])
  safe_losses = tf.where(valid, losses, tf.zeros_like(losses))
  weighted = {}
  for k, x in xi.items():
    scale = tf.reshape(safe_losses, [-1] + [1] * (x.shape.rank - 1)) / tf.square(sigma)
    weighted[k] = x * scale
  return Truncation(weighted, losses, valid, carries, xi, aux)


def _particle_loop(fn, num_particles: int, trip_count, elems, signature):
  """tf.map_fn over the leading axis of `elems`, with a loop bound given as a tensor."""
  outputs = [tf.TensorArray(spec.dtype, size=num_particles, element_shape=spec.shape)
             for spec in tf.nest.flatten(signature)]
  flat_elems = tf.nest.flatten(elems)

  def body(i, arrays):
    args = tf.nest.pack_sequence_as(elems, [tf.gather(x, i) for x in flat_elems])
    results = tf.nest.flatten(fn((i,) + tuple(args)))
    return i + 1, [a.write(i, r) for a, r in zip(arrays, results)]

  _, outputs = tf.while_loop(lambda i, _: i < trip_count, body, (tf.constant(0), outputs),
                             maximum_iterations=num_particles)
  return tf.nest.pack_sequence_as(signature, [a.stack() for a in outputs])


# --------------------------------------------------------------------------------------------
# The compiled hRNN truncation of one task's particles.
# --------------------------------------------------------------------------------------------

_COMPILED: dict[tuple, Callable] = {}


class _Rows(NamedTuple):
  """The row and tensor-slot counts `hrnn.init_state` needs, for a group's padded layout."""
  total: int
  num_tensors: int


def task_function(problem, config, *, max_steps: int, num_particles: int, mode: str = "xla",
                  meta_loss: str = "full", group=None):
  """Compiled fn(theta, xi, carries, inputs, num_steps, seed, noise_seed, pair_offset, fresh,
  sigma, trip_count) -> (grad_sum, num_valid, losses, valid, carries, xi, stats [P, NUM_STATS]).

  inputs: the problem's data dict; or, with `group` (a meta/unroll.py size group holding
  `problem`), the tuple (packed data buffers, segment arrays, index in the group) of
  `Unroller.bucket_inputs`, and carries padded by `group.pad_carry`. One function then serves
  every problem of the group.
  trip_count: tf.constant(num_particles), see `truncation`.

  `fresh`: the trajectory starts here: each particle's learned initial hidden states are
  recomputed from its perturbed theta. Forward only, so `max_steps` only bounds the loop.
  """
  what = problem.name if group is None else ("group",) + group.key
  key = (config.to_json(), max_steps, mode, what, num_particles, meta_loss)
  if key in _COMPILED:
    return _COMPILED[key]
  layout = (hrnn.Layout(problem.param_shapes()) if group is None
            else _Rows(group.rows, group.slots))

  def fn(theta, xi, carries, inputs, num_steps, seed, noise_seed, pair_offset, fresh, sigma,
         trip_count):
    def truncate(theta_i, carry):
      state = tf.cond(fresh,
                      lambda: hrnn.init_state(theta_i, layout, config, carry.state.log_lr),
                      lambda: carry.state)
      if group is None:
        out = unroll_lib.unroll(problem, theta_i, carry._replace(state=state), inputs,
                                num_steps, seed, config, max_steps=max_steps,
                                compute_gradients=False, meta_loss=meta_loss)
      else:
        out = unroll_lib.group_unroll(group, theta_i, carry._replace(state=state), inputs,
                                      num_steps, seed, config, max_steps=max_steps,
                                      compute_gradients=False, meta_loss=meta_loss)
      stats = tf.stack([tf.cast(out.steps, tf.float32), out.final_loss, out.log_lr_mean,
                        out.log_lr_std, out.log_lr_min, out.log_lr_max])
      return out.meta_loss, out.finite, out.carry, stats

    result = truncation(truncate, theta, xi, carries, sigma, noise_seed, pair_offset,
                        aux_signature=tf.TensorSpec([NUM_STATS], tf.float32),
                        trip_count=trip_count)
    grad_sum = {k: tf.reduce_sum(w, axis=0) for k, w in result.weighted.items()}
    num_valid = tf.reduce_sum(tf.cast(result.valid, tf.float32))
    return (grad_sum, num_valid, result.losses, result.valid, result.carries, result.xi,
            result.aux)

  fn = unroll_lib.compile_fn(fn, mode)
  _COMPILED[key] = fn
  return fn


def stack_carry(carry: unroll_lib.Carry, num_particles: int):
  """`num_particles` copies of a carry on a leading axis (all particles start alike)."""
  return tf.nest.map_structure(lambda t: tf.stack([tf.convert_to_tensor(t)] * num_particles),
                               carry)


# --------------------------------------------------------------------------------------------
# The population and the trainer-facing estimator.
# --------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Task:
  """One slot of the population: a trajectory on one problem (JSON-able except the tensors)."""
  problem: str
  data_seed: int
  init_seed: int
  length: int                 # inner steps of this trajectory.
  done: int = 0               # inner steps run so far.
  trajectory: int = 0         # trajectories this slot has started.
  noise_seed: list = dataclasses.field(default_factory=list)  # of the last truncation.
  carries: dict = dataclasses.field(default_factory=dict)     # replica id -> stacked Carry
  xi: dict = dataclasses.field(default_factory=dict)          # replica id -> {name: [P, ...]}

  def header(self) -> dict:
    d = dataclasses.asdict(self)
    d.pop("carries")
    d.pop("xi")
    return d


def _int_seed(rng) -> int:
  return int(rng.integers(2**31 - 1))


def _seed_pair(rng) -> list:
  return [int(s) for s in rng.integers(-2**31, 2**31 - 1, size=2)]


class PES:
  """PES over a population of `num_tasks` trajectories; see the module docstring."""

  name = "pes"

  def __init__(self, trainer):
    self.trainer = trainer
    o = trainer.options
    self.options = o
    self.rng = trainer.sampler.rng      # one stream, checkpointed by the trainer
    self.num_particles = o.pes_particles
    replicas = 1 if trainer.is_ps else trainer.num_replicas
    if self.num_particles % (2 * replicas):
      raise ValueError(
          f"--pes_particles {self.num_particles} must be a multiple of 2 x {replicas} replicas "
          "(each replica runs whole antithetic pairs)")
    self.local_particles = self.num_particles // replicas
    self.max_steps = o.truncation_max_steps
    self.tasks: list[Task | None] = [None] * o.num_tasks
    self._datas: dict[int, tuple] = {}
    self._names: set = set()       # what each compiled function serves: problem or group
    # Bucketed: one compiled function per size group (the trainer's Unroller plans the
    # groups over the pool), carries padded to the group's rows.
    self.bucketed = o.compile_by == "bucket"
    self._ps_functions: dict[str, Callable] = {}

  def num_compiled(self) -> int:
    return len(self._names)

  # --- sampling -------------------------------------------------------------------------

  def _new_task(self, previous: Task | None) -> Task:
    o = self.options
    problem = self.trainer.sampler.draw_problem(self.rng)
    data_seed, init_seed = _int_seed(self.rng), _int_seed(self.rng)
    length = int(round(math.exp(self.rng.uniform(math.log(o.trajectory_min_steps),
                                                 math.log(o.trajectory_max_steps)))))
    if previous is None:   # stagger the population: the first trajectory ends early
      length = int(self.rng.integers(1, length + 1))
    count = previous.trajectory + 1 if previous is not None else 0
    return Task(problem, data_seed, init_seed, length, trajectory=count)

  def _data(self, slot: int, task: Task):
    cached = self._datas.get(slot)
    if cached is None or cached[0] != (task.problem, task.data_seed):
      problem = self.trainer.problems_by_name[task.problem]
      cached = ((task.problem, task.data_seed),
                unroll_lib.data_tensors(problem.sample_data(task.data_seed)))
      self._datas[slot] = cached
    return cached[1]

  def _inputs(self, slot: int, task: Task):
    """The compiled function's problem inputs: the data dict, or the group's packed inputs."""
    data = self._data(slot, task)
    if not self.bucketed:
      return data
    return self.trainer.unroller.bucket_inputs(self.trainer.problems_by_name[task.problem],
                                               data)[1]

  def _start(self, slot: int, task: Task, rid: int) -> None:
    """Fresh carries and zero accumulated perturbations for replica rid's particles."""
    problem = self.trainer.problems_by_name[task.problem]
    carry = unroll_lib.start_carry(
        problem, self.trainer.meta.as_dict(), self.trainer.config, self._data(slot, task),
        task.init_seed, [task.init_seed % (2**31 - 1), 7919],
        lr_range=(self.options.lr_min, self.options.lr_max),
        unroller=self.trainer.unroller if self.bucketed else None)
    if self.bucketed:
      carry = self.trainer.unroller.group_for(problem).pad_carry(problem, carry)
    count = self.num_particles if self.trainer.is_ps else self.local_particles
    task.carries[rid] = stack_carry(carry, count)
    task.xi[rid] = {k: tf.zeros([count] + v.shape.as_list(), tf.float32)
                    for k, v in self.trainer.meta.variables_by_name.items()}

  def _plan(self, rids) -> list[dict]:
    """This meta-step's truncation of every slot (draws from the checkpointed RNG)."""
    o = self.options
    plan = []
    for slot in range(len(self.tasks)):
      task = self.tasks[slot]
      if task is None or task.done >= task.length:
        task = self.tasks[slot] = self._new_task(task)
      for rid in rids:
        if rid not in task.carries:
          self._start(slot, task, rid)
      steps = int(self.rng.integers(o.truncation_min_steps, o.truncation_max_steps + 1))
      task.noise_seed = _seed_pair(self.rng)
      plan.append(dict(slot=slot, task=task,
                       problem=self.trainer.problems_by_name[task.problem],
                       num_steps=min(steps, task.length - task.done),
                       seed=_seed_pair(self.rng), fresh=task.done == 0))
    return plan

  def _function(self, problem, num_particles):
    group = self.trainer.unroller.group_for(problem) if self.bucketed else None
    self._names.add((problem.name if group is None else group.key, num_particles))
    return task_function(problem, self.trainer.config, max_steps=self.max_steps,
                         num_particles=num_particles, mode=self.options.unroll_mode,
                         meta_loss=self.options.meta_loss, group=group)

  def _args(self, entry, inputs):
    # The noise seed as an array: TF keeps a tensor for every distinct Python int it converts
    # (meta/trainer.py `_array`), and each trajectory has its own.
    return (inputs, tf.constant(entry["num_steps"], tf.int32),
            tf.constant(entry["seed"], tf.int32),
            tf.constant(np.asarray(entry["task"].noise_seed, np.int32)))

  # --- one meta-step --------------------------------------------------------------------

  def step(self, coordinator=None) -> list[dict]:
    trainer = self.trainer
    start, cpu = time.perf_counter(), time.process_time()
    if trainer.is_ps:
      plan = self._plan([0])
      outs, total, count = self._ps_step(plan, coordinator)
    else:
      plan = self._plan(trainer._local_ids)
      outs, total, count = self._sync_step(plan)
    if count > 0:
      trainer._apply({k: v / count for k, v in total.items()})
    info = self._bookkeep(plan, outs, count, time.perf_counter() - start,
                          time.process_time() - cpu)
    trainer.train_state.step.assign_add(1)
    return [info]

  def _replica_sums(self, plan, inputs, meta, pair_offset):
    """Runs every task's particles of one replica: summed estimate, count, per-task outputs."""
    total = {k: tf.zeros_like(v) for k, v in meta.items()}
    count = tf.constant(0.0)
    outs = []
    sigma = tf.constant(self.options.pes_sigma, tf.float32)
    for entry, (xi, carries, task_inputs) in zip(plan, inputs):
      fn = self._function(entry["problem"], self.local_particles)
      task_inputs, num_steps, seed, noise_seed = self._args(entry, task_inputs)
      grads, valid_count, losses, valid, carries, xi, stats = fn(
          meta, xi, carries, task_inputs, num_steps, seed, noise_seed,
          tf.constant(pair_offset, tf.int32), tf.constant(entry["fresh"]), sigma,
          tf.constant(self.local_particles, tf.int32))
      total = {k: total[k] + grads[k] for k in total}
      count += valid_count
      outs.append((losses, valid, carries, xi, stats))
    return total, count, outs

  def _sync_step(self, plan):
    trainer = self.trainer
    strategy = trainer.strategy
    pairs_per_replica = self.local_particles // 2

    def inputs_for(rid):
      return [(e["task"].xi[rid], e["task"].carries[rid], self._inputs(e["slot"], e["task"]))
              for e in plan]

    if strategy is None:
      total, count, outs = self._replica_sums(plan, inputs_for(0), trainer.meta.as_dict(), 0)
      return {0: outs}, total, float(count)

    for entry in plan:   # build (and cache) every function before the replica threads
      self._function(entry["problem"], self.local_particles)
    local = trainer._local_ids
    inputs = strategy.experimental_distribute_values_from_function(
        lambda ctx: inputs_for(ctx.replica_id_in_sync_group))
    offsets = strategy.experimental_distribute_values_from_function(
        lambda ctx: tf.constant(ctx.replica_id_in_sync_group * pairs_per_replica, tf.int32))
    meta_vars = trainer.meta.variables_by_name
    names = sorted(meta_vars)
    shapes = [meta_vars[k].shape for k in names]

    def replica_fn(inputs, offset):
      meta = {k: v.read_value() for k, v in meta_vars.items()}
      total, count, outs = self._replica_sums(plan, inputs, meta, offset)
      # One flat vector [sums..., count] per replica: a single all-reduce per meta-step.
      flat = tf.concat([tf.reshape(total[k], [-1]) for k in names] + [tf.reshape(count, [1])], 0)
      return outs, flat

    outs, flat = strategy.run(replica_fn, args=(inputs, offsets))
    summed = strategy.reduce(tf.distribute.ReduceOp.SUM, flat, axis=None)
    parts = tf.split(summed[:-1], [int(np.prod(s)) for s in shapes])
    total = {k: tf.reshape(p, s) for k, p, s in zip(names, parts, shapes)}
    leaves = [strategy.experimental_local_results(x) for x in tf.nest.flatten(outs)]
    per_rid = {rid: tf.nest.pack_sequence_as(outs, [leaf[index] for leaf in leaves])
               for index, rid in enumerate(local)}
    return per_rid, total, float(summed[-1])

  def _ps_function(self, problem):
    if problem.name not in self._ps_functions:
      fn = self._function(problem, self.num_particles)
      meta_vars = self.trainer.meta.variables_by_name

      @tf.function
      def worker_fn(xi, carries, inputs, num_steps, seed, noise_seed, fresh, sigma):
        meta = {k: tf.identity(v) for k, v in meta_vars.items()}   # reads from the PS
        return fn(meta, xi, carries, inputs, num_steps, seed, noise_seed,
                  tf.constant(0, tf.int32), fresh, sigma, tf.constant(self.num_particles))
      self._ps_functions[problem.name] = worker_fn
    return self._ps_functions[problem.name]

  def _ps_step(self, plan, coordinator):
    """One closure per task on the workers; the coordinator sums and applies one update."""
    sigma = tf.constant(self.options.pes_sigma, tf.float32)
    remotes = []
    for entry in plan:
      task = entry["task"]
      inputs, num_steps, seed, noise_seed = self._args(entry, self._inputs(entry["slot"], task))
      remotes.append(coordinator.schedule(
          self._ps_function(entry["problem"]),
          args=(task.xi[0], task.carries[0], inputs, num_steps, seed, noise_seed,
                tf.constant(entry["fresh"]), sigma)))
    coordinator.join()
    total, count, outs = None, 0.0, []
    for remote in remotes:
      grads, valid_count, *rest = tf.nest.map_structure(tf.convert_to_tensor, remote.fetch())
      total = grads if total is None else {k: total[k] + grads[k] for k in total}
      count += float(valid_count)
      outs.append(tuple(rest))
    return {0: outs}, total, count

  def _bookkeep(self, plan, outs, count, elapsed, cpu) -> dict:
    losses, relative, stats, inner_steps = [], [], [], 0
    for index, entry in enumerate(plan):
      task = entry["task"]
      all_valid = True
      for rid, per_task in outs.items():
        task_losses, valid, carries, xi, task_stats = per_task[index]
        task.carries[rid], task.xi[rid] = carries, xi
        valid = np.asarray(valid)
        all_valid &= bool(valid.all())
        task_losses, task_stats = np.asarray(task_losses), np.asarray(task_stats)
        losses += list(task_losses[valid])
        initial = np.asarray(carries.initial_loss)
        relative += list((task_stats[:, 1] / (initial + 1e-6))[valid])
        stats.append(task_stats[valid])
        inner_steps += int(task_stats[:, 0].sum())
      task.done += entry["num_steps"]
      if not all_valid:   # a diverged pair ends its task's trajectory (all particles)
        task.done = task.length
    stats = np.concatenate(stats) if stats else np.zeros([0, NUM_STATS])
    have = len(stats) > 0
    nan = float("nan")
    names = [e["problem"].name for e in plan]
    return {
        "step": self.trainer.step + 1, "problem": f"{len(plan)} tasks: " + ",".join(names),
        "family": "population", "replicas": len(outs),
        "unroll": int(np.median([e["task"].done for e in plan])),
        "num_unrolls": int(np.median([e["task"].length for e in plan])),
        "steps": int(sum(e["num_steps"] for e in plan)),
        "meta_loss": float(np.mean(losses)) if losses else nan,
        "final_relative_loss": float(np.mean(relative)) if relative else nan,
        "log_lr_mean": float(stats[:, 2].mean()) if have else nan,
        "log_lr_std": float(stats[:, 3].mean()) if have else nan,
        "log_lr_min": float(stats[:, 4].min()) if have else nan,
        "log_lr_max": float(stats[:, 5].max()) if have else nan,
        "skipped": int(count == 0),
        "inner_steps_per_sec": inner_steps / max(elapsed, 1e-9),
        "cpu_secs": cpu, "valid_particles": count,
    }

  # --- checkpoint -----------------------------------------------------------------------

  def pack(self) -> bytes:
    arrays, headers = {}, []
    for slot, task in enumerate(self.tasks):
      if task is None:
        headers.append(None)
        continue
      headers.append(task.header())
      for rid, carry in task.carries.items():
        for k, v in unroll_lib.carry_to_numpy(carry).items():
          arrays[f"{slot}/{rid}/carry/{k}"] = v
        for k, v in task.xi[rid].items():
          arrays[f"{slot}/{rid}/xi/{k}"] = np.asarray(v)
    arrays["__headers__"] = np.asarray(json.dumps(headers))
    arrays["__estimator__"] = np.asarray("pes")
    arrays["__compile_by__"] = np.asarray(self.options.compile_by)
    return checkpoints.pack_arrays(arrays)

  def unpack(self, blob: bytes) -> None:
    arrays = checkpoints.unpack_arrays(blob)
    if "__headers__" not in arrays:
      return
    if str(arrays.get("__estimator__", "tbptt")) != "pes":
      raise ValueError(f"--train_dir {self.options.train_dir} was meta-trained with "
                       "--estimator tbptt; resume it with that estimator or use a fresh "
                       "--train_dir")
    # Checkpoints from before bucketed PES hold per-problem (unpadded) carries.
    recorded = str(arrays.get("__compile_by__", "problem"))
    if recorded != self.options.compile_by:
      raise ValueError(f"--train_dir {self.options.train_dir} holds PES carries of "
                       f"--compile_by {recorded}; resume it with --compile_by {recorded}")
    headers = json.loads(str(arrays["__headers__"]))
    if len(headers) != len(self.tasks):
      raise ValueError(f"--train_dir {self.options.train_dir} holds a population of "
                       f"{len(headers)} tasks; resume with --num_tasks {len(headers)}")
    for slot, header in enumerate(headers):
      if header is None:
        continue
      task = Task(**header)
      problem = self.trainer.problems_by_name[task.problem]
      for rid in range(self.trainer.num_replicas):
        prefix = f"{slot}/{rid}/"
        sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if not sub:
          continue   # another worker's particles: restarted by _plan (multi-worker resume)
        carry = {k[len("carry/"):]: v for k, v in sub.items() if k.startswith("carry/")}
        task.carries[rid] = unroll_lib.carry_from_numpy(
            carry, 1 if self.bucketed else len(problem.param_shapes()))
        task.xi[rid] = {k[len("xi/"):]: tf.constant(v) for k, v in sub.items()
                        if k.startswith("xi/")}
        if int(next(iter(task.xi[rid].values())).shape[0]) != (
            self.num_particles if self.trainer.is_ps else self.local_particles):
          raise ValueError(f"--train_dir {self.options.train_dir} holds another number of "
                           "PES particles per replica; resume with the recorded "
                           "--pes_particles and strategy")
      self.tasks[slot] = task
