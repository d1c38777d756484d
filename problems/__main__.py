"""Lists the meta-training ensemble:
python -m problems --list [--all | --nets [--samples N] | --netfam [--samples N]]."""

from __future__ import annotations

import argparse
import collections
import sys

import numpy as np

import problems


def table(rows: list[problems.Problem]) -> str:
  header = ("name", "family", "#params", "batch", "noise", "transform", "minimum")
  lines = [header] + [
      (p.name, p.family, str(p.num_params), "full" if p.batch_size is None else str(p.batch_size),
       f"{p.noise_stdev:g}", p.transform or "-",
       f"{p.minimum:.3g}" + {"exact": "", "infinity": " (at inf)", "bound": " (bound)"}[p.minimum_kind])
      for p in rows]
  widths = [max(len(line[column]) for line in lines) for column in range(len(header))]
  return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)).rstrip()
                   for line in lines)


def nets_listing(num_samples: int, seed: int = 0) -> str:
  """The nets family: its structures, the values each axis takes, and sampled instances."""
  from problems import net_tasks   # pylint: disable=import-outside-toplevel
  structures = problems.net_problems()
  header = ("name", "architecture", "#params", "batch", "activation", "norm", "loss", "data")
  rows = [header] + [
      (p.name, p.axes["architecture"], str(p.num_params),
       "full" if p.batch_size is None else str(p.batch_size), p.axes["activation"],
       p.axes["norm"], p.axes["loss"], p.axes["data"]) for p in structures]
  widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
  lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
           for row in rows]
  sizes = sorted(p.num_params for p in structures)
  lines += ["", f"{len(structures)} structures (each one compiled function); parameters "
            f"{sizes[0]:,}-{sizes[-1]:,} (median {sizes[len(sizes) // 2]:,}); the `nets` set "
            "wraps each in task augmentation (problems/augment.py).", "", "axes:"]
  for axis, values in net_tasks.axis_values(structures).items():
    shown = ["full" if axis == "batch" and v == 0 else str(v) for v in values]
    lines.append(f"  {axis:<13} {', '.join(shown)}")
  lines += ["", f"{num_samples} sampled tasks (structure uniform, then an instance seed; "
            f"sampler seed {seed}):"]
  rng = np.random.default_rng(seed)
  augmented = problems.nets_problems()
  for _ in range(num_samples):
    problem = problems.sample(rng, augmented)
    instance = int(rng.integers(2**31 - 1))
    info = ", ".join(f"{k}={v}" for k, v in problem.instance_info(instance).items())
    lines.append(f"  {problem.name}  seed {instance}: {info}")
  return "\n".join(lines)


def netfam_listing(num_samples: int) -> str:
  """The MLP families: ranges, parameters, and instances with their own share of them."""
  from problems import net_families   # pylint: disable=import-outside-toplevel
  header = ("name", "#params", "batch", "depth", "width", "features", "outputs")
  rows = [header] + [
      (f.name, str(f.num_params), str(f.batch_size),
       *(f"{low}-{high}" for low, high in (f.ranges[k] for k in header[3:])))
      for f in net_families.families()]
  widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
  lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
           for row in rows]
  lines += ["", "Each family is one compiled function; every instance draws its depth, width, "
            "features, outputs, activation, normalisation, loss and data (the `netfam` set "
            "wraps each family in task augmentation).", "",
            f"instances 0-{num_samples - 1} of each family (own parameters / family's):"]
  for family in net_families.families():
    for seed in range(num_samples):
      own = family.instance_mlp(seed).num_params
      info = ", ".join(f"{k}={v}" for k, v in family.instance_info(seed).items())
      lines.append(f"  {family.name}  seed {seed}: {own:,} / {family.num_params:,}; {info}")
  return "\n".join(lines)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m problems", description=__doc__)
  parser.add_argument("--list", action="store_true", help="print the problem table")
  parser.add_argument("--all", action="store_true", help="include off-by-default problems")
  parser.add_argument("--nets", action="store_true",
                      help="the nets family: structures, axes and sampled instances")
  parser.add_argument("--netfam", action="store_true",
                      help="the MLP families: ranges and sampled instances")
  parser.add_argument("--samples", type=int, default=8, help="sampled nets tasks to show")
  args = parser.parse_args(argv)
  if not args.list:
    parser.print_help()
    return 0
  if args.nets:
    print(nets_listing(args.samples))
    return 0
  if args.netfam:
    print(netfam_listing(args.samples))
    return 0
  rows = problems.all_problems() if args.all else problems.default_problems()
  print(table(rows))
  counts = collections.Counter(p.family for p in rows)
  print()
  print(", ".join(f"{family}: {counts[family]}" for family in problems.FAMILIES if counts[family]))
  print(f"total: {len(rows)} problems ({'all' if args.all else 'default set'})")
  return 0


if __name__ == "__main__":
  sys.exit(main())
