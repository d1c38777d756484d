"""Tests of the quality benchmark (benchmarks/quality.py) and the demonstration (demo.py).

Fast: the benchmark runs in-process without XLA for a few steps; the metrics are checked on
hand-made curves.
"""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import quality
from benchmarks import tasks as tasks_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("losses, diverged", [
    ([2.0, 1.0, 0.5], False),
    ([2.0, 19.9, 0.5], False),          # up, but not above 10x the initial loss
    ([2.0, 20.1, 0.5], True),           # above 10x, even if it recovers
    ([2.0, 1.0, NAN], True),
    ([2.0, INF], True),
    ([NAN], True),
    ([], False),
])
def test_divergence(losses, diverged):
  assert bool(quality.divergence(losses)) == diverged


def test_divergence_names_the_reason():
  assert "non-finite" in quality.divergence([1.0, NAN])
  assert "10 x initial" in quality.divergence([1.0, 11.0])


@pytest.mark.parametrize("target, expected", [
    (0.2, 20),            # reached exactly at step 20
    (0.3, 20),            # first recorded step at or below the target
    (1.0, 0),
    (0.05, None),         # never
    (NAN, None),          # the reference diverged: nothing to reach
])
def test_steps_to_reach(target, expected):
  steps, losses = [0, 10, 20, 30], [1.0, 0.5, 0.2, 0.1]
  assert quality.steps_to_reach(steps, losses, target) == expected


def test_steps_to_reach_skips_non_finite():
  assert quality.steps_to_reach([0, 10, 20], [1.0, NAN, 0.1], 0.5) == 20


def test_summary_picks_best_finite_tuned_adam():
  def run(label, family, lr, losses):
    return {"optimizer": label, "family": family, "learning_rate": lr, "steps": [0, 5, 10],
            "losses": losses, "final_loss": losses[-1], "diverged": quality.divergence(losses)}
  runs = [run("learned:x", "learned:x", 1e-3, [1.0, 0.3, 0.1]),
          run("Adam(0.002)", "adam", 2e-3, [1.0, 0.5, 0.2]),
          *(run(quality.adam_label(lr), "adam", lr, [1.0, 0.9, 1.0 - lr])
            for lr in quality.TUNED_ADAM_LRS[:-1]),
          run(quality.adam_label(0.1), "adam", 0.1, [1.0, NAN, NAN]),
          run("RMSProp(0.01)", "rmsprop", 1e-2, [1.0, 0.6, 0.4])]
  summary = quality.summarize(runs, ["learned:x"])
  assert summary["tuned_adam"]["learning_rate"] == pytest.approx(quality.TUNED_ADAM_LRS[-2])
  assert summary["steps_to_reach_adam_2e-3"]["learned:x"] == 10
  assert summary["diverged"]["Adam(0.1)"] and not summary["diverged"]["learned:x"]


def test_batch_order_is_reshuffled_epochs_from_the_seed():
  order = quality.batch_order(10, 4, 5, seed=3)
  assert order.shape == (5, 4)
  flat = order.ravel()
  assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
  np.testing.assert_array_equal(order, quality.batch_order(10, 4, 5, seed=3))
  assert not np.array_equal(order, quality.batch_order(10, 4, 5, seed=4))


@pytest.mark.parametrize("name", sorted(tasks_lib.BUILDERS))
def test_task_loss_is_finite_at_init(name):
  task = tasks_lib.get(name)
  loss = task.loss(task.init, task.x_train[:16], task.y_train[:16])
  assert math.isfinite(float(loss))


def test_trainer_reset_reproduces_a_fresh_run():
  """Runs of one family share a compiled loop; each must equal a run on a new trainer."""
  task = tasks_lib.get("logreg_breast_cancer")
  order = quality.batch_order(len(task.x_train), None, 6, seed=0)

  def trainer():
    return quality.Trainer(task.init, task.loss, task.x_train, task.y_train, None,
                           quality.ADAM, chunk=2, jit=False)
  shared = trainer()
  shared.run(1e-1, order)
  again = shared.run(1e-2, order)
  fresh = trainer().run(1e-2, order)
  np.testing.assert_allclose(again["losses"], fresh["losses"], rtol=1e-6)
  assert again["steps"] == [0, 2, 4, 6]


def test_quick_benchmark_writes_table_json_and_plot(tmp_path):
  options = quality.Options(weights=[None], steps=6, tasks=["logreg_breast_cancer"],
                            curve_points=3, jit=False, out=str(tmp_path))
  quality.run(options)
  for name in ("quality.md", "quality.json", "quality.png"):
    assert (tmp_path / name).stat().st_size > 0, name
  table = (tmp_path / "quality.md").read_text()
  assert "| logreg_breast_cancer | 6 |" in table and "learned:untrained" in table
  saved = json.loads((tmp_path / "quality.json").read_text())
  task = saved["tasks"][0]
  labels = {r["optimizer"] for r in task["runs"]}
  assert {"learned:untrained", "Adam(0.002)", "RMSProp(0.01)"} <= labels
  assert len([r for r in task["runs"] if r["family"] == "adam"]) == 8   # 2e-3 + 7 tuned
  assert len({r["losses"][0] for r in task["runs"]}) == 1               # same initialisation
  assert task["runs"][0]["steps"] == [0, 2, 4, 6]
  assert set(task["summary"]["steps_to_reach_adam_2e-3"]) == {"learned:untrained"}


def test_quick_fig5_table_and_plot(tmp_path):
  # Baselines only: tracing the learned optimizer's loop again would double the test time.
  options = quality.Options(weights=[], steps=4, tasks=["quadratic_lr"], curve_points=2,
                            jit=False, out=str(tmp_path))
  results = quality.run(options)
  assert (tmp_path / "quality_lr.png").stat().st_size > 0
  runs = results["quadratic_lr"]["runs"]
  assert [r["learning_rate"] for r in runs] == list(quality.FIG5_LRS) * 2
  table = (tmp_path / "quality.md").read_text()
  assert "| Adam |" in table and "| RMSProp |" in table
  # Larger initial learning rates make more progress in 4 steps.
  adam = [r["final_loss"] for r in runs if r["family"] == "adam"]
  assert adam == sorted(adam, reverse=True)


def test_missing_weights_fail_before_training(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    quality.run(quality.Options(weights=[str(tmp_path / "missing.npz")], out=str(tmp_path)))


def test_demo_runs_a_benchmark_task_and_names_the_winner(tmp_path, capsys):
  sys.path.insert(0, REPO)
  try:
    import demo
  finally:
    sys.path.remove(REPO)
  out = tmp_path / "demo.png"
  results = demo.run(weights=None, steps=40, out=str(out), curve_points=4)
  assert out.stat().st_size > 0
  assert set(results) == {"LearnedOptimizer(untrained)", "Adam(2e-3)"}
  for run in results.values():
    assert run["steps"] == [0, 10, 20, 30, 40] and all(map(math.isfinite, run["losses"]))
  printed = capsys.readouterr().out
  assert "| LearnedOptimizer(untrained) |" in printed and "| Adam(2e-3) |" in printed
  assert "{" not in printed                      # no raw dicts
  a = results["LearnedOptimizer(untrained)"]["final_loss"]
  b = results["Adam(2e-3)"]["final_loss"]
  winner = "LearnedOptimizer(untrained) won" if a <= b else "Adam won"
  assert winner in printed


def test_demo_verdict_handles_divergence():
  sys.path.insert(0, REPO)
  try:
    import demo
  finally:
    sys.path.remove(REPO)
  ok = {"final_loss": 0.5, "diverged": None, "wall_seconds": 2.0}
  bad = {"final_loss": math.nan, "diverged": "non-finite loss at step 30", "wall_seconds": 1.0}
  assert demo.verdict({"L": bad, "Adam(2e-3)": ok}, "L").startswith("Adam won: L diverged")
  assert demo.verdict({"L": ok, "Adam(2e-3)": bad}, "L").startswith("L won: Adam diverged")
  text = demo.verdict({"L": {**ok, "final_loss": 0.25, "wall_seconds": 4.0}, "Adam(2e-3)": ok}, "L")
  assert text.startswith("L won: final train loss 0.25 vs Adam's 0.5 (2.00x lower)")
  assert "L took 2.0x Adam's wall time" in text


def test_benchmark_modules_define_no_flags_at_import():
  # Flags defined at import collide when two command modules meet in one process (pytest).
  code = ("import benchmarks.ablation, benchmarks.quality, benchmarks.step_time, "
          "benchmarks.meta_speed, benchmarks.fit_time, benchmarks.step_profile, "
          "meta.plot_history, "
          "learned_opt.stability\n"
          "from absl import flags\n"
          "print(sorted(m for m in flags.FLAGS.flags_by_module_dict() if not m.startswith(('absl', 'tensorflow'))))")
  out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True)
  assert out.stdout.strip().splitlines()[-1] == "[]"


def test_fit_time_table_reports_the_optimizer_cost_in_wall_and_cpu_time():
  """The µs-per-parameter columns subtract SGD's step from the same model's, wall and CPU."""
  from benchmarks import fit_time
  def row(opt, wall_ms, cpu_ms):
    return {"model": "m", "optimizer": opt, "jit": False, "batch": 32, "params": 1000,
            "variables": 2, "first_epoch_wall_s": 1.0, "first_epoch_cpu_s": 2.0,
            "step_ms": wall_ms, "step_cpu_ms": cpu_ms, "apply_us": 150.0, "apply_cpu_us": 300.0}
  text = fit_time.table([row("adam", 2.0, 3.0), row("sgd", 1.0, 1.5), row("learned", 1.5, 2.5)])
  learned = next(line for line in text.splitlines() if "| learned |" in line)
  cells = [c.strip() for c in learned.strip("|").split("|")]
  assert cells[8] == "0.83"                # step / Adam, CPU: 2.5 / 3.0
  assert cells[10] == "0.500 (1.000)"      # (1.5 - 1.0) ms wall, (2.5 - 1.5) ms CPU per 1000
  assert cells[11] == "0.150 (0.300)"


def test_fit_time_refuses_steps_per_execution_that_does_not_divide_the_steps():
  out = subprocess.run([sys.executable, "-m", "benchmarks.fit_time", "--models", "mlp_small",
                        "--steps_per_execution", "3", "--first_steps", "10", "--steps", "9",
                        "--out", ""], cwd=REPO, capture_output=True, text=True, timeout=300)
  assert out.returncode != 0
  assert "--steps_per_execution 3" in out.stderr and "--first_steps (10)" in out.stderr


def test_demo_describes_the_shipped_default_by_its_config_and_whole_chain():
  """The demo names the weights' actual preset (the shipped default's chain began under `lean`;
  the file is `annealed`) and counts the meta-steps of every warm-started parent."""
  import demo
  import learned_opt
  from learned_opt import weights as weights_lib
  line = demo.describe_weights(learned_opt.LearnedOptimizer())
  assert "config 'annealed'" in line, line
  steps, link = 0, weights_lib.load("default").provenance
  while isinstance(link, dict) and link.get("meta_steps") is not None:
    steps += link["meta_steps"]
    link = link.get("init_weights")
  assert f"{steps:,} meta-steps" in line and steps > 20_000, line
