"""Benchmarks: speed, memory and optimization quality, each side by side with Keras' own optimizers.

Timings here include XLA compilation as a first run in a fresh process pays it, so the
persistent compilation cache that `import learned_opt` turns on (`learned_opt.compile_cache`)
is off in these modules unless `LEARNED_OPT_XLA_CACHE` is set in the environment;
`benchmarks.first_epoch` measures what the cache saves.
"""
import os

os.environ.setdefault("LEARNED_OPT_XLA_CACHE", "0")
