"""Lists the meta-training ensemble: python -m problems --list [--all]."""

from __future__ import annotations

import argparse
import collections
import sys

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


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m problems", description=__doc__)
  parser.add_argument("--list", action="store_true", help="print the problem table")
  parser.add_argument("--all", action="store_true", help="include off-by-default problems")
  args = parser.parse_args(argv)
  if not args.list:
    parser.print_help()
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
