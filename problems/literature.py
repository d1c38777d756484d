"""2-D test functions from the optimisation literature (paper §4.1.1).

Formulas, constants and initialisation boxes follow the reference's
problem_generator.py (Surjanovic & Bingham 2013). The paper says every problem
was designed to have a global minimum of 0, with constant offsets where needed;
the reference only made some of them positive. Here each function is the
reference formula minus its global minimum over R² (`REFERENCE_MINIMUM`), then
clamped at 0 against float32 round-off, so `minimum` is 0 for all nine:

  function        reference min over R²            global minimiser(s)
  ackley          0                                (0, 0)
  beale           0                                (3, 0.5)
  booth           0                                (1, 3)
  branin          5/(4π) = 0.397887...             (-π, 12.275), (π, 2.275), (3π, 2.475), ...
  logsumexp       log(1 + 2√2 e^-0.1) = 1.26955... (-ln2/2, 0)
  matyas          0                                (0, 0)
  michalewicz     0 (infimum, not attained)        none: see Michalewicz
  rosenbrock      0                                (1, 1)
  styblinski_tang 1.667668... (the reference's +80) (-2.903534, -2.903534)
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from problems import base


class Function2D(base.Problem):
  """A dataless function of one parameter of shape (2,), initialised uniformly in a box."""

  key: str = ""
  init_low: tuple[float, float] = (-5.0, -5.0)
  init_high: tuple[float, float] = (5.0, 5.0)
  REFERENCE_MINIMUM: float = 0.0  # subtracted from the reference formula
  MINIMIZER: tuple[float, float] | None = None

  def __init__(self, noise_stdev: float = 0.0):
    super().__init__(self.key + base.noise_suffix(noise_stdev),
                     family=base.family_for(base.LITERATURE_2D, noise_stdev),
                     noise_stdev=noise_stdev, minimum=0.0,
                     minimum_kind="exact" if self.MINIMIZER is not None else "bound")

  def param_shapes(self):
    return [(2,)]

  def init_params(self, seed):
    rng = self.rng(seed, base.INIT_STREAM)
    return [rng.uniform(self.init_low, self.init_high).astype(np.float32)]

  def reference_value(self, x, y):
    """The reference formula, elementwise in x and y (any broadcastable shapes)."""
    raise NotImplementedError

  def value(self, x, y):
    """The shifted function: reference_value - REFERENCE_MINIMUM, clamped at 0."""
    return base.clamp_at_zero(self.reference_value(x, y) - self.REFERENCE_MINIMUM)

  def objective(self, params, batch):
    return self.value(params[0][0], params[0][1])

  def minimizer(self, data):
    if self.MINIMIZER is None:
      return None
    return [np.asarray(self.MINIMIZER, dtype=np.float32)]


class Ackley(Function2D):
  """Many local minima on a funnel. The tiny constant under the square root keeps
  the gradient finite at the minimiser (the reference gives 0 * inf = NaN there)
  and moves the minimum by ~4e-10."""

  key = "ackley"
  init_low, init_high = (-32.768, -32.768), (32.768, 32.768)
  MINIMIZER = (0.0, 0.0)

  def reference_value(self, x, y):
    radius = tf.sqrt(0.5 * (x**2 + y**2) + 1e-20)
    return (-20.0 * tf.exp(-0.2 * radius)
            - tf.exp(0.5 * (tf.cos(2 * math.pi * x) + tf.cos(2 * math.pi * y)))
            + math.e + 20.0)


class Beale(Function2D):
  """Sharp peaks at the corners of the box."""

  key = "beale"
  init_low, init_high = (-4.5, -4.5), (4.5, 4.5)
  MINIMIZER = (3.0, 0.5)

  def reference_value(self, x, y):
    return ((1.5 - x + x * y)**2 + (2.25 - x + x * y**2)**2
            + (2.625 - x + x * y**3)**2)


class Booth(Function2D):
  """A long valley along one direction."""

  key = "booth"
  init_low, init_high = (-10.0, -10.0), (10.0, 10.0)
  MINIMIZER = (1.0, 3.0)

  def reference_value(self, x, y):
    return (x + 2 * y - 7)**2 + (2 * x + y - 5)**2


class Branin(Function2D):
  """Three global minima in the usual box (infinitely many on R², x = (2k+1)π)."""

  key = "branin"
  init_low, init_high = (-5.0, 0.0), (10.0, 15.0)
  REFERENCE_MINIMUM = 5.0 / (4.0 * math.pi)  # s * t, reached where cos x = -1
  MINIMIZER = (math.pi, 2.275)

  def reference_value(self, x, y):
    b, c, r, s, t = 5.1 / (4 * math.pi**2), 5 / math.pi, 6.0, 10.0, 1 / (8 * math.pi)
    return (y - b * x**2 + c * x - r)**2 + s * (1 - t) * tf.cos(x) + s


class LogSumExp(Function2D):
  """log(e^(x+3y-0.1) + e^(x-3y-0.1) + e^(-x-0.1) + 1): smooth, convex. Init N(0, 1)."""

  key = "logsumexp"
  REFERENCE_MINIMUM = math.log(1 + 2 * math.sqrt(2) * math.exp(-0.1))
  MINIMIZER = (-math.log(2) / 2, 0.0)

  def init_params(self, seed):
    return [self.rng(seed, base.INIT_STREAM).standard_normal(2).astype(np.float32)]

  def reference_value(self, x, y):
    return tf.math.log(tf.exp(x + 3 * y - 0.1) + tf.exp(x - 3 * y - 0.1)
                       + tf.exp(-x - 0.1) + 1.0)


class Matyas(Function2D):
  """A shallow valley; 0.26(x²+y²) - 0.48xy = 0.24(x-y)² + 0.02(x²+y²) >= 0."""

  key = "matyas"
  init_low, init_high = (-10.0, -10.0), (10.0, 10.0)
  MINIMIZER = (0.0, 0.0)

  def reference_value(self, x, y):
    return 0.26 * (x**2 + y**2) - 0.48 * x * y


class Michalewicz(Function2D):
  """Steep ridges: 2 - sin(x) sin(x²/π)^10 - sin(y) sin(2y²/π)^10 (m = 5).

  Not shifted. The reference evaluates it on all of R², where both products
  get arbitrarily close to 1 (for large |x| the factor sin(x²/π) oscillates
  quickly), so the infimum is exactly 0 but is not attained: `minimum` 0 is
  kind "bound". In the initialisation box [0, π]² the minimum is BOX_MINIMUM,
  at BOX_MINIMIZER.
  """

  key = "michalewicz"
  init_low, init_high = (0.0, 0.0), (math.pi, math.pi)
  BOX_MINIMUM = 0.19337711465280494
  BOX_MINIMIZER = (2.185311960965617, math.pi / 2)

  def reference_value(self, x, y):
    return 2.0 - (tf.sin(x) * tf.sin(x**2 / math.pi)**10
                  + tf.sin(y) * tf.sin(2 * y**2 / math.pi)**10)


class Rosenbrock(Function2D):
  """The banana valley: (1-x)² + 100(y-x²)²."""

  key = "rosenbrock"
  init_low, init_high = (-5.0, -5.0), (10.0, 10.0)
  MINIMIZER = (1.0, 1.0)

  def reference_value(self, x, y):
    return (1 - x)**2 + 100 * (y - x**2)**2


class StyblinskiTang(Function2D):
  """Bumpy: ½Σ(x⁴ - 16x² + 5x) + 80 in the reference, whose minimum is 1.6677."""

  key = "styblinski_tang"
  ROOT = -2.903534027771177  # the global root of 4a³ - 32a + 5 = 0
  REFERENCE_MINIMUM = 1.6676685924571757
  MINIMIZER = (ROOT, ROOT)

  def reference_value(self, x, y):
    return 0.5 * ((x**4 - 16 * x**2 + 5 * x) + (y**4 - 16 * y**2 + 5 * y)) + 80.0


FUNCTIONS = (Ackley, Beale, Booth, Branin, LogSumExp, Matyas, Michalewicz, Rosenbrock,
             StyblinskiTang)


def default_problems() -> list[base.Problem]:
  """The reference's optimization_test_problems (9 noiseless)."""
  return [function() for function in FUNCTIONS]
