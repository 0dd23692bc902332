"""Rebuild the results of a sweep: `python -m sweeps.report NAME [--results results]`.

NAME is a sweep folder under --results (the --name a sweep ran with) or the path of one. The
sweep may be finished, still running, or interrupted: every results file is rebuilt from the
trials it holds now (see wsmerge/results.py for what each file is), and the top of the
ranking is printed. Exit 0 when the files are written, 2 when there is no such sweep.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from wsmerge.intervals import few_units_warning, unit_text
from wsmerge.results import COMPLETE, EMPTY, PARTIAL, SweepNotFound, ranking_markdown, read_table, write_results


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.report", description=__doc__.split("\n")[0])
    p.add_argument("name", help="the sweep's folder name under --results, or its path")
    p.add_argument("--results", "--results-dir", dest="results", type=Path, default=Path("results"),
                   help="where sweep folders are (default results)")
    p.add_argument("--top", type=int, default=10, help="rows of the ranking to print (default 10)")
    p.add_argument("--bootstrap", type=int, default=1000,
                   help="resamples of every bootstrap interval (default 1000; fewer for a quick look)")
    return p.parse_args(argv)


def _folder(name: str, results: Path) -> Path:
    under = results / name
    return under if under.is_dir() else Path(name)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.bootstrap < 0 or args.top < 0:
        print("error: --bootstrap and --top must be >= 0", file=sys.stderr)
        return 2
    folder = _folder(args.name, args.results)
    try:
        paths = write_results(folder, n_boot=args.bootstrap)
    except SweepNotFound as e:
        print(f"error: {e} (looked for {args.results / args.name} and {Path(args.name)})", file=sys.stderr)
        return 2
    status = pd.read_parquet(paths["trials.parquet"], columns=["status"])["status"].value_counts()
    print(f"{folder}: {int(status.sum())} trial(s), {status.get(COMPLETE, 0)} complete, "
          f"{status.get(PARTIAL, 0)} partial, {status.get(EMPTY, 0)} empty")
    rank = read_table(paths["ranking.csv"])
    if rank.empty:
        print("no complete trial yet: the ranking appears once a trial has tested its model (result.json)")
    else:
        shown = f"top {args.top} of {len(rank)}" if len(rank) > args.top else f"all {len(rank)}"
        n_targets, n_pairs = int(rank["n_targets"].median()), int(rank["n_pairs"].median())
        print(f"\nranking on test pairs ({shown}; intervals resample {unit_text(n_targets, n_pairs, 'target class set')}; "
              "columns explained in ranking.md):\n")
        print(ranking_markdown(rank, args.top))
        warning = few_units_warning(n_targets)
        if warning:
            print(f"\nnote: {warning}")
    print("\nwritten:")
    for path in paths.values():
        print(f"  {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
