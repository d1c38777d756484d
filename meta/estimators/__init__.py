"""Meta-gradient estimators: what one meta-step computes before the meta-optimizer applies it.

  tbptt  truncated backpropagation through one partial unroll (seed paper 1; tbptt.py).
  pes    persistent evolution strategies over a population of long trajectories (Vicol, Metz
         & Sohl-Dickstein 2021; what VeLO, Celo and Celo2 meta-train with; pes.py).

An estimator is built from the trainer (which owns the meta-parameters, the meta-optimizer,
the sampling RNG and the strategy) and offers:

  step(coordinator) -> list of diagnostics rows (one per meta-update it applied)
  pack() -> bytes / unpack(bytes)   its in-flight state, for the checkpoint
  num_compiled() -> int             compiled problems so far (memory-map budget)
"""

from __future__ import annotations

NAMES = ("tbptt", "pes")


def build(name: str, trainer):
  if name == "tbptt":
    from meta.estimators import tbptt
    return tbptt.TBPTT(trainer)
  if name == "pes":
    from meta.estimators import pes
    return pes.PES(trainer)
  raise ValueError(f"unknown --estimator {name!r}; choose one of {NAMES}")
