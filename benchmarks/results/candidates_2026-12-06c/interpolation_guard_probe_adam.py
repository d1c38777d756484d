from meta import validation as V, unroll as U
tasks = [V.NetProblem("concentric_rings", V._rings, 2, 3, (128, 64), "relu", batch_size=32),
         V.NetProblem("two_spirals", V._two_spirals, 2, 2, (128, 64), "relu", batch_size=32),
         V.NetProblem("bit_parity", V._parity, 6, 2, (128, 64), "relu", batch_size=32)]
for p in tasks:
  data = U.data_tensors(p.sample_data(V.DATA_SEED))
  losses = [V.adam_final_loss(p, data, s) for s in range(2000, 20001, 2000)]
  spike = max(losses[i] / max(min(losses[:i]), 1e-30) for i in range(1, len(losses)))
  print("Adam(2e-3)", p.name, f"spike x{spike:.3g}", [f"{l:.2e}" for l in losses], flush=True)
