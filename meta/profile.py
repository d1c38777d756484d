"""Where a meta-training process spends its time: a process-wide, opt-in wall-time ledger.

`benchmarks/meta_speed.py --breakdown` turns it on in a cold process and prints the ledger.
Categories:

  trace        Python tracing of a compiled unroll (building the TF graph, incl. its
               meta-gradient graph): `get_concrete_function`.
  compile      graph optimisation + XLA compilation: the first call of a compiled function
               minus a second, identical call (which only executes).
  unroll       executing partial unrolls (inner steps, meta-loss, meta-gradient).
  meta_update  applying the meta-optimizer to the meta-gradient.
  checkpoint   writing checkpoints.
  evaluation   validation / evaluation runs inside meta-training.
  data         sampling problem instances' data and fresh carries (incl. f_init).

With the ledger off (the default) nothing is timed and compiled functions are called once.
Categories are exclusive: time booked inside an open `time()` block (e.g. a first compile
while sampling data) is taken out of that block's own category.
"""

from __future__ import annotations

import collections
import contextlib
import time

CATEGORIES = ("trace", "compile", "unroll", "meta_update", "checkpoint", "evaluation", "data")


class Ledger:
  def __init__(self):
    self.enabled = False
    self.seconds: dict[str, float] = collections.defaultdict(float)
    self.counts: dict[str, int] = collections.defaultdict(int)
    self._booked_inside: list[float] = []   # per open block: seconds booked by inner blocks.

  def reset(self, enabled: bool = True) -> None:
    self.enabled = enabled
    self.seconds.clear()
    self.counts.clear()
    self._booked_inside.clear()

  def add(self, category: str, seconds: float) -> None:
    if self.enabled:
      self.seconds[category] += seconds
      self.counts[category] += 1
      if self._booked_inside:
        self._booked_inside[-1] += seconds

  @contextlib.contextmanager
  def time(self, category: str):
    if not self.enabled:
      yield
      return
    start = time.perf_counter()
    self._booked_inside.append(0.0)
    try:
      yield
    finally:
      elapsed = time.perf_counter() - start
      own = elapsed - self._booked_inside.pop()
      self.seconds[category] += own
      self.counts[category] += 1
      if self._booked_inside:
        self._booked_inside[-1] += elapsed


LEDGER = Ledger()


def first_call(fn, args, exec_category: str = "unroll") -> object:
  """Calls a fresh tf.function, booking trace and compile time when the ledger is on.

  Runs it twice when timing (the second call is the result and is booked as execution), so
  compile = first call - second call. Used by the unroller on each function's first use.
  """
  if not LEDGER.enabled:
    return fn(*args)
  start = time.perf_counter()
  concrete = fn.get_concrete_function(*args) if hasattr(fn, "get_concrete_function") else None
  traced = time.perf_counter()
  _block(fn(*args))
  first = time.perf_counter() - traced
  start2 = time.perf_counter()
  out = fn(*args)
  _block(out)
  second = time.perf_counter() - start2
  del concrete
  LEDGER.add("trace", traced - start)
  LEDGER.add("compile", max(first - second, 0.0))
  LEDGER.add(exec_category, second)
  return out


def call(fn, args, first: bool, exec_category: str = "unroll"):
  """Calls a compiled function, booking its time: `first_call` on its first use, else
  `exec_category` (blocking on the result only when the ledger is on)."""
  if first:
    return first_call(fn, args, exec_category)
  with LEDGER.time(exec_category):
    out = fn(*args)
    if LEDGER.enabled:
      _block(out)
  return out


def _block(out) -> None:
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  for leaf in tf.nest.flatten(out):
    if hasattr(leaf, "numpy"):
      leaf.numpy()
      return
