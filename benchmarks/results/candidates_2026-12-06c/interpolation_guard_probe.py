"""Interpolation-regime probe (2026-12-06, fourth session; a diagnostic, not the guard).

    PYTHONPATH=. python benchmarks/results/candidates_2026-12-06c/interpolation_guard_probe.py \
        20000 default meta_runs/bounded_pes_ft/exports/best.npz adam

Runs 128-64 ReLU MLPs at batch 32 on three validation data kinds for STEPS steps and reads the
full-data loss after every tenth; prints the guard's verdict (a read > 10x the lowest earlier
read fails). Each SPEC is a weights spec for the learned optimizer (meta.validation's
long-horizon run), or "adam": Adam(2e-3), each read a fresh run of that many steps.
"""
import sys
import time

from learned_opt import weights as W
from meta import unroll as U
from meta import validation as V

tasks = [V.NetProblem("concentric_rings", V._rings, 2, 3, (128, 64), "relu", batch_size=32),
         V.NetProblem("two_spirals", V._two_spirals, 2, 2, (128, 64), "relu", batch_size=32),
         V.NetProblem("bit_parity", V._parity, 6, 2, (128, 64), "relu", batch_size=32)]
steps = int(sys.argv[1]); chunk = steps // 10
data = V.instance_data(tasks)
for spec in sys.argv[2:]:
  if spec == "adam":
    for p in tasks:
      losses = [V.adam_final_loss(p, data[p.name], s) for s in range(chunk, steps + 1, chunk)]
      spike = max(losses[i] / max(min(losses[:i]), 1e-30) for i in range(1, len(losses)))
      print("Adam(2e-3)", p.name, f"spike x{spike:.3g}", [f"{l:.2e}" for l in losses],
            flush=True)
    continue
  w = W.load(spec); meta = V.as_tensors(w.meta)
  un = U.Unroller(w.config, max_steps=chunk, mode="xla")
  for p in tasks:
    t = time.time()
    run = V.long_horizon_run(p, meta, w.config, data[p.name], steps, un, chunk)
    print(spec.split('/')[-3] if '/' in spec else spec, p.name,
          "pass" if V.run_passes(run) else "FAIL",
          f"spike x{run['spike']:.3g} drift {run['drift']:+.2f}",
          [f"{l:.2e}" for l in run["losses"]], f"{time.time()-t:.0f}s", flush=True)
