"""Issue 16 item 1: long-run safety (benchmarks/long_run.py) — the criterion and the 20k run.

The slow test trains the three tasks for 20,000 steps with the weights named by
LEARNED_OPT_LONG_RUN_WEIGHTS (default: the shipped "default") and fails on any epoch > 10x
the running minimum or a final loss above Adam(2e-3)'s. Today's shipped default is known to
fail it (measured, benchmarks/results/long_run/): it is marked xfail(strict) by the file's
hash, so the mark lifts by itself when new weights ship, and a pass of today's file would be
reported as an error.

    LEARNED_OPT_LONG_RUN_WEIGHTS=/tmp/run.npz python -m pytest -m slow tests/test_long_run.py
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest

from benchmarks import long_run
from learned_opt import weights as weights_lib

WEIGHTS = os.environ.get("LEARNED_OPT_LONG_RUN_WEIGHTS", "default")
# sha256 of the previous default (stable, 3,629 meta-steps), shipped until 2026-12-03 and now
# learned_opt/weights/stable.npz: LEARNED_OPT_LONG_RUN_WEIGHTS=stable expects the failure.
KNOWN_TO_FAIL = {
    "f541f4871124cf2516ab552a376e3f7120045d02ce004d65da53256a124905bd":
        "demo_mlp: 93 epochs > 10x the running minimum from epoch 353 (max ratio 1.1e7), "
        "final train loss 0.039 vs Adam(2e-3) 1.2e-8; the mean log step length climbs from "
        "-6.9 to +3.2 (benchmarks/results/long_run, issue 16)",
}


def _sha256(spec) -> str:
  return hashlib.sha256(weights_lib.resolve(spec).read_bytes()).hexdigest()


def test_spikes_count_epochs_above_ten_times_the_running_minimum():
  losses = [1.0, 0.5, 0.1, 0.2, 2.0, 0.05, 0.6, 0.04, math.nan]
  result = long_run.spikes(losses)
  # 2.0 > 10 * 0.1 and 0.6 > 10 * 0.05; 0.2 is 2x; NaN counts as a spike.
  assert result["count"] == 3 and result["first_epoch"] == 5
  assert math.isinf(result["max_ratio"]) and not result["finite"]
  assert long_run.spikes([1.0, 0.5, 0.25])["count"] == 0
  assert long_run.spikes([1e-8, 1.1e-7])["count"] == 1     # relative, at any scale


def test_verdict_needs_no_spike_and_adams_final_loss():
  assert long_run.verdict([1.0, 0.1, 0.01], [1.0, 0.2, 0.02])["passed"]
  assert not long_run.verdict([1.0, 0.1, 0.03], [1.0, 0.2, 0.02])["passed"]   # above Adam
  spiked = long_run.verdict([1.0, 0.01, 0.5, 0.001], [1.0, 0.2, 0.1, 0.02])
  assert spiked["beats_adam"] and spiked["count"] == 1 and not spiked["passed"]


def test_short_run_prints_and_writes(tmp_path, capsys):
  results = long_run.run("default", ["logreg_breast_cancer"], steps=100, out=str(tmp_path))
  (result,) = results
  assert result["learned"]["steps"] == 100 and result["learned"]["epochs"] == 2
  assert len(result["learned"]["log_lr"]) == 2 and not result["adam"]["log_lr"]
  assert all(math.isfinite(x) for x in result["learned"]["loss"] + result["adam"]["loss"])
  record = json.loads((tmp_path / "long_run.json").read_text())
  assert record["weights"] == "default" and record["results"][0]["task"] == \
      "logreg_breast_cancer"
  assert (tmp_path / "long_run.png").stat().st_size > 0
  assert "| logreg_breast_cancer | 100 |" in capsys.readouterr().out


def test_unknown_task_is_a_clear_error():
  with pytest.raises(ValueError, match="--tasks: unknown task 'nope'"):
    long_run.get_task("nope")


@pytest.mark.slow
def test_twenty_thousand_steps_without_blow_up(tmp_path, request):
  known = KNOWN_TO_FAIL.get(_sha256(WEIGHTS))
  if known:
    request.applymarker(pytest.mark.xfail(reason=f"measured for {WEIGHTS}: {known}",
                                          strict=True))
  results = long_run.run(WEIGHTS, long_run.DEFAULT_TASKS, steps=20_000, out=str(tmp_path))
  failures = [f"{r['task']}: {r['verdict']}" for r in results if not r["verdict"]["passed"]]
  assert not failures, "\n".join(failures)
