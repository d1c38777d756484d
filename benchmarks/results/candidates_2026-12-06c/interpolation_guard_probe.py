import sys, time, json
from meta import validation as V, unroll as U
from learned_opt import weights as W
tasks = [V.NetProblem("concentric_rings", V._rings, 2, 3, (128, 64), "relu", batch_size=32),
         V.NetProblem("two_spirals", V._two_spirals, 2, 2, (128, 64), "relu", batch_size=32),
         V.NetProblem("bit_parity", V._parity, 6, 2, (128, 64), "relu", batch_size=32)]
steps = int(sys.argv[1]); chunk = steps // 10
for spec in sys.argv[2:]:
  w = W.load(spec); meta = V.as_tensors(w.meta)
  un = U.Unroller(w.config, max_steps=chunk, mode="xla")
  data = V.instance_data(tasks)
  for p in tasks:
    t = time.time()
    run = V.long_horizon_run(p, meta, w.config, data[p.name], steps, un, chunk)
    print(spec.split('/')[-3] if '/' in spec else spec, p.name, "pass" if V.run_passes(run) else "FAIL",
          f"spike x{run['spike']:.3g} drift {run['drift']:+.2f}", [f"{l:.2e}" for l in run["losses"]], f"{time.time()-t:.0f}s", flush=True)
