"""Keeps the test suite hermetic: no persistent XLA compilation cache (`learned_opt.compile_cache`)
unless a test asks for one. Set before any test module imports learned_opt or TensorFlow runs."""
import os

os.environ.setdefault("LEARNED_OPT_XLA_CACHE", "0")
