"""learned_opt: a hierarchical-RNN learned optimizer for TensorFlow / Keras 3.

    import learned_opt
    model.compile(optimizer=learned_opt.LearnedOptimizer(), loss=...)
"""
from learned_opt import compile_cache

compile_cache.configure()   # before TensorFlow's first operation reads its XLA flags

from learned_opt import config, hrnn, weights  # noqa: E402
from learned_opt.config import HRNNConfig  # noqa: E402
from learned_opt.optimizer import LearnedOptimizer  # noqa: E402

__all__ = ["LearnedOptimizer", "HRNNConfig", "compile_cache", "config", "hrnn", "weights"]
