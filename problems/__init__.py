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

Problem sets for meta-training (train_meta.py --problems):
  paper   the 109 above (`default` is an alias), faithful to the seed paper;
  nets    `nets_problems()`: the 43 structures of problems/net_tasks.py (networks on
          generated data), each wrapped in problems/augment.py's task augmentation;
  mix     both, sampled so that a fraction r of the draws are nets (`mix` = `mix:0.5`);
  netfam  `netfam_problems()`: the MLP families of problems/net_families.py (each instance
          draws its own depth, width, activation, normalisation, loss; one compiled function
          per family) under task augmentation.
`python -m problems --list --nets` prints the nets family, its axes and sampled instances.
"""

from __future__ import annotations

import functools

import numpy as np

from problems import (augment, literature, net_families, net_tasks, neural_nets, noisy, slow,
                      transforms, well_behaved)
from problems.base import FAMILIES, MINIMUM_KINDS, Problem

__all__ = ["FAMILIES", "MINIMUM_KINDS", "Problem", "DEFAULT_COUNT", "default_problems",
           "all_problems", "net_problems", "nets_problems", "netfam_problems", "get", "sample"]

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
def _nets() -> tuple[Problem, ...]:
  problems = net_tasks.catalogue()
  _check_unique(list(_all()) + problems)
  return tuple(problems)


@functools.cache
def _nets_augmented() -> tuple[Problem, ...]:
  return tuple(augment.Augmented(problem) for problem in _nets())


def net_problems() -> list[Problem]:
  """The neural-network family on generated data, unaugmented (problems/net_tasks.py)."""
  return list(_nets())


def nets_problems() -> list[Problem]:
  """The `nets` meta-training set: every net_problems() structure under task augmentation."""
  return list(_nets_augmented())


@functools.cache
def _netfam() -> tuple[Problem, ...]:
  families = net_families.families()
  _check_unique(list(_all()) + list(_nets()) + families)
  return tuple(families)


@functools.cache
def _netfam_augmented() -> tuple[Problem, ...]:
  return tuple(augment.Augmented(family) for family in _netfam())


def netfam_problems() -> list[Problem]:
  """The `netfam` meta-training set: every MLP family under task augmentation."""
  return list(_netfam_augmented())


@functools.cache
def _by_name() -> dict[str, Problem]:
  return {problem.name: problem
          for problem in _all() + _nets() + _nets_augmented() + _netfam() + _netfam_augmented()}


def get(name: str) -> Problem:
  """The problem called `name` (default, off-by-default, or of the nets or netfam sets)."""
  try:
    return _by_name()[name]
  except KeyError:
    raise KeyError(f"unknown problem {name!r}; see `python -m problems --list --all`") from None


def sample(rng: np.random.Generator, problems: list[Problem] | None = None,
           weights=None) -> Problem:
  """A problem drawn from `problems` (default set if None): uniformly, like the reference's
  random.choice over its pool (larger groups are drawn more often), or with probabilities
  `weights` (one per problem, summing to 1; the `mix` sets)."""
  problems = default_problems() if problems is None else problems
  if weights is None:
    return problems[int(rng.integers(len(problems)))]
  return problems[int(rng.choice(len(problems), p=weights))]
