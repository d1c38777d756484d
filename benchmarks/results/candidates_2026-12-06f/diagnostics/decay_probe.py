"""Diagnostic (fifth session, 2026-12-06): benchmarks.long_run with every learned update
scaled by min(1, sqrt(T0 / t)), t the step count, without changing learned_opt.

    PYTHONPATH=. python benchmarks/results/candidates_2026-12-06f/diagnostics/decay_probe.py \
        2000 --weights meta_runs/bounded_pes_long/exports/best.npz --tasks demo_mlp --out /tmp/d

T0 = 1e12 gives the unpatched run. decay2000_demo/ is T0 = 2000 on that file;
ablated_blackbox_demo/ is T0 = 1e12 on the same file with its RNN term ablated
(python -m learned_opt.weights --ablate blackbox).
"""
import sys

import tensorflow as tf

from learned_opt import hrnn

t0 = float(sys.argv.pop(1))
_step = hrnn.step


def step(meta, state, grads, config, layout=None):
  updates, new_state = _step(meta, state, grads, config, layout)
  factor = tf.minimum(1.0, tf.sqrt(t0 / (tf.cast(state.step, tf.float32) + 1.0)))
  return hrnn.StepOutput([u * factor for u in updates], new_state)


hrnn.step = step
from benchmarks import long_run  # noqa: E402  (after the patch)
long_run.main()
