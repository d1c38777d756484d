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
  """Truncated BPTT over the trainer's sampled trajectories: one trajectory (per replica), one
  per PS worker, or a population of `--tbptt_tasks` trajectories whose partial unrolls every
  meta-step advances and averages. The trainer owns the meta-parameters, meta-optimizer,
  sampler and strategy."""

  name = "tbptt"

  def __init__(self, trainer):
    self.trainer = trainer
    self.trajectory = None   # trainer.Trajectory of the synchronous strategies
    self.slots = []          # parameter server: one trajectory per worker; or the population
    self._ps_functions = {}
    self.population = trainer.options.tbptt_tasks > 1

  def step(self, coordinator=None) -> list[dict]:
    """One meta-step (one per worker slot under the parameter server): diagnostics rows."""
    if self.trainer.is_ps:
      return self._ps_round(coordinator)
    return [self._population_step() if self.population else self.train_step()]

  def num_compiled(self) -> int:
    """Problems run so far (the trainer checks memory maps when this grows)."""
    return len(self.trainer.unroller)

  def pack(self) -> bytes:
    """The in-flight trajectories as bytes for the checkpoint (TrainState.trajectories)."""
    items = self.slots if self.trainer.is_ps or self.population else [self.trajectory]
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
    if restored and (self.population or (len(restored) > 1 and not self.trainer.is_ps)):
      if len(restored) != self.trainer.options.tbptt_tasks:
        raise ValueError(f"--train_dir {self.trainer.options.train_dir} holds a population of "
                         f"{len(restored)} TBPTT tasks; resume with --tbptt_tasks "
                         f"{len(restored)}")
    if self.trainer.is_ps or self.population:
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

  def _population_step(self) -> dict:
    """One partial unroll of every trajectory of the population, then one meta-update with
    the mean of their (finite) meta-gradients. A diverged task ends its trajectory only."""
    trainer = self.trainer
    if len(self.slots) != trainer.options.tbptt_tasks:
      self.slots = [None] * trainer.options.tbptt_tasks
    meta = trainer.meta.as_dict()
    total, num_valid, infos, start = None, 0, [], time.perf_counter()
    for slot in range(len(self.slots)):
      trajectory, problem, data, num_steps, seed = self._slot_unroll(slot)
      began = time.perf_counter()
      out = trainer.unroller(problem, meta, trajectory.carries[0], data, num_steps, seed)
      if bool(out.finite):
        total = (dict(out.meta_grads) if total is None
                 else {k: total[k] + out.meta_grads[k] for k in total})
        num_valid += 1
      infos.append(self._slot_done(trajectory, problem, out, num_steps,
                                   time.perf_counter() - began))
    if num_valid:
      with profile.LEDGER.time("meta_update"):
        trainer._apply({k: v / num_valid for k, v in total.items()})
    trainer.train_state.step.assign_add(1)
    return _population_info(infos, num_valid == 0, time.perf_counter() - start)

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
      trajectory, problem, data, num_steps, seed = self._slot_unroll(slot)
      fn = self._ps_function(problem)
      remote = coordinator.schedule(fn, args=(trajectory.carries[0], data,
                                              tf.constant(num_steps), tf.constant(seed)))
      scheduled.append((slot, problem, num_steps, remote, time.perf_counter()))
    coordinator.join()
    infos = []
    for slot, problem, num_steps, remote, start in scheduled:
      out = remote.fetch()
      out = tf.nest.map_structure(tf.convert_to_tensor, out)
      info = self._slot_done(self.slots[slot], problem, out, num_steps,
                             time.perf_counter() - start)
      self.trainer.train_state.step.assign_add(1)
      info["step"] = self.trainer.step
      infos.append(info)
    return infos

  def _slot_unroll(self, slot: int) -> tuple:
    """Slot `slot`'s next partial unroll (parameter-server workers and the population; one
    replica per slot, id 0): (trajectory, problem, data, num_steps, seed). Starts a new
    trajectory, and its carry, where the last one ended."""
    trajectory = previous = self.slots[slot]
    if trajectory is None or trajectory.unroll_index >= trajectory.num_unrolls:
      trajectory = self.slots[slot] = self._single_sampler().next_trajectory(previous)
    problem = self.trainer.problems_by_name[trajectory.problem]
    with profile.LEDGER.time("data"):
      if trajectory.unroll_index == 0 or 0 not in trajectory.carries:
        trajectory.carries = {0: self._start(trajectory, previous, 0)}
      data = self.trainer._data(problem, trajectory.data_seeds[0])
    num_steps = self.trainer.sampler.unroll_steps()
    seed = self.trainer.sampler.step_seeds()[0]
    return trajectory, problem, data, num_steps, seed

  def _slot_done(self, trajectory, problem, out, num_steps: int, elapsed: float) -> dict:
    """Keeps a slot's partial unroll and returns its diagnostics row; a diverged unroll ends
    the slot's trajectory."""
    finite = bool(out.finite)
    trajectory.carries[0] = out.carry
    trajectory.unroll_index += 1
    info = self.trainer._info(problem, trajectory, {0: out}, num_steps, elapsed, not finite)
    if not finite:
      trajectory.unroll_index = trajectory.num_unrolls
    return info

  def _single_sampler(self):
    return self.trainer.sampler.with_replicas(1)



def _population_info(infos: list[dict], skipped: bool, elapsed: float) -> dict:
  """One history row for a population meta-step (means over the tasks that stayed finite)."""
  finite = [i for i in infos if not i["skipped"]] or infos
  def mean(key):
    return float(np.mean([i[key] for i in finite]))
  steps = sum(i["steps"] for i in infos)
  return {
      "step": infos[0]["step"], "family": "population", "replicas": 1,
      "problem": f"{len(infos)} tasks: " + ",".join(i["problem"] for i in infos),
      "unroll": int(np.median([i["unroll"] for i in infos])),
      "num_unrolls": int(np.median([i["num_unrolls"] for i in infos])),
      "steps": steps, "meta_loss": mean("meta_loss"),
      "final_relative_loss": mean("final_relative_loss"),
      "log_lr_mean": mean("log_lr_mean"), "log_lr_std": mean("log_lr_std"),
      "log_lr_min": min(i["log_lr_min"] for i in finite),
      "log_lr_max": max(i["log_lr_max"] for i in finite),
      "skipped": int(skipped), "inner_steps_per_sec": steps / max(elapsed, 1e-9),
  }


def _trainer_module():
  from meta import trainer   # import cycle: trainer builds the estimators
  return trainer
