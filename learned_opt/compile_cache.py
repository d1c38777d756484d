"""A persistent, on-disk cache of the XLA executables TensorFlow compiles.

The optimizer's step is one XLA-compiled function per model layout. Compiling it (LLVM code
generation for ~90 fused loops) is most of what the first epoch of a small model costs over
Adam's. TensorFlow can keep every executable it compiles with `jit_compile` in a directory
and load it in later processes (its `--tf_xla_persistent_cache_directory` flag); an entry is
used only when the whole HLO module matches, byte for byte. So the second run of a script
loads the step instead of compiling it.

It is off unless asked for, because TensorFlow logs two harmless but alarming errors each
time it loads an entry (a failed text-format parse before the binary parse succeeds, and
"Target machine feature +prefer-no-scatter is not supported on the host machine ... could
lead to execution errors such as SIGILL": LLVM tuning flags that XLA records with the code
but does not find among the host's instruction sets). With `LEARNED_OPT_XLA_CACHE` set,
`import learned_opt` turns it on:

* `LEARNED_OPT_XLA_CACHE=1` (or `on`, `true`, `yes`): in `~/.cache/learned_opt/xla/`
  (`$XDG_CACHE_HOME` is honoured), in a subdirectory per TensorFlow version, CPU and
  `XLA_FLAGS` (see `keyed`);
* `LEARNED_OPT_XLA_CACHE=<directory>`: in a subdirectory of that directory;
* unset, empty or `0` (`off`, `false`, `no`): no cache;

A cache directory already named in `TF_XLA_FLAGS` is used as it is, whatever this variable
says. The cache stays off, with a warning that names the directory, when the directory cannot
be created or written or its disk has under `MIN_FREE_BYTES` free: TensorFlow would fail the
compile, not just skip the cache, if a write failed.

TensorFlow reads its XLA flags once, at its first operation (or device query), so the cache
takes effect only if `learned_opt` is imported before TensorFlow runs anything; imported
later it changes nothing. Inside `absl.app.run` TensorFlow reads them when it is imported, so
there `learned_opt` must come before TensorFlow's import (at module level, before
`app.run`, is always early enough). The flag is process-wide: the user's own `jit_compile`
models are cached too.

Housekeeping at import: entries that are not whole (`intact`) are deleted, because TensorFlow
reports an unreadable entry as `OutOfRangeError`, which `model.fit` takes for the end of its
data: training would stop without an error. TensorFlow writes entries to a temporary file and
renames it, so a crash mid-write leaves none; a file system can still leave an empty or short
file after a power cut. Stale temporary files go too, and the oldest entries once the
directory holds more than `MAX_BYTES`.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import stat
import sys
import time
import warnings
from pathlib import Path

ENV = "LEARNED_OPT_XLA_CACHE"
TF_FLAG = "--tf_xla_persistent_cache_directory"
MAX_BYTES = 2 << 30          # the cache directory's size cap
MIN_FREE_BYTES = 1 << 30     # no cache on a disk with less free space than this
_OFF = ("", "0", "off", "false", "no")
_ON = ("1", "on", "true", "yes")
_STALE_TMP_S = 3600.0

_directory: str | None = None


def directory() -> str | None:
  """The cache directory `import learned_opt` configured (or found configured), else None."""
  return _directory


def cpu_fingerprint() -> str:
  """A short hash of what compiled code depends on: architecture, CPU model and features."""
  parts = [platform.machine(), platform.processor()]
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:                              # the first processor's block is enough
        if not line.strip():
          break
        if line.split(":", 1)[0].strip() in ("model name", "flags", "Features", "CPU part"):
          parts.append(line.strip())
  except OSError:
    pass
  return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:12]


def tensorflow_version() -> str:
  """TensorFlow's version, without importing it if it is not imported yet: inside
  `absl.app.run`, importing TensorFlow fixes its XLA flags, so the flag must be set first."""
  if "tensorflow" in sys.modules:
    return sys.modules["tensorflow"].__version__
  from importlib import metadata
  names = ["tensorflow", "tensorflow-cpu", "tensorflow-macos", "tensorflow-intel", "tf-nightly"]
  for name in names:
    try:
      return metadata.version(name)
    except metadata.PackageNotFoundError:
      continue
  for name in metadata.packages_distributions().get("tensorflow", []):   # a rarer wheel
    return metadata.version(name)
  return "unknown"


def cache_root(environ=None) -> Path:
  """`$XDG_CACHE_HOME` (or `~/.cache`)`/learned_opt`: where learned_opt keeps compiled code."""
  environ = os.environ if environ is None else environ
  root = environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return Path(root) / "learned_opt"


def default_directory(environ=None) -> Path:
  """`$XDG_CACHE_HOME` (or `~/.cache`)`/learned_opt/xla`."""
  return cache_root(environ) / "xla"


def keyed(base: Path, environ=None) -> Path:
  """`base/tf<version>-<cpu fingerprint>[-xla<hash of XLA_FLAGS>]`.

  TensorFlow keys an entry by its HLO only, not by the TensorFlow build, the CPU it was
  compiled for or the XLA flags it was compiled under (a profiler's instrumentation, fast
  math). Each combination gets its own subdirectory, so no process loads code compiled for
  another.
  """
  environ = os.environ if environ is None else environ
  name = f"tf{tensorflow_version()}-{cpu_fingerprint()}"
  xla_flags = " ".join(environ.get("XLA_FLAGS", "").split())
  if xla_flags:
    name += "-xla" + hashlib.sha256(xla_flags.encode()).hexdigest()[:8]
  return base / name


def _flag_directory(tf_xla_flags: str) -> str | None:
  for token in tf_xla_flags.split():
    if token.startswith(TF_FLAG + "="):
      return token.split("=", 1)[1] or None
  return None


def intact(path: Path) -> bool:
  """Whether `path` is a whole cache entry: TensorFlow's `XlaSerializedCacheEntry` protobuf
  (key = 1, hlo_module = 2, executable = 3), walked field header by field header without
  reading the payloads, must end exactly at the end of the file. A truncated entry fails."""
  seen = set()
  try:
    with open(path, "rb") as f:
      size = f.seek(0, 2)
      f.seek(0)

      def varint() -> int:
        value, shift = 0, 0
        while True:
          byte = f.read(1)
          if not byte or shift > 63:
            raise ValueError("truncated varint")
          value |= (byte[0] & 0x7F) << shift
          shift += 7
          if not byte[0] & 0x80:
            return value

      while f.tell() < size:
        tag = varint()
        number, wire_type = tag >> 3, tag & 7
        if wire_type == 2:
          f.seek(varint(), 1)
        elif wire_type == 0:
          varint()
        elif wire_type in (1, 5):
          f.seek(8 if wire_type == 1 else 4, 1)
        else:
          return False
        seen.add(number)
      return f.tell() == size and {1, 2, 3} <= seen
  except (OSError, ValueError):
    return False


def prune(path: Path, max_bytes: int = MAX_BYTES, now: float | None = None) -> list[Path]:
  """Deletes entries that are not `intact`, stale temporary files and, above `max_bytes`, the
  oldest entries. Returns what it deleted. Files that vanish meanwhile (another process) are
  fine."""
  now = time.time() if now is None else now
  removed, entries = [], []
  for p in path.iterdir():
    try:
      st = p.stat()
    except OSError:
      continue
    if not stat.S_ISREG(st.st_mode):
      continue
    if ".tmp" in p.name:
      if now - st.st_mtime > _STALE_TMP_S:
        removed.append(p)
    elif p.suffix == ".pb":
      if not intact(p):
        removed.append(p)
      else:
        entries.append((st.st_mtime, st.st_size, p))
  total = sum(size for _, size, _ in entries)
  for _, size, p in sorted(entries, key=lambda e: e[0]):
    if total <= max_bytes:
      break
    removed.append(p)
    total -= size
  for p in removed:
    try:
      p.unlink()
    except OSError:
      pass
  return removed


def _usable(path: Path) -> str | None:
  """None if `path` can hold the cache, else why not."""
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe = path / f".probe-{os.getpid()}"
    probe.write_bytes(b"x")
    probe.unlink()
  except OSError as e:
    return f"cannot write there ({e})"
  free = shutil.disk_usage(path).free
  if free < MIN_FREE_BYTES:
    return f"its disk has {free / 2**20:.0f} MiB free, under {MIN_FREE_BYTES / 2**20:.0f} MiB"
  return None


def configure(environ=None) -> str | None:
  """Sets TensorFlow's persistent-cache flag in `environ` (default `os.environ`) as the module
  docstring says; returns the directory in effect, or None. Called by `import learned_opt`."""
  global _directory
  environ = os.environ if environ is None else environ
  setting = environ.get(ENV, "").strip()
  existing = _flag_directory(environ.get("TF_XLA_FLAGS", ""))
  if existing:
    _directory = existing
  elif setting.lower() in _OFF:
    _directory = None
  else:
    explicit = setting.lower() not in _ON
    path = keyed(Path(setting).expanduser() if explicit else default_directory(environ), environ)
    why_not = _usable(path)
    if why_not:
      warnings.warn(f"{ENV}={setting}: no XLA compilation cache in {path}: {why_not}",
                    stacklevel=2)
      _directory = None
    else:
      prune(path)
      environ["TF_XLA_FLAGS"] = f"{environ.get('TF_XLA_FLAGS', '')} {TF_FLAG}={path}".strip()
      _directory = str(path)
  return _directory
