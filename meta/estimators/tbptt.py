"""Truncated backpropagation through time: the seed paper's estimator (moved from trainer.py).

Seed paper 1 §4.2-4.5, hrnn_reference.md §3. One meta-step is one partial unroll of one
problem (per replica) and its meta-gradient by backpropagation through that unroll only:
parameters and optimizer state carry across the partial unrolls of a trajectory, gradients do
not (meta/unroll.py). The sampling plan, the reset rule and the strategies are described in
meta/trainer.py's docstring; this module is that code, unchanged in behaviour, so a run made
before the estimators were split off continues bit-exactly.

Its bias: the meta-gradient sees only the current truncation, so on long trajectories it
favours greedy, short-horizon behaviour (Wu et al. 2018); meta/estimators/pes.py does not.
"""

from __future__ import annotations

import json
import logging
import time

import numpy as np
import tensorflow as tf

from meta import checkpoints
from meta import profile
from meta import unroll as unroll_lib

log = logging.getLogger("train_meta")


class TBPTT:
  """Truncated BPTT over the trainer's sampled trajectories (one trajectory, or one per PS
  worker). The trainer owns the meta-parameters, meta-optimizer, sampler and strategy."""

  name = "tbptt"

  def __init__(self, trainer):
    self.trainer = trainer
    self.trajectory = None   # trainer.Trajectory of the synchronous strategies
    self.slots = []          # parameter server: one trajectory per worker
    self._ps_functions = {}

  def step(self, coordinator=None) -> list[dict]:
    """One meta-step (one per worker slot under the parameter server): diagnostics rows."""
    return self._ps_round(coordinator) if self.trainer.is_ps else [self.train_step()]

  def num_compiled(self) -> int:
    """Problems run so far (the trainer checks memory maps when this grows)."""
    return len(self.trainer.unroller)

  def pack(self) -> bytes:
    """The in-flight trajectories as bytes for the checkpoint (TrainState.trajectories)."""
    items = [self.trajectory] if not self.trainer.is_ps else self.slots
    arrays, headers = {}, []
    for slot, trajectory in enumerate(items):
      if trajectory is None:
        headers.append(None)
        continue
      headers.append(trajectory.header())
      for rid, carry in trajectory.carries.items():
        for k, v in unroll_lib.carry_to_numpy(carry).items():
          arrays[f"{slot}/{rid}/{k}"] = v
    arrays["__headers__"] = np.asarray(json.dumps(headers))
    return checkpoints.pack_arrays(arrays)

  def unpack(self, blob: bytes) -> None:
    """Inverse of `pack` (on resume)."""
    arrays = checkpoints.unpack_arrays(blob)
    if "__headers__" not in arrays:
      return
    if "__estimator__" in arrays:
      raise ValueError(f"--train_dir {self.trainer.options.train_dir} was meta-trained with "
                       f"--estimator {arrays['__estimator__']}; resume it with that estimator "
                       "or use a fresh --train_dir")
    restored = []
    for slot, header in enumerate(json.loads(str(arrays["__headers__"]))):
      if header is None:
        restored.append(None)
        continue
      trajectory = _trainer_module().Trajectory(**header)
      problem = self.trainer.problems_by_name.get(trajectory.problem)
      if problem is None:
        log.warning("the checkpoint's trajectory in progress is on problem %s, which --problems "
                    "%r no longer includes: it is abandoned, and the next meta-step starts a "
                    "new trajectory", trajectory.problem, self.trainer.options.problems)
        restored.append(None)
        continue
      for rid in range(self.trainer.num_replicas):
        prefix = f"{slot}/{rid}/"
        sub = {k[len(prefix):]: v for k, v in arrays.items() if k.startswith(prefix)}
        if sub:
          trajectory.carries[rid] = unroll_lib.carry_from_numpy(
              sub, len(problem.param_shapes()))
      # A worker of a multi-worker run lacks its replicas' carries (only the chief's
      # checkpoint is kept): train_step restarts those replicas from fresh parameters and
      # state, keeping the shared schedule so that all workers stay in step (documented).
      restored.append(trajectory)
    if self.trainer.is_ps:
      self.slots = restored
    else:
      self.trajectory = restored[0] if restored else None


  def _start(self, trajectory, previous, rid: int):
    problem = self.trainer.problems_by_name[trajectory.problem]
    data = self.trainer._data(problem, trajectory.data_seeds[rid])
    keep_state = None
    if (trajectory.trajectory_index > 0 and not self.trainer.options.reset_state_every_trajectory
        and previous is not None and rid in previous.carries):
      state = previous.carries[rid].state
      if all(bool(tf.reduce_all(tf.math.is_finite(tf.cast(x, tf.float32))))
             for x in state if x.dtype.is_floating):
        keep_state = state
    log_lr_seed = [trajectory.init_seeds[rid] % (2**31 - 1), 7919]
    return unroll_lib.start_carry(
        problem, self.trainer.meta.as_dict(), self.trainer.config, data, trajectory.init_seeds[rid],
        log_lr_seed, lr_range=(self.trainer.options.lr_min, self.trainer.options.lr_max),
        state=keep_state, unroller=self.trainer.unroller)

  def train_step(self) -> dict:
    """Runs one partial unroll on every replica and one meta-update. Returns diagnostics."""
    previous = self.trajectory
    if self.trajectory is None or self.trajectory.unroll_index >= self.trajectory.num_unrolls:
      self.trajectory = self.trainer.sampler.next_trajectory(previous)
    trajectory = self.trajectory
    problem = self.trainer.problems_by_name[trajectory.problem]
    num_steps = self.trainer.sampler.unroll_steps()
    seeds = self.trainer.sampler.step_seeds()
    if trajectory.unroll_index == 0:
      trajectory.carries = {}
    with profile.LEDGER.time("data"):
      for rid in self.trainer._local_ids:
        if rid not in trajectory.carries:
          trajectory.carries[rid] = self._start(trajectory, previous, rid)
      datas = {rid: self.trainer._data(problem, trajectory.data_seeds[rid])
               for rid in self.trainer._local_ids}
    start = time.perf_counter()
    if self.trainer.strategy is None:
      out = self.trainer.unroller(problem, self.trainer.meta.as_dict(), trajectory.carries[0],
                                  datas[0], num_steps, seeds[0])
      outs = {0: out}
      valid = bool(out.finite)
      if valid:
        with profile.LEDGER.time("meta_update"):
          self.trainer._apply(out.meta_grads)
      num_valid = int(valid)
    else:
      outs, num_valid = self._mirrored_step(problem, trajectory, datas, num_steps, seeds)
    elapsed = time.perf_counter() - start

    finite_any = False
    for rid, out in outs.items():
      trajectory.carries[rid] = out.carry
      finite_any |= bool(out.finite)
    trajectory.unroll_index += 1
    # A diverged replica ends the trajectory (all replicas share its schedule).
    diverged = not all(bool(o.finite) for o in outs.values())
    info = self.trainer._info(problem, trajectory, outs, num_steps, elapsed, num_valid == 0)
    if diverged:
      trajectory.unroll_index = trajectory.num_unrolls
    self.trainer.train_state.step.assign_add(1)
    return info

  def _mirrored_step(self, problem, trajectory, datas, num_steps, seeds):
    strategy = self.trainer.strategy
    local = self.trainer._local_ids
    def per_replica(values):
      return strategy.experimental_distribute_values_from_function(
          lambda ctx: values[ctx.replica_id_in_sync_group])
    carries = per_replica({rid: trajectory.carries[rid] for rid in local})
    datas_d = per_replica(datas)
    seeds_d = per_replica({rid: tf.constant(seeds[rid], tf.int32) for rid in local})
    unroller = self.trainer.unroller
    meta_vars = self.trainer.meta.variables_by_name

    names = sorted(meta_vars)
    shapes = [meta_vars[k].shape for k in names]

    def replica_fn(carry, data, seed):
      meta = {k: v.read_value() for k, v in meta_vars.items()}
      out = unroller.function_for(problem)(meta, carry, data, tf.constant(num_steps), seed)
      valid = out.finite
      # One flat vector [grads..., valid] per replica: a single all-reduce per meta-step.
      flat = tf.concat([tf.reshape(out.meta_grads[k], [-1]) for k in names], axis=0)
      flat = tf.where(valid, flat, tf.zeros_like(flat))
      flat = tf.concat([flat, tf.reshape(tf.cast(valid, tf.float32), [1])], axis=0)
      return out._replace(meta_grads={}), flat

    outs, flat = strategy.run(replica_fn, args=(carries, datas_d, seeds_d))
    total = strategy.reduce(tf.distribute.ReduceOp.SUM, flat, axis=None)
    num_valid = int(round(float(total[-1])))
    if num_valid:
      parts = tf.split(total[:-1], [int(np.prod(s)) for s in shapes])
      self.trainer._apply({k: tf.reshape(p, s) / num_valid
                           for k, p, s in zip(names, parts, shapes)})
    leaves = [strategy.experimental_local_results(x) for x in tf.nest.flatten(outs)]
    per_rid = {rid: tf.nest.pack_sequence_as(outs, [leaf[index] for leaf in leaves])
               for index, rid in enumerate(local)}
    return per_rid, num_valid


  def _ps_function(self, problem):
    if problem.name not in self._ps_functions:
      unroll_fn = self.trainer.unroller.function_for(problem)
      meta_vars = self.trainer.meta.variables_by_name
      optimizer = self.trainer.optimizer

      @tf.function
      def worker_fn(carry, data, num_steps, seed):
        meta = {k: tf.identity(v) for k, v in meta_vars.items()}  # reads from the PS
        out = unroll_fn(meta, carry, data, num_steps, seed)
        if out.finite:
          optimizer.apply(out.meta_grads, meta_vars)
        return out._replace(meta_grads={})
      self._ps_functions[problem.name] = worker_fn
    return self._ps_functions[problem.name]

  def _ps_round(self, coordinator) -> list[dict]:
    """Schedules one partial unroll per worker slot, waits, bookkeeps (meta-step per closure)."""
    if not self.slots:
      self.slots = [None] * self.trainer.num_replicas
    scheduled = []
    for slot in range(self.trainer.num_replicas):
      trajectory = self.slots[slot]
      previous = trajectory
      if trajectory is None or trajectory.unroll_index >= trajectory.num_unrolls:
        # Slot-local trajectories: one replica each (replica id 0 inside the slot).
        trajectory = self._single_sampler().next_trajectory(previous)
        self.slots[slot] = trajectory
      problem = self.trainer.problems_by_name[trajectory.problem]
      if trajectory.unroll_index == 0 or 0 not in trajectory.carries:
        trajectory.carries = {0: self._start(trajectory, previous, 0)}
      num_steps = self.trainer.sampler.unroll_steps()
      seed = self.trainer.sampler.step_seeds()[0]
      data = self.trainer._data(problem, trajectory.data_seeds[0])
      fn = self._ps_function(problem)
      remote = coordinator.schedule(fn, args=(trajectory.carries[0], data,
                                              tf.constant(num_steps), tf.constant(seed)))
      scheduled.append((slot, problem, num_steps, remote, time.perf_counter()))
    coordinator.join()
    infos = []
    for slot, problem, num_steps, remote, start in scheduled:
      out = remote.fetch()
      out = tf.nest.map_structure(tf.convert_to_tensor, out)
      trajectory = self.slots[slot]
      trajectory.carries[0] = out.carry
      trajectory.unroll_index += 1
      info = self.trainer._info(problem, trajectory, {0: out}, num_steps,
                                time.perf_counter() - start, not bool(out.finite))
      if not bool(out.finite):
        trajectory.unroll_index = trajectory.num_unrolls
      self.trainer.train_state.step.assign_add(1)
      info["step"] = self.trainer.step
      infos.append(info)
    return infos

  def _single_sampler(self):
    single = _trainer_module().Sampler(self.trainer.options, self.trainer.pool, 1)
    single.rng = self.trainer.sampler.rng   # share the stream (and its checkpointed state)
    return single



def _trainer_module():
  from meta import trainer   # import cycle: trainer builds the estimators
  return trainer
