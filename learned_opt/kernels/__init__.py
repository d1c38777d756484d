"""The fused step: hrnn's per-parameter work as two compiled C++ loops (issue 15).

`hrnn.step(..., fused=True)` hands the per-row part of the step (EMAs, features,
Parameter GRU, readouts, and the per-tensor sums that feed the Tensor GRU) to `row_pass.cc`
as an XLA CPU custom call (`row_pass`), instead of the ~70 fused XLA operations it otherwise
compiles to. On the 1M-parameter MLP that is the difference between ~20 [N, k] intermediates
written and read back each step and one pass over the state. `hrnn.guarded_step(...,
fused=True)`, the Keras optimizer's step, also hands over what follows the Tensor and Global
GRUs (`update_pass`): the new log step lengths, the updates, and the guard that skips a step
with a non-finite gradient or update, which XLA otherwise spread over ~15 loops over the rows.

One implementation of the math: `hrnn._rows` is the reference, written in TF ops; the meta-
trainer differentiates it and never calls the kernel, and the tests check that the kernel
computes the same values (to float32 round-off and bfloat16 storage rounding). The kernel has no gradient: `hrnn` uses it only where nothing differentiates
the step (the Keras optimizer).

One library per Parameter-GRU shape and storage type (6 units x 3 timescales in bfloat16 for
the shipped default) is compiled on first use with the system's C++ compiler (`g++`, or
`$CXX`) for this CPU (-march=native), about 2 s, into `$XDG_CACHE_HOME/learned_opt/kernels/`
(or `~/.cache/...`), keyed by the source, the shape, the compiler and the CPU; later processes
load it. No TensorFlow headers are needed: the kernel registers itself with XLA through two
functions that TensorFlow's own library exports. Where any of this is not possible (no compiler, an
unwritable cache, a TensorFlow build without those exports, a GPU), `available` says why and
the step runs as TF ops, with one warning. `LEARNED_OPT_FUSED=0` turns the kernel off.

The kernel is off while TensorFlow's persistent compilation cache is on
(`LEARNED_OPT_XLA_CACHE`, or `--tf_xla_persistent_cache_directory` in `TF_XLA_FLAGS`): a model
step compiled with `jit_compile=True` around the kernel, loaded back from that cache in a later
process, segfaults inside the kernel (measured; the cause, somewhere in how the reloaded
executable hands over its buffers, was not found). The first run, which compiles, is fine.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import NamedTuple

ENV = "LEARNED_OPT_FUSED"
TARGET = "learned_opt_row_pass_v2"   # + the shape, e.g. learned_opt_row_pass_v2_6x3_bf16
UPDATE_TARGET = "learned_opt_update_pass_v1"   # + the shape, as TARGET
SOURCE = Path(__file__).with_name("row_pass.cc")
MAX_UNITS, MAX_TIMESCALES = 32, 8   # the row's arrays live on the stack
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-shared", "-fPIC", "-std=c++17",
         "-fno-math-errno", "-pthread") + (
             # 16 float32 lanes per instruction where AVX-512 has them (49 vs 62 ms per 1M
             # rows on one core here); an x86-only flag, which other compilers would reject.
             ("-mprefer-vector-width=512",) if platform.machine() in ("x86_64", "AMD64") else ())
# xla::CustomCallTargetRegistry::Global() and ::Register(const string&, void*, const string&).
_GLOBAL = "_ZN3xla24CustomCallTargetRegistry6GlobalEv"
_REGISTER = ("_ZN3xla24CustomCallTargetRegistry8RegisterERKNSt7__cxx1112basic_stringIcSt11char_"
             "traitsIcESaIcEEEPvS8_")

_lock = threading.Lock()
_libraries: dict[tuple, ctypes.CDLL] = {}   # {(units, timescales, bf16): registered library}
_why_not: dict[tuple, str] = {}             # {shape: why its library failed to load}
_warned = False


def enabled(environ=None) -> bool:
  environ = os.environ if environ is None else environ
  return environ.get(ENV, "1").strip().lower() not in ("0", "off", "false", "no")


def supports(config) -> str | None:
  """None if the kernel computes `config`'s row pass, else the reason it does not."""
  needed = {"nominal_term": True, "precondition_output": True, "use_gradient_shortcut": True,
            "use_grad_products": True, "use_log_magnitudes": True, "use_relative_lr": True,
            "learned_decays": False, "use_attention": False}
  wrong = [f"{k}={getattr(config, k)}" for k, v in needed.items() if getattr(config, k) != v]
  if wrong:
    return f"the fused kernel does not implement {', '.join(wrong)}"
  if config.param_units > MAX_UNITS or config.num_timescales > MAX_TIMESCALES:
    return (f"the fused kernel takes param_units <= {MAX_UNITS} and num_timescales <= "
            f"{MAX_TIMESCALES}, not {config.param_units} and {config.num_timescales}")
  if config.state_dtype not in ("float32", "bfloat16"):
    return f"the fused kernel does not store state_dtype={config.state_dtype}"
  return None


def cache_directory(environ=None) -> Path:
  from learned_opt import compile_cache
  return compile_cache.cache_root(environ) / "kernels"


def _compiler() -> str | None:
  return shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")


def shape_key(config) -> tuple[int, int, int]:
  """(units, timescales, bfloat16 storage): one library and one XLA target per key."""
  return (config.param_units, config.num_timescales, int(config.state_dtype == "bfloat16"))


def target(key, name: str = TARGET) -> str:
  """The XLA custom-call target of the row pass (or of `name`'s pass) for `key`."""
  k, s, bf16 = key
  return f"{name}_{k}x{s}_{'bf16' if bf16 else 'f32'}"


def _defines(key) -> tuple[str, ...]:
  k, s, bf16 = key
  return (f"-DLO_UNITS={k}", f"-DLO_TIMESCALES={s}", f"-DLO_BF16={bf16}")


def library_path(compiler: str, key) -> Path:
  """Where the compiled library for this source, shape, compiler and CPU lives."""
  from learned_opt import compile_cache
  version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                           timeout=60).stdout
  digest = hashlib.sha256("\0".join([SOURCE.read_text(), compiler, version, " ".join(FLAGS),
                                     compile_cache.cpu_fingerprint()]).encode())
  return cache_directory() / f"{target(key)}-{digest.hexdigest()[:16]}.so"


def build(target: Path, compiler: str, key) -> None:
  """Compiles row_pass.cc for `key` into `target` (atomically: a half-written library is
  never there)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  for stale in target.parent.glob("*.so.tmp"):   # left by a process that ended mid-build
    try:
      if time.time() - stale.stat().st_mtime > 3600:
        stale.unlink()
    except OSError:
      pass
  fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=target.parent)
  os.close(fd)
  try:
    result = subprocess.run([compiler, *FLAGS, *_defines(key), str(SOURCE), "-o", tmp],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0:
      raise RuntimeError(f"{compiler} failed on {SOURCE}:\n{result.stderr[-2000:]}")
    os.replace(tmp, target)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _tensorflow_library() -> ctypes.CDLL:
  import tensorflow as tf
  root = Path(tf.__file__).parent
  for name in ("libtensorflow_cc.so.2", "libtensorflow_framework.so.2",
               "python/_pywrap_tensorflow_internal.so"):
    path = root / name
    if path.exists():
      lib = ctypes.CDLL(str(path))
      if hasattr(lib, _GLOBAL) and hasattr(lib, _REGISTER):
        return lib
  raise RuntimeError(f"TensorFlow {tf.__version__} does not export XLA's custom-call registry "
                     f"({_GLOBAL}) from {root}")


def load(key=(6, 3, 1)) -> ctypes.CDLL | None:
  """The loaded, registered library for `key` (`shape_key`; the default is the shipped
  default's shape), or None (then `why_not(key)` says why)."""
  key = tuple(key)
  with _lock:
    if key in _libraries or key in _why_not:
      return _libraries.get(key)
    try:
      compiler = _compiler()
      if compiler is None:
        raise RuntimeError("no C++ compiler (g++ or $CXX) on PATH")
      path = library_path(compiler, key)
      if not path.exists():
        build(path, compiler, key)
      lib = ctypes.CDLL(str(path))
      tf_lib = _tensorflow_library()
      lib.learned_opt_register.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p,
                                           ctypes.c_char_p]
      lib.learned_opt_register(ctypes.cast(getattr(tf_lib, _GLOBAL), ctypes.c_void_p),
                               ctypes.cast(getattr(tf_lib, _REGISTER), ctypes.c_void_p),
                               target(key).encode(), target(key, UPDATE_TARGET).encode())
      _libraries[key] = lib
    except Exception as e:   # noqa: BLE001 - any failure means: run the TF-ops step instead
      _why_not[key] = f"{type(e).__name__}: {e}"
    return _libraries.get(key)


def prepare(config) -> None:
  """Starts building / loading `config`'s library in a background thread (`load` waits), if
  the kernel could serve `config` here."""
  key = shape_key(config)
  if key not in _libraries and key not in _why_not and enabled() and \
      supports(config) is None and persistent_cache() is None:
    threading.Thread(target=load, args=(key,), name="learned_opt.kernels.load",
                     daemon=True).start()


def why_not(key=(6, 3, 1)) -> str | None:
  return _why_not.get(tuple(key))


def available(config) -> str | None:
  """None if `config`'s row pass can run fused here, else the reason (and a one-time warning
  when the reason is a failed build or load, which costs speed the user should know about)."""
  global _warned
  if not enabled():
    return f"{ENV}=0"
  reason = supports(config)
  if reason is not None:
    return reason
  cache = persistent_cache()
  if cache is not None:
    return (f"TensorFlow's persistent compilation cache is on ({cache}): a step that calls the "
            "kernel, loaded from it, crashes under jit_compile=True, so the two do not combine")
  key = shape_key(config)
  if load(key) is None:
    if not _warned:
      _warned = True
      warnings.warn(f"learned_opt: the fused optimizer kernel is unavailable ({why_not(key)}); "
                    "the step runs as TensorFlow ops, several times slower on large models. "
                    f"Set {ENV}=0 to silence this.", RuntimeWarning, stacklevel=3)
    return why_not(key)
  return None


def persistent_cache(environ=None) -> str | None:
  """The persistent XLA cache directory in effect (LEARNED_OPT_XLA_CACHE or TF_XLA_FLAGS)."""
  from learned_opt import compile_cache
  environ = os.environ if environ is None else environ
  return compile_cache.directory() or compile_cache._flag_directory(
      environ.get("TF_XLA_FLAGS", ""))


def threads() -> int:
  try:
    count = len(os.sched_getaffinity(0))
  except AttributeError:   # pragma: no cover - not Linux
    count = os.cpu_count() or 1
  return max(1, min(count, 8))


class Rows:
  """What the row pass returns (new per-row state in storage dtype; see row_pass.cc)."""

  def __init__(self, outputs):
    (self.param_hidden, self.momentum, self.mean_square, self.nominal_rms, self.direction,
     self.nominal, self.delta_log_lr, self.sums) = outputs


def _call(config, sizes):
  """What both passes' custom calls need: (shape key, rows N, tensors T, storage dtype, the
  int64 config operand of row_pass.cc `parse`); raises if the library is unavailable."""
  import tensorflow as tf
  key = shape_key(config)
  if load(key) is None:
    raise RuntimeError(f"the fused kernel is unavailable: {why_not(key)}")
  n, t = int(sum(sizes)), len(sizes)
  layout = tf.constant([*key, threads(), t, *sizes], tf.int64)
  return key, n, t, tf.as_dtype(config.state_dtype), layout


def row_pass(grad, state, config, bias, kernel, kernel_ch, small, sizes) -> Rows:
  """Emits the custom call. grad [N] f32; state leaves as stored; bias [T, 3K] (GRU bias plus
  the injected per-tensor bias); kernel [F + K, 3K]; kernel_ch [K, K]; small: the packed
  per-call scalars (row_pass.cc `Small`); sizes: rows per tensor, in order."""
  import tensorflow as tf
  from tensorflow.compiler.tf2xla.python import xla
  key, n, t, store, layout = _call(config, sizes)
  k, s, _ = key
  specs = [tf.TensorSpec([n, k], store), tf.TensorSpec([n, s], store),
           tf.TensorSpec([n, s], store)] + [tf.TensorSpec([n], tf.float32)] * 4 + [
               tf.TensorSpec([t, k + 3 * s + 2], tf.float32)]
  operands = [tf.cast(grad, tf.float32), tf.cast(state.param_hidden, store),
              tf.cast(state.momentum, store), tf.cast(state.mean_square, store),
              tf.cast(state.log_lr, tf.float32), tf.cast(state.nominal_rms, tf.float32),
              bias, kernel, kernel_ch, small, layout]
  return Rows(xla.custom_call_v2(target(key), operands, specs))


class Update(NamedTuple):
  """What `update_pass` returns: the guarded updates and per-row state, and the guard."""
  updates: list           # one flat [size] float32 update per tensor, times `scale`
  param_hidden: object
  momentum: object
  mean_square: object
  nominal_rms: object
  log_lr: object
  finite: object          # bool scalar: False when the step was skipped


def update_pass(grad, rows, log_lr, old, per_tensor, small, config, sizes) -> Update:
  """Emits the update pass (row_pass.cc `update_run`). grad, log_lr [N]; rows: the row
  pass's `Rows`; old: the state before the step (as stored); per_tensor [T, 2]; small [6]."""
  import tensorflow as tf
  from tensorflow.compiler.tf2xla.python import xla
  key, n, t, store, layout = _call(config, sizes)
  k, s, _ = key
  specs = [tf.TensorSpec([size], tf.float32) for size in sizes] + [
      tf.TensorSpec([n, k], store), tf.TensorSpec([n, s], store), tf.TensorSpec([n, s], store),
      tf.TensorSpec([n], tf.float32), tf.TensorSpec([n], tf.float32),
      tf.TensorSpec([], tf.float32)]
  f32 = lambda x: tf.cast(x, tf.float32)
  operands = [f32(grad), f32(tf.reshape(rows.direction, [-1])), f32(rows.nominal),
              f32(rows.delta_log_lr), f32(log_lr), f32(per_tensor), f32(small),
              rows.param_hidden, rows.momentum, rows.mean_square, f32(rows.nominal_rms),
              tf.cast(old.param_hidden, store), tf.cast(old.momentum, store),
              tf.cast(old.mean_square, store), f32(old.nominal_rms), layout]
  out = xla.custom_call_v2(target(key, UPDATE_TARGET), operands, specs)
  return Update(list(out[:t]), *out[t:t + 5], finite=out[t + 5] > 0.5)
