"""learned_opt: a hierarchical-RNN learned optimizer for TensorFlow / Keras 3.

    import learned_opt
    model.compile(optimizer=learned_opt.LearnedOptimizer(), loss=...)
"""
from learned_opt import config, hrnn, weights
from learned_opt.config import HRNNConfig
from learned_opt.optimizer import LearnedOptimizer

__all__ = ["LearnedOptimizer", "HRNNConfig", "config", "hrnn", "weights"]
