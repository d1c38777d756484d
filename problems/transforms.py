"""Transformed problems (paper §4.1.5).

- SparseGradients: zeroes each gradient entry with probability 0.99 every step.
- Rescale: a linear change of variables, θ_stored = scale · θ.
- LogObjective, PowerObjective: monotonic transforms of the loss.
- SumTask: a multi-task sum with concatenated parameter lists.

A wrapper keeps its inner problem's data, minibatching and gradient noise, and
applies its transform on top; the minimum moves only through the monotonic
loss transforms (g(minimum)) and the sum (Σ minima).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from problems import base, literature, slow
from problems.well_behaved import Bowl, Quadratic


class Transformed(base.Problem):
  """A problem wrapping `inner`; named "<transform>(<inner name>)"."""

  def __init__(self, inner: base.Problem, transform: str, minimum: float | None = None):
    self.inner = inner
    self.batched_keys = inner.batched_keys
    super().__init__(f"{transform}({inner.name})", family=base.TRANSFORM,
                     batch_size=inner.batch_size, noise_stdev=inner.noise_stdev,
                     transform=transform,
                     minimum=inner.minimum if minimum is None else minimum,
                     minimum_kind=inner.minimum_kind)

  def param_shapes(self):
    return self.inner.param_shapes()

  def sample_data(self, seed):
    return self.inner.sample_data(seed)

  def init_params(self, seed):
    return self.inner.init_params(seed)

  def objective(self, params, batch):
    return self.inner.objective(params, batch)

  def minibatch(self, data, seed):
    return self.inner.minibatch(data, seed)

  def perturb_gradients(self, grads, seed):
    return self.inner.perturb_gradients(grads, seed)

  def minimizer(self, data):
    return self.inner.minimizer(data)

  def descent_direction(self, data):
    return self.inner.descent_direction(data)

  def infimum_path(self, data, t):
    return self.inner.infimum_path(data, t)


class SparseGradients(Transformed):
  """Each gradient entry is zeroed with probability `zero_probability` at every step
  (the reference's SparseProblem). The loss is unchanged."""

  def __init__(self, inner: base.Problem, zero_probability: float = 0.99):
    self.zero_probability = zero_probability
    super().__init__(inner, f"sparse_{base.format_number(zero_probability)}")

  def padding_family(self):
    # The masks' draws of a larger shape start with the smaller one's (`base.uniform`).
    inner = self.inner.padding_family()
    return None if inner is None else ("SparseGradients", self.zero_probability, inner)

  def perturb_gradients(self, grads, seed):
    mask_seed = base.step_stream(seed, base.MASK_STREAM)
    return [tf.where(base.uniform(grad.shape, base.step_stream(mask_seed, index))
                     < self.zero_probability, tf.zeros_like(grad), grad)
            for index, grad in enumerate(super().perturb_gradients(grads, seed))]


class Rescale(Transformed):
  """Stores θ' = scale · θ and evaluates f(θ' / scale); init and minimiser scaled."""

  def __init__(self, inner: base.Problem, scale: float):
    self.scale = float(scale)
    super().__init__(inner, f"rescale_{base.format_number(scale)}")

  def init_params(self, seed):
    return [p * np.float32(self.scale) for p in self.inner.init_params(seed)]

  def padding_family(self):
    inner = self.inner.padding_family()
    return None if inner is None else ("Rescale", inner)   # the scale is data

  def sample_data(self, seed):
    return {**self.inner.sample_data(seed), "scale": np.array([self.scale], np.float32)}

  def objective(self, params, batch):
    return self.inner.objective([p / batch["scale"][0] for p in params], batch)

  def _scaled(self, params):
    return None if params is None else [(p * self.scale).astype(np.float32) for p in params]

  def minimizer(self, data):
    return self._scaled(self.inner.minimizer(data))

  def infimum_path(self, data, t):
    return self._scaled(self.inner.infimum_path(data, t))


class LogObjective(Transformed):
  """log(f + ε) - log(ε), ε = 1e-6 (reference), computed as log1p(f / ε).

  Monotonic, so minimisers are kept; the minimum 0 maps to 0.
  """

  def __init__(self, inner: base.Problem):
    super().__init__(inner, "log", minimum=math.log1p(inner.minimum / base.EPSILON))

  def padding_family(self):
    inner = self.inner.padding_family()
    return None if inner is None else ("LogObjective", inner)

  def objective(self, params, batch):
    return tf.math.log1p(self.inner.objective(params, batch) / base.EPSILON)


class PowerObjective(Transformed):
  """(f + ε)^p - ε^p: raises the loss to a power (paper §4.1.5; not in the reference).

  Monotonic for p > 0, so minimisers are kept and the minimum 0 maps to 0; the ε
  keeps the gradient finite at f = 0 when p < 1.
  """

  def __init__(self, inner: base.Problem, power: float):
    self.power = float(power)
    super().__init__(inner, f"power_{base.format_number(power)}",
                     minimum=(inner.minimum + base.EPSILON)**power - base.EPSILON**power)

  def objective(self, params, batch):
    return ((self.inner.objective(params, batch) + base.EPSILON)**self.power
            - base.EPSILON**self.power)


class SumTask(base.Problem):
  """Σ_i f_i(θ_i) with the parameter lists of the sub-problems concatenated.

  Sub-problem i gets instance seed self.child_seed(seed, i) and data keys "i/<key>".
  Its minimum is the sum of theirs, attained at the concatenated minimisers.
  Deviation: each sub-problem's gradient noise is applied to its own slice of
  the gradients; the reference's SumTask ignored sub-problem noise, so its
  "noisy" sums were noiseless. `noise_stdev` reports the largest one.
  The reference's sum tasks are all full-batch, and so must these be.
  """

  def __init__(self, name: str, problems: Sequence[base.Problem]):
    if any(problem.batch_size is not None for problem in problems):
      raise ValueError(f"{name}: SumTask takes full-batch problems only")
    self.problems = tuple(problems)
    kinds = {problem.minimum_kind for problem in problems}
    kind = "bound" if "bound" in kinds else "infinity" if "infinity" in kinds else "exact"
    super().__init__(name, family=base.TRANSFORM,
                     noise_stdev=max(problem.noise_stdev for problem in problems),
                     transform=f"sum({len(problems)})",
                     minimum=sum(problem.minimum for problem in problems),
                     minimum_kind=kind)
    counts = [len(problem.param_shapes()) for problem in problems]
    self._slices = [slice(start, start + count)
                    for start, count in zip(np.cumsum([0] + counts[:-1]), counts)]

  def param_shapes(self):
    return [shape for problem in self.problems for shape in problem.param_shapes()]

  @staticmethod
  def _child_data(data, index):
    prefix = f"{index}/"
    return {key[len(prefix):]: value for key, value in data.items() if key.startswith(prefix)}

  def sample_data(self, seed):
    self.rng(seed, base.DATA_STREAM)  # validates the seed
    return {f"{index}/{key}": value
            for index, problem in enumerate(self.problems)
            for key, value in problem.sample_data(self.child_seed(seed, index)).items()}

  def init_params(self, seed):
    return [param for index, problem in enumerate(self.problems)
            for param in problem.init_params(self.child_seed(seed, index))]

  def objective(self, params, batch):
    return tf.add_n([problem.objective(params[part], self._child_data(batch, index))
                     for index, (problem, part) in enumerate(zip(self.problems, self._slices))])

  def perturb_gradients(self, grads, seed):
    return [grad for index, (problem, part) in enumerate(zip(self.problems, self._slices))
            for grad in (problem.perturb_gradients(
                grads[part], base.step_stream(seed, base.CHILD_STREAM + index))
                         if problem.noise_stdev else grads[part])]

  def minimizer(self, data):
    if self.minimum_kind != "exact":
      return None
    return self._per_problem(data, lambda problem, child_data: problem.minimizer(child_data))

  def descent_direction(self, data):
    if self.minimum_kind != "infinity":
      return None
    return self._per_problem(data, lambda problem, child_data: (
        problem.descent_direction(child_data) if problem.minimum_kind == "infinity"
        else [np.zeros(shape, np.float32) for shape in problem.param_shapes()]))

  def infimum_path(self, data, t):
    if self.minimum_kind != "infinity":
      return None
    return self._per_problem(data, lambda problem, child_data: (
        problem.infimum_path(child_data, t) if problem.minimum_kind == "infinity"
        else problem.minimizer(child_data)))

  def _per_problem(self, data, function):
    """Concatenates function(problem, its data) over sub-problems; None if any is None."""
    parts = [function(problem, self._child_data(data, index))
             for index, problem in enumerate(self.problems)]
    return None if any(part is None for part in parts) else [p for part in parts for p in part]


def _literature():
  return [function() for function in literature.FUNCTIONS]


def default_problems() -> list[base.Problem]:
  """The reference's transform groups (29) plus three power transforms (32)."""
  sparse = [SparseGradients(problem) for problem in
            (Quadratic(20), Quadratic(50), Quadratic(100), Bowl(0.1), Bowl(1.0), Bowl(5.0))]
  log = [LogObjective(problem) for problem in
         (Quadratic(20), Quadratic(50), Quadratic(100), Bowl(0.1), Bowl(1.0), Bowl(5.0))]
  rescale = [Rescale(slow.Norm(18, 2.5), 0.123), Rescale(slow.Norm(18, 1.5), 8),
             Rescale(slow.Norm(18, 2.0), 50), Rescale(slow.Norm(18, 3.0), 200),
             Rescale(slow.Norm(18, 1.0), 1000),
             Rescale(Quadratic(20), 0.1), Rescale(Quadratic(25), 10),
             Rescale(Quadratic(50), 350), Rescale(Quadratic(100), 132)]
  quadratics7 = (11, 3, 9, 7, 5, 13, 12)
  sums = [
      SumTask("sum_quadratics7", [Quadratic(d) for d in quadratics7]),
      SumTask("sum_norm_quadratic_rosenbrock",
              [slow.Norm(18, 3.0), Quadratic(25), literature.Rosenbrock()]),
      SumTask("sum_literature9", _literature()),
      SumTask("sum_literature9_quadratics2", _literature() + [Quadratic(5), Quadratic(13)]),
      SumTask("sum_quadratics2", [Quadratic(11), Quadratic(3)]),
      SumTask("sum_rosenbrock_logsumexp_ackley",
              [literature.Rosenbrock(), literature.LogSumExp(), literature.Ackley()]),
      # The reference's sum_problems_noisy (noiseless there, see SumTask).
      SumTask("sum_quadratics7_noise0.1", [Quadratic(d, noise_stdev=0.1) for d in quadratics7]),
      SumTask("sum_literature9_quadratics2_noise0.5",
              _literature() + [Quadratic(5), Quadratic(13, noise_stdev=0.5)]),
  ]
  # Not in the reference: the paper's "raising to a power" transform.
  power = [PowerObjective(Quadratic(50), 0.5), PowerObjective(Quadratic(20), 2.0),
           PowerObjective(Bowl(5.0, angle=math.pi / 4), 2.0)]
  return log + rescale + sums + sparse + power
