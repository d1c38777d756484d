"""Seed paper 2's claims, measured: the `paper` config against the `stable` one (issue 5).

Both arms are meta-trained by train_meta.py with the same problem set, unroll distributions,
seed and number of meta-steps; they differ only in the config (and `stable`'s --meta_l2, which
is one of the fixes). The ablation compares them on the three things seed paper 2 claims the
fixes improve:

  meta-training speed   meta-loss (eq. 14) against meta-steps, from each run's history.csv, up
                        to the meta-step of its exported weights (the common budget)
  stability             learned_opt.stability on the noisy quadratic, over several seeds:
                        spectral radius of the linearised joint dynamics after the meta-training
                        horizon H, and whether the loss stays bounded to 10 H and 100 H
  held-out loss         benchmarks.quality's held-out tasks (neural networks on real offline
                        data, which meta-training never saw): final training loss against
                        Adam(2e-3), tuned Adam, divergences, and the Fig. 5 learning-rate spread

    python -m benchmarks.ablation                          # meta_runs/{paper,stable}, shipped weights
    python -m benchmarks.ablation --quality_json benchmarks/results/quality.json   # reuse a run
    python -m benchmarks.ablation --arms a=runs/a:runs/a.npz,b=runs/b:runs/b.npz --out /tmp/abl

An arm is `name=train_dir:weights` (weights: a shipped name or a path to a file that
train_meta.py --export wrote from that train_dir). Writes ablation.md, ablation.json and
ablation.png to --out; the held-out runs (unless --quality_json is given) also write quality.*.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from typing import Sequence

import numpy as np

from learned_opt import weights as weights_lib
from meta import checkpoints
from meta.plot_history import moving_average

DEFAULT_ARMS = "paper=meta_runs/paper:paper,stable=meta_runs/stable:stable"


@dataclasses.dataclass(frozen=True)
class Arm:
  name: str
  train_dir: str
  weights: str


def parse_arms(spec: str | Sequence[str]) -> list[Arm]:
  """'a=dir:weights,b=dir:weights' (or a list of 'a=dir:weights') -> [Arm]."""
  items = spec.split(",") if isinstance(spec, str) else list(spec)
  arms = []
  for item in items:
    name, eq, rest = item.partition("=")
    train_dir, colon, weights = rest.rpartition(":")
    if not (eq and colon and name and train_dir and weights):
      raise ValueError(f"--arms {item!r}: expected name=train_dir:weights, "
                       "e.g. paper=meta_runs/paper:paper")
    arms.append(Arm(name.strip(), train_dir.strip(), weights.strip()))
  if len({a.name for a in arms}) != len(arms):
    raise ValueError(f"--arms: two arms share a name: {[a.name for a in arms]}")
  if len(arms) < 2:
    raise ValueError(f"--arms: an ablation needs at least two arms, got {len(arms)}")
  return arms


# ---- meta-training speed ----------------------------------------------------------------------

def read_history(train_dir: str) -> dict[str, np.ndarray]:
  """history.csv as arrays sorted by meta-step. A step logged twice (a run killed after
  logging but before its checkpoint re-does it on resume, identically) counts once."""
  path = os.path.join(train_dir, checkpoints.HISTORY)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} does not exist: is {train_dir!r} a train_meta.py train_dir?")
  by_step = {}
  for row in checkpoints.read_history(train_dir):
    try:
      by_step[int(row["step"])] = (float(row["wall_time"]), float(row["meta_loss"]),
                                   int(float(row.get("skipped") or 0)), row["problem"])
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"{path}: malformed row {row!r} ({e})") from None
  steps = np.array(sorted(by_step), dtype=np.int64)
  cols = list(zip(*(by_step[s] for s in steps))) if len(steps) else [[], [], [], []]
  return {"step": steps, "wall_time": np.array(cols[0], float),
          "meta_loss": np.array(cols[1], float), "skipped": np.array(cols[2], np.int64),
          "problem": np.array(cols[3], dtype=object)}


def meta_training_summary(history: dict, budget: int, fraction: float = 0.2) -> dict:
  """Meta-loss over the first and last `fraction` of `budget` meta-steps, divergences, time.

  Non-finite meta-losses (a diverged unroll; its meta-gradient was dropped) are counted, and
  left out of the means."""
  keep = history["step"] <= budget
  steps, losses = history["step"][keep], history["meta_loss"][keep]
  if len(steps) == 0 or steps[-1] < budget:
    raise ValueError(f"history reaches meta-step {int(steps[-1]) if len(steps) else 0}, "
                     f"short of the budget {budget}")
  finite = np.isfinite(losses)
  window = max(1, int(round(fraction * budget)))
  first, last = steps <= window, steps > budget - window
  return {
      "meta_steps": int(budget),
      "wall_time_hours": float(history["wall_time"][keep][-1]) / 3600.0,
      "window": window,
      "meta_loss_first": float(np.mean(losses[first & finite])),
      "meta_loss_last": float(np.mean(losses[last & finite])),
      "nonfinite_meta_steps": int(np.sum(~finite | (history["skipped"][keep] > 0))),
      "problems_seen": int(len(set(history["problem"][keep]))),
  }


def paired_difference(history: dict, reference: dict, budget: int) -> dict:
  """Mean meta-loss difference (history − reference) over the meta-steps where both runs
  trained the same problem. Same seed, same sampler: until a trajectory ends early in one
  run (a divergence), both draw the same problems in the same order, so this comparison is
  free of the problem-to-problem spread that dominates the raw curves."""
  a = {int(s): (l, p) for s, l, p in zip(history["step"], history["meta_loss"],
                                          history["problem"]) if s <= budget}
  b = {int(s): (l, p) for s, l, p in zip(reference["step"], reference["meta_loss"],
                                          reference["problem"]) if s <= budget}
  diffs = [a[s][0] - b[s][0] for s in a.keys() & b.keys()
           if a[s][1] == b[s][1] and math.isfinite(a[s][0]) and math.isfinite(b[s][0])]
  return {"matched_steps": len(diffs),
          "mean_difference": float(np.mean(diffs)) if diffs else math.nan,
          "fraction_lower": float(np.mean(np.array(diffs) < 0)) if diffs else math.nan}


# ---- stability --------------------------------------------------------------------------------

def stability_summary(spec: str, seeds: Sequence[int], horizon: int, dim: int = 20,
                      jit_compile: bool = True) -> dict:
  """learned_opt.stability over several seeds: the worst case is what counts."""
  from learned_opt import stability
  meta, cfg = stability.load_meta(spec, None, {})
  problem = stability.NoisyQuadratic.make(dim)
  reports = [stability.analyse(meta, cfg, problem, horizon=horizon, seed=s,
                                 jit_compile=jit_compile) for s in seeds]
  return {
      "seeds": list(seeds), "horizon": horizon, "dim": dim,
      "rho": [r.rho for r in reports],
      "rho_max": max(r.rho for r in reports),
      "stable_all": all(r.stable for r in reports),
      "loss_ratio_10H_max": max(r.loss_ratios[10] for r in reports),
      "loss_ratio_100H_max": max(r.loss_ratios[100] for r in reports),
      "bounded_10H": sum(r.bounded[10] for r in reports),
      "bounded_100H": sum(r.bounded[100] for r in reports),
  }


# ---- held-out loss ----------------------------------------------------------------------------

def held_out_summary(quality_results: dict, label: str) -> dict:
  """One learned optimizer's row in a benchmarks.quality result."""
  from benchmarks import quality
  tasks = quality_results["tasks"]
  if label not in quality_results["learned"]:
    raise ValueError(f"the quality results hold {quality_results['learned']}, not {label!r}: "
                     "run benchmarks.quality with this arm's --weights")
  # float(): quality.json spells inf/nan as strings, and float() reads them back.
  per_task, ratios = {}, []
  wins_adam = wins_tuned = diverged = 0
  for task in tasks:
    s = task["summary"]
    final = float(s["final_loss"][label])
    adam = float(s["adam_2e-3_final_loss"])
    tuned = float(s["tuned_adam"]["final_loss"])
    ratio = final / adam if math.isfinite(final) and adam > 0 else math.inf
    ratios.append(ratio)
    wins_adam += quality.sort_key(final) <= quality.sort_key(adam)
    wins_tuned += quality.sort_key(final) <= quality.sort_key(tuned)
    diverged += bool(s["diverged"][label])
    per_task[task["name"]] = {"final_loss": final, "ratio_to_adam": ratio,
                              "diverged": s["diverged"][label]}
  finite = [r for r in ratios if math.isfinite(r) and r > 0]
  out = {"tasks": per_task, "num_tasks": len(tasks),
         "geomean_ratio_to_adam": (float(np.exp(np.mean(np.log(finite))))
                                   if len(finite) == len(ratios) and ratios else math.inf),
         "wins_vs_adam": int(wins_adam), "wins_vs_tuned": int(wins_tuned),
         "divergences": int(diverged), "fig5_spread": None}
  q = quality_results.get("quadratic_lr")
  if q:
    finals = [float(r["final_loss"]) for r in q["runs"] if r["optimizer"] == label]
    good = [f for f in finals if math.isfinite(f) and f > 0]
    out["fig5_spread"] = max(good) / min(good) if good and len(good) == len(finals) else math.inf
  return out


# ---- report -----------------------------------------------------------------------------------

def _fmt(value, spec=".3g") -> str:
  if value is None:
    return "–"
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  return format(value, spec)


def markdown(report: dict) -> str:
  arms = report["arms"]
  names = list(arms)
  rows = []
  def row(label, cells):
    rows.append(f"| {label} | " + " | ".join(cells) + " |")
  m = {n: arms[n]["meta_training"] for n in names}
  s = {n: arms[n]["stability"] for n in names}
  h = {n: arms[n]["held_out"] for n in names}
  budget = report["budget"]
  row("meta-steps (the common budget)", [str(m[n]["meta_steps"]) for n in names])
  row("meta-training wall time, h (one core)", [_fmt(m[n]["wall_time_hours"], ".2f") for n in names])
  row(f"meta-loss, first {m[names[0]]['window']} meta-steps", [_fmt(m[n]["meta_loss_first"]) for n in names])
  row(f"meta-loss, last {m[names[0]]['window']} meta-steps", [_fmt(m[n]["meta_loss_last"]) for n in names])
  for n in names[1:]:
    p = m[n].get("paired_vs")
    if p:
      row(f"{n} − {p['reference']}: meta-loss on the same problem at the same meta-step "
          "(mean; share lower)",
          ["–" if k != n else f"{_fmt(p['mean_difference'])}; {_fmt(p['fraction_lower'], '.0%')} "
           f"of {p['matched_steps']}" for k in names])
  row("meta-steps with a non-finite unroll", [str(m[n]["nonfinite_meta_steps"]) for n in names])
  if all(s.values()):
    seeds = len(s[names[0]]["seeds"])
    row(f"ρ(joint), worst of {seeds} seed{'s' * (seeds > 1)}", [_fmt(s[n]["rho_max"], ".4f") for n in names])
    row("max loss / initial to 10 H, worst seed", [_fmt(s[n]["loss_ratio_10H_max"]) for n in names])
    row("max loss / initial to 100 H, worst seed", [_fmt(s[n]["loss_ratio_100H_max"]) for n in names])
    row("seeds bounded to 10 H / 100 H", [f"{s[n]['bounded_10H']}/{seeds} / {s[n]['bounded_100H']}/{seeds}"
                                          for n in names])
  if all(h.values()):
    k = h[names[0]]["num_tasks"]
    row("held-out: geo-mean final loss / Adam(2e-3)", [_fmt(h[n]["geomean_ratio_to_adam"]) for n in names])
    row("held-out: final loss ≤ Adam(2e-3)", [f"{h[n]['wins_vs_adam']}/{k}" for n in names])
    row("held-out: final loss ≤ tuned Adam", [f"{h[n]['wins_vs_tuned']}/{k}" for n in names])
    row("held-out: divergences", [str(h[n]["divergences"]) for n in names])
    row("Fig. 5: final-loss spread over initial lr 1e-6…1e-2", [_fmt(h[n]["fig5_spread"]) for n in names])
  lines = [f"Ablation at an equal budget of {budget} meta-steps "
           "(" + ", ".join(f"{n}: {arms[n]['weights']}" for n in names) + ").", "",
           "| | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names), *rows, ""]
  if all(h.values()):
    tasks = list(h[names[0]]["tasks"])
    lines += ["Held-out final training loss / Adam(2e-3)'s (lower is better; < 1 beats Adam).", "",
              "| task | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for t in tasks:
      lines.append(f"| {t} | " + " | ".join(
          _fmt(h[n]["tasks"][t]["ratio_to_adam"]) + (" †" if h[n]["tasks"][t]["diverged"] else "")
          for n in names) + " |")
    lines.append("")
  return "\n".join(lines)


def plot(report: dict, histories: dict, path: str, window: int) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  arms = report["arms"]
  have_held_out = all(a["held_out"] for a in arms.values())
  have_stability = all(a["stability"] for a in arms.values())
  panels = 1 + have_stability + have_held_out
  fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4), squeeze=False)
  axes = list(axes[0])
  colors = dict(zip(arms, plt.cm.tab10.colors))
  ax = axes.pop(0)
  for name, hist in histories.items():
    keep = hist["step"] <= report["budget"]
    ax.plot(hist["step"][keep], moving_average(hist["meta_loss"][keep], window),
            color=colors[name], label=name)
  ax.set_xlabel("meta-step")
  ax.set_ylabel(f"meta-loss, {window}-step moving average")
  ax.set_title("meta-training (lower is better)", fontsize=9)
  ax.legend(fontsize=8)
  x = np.arange(len(arms))
  if have_stability:
    ax = axes.pop(0)
    width = 0.38
    for i, key in enumerate(("loss_ratio_10H_max", "loss_ratio_100H_max")):
      values = [min(arms[n]["stability"][key], 1e30) for n in arms]
      ax.bar(x + (i - 0.5) * width, values, width, label=("10 H", "100 H")[i],
             color=("tab:gray", "black")[i])
    ax.axhline(10.0, color="tab:red", lw=0.8, ls="--", label="bounded limit (10×)")
    ax.set_yscale("log")
    ax.set_xticks(x, [f"{n}\nρ={arms[n]['stability']['rho_max']:.4f}" for n in arms])
    ax.set_ylabel("max loss / initial loss (worst seed)")
    ax.set_title("noisy quadratic, long horizons", fontsize=9)
    ax.legend(fontsize=8)
  if have_held_out:
    ax = axes.pop(0)
    tasks = list(next(iter(arms.values()))["held_out"]["tasks"])
    width = 0.8 / len(arms)
    for i, name in enumerate(arms):
      ratios = [arms[name]["held_out"]["tasks"][t]["ratio_to_adam"] for t in tasks]
      ratios = [r if math.isfinite(r) else 1e30 for r in ratios]
      ax.bar(np.arange(len(tasks)) + (i - (len(arms) - 1) / 2) * width, ratios, width,
             color=colors[name], label=name)
    ax.axhline(1.0, color="tab:blue", lw=0.8, ls="--", label="Adam(2e-3)")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(tasks)), tasks, rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("final loss / Adam(2e-3)'s")
    ax.set_title("held-out tasks (lower is better)", fontsize=9)
    ax.legend(fontsize=8)
  fig.tight_layout()
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---- driver -----------------------------------------------------------------------------------

@dataclasses.dataclass
class Options:
  arms: Sequence[Arm] = ()
  quality_json: str = ""          # reuse a benchmarks.quality result holding every arm's weights
  quality_tasks: Sequence[str] | None = None   # None: all of benchmarks.quality's tasks
  quality_steps: int = 2000
  quality_long_steps: int = 10000
  stability_seeds: Sequence[int] = (0, 1, 2)
  horizon: int = 1000
  window: int = 0                 # moving-average window; 0: a fifth of the budget
  skip_stability: bool = False
  skip_held_out: bool = False
  jit: bool | str = "auto"        # XLA for the runs: True, False, or "auto" (quality's choice)
  out: str = "benchmarks/results/ablation"


def run(options: Options) -> dict:
  from benchmarks import quality
  arms = list(options.arms)
  loaded = {}
  for arm in arms:
    w = weights_lib.load(arm.weights)
    if "meta_steps" not in w.provenance:
      raise ValueError(f"{w.path}: no meta_steps in its provenance; the ablation needs weights "
                       "exported by train_meta.py --export")
    loaded[arm.name] = w
  histories = {arm.name: read_history(arm.train_dir) for arm in arms}
  budget = min(int(w.provenance["meta_steps"]) for w in loaded.values())
  spread = max(int(w.provenance["meta_steps"]) for w in loaded.values()) - budget
  if spread > 0.02 * budget:
    print(f"warning: the arms' weights were exported at different meta-steps "
          f"({ {n: w.provenance['meta_steps'] for n, w in loaded.items()} }); meta-training "
          f"curves are cut at {budget}, but the weights are not an equal budget", file=sys.stderr)
  start = time.perf_counter()
  report = {"budget": budget, "arms": {}}
  for arm in arms:
    w = loaded[arm.name]
    report["arms"][arm.name] = {
        "train_dir": arm.train_dir, "weights": arm.weights,
        "config_preset": w.provenance.get("config_preset"),
        "exported_meta_steps": int(w.provenance["meta_steps"]),
        "meta_l2": (w.provenance.get("options") or {}).get("meta_l2"),
        "meta_training": meta_training_summary(histories[arm.name], budget),
        "stability": None, "held_out": None}
  reference = arms[0].name
  for arm in arms[1:]:
    report["arms"][arm.name]["meta_training"]["paired_vs"] = {
        "reference": reference,
        **paired_difference(histories[arm.name], histories[reference], budget)}
  if not options.skip_stability:
    for arm in arms:
      print(f"stability: {arm.name} ({arm.weights}) ...", flush=True)
      report["arms"][arm.name]["stability"] = stability_summary(
          arm.weights, options.stability_seeds, options.horizon,
          jit_compile=options.jit is not False)
  if not options.skip_held_out:
    if options.quality_json:
      with open(options.quality_json) as f:
        quality_results = json.load(f)
      labels = {arm.name: quality.weights_label(arm.weights) for arm in arms}
    else:
      # Each arm's weights under the arm's name, so that files with the same basename (two
      # runs' exports/step_005000.npz) stay apart: labels learned:<arm>.
      named_dir = os.path.join(options.out, "weights")
      os.makedirs(named_dir, exist_ok=True)
      named = {}
      for arm in arms:
        named[arm.name] = os.path.join(named_dir, f"{arm.name}.npz")
        shutil.copyfile(loaded[arm.name].path, named[arm.name])
      labels = {name: quality.weights_label(path) for name, path in named.items()}
      quality_results = quality.run(quality.Options(
          weights=[named[a.name] for a in arms], steps=options.quality_steps,
          long_steps=options.quality_long_steps,
          tasks=options.quality_tasks or quality.ALL_TASKS, jit=options.jit, out=options.out))
    for arm in arms:
      report["arms"][arm.name]["held_out"] = held_out_summary(quality_results, labels[arm.name])
  report["seconds"] = time.perf_counter() - start
  table = markdown(report)
  print("\n" + table)
  os.makedirs(options.out, exist_ok=True)
  with open(os.path.join(options.out, "ablation.md"), "w") as f:
    f.write(table)
  with open(os.path.join(options.out, "ablation.json"), "w") as f:
    json.dump(quality.jsonable(report), f, indent=1)
  window = options.window or max(1, budget // 5)
  plot(report, histories, os.path.join(options.out, "ablation.png"), window)
  print(f"wrote {options.out}/ablation.{{md,json,png}} ({report['seconds']:.0f} s)")
  return report


def main(argv=None):
  from absl import app, flags
  flags.DEFINE_list("arms", DEFAULT_ARMS.split(","), "name=train_dir:weights, one per arm.")
  flags.DEFINE_string("quality_json", "", "Reuse this benchmarks.quality result (it must hold "
                      "every arm's weights) instead of running the held-out tasks.")
  flags.DEFINE_list("quality_tasks", None, "Held-out tasks (default: all of benchmarks.quality's).")
  flags.DEFINE_integer("quality_steps", 2000, "Steps per held-out task.")
  flags.DEFINE_integer("quality_long_steps", 10000, "Steps of the long held-out run.")
  flags.DEFINE_list("stability_seeds", ["0", "1", "2"], "Seeds of the stability analysis.")
  flags.DEFINE_integer("horizon", 1000, "Stability horizon H (steps before linearising).")
  flags.DEFINE_integer("window", 0, "Meta-loss moving-average window (0: a fifth of the budget).")
  flags.DEFINE_bool("skip_stability", False, "Leave out the stability analysis.")
  flags.DEFINE_bool("skip_held_out", False, "Leave out the held-out tasks.")
  flags.DEFINE_string("out", "benchmarks/results/ablation", "Output directory.")
  FLAGS = flags.FLAGS

  def _main(argv):
    del argv
    try:
      arms = parse_arms(FLAGS.arms)
      seeds = [int(s) for s in FLAGS.stability_seeds]
    except ValueError as e:
      raise app.UsageError(str(e))
    run(Options(arms=arms, quality_json=FLAGS.quality_json, quality_tasks=FLAGS.quality_tasks,
                quality_steps=FLAGS.quality_steps, quality_long_steps=FLAGS.quality_long_steps,
                stability_seeds=seeds, horizon=FLAGS.horizon, window=FLAGS.window,
                skip_stability=FLAGS.skip_stability, skip_held_out=FLAGS.skip_held_out,
                out=FLAGS.out))

  app.run(_main, argv)


if __name__ == "__main__":
  main()
