"""Configuration of the hierarchical RNN optimizer, with its presets.

Every size and switch of the optimizer lives in `HRNNConfig`. Presets:

* `paper()`: seed paper 1 (Wichrowska et al. 2017) with the settings of the original code's
  `metarun.py` flags (hrnn_reference.md §1.1): GRU sizes 10/20/20, 4 momentum timescales,
  gradient products, relative log-magnitudes, problem-wide relative learning rate, gradient
  shortcut, attention off, learned decays.
* `stable()`: the same architecture with the fixes of seed paper 2 (Harrison et al. 2022):
  a nominal AdamAggMo descent term with its own learned magnitude, a learned gain on the
  blackbox (RNN) term that starts at zero, output preconditioning, and fixed-form EMA
  accumulators. L2 on the meta-parameters is a meta-training option, not part of the config.
* `lean()`: `stable()` with a small state, 8 float32-equivalents per parameter instead of 20
  (issue 15): the Parameter GRU state, momenta and mean squares are stored in bfloat16 (all
  arithmetic stays float32), with 6 Parameter GRU units and 3 momentum timescales. The log step
  length and the nominal term's raw-gradient RMS stay float32: their EMAs move by less than
  bfloat16's 0.4 % resolution per step and would stall. Every feature of `stable()` is kept.
  Its nominal magnitude starts at 2e-3 (stable: 1e-3), so that the untrained optimizer starts
  meta-training next to Adam(2e-3), the reference of the validation rule and the benchmark.
  It needs its own meta-trained weights (a different state layout); `paper` and `stable` are
  unchanged.
* `bounded()`: `lean()` with an anchored step length (`anchored_log_lr`): the log step length
  mean-reverts to a learned anchor instead of integrating the RNN's deltas, so for any fixed
  weights the step length is bounded and cannot climb over a long run (the failure of every
  candidate meta-trained with long horizons so far). The initial learning rate is forgotten
  after a few dozen steps (time constant 1 / (1 - sigmoid(log_lr_momentum_logit)) ~ 25 steps).
* `scheduled()`: `bounded()` with a learned schedule (`learned_schedule`): each of the two step
  lengths (the nominal term's magnitude and the RNN term's) is multiplied by
  (1 + t / schedule_steps)^min(w, 0), t the optimizer's step count and w a learned scalar per
  term that starts at 0. Motivated by `meta_runs/bounded_pes_long`, where PES on long
  trajectories shortened the step that PES on shorter ones had lengthened: a schedule lets one
  set of weights take long steps early and shorter ones late. It can only shrink the step (w
  is clipped at 0), so the step stays bounded. With w = 0 it is `bounded()` exactly, which is
  how it warm-starts from `bounded` weights. (A later diagnostic put the PES candidates'
  long-run failures on the RNN term rather than on the step length; see the README.)
* `annealed()`: `bounded()` whose RNN term is annealed like Adam's step (`anneal_blackbox`):
  its direction has, per tensor, the RMS of the nominal direction m / sqrt(v) instead of 1.
  At interpolation the gradients fall below the RMS v remembers and Adam's step fades; the
  unit-RMS RNN step did not, and at a constant length in a consistent direction it pushed the
  weights outward (‖W‖ 51 → 123 over 20,000 steps of the demo MLP) until the loss spiked: the
  long-run failure of every PES candidate so far. Same meta-parameters as `bounded`, so it
  warm-starts from `bounded` files.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

STATE_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class HRNNConfig:
  """Sizes, feature switches and initialisation constants of the hierarchical RNN."""

  # Architecture (paper §3.1).
  param_units: int = 10      # Parameter GRU hidden size K_P.
  tensor_units: int = 20     # Tensor GRU hidden size K_T.
  global_units: int = 20     # Global GRU hidden size K_G.

  # Input features (paper §3.2).
  num_timescales: int = 4          # momentum timescales, each twice the last (eq. 1).
  use_grad_products: bool = True   # products of neighbouring scaled momenta.
  use_log_magnitudes: bool = True  # relative log gradient magnitudes (eq. 4).
  use_relative_lr: bool = True     # log step length relative to the problem-wide mean.

  # Outputs (paper §3.2.1, §3.2.4, appendix A.1).
  use_gradient_shortcut: bool = True  # linear map from scaled momenta into the direction.
  use_attention: bool = False         # Nesterov-like attended point phi (eq. 6, 9).
  learned_decays: bool = True         # momentum / RMS decays read out of the RNN each step.
  max_log_lr: float = 33.0            # forward-only clip of the log step length.
  # Step-length recurrence. False (paper eq. 8): the stored log step length is a running
  # average of itself plus the RNN's delta, i.e. an integrator that can drift without bound.
  # True ("anchored", our departure): the running average pulls toward a learned anchor plus
  # the delta, so it stays within anchor +- the largest delta the readout can emit.
  anchored_log_lr: bool = False
  log_lr_anchor_init: float = -6.907755278982137  # log(1e-3): Keras' default learning rate.
  # Learned schedule (our departure): both step lengths times (1 + t / schedule_steps)^min(w, 0),
  # w learned per term ("schedule/nominal", "schedule/blackbox"), starting at 0.
  learned_schedule: bool = False
  schedule_steps: float = 1000.0

  # Storage of the large per-parameter state (param_hidden, momentum, mean_square): "float32"
  # or "bfloat16" (half the memory; the step computes in float32 and rounds on store).
  state_dtype: str = "float32"

  # Seed paper 2 fixes.
  nominal_term: bool = False       # add exp(a + head) * AdamAggMo to the update.
  nominal_step: float = 1e-3       # initial nominal magnitude exp(a).
  nominal_rms_decay: float = 0.999 # decay of the raw-gradient RMS used by the nominal term.
  blackbox_gain: bool = False      # multiply the RNN term by a learned scalar gain...
  blackbox_gain_init: float = 0.0  # ...initialised here (0: untrained = nominal optimizer).
  precondition_output: bool = False  # divide the RNN direction by sqrt(v) before normalising.
  # RNN term's per-tensor RMS (our departure). False: 1 (eq. 5), whatever the gradients do.
  # True: the per-tensor RMS of the nominal AdamAggMo direction m / sqrt(v), which shrinks as
  # the gradients shrink below their long-run RMS (needs nominal_term).
  anneal_blackbox: bool = False

  # Initialisation (hrnn_reference.md §1.1, §1.4, §1.5).
  weight_scale: float = 0.5              # GRU / affine weights ~ N(0, scale / sqrt(fan_in)).
  gate_bias_init: float = 2.2            # GRU gate biases.
  readout_scale: float = 0.5             # readout weights ~ N(0, scale / sqrt(K_P)).
  momentum_decay_bias_init: float = 2.2  # sigmoid(2.2) ~ 0.90 shortest momentum decay.
  rms_decay_bias_init: float = 3.2       # sigmoid(3.2) ~ 0.96 RMS decay.
  log_lr_momentum_logit_init: float = 3.2  # gamma of eq. 8: sigmoid(3.2) ~ 0.96.
  log_step_offset_init: float = -1.0     # learned offset added to the log step length.
  shortcut_std: float = 0.1              # shortcut weights ~ N(1/S, shortcut_std / sqrt(S)).

  def __post_init__(self):
    for name in ("param_units", "tensor_units", "global_units", "num_timescales"):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"HRNNConfig.{name} must be a positive int, got {value!r}")
    if self.state_dtype not in STATE_DTYPES:
      raise ValueError(f"HRNNConfig.state_dtype must be one of {STATE_DTYPES}, got "
                       f"{self.state_dtype!r}")
    if not 0.0 < self.nominal_rms_decay < 1.0:
      raise ValueError(
          f"HRNNConfig.nominal_rms_decay must be in (0, 1), got {self.nominal_rms_decay}")
    if not self.schedule_steps > 0:
      raise ValueError(f"HRNNConfig.schedule_steps must be > 0, got {self.schedule_steps}")
    if self.anneal_blackbox and not self.nominal_term:
      raise ValueError("HRNNConfig.anneal_blackbox needs nominal_term (it takes the nominal "
                       "direction's RMS)")
    if self.nominal_step <= 0:
      raise ValueError(f"HRNNConfig.nominal_step must be > 0, got {self.nominal_step}")
    if self.blackbox_gain and not self.nominal_term and self.blackbox_gain_init == 0.0:
      raise ValueError(
          "HRNNConfig: blackbox_gain_init=0 without nominal_term gives an optimizer that "
          "never moves; enable nominal_term or use a non-zero blackbox_gain_init")

  @property
  def input_size(self) -> int:
    """Width of the Parameter GRU input x (12 with the paper settings)."""
    s = self.num_timescales
    size = s                                   # scaled momenta
    size += (s - 1) if self.use_grad_products else 0
    size += s if self.use_log_magnitudes else 0
    size += 1 if self.use_relative_lr else 0
    return size

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), sort_keys=True)

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "HRNNConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
      raise ValueError(f"unknown HRNNConfig fields: {unknown}")
    return cls(**values)

  def diff(self, other: "HRNNConfig") -> dict[str, tuple[Any, Any]]:
    """Fields whose values differ, as {name: (self_value, other_value)}."""
    mine, theirs = self.to_dict(), other.to_dict()
    return {k: (mine[k], theirs[k]) for k in mine if mine[k] != theirs[k]}


def paper() -> HRNNConfig:
  """Seed paper 1 settings (the original code's metarun.py flags)."""
  return HRNNConfig()


def stable() -> HRNNConfig:
  """Paper architecture plus the seed paper 2 stability fixes."""
  return dataclasses.replace(
      paper(),
      nominal_term=True,
      blackbox_gain=True,
      blackbox_gain_init=0.0,
      precondition_output=True,
      learned_decays=False,
  )


def lean() -> HRNNConfig:
  """`stable()` with 8 float32-equivalents of state per parameter (see the module docstring)."""
  return dataclasses.replace(stable(), state_dtype="bfloat16", param_units=6, num_timescales=3,
                             nominal_step=2e-3)


def bounded() -> HRNNConfig:
  """`lean()` with the anchored (bounded) step length (see the module docstring)."""
  return dataclasses.replace(lean(), anchored_log_lr=True)


def scheduled() -> HRNNConfig:
  """`bounded()` with the learned decaying schedule (see the module docstring)."""
  return dataclasses.replace(bounded(), learned_schedule=True)


def annealed() -> HRNNConfig:
  """`bounded()` with the RNN term annealed like Adam's step (see the module docstring)."""
  return dataclasses.replace(bounded(), anneal_blackbox=True)


PRESETS = {"paper": paper, "stable": stable, "lean": lean, "bounded": bounded,
           "scheduled": scheduled, "annealed": annealed}


def get(name_or_config: str | HRNNConfig | dict | None) -> HRNNConfig:
  """Resolves a preset name, a dict or a config to an `HRNNConfig` (None -> paper)."""
  if name_or_config is None:
    return paper()
  if isinstance(name_or_config, HRNNConfig):
    return name_or_config
  if isinstance(name_or_config, dict):
    return HRNNConfig.from_dict(name_or_config)
  if isinstance(name_or_config, str):
    if name_or_config not in PRESETS:
      raise ValueError(
          f"unknown config preset {name_or_config!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name_or_config]()
  raise TypeError(f"config must be a preset name, dict or HRNNConfig, got {name_or_config!r}")
