"""Adapter to learned_opt/weights.py (the weights-file format).

`learned_opt/weights/` (the folder of shipped weights, with an `__init__.py`) shadows the
module `learned_opt/weights.py`, so `from learned_opt import weights` yields the empty
package. Until learned_opt fixes that, load the module from its file; once fixed this
returns the regular import unchanged.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import learned_opt
from learned_opt import weights as _imported


def _load():
  if hasattr(_imported, "save") and hasattr(_imported, "load"):
    return _imported
  name = "learned_opt._weights_file"
  if name not in sys.modules:
    path = Path(learned_opt.__file__).parent / "weights.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
  return sys.modules[name]


weights = _load()
save = weights.save
load = weights.load
