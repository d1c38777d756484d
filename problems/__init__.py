"""The meta-training problem ensemble (Wichrowska et al. 2017 §4.1).

`default_problems()` is the set the optimizer is meta-trained on: the reference
implementation's default pool (problem_sets.py, 101 entries) minus its 12
sigmoid MLPs and 3 sparse-gradient MLPs, plus the paper's families the
reference had switched off (minibatch quadratic, oscillating valley, dependency
chain, min/max well) and three power transforms of the loss:

  family             entries
  literature_2d        9  Ackley ... Styblinski-Tang, noiseless
  well_behaved        12  quadratic d25, d784/1024/2048; 4 bowls; 4 logistic regressions
  noisy_minibatch     28  noisy quadratics/bowls/logistic regressions/2-D functions/norms,
                          5 minibatch quadratics
  slow_convergence    28  3 norms, 10 matmul algorithms, 5 outward snakes,
                          5 dependency chains, 5 min/max wells
  transform           32  6 log, 9 rescale, 8 sum, 6 sparse, 3 power
  total              109

`all_problems()` adds the off-by-default ones (neural_network family and the
reference's other off groups). Print either with `python -m problems --list [--all]`.
"""

from __future__ import annotations

import functools

import numpy as np

from problems import literature, neural_nets, noisy, slow, transforms, well_behaved
from problems.base import FAMILIES, MINIMUM_KINDS, Problem

__all__ = ["FAMILIES", "MINIMUM_KINDS", "Problem", "DEFAULT_COUNT", "default_problems",
           "all_problems", "get", "sample"]

DEFAULT_COUNT = 109


@functools.cache
def _default() -> tuple[Problem, ...]:
  problems = (well_behaved.default_problems() + literature.default_problems()
              + noisy.default_problems() + slow.default_problems()
              + transforms.default_problems())
  _check_unique(problems)
  return tuple(problems)


@functools.cache
def _all() -> tuple[Problem, ...]:
  problems = list(_default()) + (well_behaved.off_problems() + noisy.off_problems()
                                 + slow.off_problems() + neural_nets.off_problems())
  _check_unique(problems)
  return tuple(problems)


def _check_unique(problems) -> None:
  names = [problem.name for problem in problems]
  duplicates = sorted({name for name in names if names.count(name) > 1})
  if duplicates:
    raise RuntimeError(f"duplicate problem names: {duplicates}")


def default_problems() -> list[Problem]:
  """The meta-training set (DEFAULT_COUNT problems, no neural networks)."""
  return list(_default())


def all_problems() -> list[Problem]:
  """The default set followed by the problems that are off by default."""
  return list(_all())


@functools.cache
def _by_name() -> dict[str, Problem]:
  return {problem.name: problem for problem in _all()}


def get(name: str) -> Problem:
  """The problem called `name` (default or off-by-default)."""
  try:
    return _by_name()[name]
  except KeyError:
    raise KeyError(f"unknown problem {name!r}; see `python -m problems --list --all`") from None


def sample(rng: np.random.Generator, problems: list[Problem] | None = None) -> Problem:
  """A problem drawn uniformly from `problems` (default set if None), like the
  reference's random.choice over its pool: larger groups are drawn more often."""
  problems = default_problems() if problems is None else problems
  return problems[int(rng.integers(len(problems)))]
