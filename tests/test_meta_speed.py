"""benchmarks/meta_speed.py --breakdown's plumbing: side-by-side children and --revisions.

The breakdown itself is a benchmark (minutes of meta-training per variant), not a test; these
check what decides whether its comparisons are fair: that side-by-side children run at the
same time, each on a core of its own, and that a revision runs from its own checkout.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from absl import app

from benchmarks import meta_speed

_CHILD = """
import json, os, time
start = time.time()
time.sleep(1.5)
print("BREAKDOWN_JSON " + json.dumps({"cores": sorted(os.sched_getaffinity(0)),
                                      "start": start, "end": time.time(), "cwd": os.getcwd()}))
"""


def _runs(n, cwd):
  return [{"label": f"v{i}", "cwd": cwd, "env": dict(os.environ),
           "cmd": [sys.executable, "-c", _CHILD]} for i in range(n)]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores")
def test_side_by_side_children_overlap_each_on_its_own_core(tmp_path):
  results = meta_speed._run_children(_runs(2, str(tmp_path)), side_by_side=True)
  assert [r["compile_by"] for r in results] == ["v0", "v1"]
  assert [len(r["cores"]) for r in results] == [1, 1]
  assert results[0]["cores"] != results[1]["cores"]
  assert results[1]["start"] < results[0]["end"] and results[0]["start"] < results[1]["end"]
  # One after another (the default): no pinning, no overlap.
  results = meta_speed._run_children(_runs(2, str(tmp_path)), side_by_side=False)
  assert results[1]["start"] >= results[0]["end"]
  assert results[0]["cores"] == sorted(os.sched_getaffinity(0))


def test_side_by_side_refuses_more_variants_than_cores(tmp_path):
  with pytest.raises(app.UsageError, match="core of its own"):
    meta_speed._run_children(_runs(len(os.sched_getaffinity(0)) + 1, str(tmp_path)),
                             side_by_side=True)


def test_a_failing_child_names_its_variant(tmp_path):
  runs = [{"label": "broken", "cwd": str(tmp_path), "env": dict(os.environ),
           "cmd": [sys.executable, "-c", "raise SystemExit(3)"]}]
  with pytest.raises(SystemExit, match="broken"):
    meta_speed._run_children(runs, side_by_side=False)


def test_revision_runs_from_its_own_checkout(tmp_path):
  head = subprocess.run(["git", "-C", meta_speed._ROOT, "rev-parse", "HEAD"],
                        capture_output=True, text=True, check=True).stdout.strip()
  path, commit = meta_speed._worktree("HEAD", str(tmp_path))
  try:
    assert commit == head
    assert os.path.exists(os.path.join(path, "benchmarks", "meta_speed.py"))
    result = meta_speed._run_children(_runs(1, path), side_by_side=False)[0]
    assert os.path.realpath(result["cwd"]) == os.path.realpath(path)
  finally:
    subprocess.run(["git", "-C", meta_speed._ROOT, "worktree", "remove", "--force", path],
                   check=False)
  with pytest.raises(app.UsageError, match="--revisions: 'no-such-rev'"):
    meta_speed._worktree("no-such-rev", str(tmp_path))
