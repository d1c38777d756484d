"""Tests of the paper-vs-stable ablation benchmark (benchmarks/ablation.py, issue 5).

The summaries are checked on hand-made histories and quality results; one end-to-end run uses
two untrained arms (paper and stable weights files written here), a few steps of one held-out
task and a short stability horizon, without XLA.
"""

import csv
import json
import math

import numpy as np
import pytest

from benchmarks import ablation
from learned_opt import config as config_lib
from learned_opt import hrnn
from learned_opt import weights as weights_lib

FIELDS = ["step", "wall_time", "problem", "family", "replicas", "unroll", "num_unrolls", "steps",
          "meta_loss", "final_relative_loss", "log_lr_mean", "log_lr_std", "skipped",
          "inner_steps_per_sec"]


def write_history(train_dir, rows):
  """rows: (step, wall_time, meta_loss, skipped, problem)."""
  train_dir.mkdir(parents=True, exist_ok=True)
  with open(train_dir / "history.csv", "w", newline="") as f:
    writer = csv.DictWriter(f, FIELDS)
    writer.writeheader()
    for step, wall, loss, skipped, problem in rows:
      writer.writerow({"step": step, "wall_time": wall, "problem": problem, "family": "x",
                       "replicas": 1, "unroll": 1, "num_unrolls": 1, "steps": 20,
                       "meta_loss": loss, "final_relative_loss": 1.0, "log_lr_mean": -7,
                       "log_lr_std": 1, "skipped": skipped, "inner_steps_per_sec": 100})


def write_weights(path, preset, meta_steps):
  cfg = config_lib.get(preset)
  return str(weights_lib.save(path, hrnn.init_meta_params(cfg, 0), cfg,
                              {"meta_steps": meta_steps, "config_preset": preset,
                               "options": {"meta_l2": 0.1 if preset == "stable" else 0.0}}))


def test_parse_arms():
  arms = ablation.parse_arms("paper=meta_runs/paper:paper,stable=/abs/dir:/w/x.npz")
  assert arms == [ablation.Arm("paper", "meta_runs/paper", "paper"),
                  ablation.Arm("stable", "/abs/dir", "/w/x.npz")]
  assert ablation.parse_arms(ablation.DEFAULT_ARMS)[1].weights == "stable"


@pytest.mark.parametrize("spec, message", [
    ("paper=meta_runs/paper", "name=train_dir:weights"),
    ("=d:w,b=d:w", "name=train_dir:weights"),
    ("a=d:w,a=e:v", "share a name"),
    ("a=d:w", "at least two arms"),
])
def test_parse_arms_rejects_bad_specs(spec, message):
  with pytest.raises(ValueError, match=message):
    ablation.parse_arms(spec)


def test_read_history_sorts_and_counts_a_resumed_step_once(tmp_path):
  write_history(tmp_path, [(1, 10.0, -0.1, 0, "a"), (2, 20.0, -0.2, 0, "b"),
                           (2, 20.0, -0.2, 0, "b"), (3, 30.0, -0.3, 0, "a")])
  history = ablation.read_history(str(tmp_path))
  assert list(history["step"]) == [1, 2, 3]
  np.testing.assert_allclose(history["meta_loss"], [-0.1, -0.2, -0.3])


def test_read_history_names_the_missing_file(tmp_path):
  with pytest.raises(FileNotFoundError, match=str(tmp_path / "history.csv")):
    ablation.read_history(str(tmp_path))


def test_meta_training_summary(tmp_path):
  # 10 meta-steps: the first two average -1, the last two -3; step 9 diverged (inf, skipped).
  losses = [-1, -1, -2, -2, -2, -2, -2, -2, float("inf"), -3, -3, -3]
  write_history(tmp_path, [(i + 1, 36.0 * (i + 1), loss, int(not math.isfinite(loss)),
                            f"p{i % 3}") for i, loss in enumerate(losses)])
  summary = ablation.meta_training_summary(ablation.read_history(str(tmp_path)), budget=10)
  assert summary["window"] == 2
  assert summary["meta_loss_first"] == -1.0
  assert summary["meta_loss_last"] == -3.0           # steps 9 (inf, left out) and 10
  assert summary["nonfinite_meta_steps"] == 1
  assert summary["wall_time_hours"] == pytest.approx(0.1)
  assert summary["problems_seen"] == 3
  with pytest.raises(ValueError, match="short of the budget 20"):
    ablation.meta_training_summary(ablation.read_history(str(tmp_path)), budget=20)


def test_paired_difference_uses_only_matching_problems(tmp_path):
  write_history(tmp_path / "a", [(1, 1, -1.0, 0, "p"), (2, 2, -2.0, 0, "q"), (3, 3, -5.0, 0, "r"),
                                 (4, 4, float("inf"), 1, "s")])
  write_history(tmp_path / "b", [(1, 1, -0.5, 0, "p"), (2, 2, -2.5, 0, "q"), (3, 3, -1.0, 0, "x"),
                                 (4, 4, -1.0, 0, "s")])
  paired = ablation.paired_difference(ablation.read_history(str(tmp_path / "a")),
                                      ablation.read_history(str(tmp_path / "b")), budget=4)
  assert paired["matched_steps"] == 2                 # step 3: other problems; step 4: inf
  assert paired["mean_difference"] == pytest.approx(0.0)   # (-0.5 + 0.5) / 2
  assert paired["fraction_lower"] == 0.5


def quality_result(label_losses):
  """A minimal benchmarks.quality result: two tasks, Adam(2e-3) at 1.0, tuned Adam at 0.1."""
  tasks = []
  for i, name in enumerate(["t0", "t1"]):
    final = {label: losses[i] for label, losses in label_losses.items()}
    tasks.append({"name": name, "summary": {
        "final_loss": final, "adam_2e-3_final_loss": 1.0,
        "tuned_adam": {"learning_rate": 0.03, "final_loss": 0.1},
        "diverged": {label: (None if math.isfinite(float(v)) else "non-finite")
                     for label, v in final.items()}}})
  runs = [{"optimizer": "learned:a", "final_loss": v} for v in (2.0, 4.0)]
  return {"learned": list(label_losses), "tasks": tasks,
          "quadratic_lr": {"runs": runs + [{"optimizer": "Adam(0.001)", "final_loss": 1e3}]}}


def test_held_out_summary():
  results = quality_result({"learned:a": [0.5, 0.05], "learned:b": [4.0, "inf"]})
  a = ablation.held_out_summary(results, "learned:a")
  assert a["wins_vs_adam"] == 2 and a["wins_vs_tuned"] == 1 and a["divergences"] == 0
  assert a["geomean_ratio_to_adam"] == pytest.approx(math.sqrt(0.5 * 0.05))
  assert a["fig5_spread"] == pytest.approx(2.0)
  b = ablation.held_out_summary(results, "learned:b")
  assert b["wins_vs_adam"] == 0 and b["divergences"] == 1
  assert b["geomean_ratio_to_adam"] == math.inf
  assert b["tasks"]["t1"]["ratio_to_adam"] == math.inf
  with pytest.raises(ValueError, match="not 'learned:c'"):
    ablation.held_out_summary(results, "learned:c")


def test_end_to_end_on_two_untrained_arms(tmp_path):
  arms = []
  for name, preset, steps in (("paper", "paper", 12), ("stable", "stable", 12)):
    write_history(tmp_path / name, [(i, 1.0 * i, -0.01 * i, 0, "p") for i in range(1, 15)])
    # Both files are called step_000012.npz, as two runs' exports are.
    (tmp_path / name / "exports").mkdir()
    arms.append(ablation.Arm(name, str(tmp_path / name), write_weights(
        tmp_path / name / "exports" / "step_000012.npz", preset, steps)))
  out = tmp_path / "out"
  report = ablation.run(ablation.Options(
      arms=arms, quality_tasks=["logreg_breast_cancer"], quality_steps=6,
      stability_seeds=(0,), horizon=10, jit=False, out=str(out)))
  for name in ("ablation.md", "ablation.json", "ablation.png", "quality.json"):
    assert (out / name).stat().st_size > 0, name
  assert report["budget"] == 12
  stable = report["arms"]["stable"]
  assert stable["meta_training"]["meta_steps"] == 12
  assert stable["meta_training"]["meta_loss_last"] == pytest.approx(np.mean([-0.11, -0.12]))
  # The untrained stable optimizer is AdamAggMo at a small step: stable and bounded.
  assert stable["stability"]["stable_all"] and stable["stability"]["bounded_10H"] == 1
  assert stable["held_out"]["num_tasks"] == 1
  assert set(report["arms"]["paper"]["held_out"]["tasks"]) == {"logreg_breast_cancer"}
  table = (out / "ablation.md").read_text()
  assert "| | paper | stable |" in table and "| logreg_breast_cancer |" in table
  paired = stable["meta_training"]["paired_vs"]
  assert paired["reference"] == "paper" and paired["matched_steps"] == 12
  assert paired["mean_difference"] == 0.0             # identical histories
  assert "stable − paper" in table
  saved = json.loads((out / "ablation.json").read_text())
  assert saved["arms"]["paper"]["config_preset"] == "paper"
  assert saved["arms"]["stable"]["meta_l2"] == 0.1


def test_weights_without_meta_steps_are_refused(tmp_path):
  cfg = config_lib.paper()
  path = weights_lib.save(tmp_path / "w.npz", hrnn.init_meta_params(cfg, 0), cfg, {})
  write_history(tmp_path / "run", [(1, 1.0, -0.1, 0, "p")])
  arms = [ablation.Arm("a", str(tmp_path / "run"), str(path)),
          ablation.Arm("b", str(tmp_path / "run"), str(path))]
  with pytest.raises(ValueError, match="w.npz: no meta_steps"):
    ablation.run(ablation.Options(arms=arms, out=str(tmp_path / "out")))
