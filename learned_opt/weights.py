"""Weights files: meta-parameters + the config that made them + provenance, in one .npz.

Format (version 1): an uncompressed numpy .npz with
  * "meta/<name>" float32 arrays, one per meta-parameter (see hrnn.meta_param_shapes); other
    floating dtypes are read as float32, integer or other arrays are refused;
  * "__format__": "learned_opt.weights/1";
  * "__config__": the HRNNConfig as JSON;
  * "__provenance__": JSON (trainer flags, meta-steps, wall time, commit, ... free-form).
It loads with numpy alone (no pickle, nothing else imported). Shipped files live in
learned_opt/weights/<name>.npz and are referred to by name.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, Mapping, NamedTuple

import numpy as np

from learned_opt import config as config_lib
from learned_opt import hrnn

FORMAT = "learned_opt.weights/1"
SHIPPED_DIR = Path(__file__).parent / "weights"


class Weights(NamedTuple):
  meta: dict[str, np.ndarray]
  config: config_lib.HRNNConfig
  provenance: dict[str, Any]
  path: str


def shipped() -> list[str]:
  """Names of the weights files shipped inside the package."""
  return sorted(p.stem for p in SHIPPED_DIR.glob("*.npz"))


def resolve(name_or_path: str | os.PathLike) -> Path:
  """A shipped name ("default", "paper") or a path -> the file's path (which must exist)."""
  text = os.fspath(name_or_path)
  looks_like_path = os.sep in text or text.endswith(".npz") or (os.altsep and os.altsep in text)
  if not looks_like_path:
    path = SHIPPED_DIR / f"{text}.npz"
    if not path.exists():
      raise FileNotFoundError(
          f"no shipped weights named {text!r} (looked for {path}); shipped: {shipped()}. "
          "Pass a path to a weights file written by train_meta.py --export, or weights=None "
          "for an untrained optimizer.")
    return path
  path = Path(text).expanduser()
  if not path.exists():
    raise FileNotFoundError(f"weights file {path} does not exist")
  return path


def save(path: str | os.PathLike, meta: Mapping[str, np.ndarray], config: config_lib.HRNNConfig,
         provenance: Mapping[str, Any] | None = None) -> Path:
  """Writes a weights file atomically (a failure never leaves a half-written file at path)."""
  path = Path(path)
  hrnn.check_meta_values(meta, config, source=f"weights for {path}")
  arrays = {f"meta/{k}": np.asarray(v, np.float32) for k, v in meta.items()}
  arrays["__format__"] = np.asarray(FORMAT)
  arrays["__config__"] = np.asarray(config.to_json())
  arrays["__provenance__"] = np.asarray(json.dumps(dict(provenance or {}), sort_keys=True,
                                                   default=str))
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
    os.chmod(tmp, 0o644)  # mkstemp makes 0600; weights are data others must read.
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
  return path


def load(name_or_path: str | os.PathLike,
         expected_config: config_lib.HRNNConfig | None = None) -> Weights:
  """Reads and validates a weights file; errors name the file and what is wrong with it."""
  path = resolve(name_or_path)
  if path.is_dir():
    raise ValueError(f"weights file {path} is a directory, not a weights file")
  if not zipfile.is_zipfile(path):
    # np.load would guess "pickled data" for any bytes that are not .npy/.npz: misleading.
    with open(path, "rb") as f:
      head = f.read(8)
    raise ValueError(f"weights file {path} is not a .npz file (a zip archive; it starts with "
                     f"{head!r}). Weights files are written by learned_opt.weights.save or "
                     "train_meta.py --export")
  try:
    with np.load(path, allow_pickle=False) as data:
      contents = {k: data[k] for k in data.files}
  except Exception as e:  # zip / format errors come in many types
    raise ValueError(f"weights file {path} is not a readable .npz file: {e}") from e
  fmt = str(contents.get("__format__", ""))
  if fmt != FORMAT:
    raise ValueError(f"weights file {path} has format {fmt or 'missing'!r}, expected {FORMAT!r}")
  try:
    config = config_lib.HRNNConfig.from_dict(json.loads(str(contents["__config__"])))
    provenance = json.loads(str(contents.get("__provenance__", "{}")))
  except (KeyError, ValueError, TypeError) as e:
    raise ValueError(f"weights file {path} has an unreadable config: {e}") from e
  if expected_config is not None and expected_config != config:
    differences = ", ".join(f"{k}: file has {a!r}, requested {b!r}"
                            for k, (a, b) in config.diff(expected_config).items())
    raise ValueError(f"weights file {path} was made for another config ({differences})")
  meta = {k[len("meta/"):]: v for k, v in contents.items() if k.startswith("meta/")}
  for name, value in meta.items():
    if not np.issubdtype(value.dtype, np.floating):
      raise ValueError(f"weights file {path}: meta-parameter {name!r} has dtype {value.dtype}; "
                       "weights are floating-point arrays (float32)")
  meta = {k: v.astype(np.float32, copy=False) for k, v in meta.items()}
  hrnn.check_meta_values(meta, config, source=f"weights file {path}")
  return Weights(meta=meta, config=config, provenance=provenance, path=str(path))


# Switches a warm start may turn on: the file's meta-parameters are kept, and the ones the
# switch adds start at their initial values (the optimizer is the file's until they move).
WARM_START_SWITCHES = {"anchored_log_lr": ("log_lr_anchor_init",),
                       "learned_schedule": ("schedule_steps",),
                       "anneal_blackbox": ()}


def load_for(name_or_path: str | os.PathLike, config: config_lib.HRNNConfig) -> Weights:
  """`load(name_or_path, config)`, except that a file made with a switch of
  WARM_START_SWITCHES off, and otherwise the same config, is accepted for a config with it on:
  its meta-parameters, plus the switch's new ones at their initial values. This is how a
  `bounded` run warm-starts from `lean` weights; the result's provenance says so. Any other
  difference is refused, as by `load`."""
  loaded = load(name_or_path)
  switched = _switched(loaded, config)
  if switched is None:
    return load(name_or_path, config)   # raises, naming the differences
  return switched


def _switched(loaded: Weights, config: config_lib.HRNNConfig) -> Weights | None:
  """`loaded` under `config` (itself when the configs are equal), or None when `config`
  differs by more than switching on WARM_START_SWITCHES."""
  if loaded.config == config:
    return loaded
  diff = loaded.config.diff(config)
  turned_on = [k for k in WARM_START_SWITCHES if k in diff and not diff[k][0] and diff[k][1]]
  allowed = set(turned_on) | {f for k in turned_on for f in WARM_START_SWITCHES[k]}
  if not turned_on or not set(diff) <= allowed:
    return None
  initial = hrnn.init_meta_params(config, 0)
  meta = {k: loaded.meta[k] if k in loaded.meta else initial[k]
          for k in hrnn.meta_param_shapes(config)}
  hrnn.check_meta_values(meta, config, source=f"weights file {loaded.path} under {turned_on}")
  provenance = {**loaded.provenance, "switched_on": turned_on,
                "switched_from_config": loaded.config.to_dict()}
  return Weights(meta=meta, config=config, provenance=provenance, path=loaded.path)


# Ablations a file can be written with: the meta-parameters they set, and to what.
# "blackbox": the RNN's own term off (gain 0), leaving the nominal AggMo-Adam term whose
# magnitude the Tensor GRU still sets: what the untrained stable/lean/bounded optimizers are.
ABLATIONS = {"blackbox": {"blackbox/gain": 0.0}}


def ablated(loaded: Weights, name: str) -> Weights:
  """`loaded` with ablation `name` applied; its provenance says so."""
  if name not in ABLATIONS:
    raise ValueError(f"unknown ablation {name!r}; choose one of {sorted(ABLATIONS)}")
  missing = [k for k in ABLATIONS[name] if k not in loaded.meta]
  if missing:
    raise ValueError(f"weights file {loaded.path}: ablation {name!r} needs meta-parameters "
                     f"{missing}, which its config does not have")
  meta = {**loaded.meta, **{k: np.float32(v).reshape(loaded.meta[k].shape)
                            for k, v in ABLATIONS[name].items()}}
  provenance = {**loaded.provenance,
                "ablated": list(loaded.provenance.get("ablated", [])) + [name]}
  return Weights(meta=meta, config=loaded.config, provenance=provenance, path=loaded.path)


def main(argv=None) -> None:
  """python -m learned_opt.weights (--switch_on anchored_log_lr | --ablate blackbox) SRC DST:
  writes SRC's meta-parameters under the switched-on config, or with the ablation applied, to
  DST (never over SRC)."""
  import argparse
  parser = argparse.ArgumentParser(prog="python -m learned_opt.weights", description=main.__doc__)
  how = parser.add_mutually_exclusive_group(required=True)
  how.add_argument("--switch_on", choices=sorted(WARM_START_SWITCHES))
  how.add_argument("--ablate", choices=sorted(ABLATIONS))
  parser.add_argument("src")
  parser.add_argument("dst")
  args = parser.parse_args(argv)
  src = load(args.src)
  if Path(args.dst).resolve() == Path(src.path).resolve():
    parser.error(f"DST {args.dst} is SRC; write the new weights to a new file")
  if args.ablate:
    try:
      result = ablated(src, args.ablate)
    except ValueError as e:
      parser.error(str(e))
    save(args.dst, result.meta, result.config, result.provenance)
    print(f"wrote {args.dst}: {args.src} with the {args.ablate} term ablated")
    return
  switched = _switched(src, config_lib.HRNNConfig(**{**src.config.to_dict(),
                                                     args.switch_on: True}))
  save(args.dst, switched.meta, switched.config, switched.provenance)
  print(f"wrote {args.dst}: {args.src} with {args.switch_on} on")


if __name__ == "__main__":
  main()
