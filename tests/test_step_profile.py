"""benchmarks.step_profile: XLA's per-operation profile of the optimizer step."""

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HLO = """HloModule m, entry_computation_layout={(f32[4,3]{1,0})->f32[4,3]{1,0}}

%fused_inner (p.1: f32[4,3]) -> f32[4,3] {
  %p.1 = f32[4,3]{1,0} parameter(0)
  ROOT %t = f32[4,3]{1,0} tanh(%p.1)
}

%fused_computation (p: f32[4,3]) -> f32[4,3] {
  %p = f32[4,3]{1,0} parameter(0)
  %e = f32[4,3]{1,0} exponential(%p)
  %e2 = f32[4,3]{1,0} exponential(%e)
  ROOT %f = f32[4,3]{1,0} fusion(%e2), kind=kLoop, calls=%fused_inner
}

ENTRY %main (a: f32[4,3], w: f32[3,3]) -> f32[4,3] {
  %a = f32[4,3]{1,0} parameter(0)
  %w = f32[3,3]{1,0} parameter(1)
  %dot.1 = f32[4,3]{1,0} dot(%a, %w), lhs_contracting_dims={1}, rhs_contracting_dims={0}
  ROOT %exp_fusion = f32[4,3]{1,0} fusion(%dot.1), kind=kLoop, calls=%fused_computation
}
"""


def test_parse_hlo_describes_entry_operations_and_what_their_fusions_compute():
  from benchmarks import step_profile
  ops = step_profile.parse_hlo(_HLO)
  assert set(ops) == {"dot.1", "exp_fusion"}   # parameters are not operations
  assert ops["dot.1"].opcode == "dot" and ops["dot.1"].shape == "f32[4,3]"
  assert ops["exp_fusion"].opcode == "fusion"
  assert ops["exp_fusion"].notable == "exponential×2, tanh"   # nested fusion included


def test_step_profile_attributes_the_step_to_its_operations(tmp_path):
  out = tmp_path / "profile.md"
  run = subprocess.run(
      [sys.executable, "-m", "benchmarks.step_profile", "--models", "mlp_small", "--steps", "3",
       "--top", "5", "--nofused_step", "--out", str(out)], cwd=REPO, capture_output=True,
      text=True, timeout=600)
  assert run.returncode == 0, run.stderr[-3000:]
  text = out.read_text()
  head = re.search(r"compiled step ([\d.]+) ms, .* (\d+) traced, together (\d+) % of the step",
                   text)
  assert head, text
  assert 30 <= int(head.group(3)) <= 400, text   # the traced operations cover the step
  rows = [line for line in text.splitlines() if re.match(r"\| \d+ \|", line)]
  assert len(rows) == 5, text
  # The Parameter GRU's gate matmul over all 26,122 parameters is one of the operations.
  assert "| dot | `f32[26122,18]` |" in text, text
  times = [float(line.split("|")[6]) for line in rows]
  assert times == sorted(times, reverse=True)
