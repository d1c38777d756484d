"""Meta-training (seed paper 1 §4.2-4.5): unrolls, estimators, the trainer, checkpoints.

`learned_opt` is imported first so that its XLA compilation cache is configured before this
package imports TensorFlow (`learned_opt.compile_cache`).
"""
import learned_opt  # noqa: F401
