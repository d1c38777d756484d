"""Meta-training (seed paper 1 §4.2-4.5): unrolls, estimators, the trainer, validation.

`use_system_allocator()` is for the meta-training entry points (`train_meta.py`,
`benchmarks/meta_speed.py`) and must run before TensorFlow is imported.
"""

from __future__ import annotations

import os
import sys

# TensorFlow's x86 wheels allocate CPU tensors through oneDNN's allocator, which serves every
# large buffer from a BFC pool that only grows: the temporaries of one unroll execution (a
# minibatched problem's full-data activations, stacked for the meta-gradient over 256 steps:
# ~700 MB for outward_snake_d56_n5000_b100) stay resident for the life of the process. With
# the system allocator they go back to the operating system after the call. Measured on the
# default problem set with all 16 groups compiled: 4.5 GB resident with the pool, 3.3 GB without.
SYSTEM_ALLOCATOR_ENV = "TF_ONEDNN_USE_SYSTEM_ALLOCATOR"


def use_system_allocator() -> bool:
  """Sets TF_ONEDNN_USE_SYSTEM_ALLOCATOR=1 unless the environment already sets it; False (and
  nothing set) if TensorFlow is already imported, where it would come too late."""
  if "tensorflow" in sys.modules:
    return False
  os.environ.setdefault(SYSTEM_ALLOCATOR_ENV, "1")
  return True
