"""Score the merges that need no Transformer on a run config's pairs, without training one:
`python -m sweeps.baselines --config sweeps/configs/train_tiny.yaml [--split test]`.

Prints, for every baseline of the run's `evaluation:` (copying a parent, averaging, task
arithmetic, the merges of wsmerge.merges, the parents' ensemble, the target), its mean
acc_in, acc_out, forgetting and acc_in after the same fine-tuning, its paired difference to
the average with an interval by target, and its seconds per pair: the baselines table a
sweep's ranking shows, for any zoo and pairs. `--csv FILE` also writes the per-pair rows.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from wsmerge.config import read_yaml
from wsmerge.data import load_mnist
from wsmerge.evaluate import evaluate_merges, groups_of
from wsmerge.files import atomic_write
from wsmerge.intervals import paired_difference
from wsmerge.pairs import make_pairs
from wsmerge.train import RunConfig, read_zoo
from wsmerge.zoo import ZooStoreError, weights_matrix


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m sweeps.baselines", description=__doc__.split("\n")[0],
                                epilog="The run config's zoo, pairs and evaluation are used; its model and losses are not.")
    p.add_argument("--config", type=Path, required=True, help="a run config (as python -m sweeps.train_one reads)")
    p.add_argument("--split", choices=("val", "test"), default="test", help="the pairs and images scored (default test)")
    p.add_argument("--csv", type=Path, help="also write the per-pair rows here")
    return p.parse_args(argv)


def baseline_table(per_pair: pd.DataFrame, n_boot: int, ci: float, seed: int, unit: str) -> pd.DataFrame:
    """One row per baseline: means over pairs, the paired difference to `average` (interval
    by `unit`), seconds per pair."""
    by = {m: rows.sort_values("pair") for m, rows in per_pair.groupby("method", sort=False) if m != "generated"}
    average = by["average"]["acc_in"].to_numpy(float)
    groups = groups_of(by["average"], unit)
    rows = []
    for method, r in by.items():
        d = paired_difference(r["acc_in"].to_numpy(float), average, groups, n_boot, ci, seed)
        rows.append({
            "method": method, "acc_in": r["acc_in"].mean(), "acc_out": r["acc_out"].mean(),
            "forgetting": (r["forget_c1"].mean() + r["forget_c2"].mean()) / 2,
            "ft_acc_in": r["ft_acc_in"].mean() if "ft_acc_in" in r else np.nan,
            "vs_average": d.value, "vs_average_lo": d.lo, "vs_average_hi": d.hi,
            "seconds_per_pair": r["merge_seconds"].mean(),
        })
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = RunConfig.from_dict({"out": "-", **read_yaml(args.config)}, str(args.config))
        tables = read_zoo(cfg.zoo)
        pairs = make_pairs(tables.checkpoints, cfg.pairs)
    except (ValueError, FileNotFoundError, ZooStoreError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    weights = torch.from_numpy(weights_matrix(tables.checkpoints))
    w1, w2, w3 = pairs.tensors(args.split, weights)
    meta = pairs.meta(args.split)
    mnist = load_mnist()
    ev = cfg.evaluation
    print(f"{len(w1)} {args.split} pairs of {len(set(meta['c3']))} targets; evaluating {len(ev.merges)} merges "
          f"besides the classic baselines", flush=True)
    result = evaluate_merges(
        (w1 + w2) / 2, w1, w2, w3, meta["c1"], meta["c2"], meta["activation"],
        mnist.val if args.split == "val" else mnist.test, mnist.train, ev,
        init=pairs.init_weights(args.split, tables.init),
    )
    table = baseline_table(result.per_pair, ev.bootstrap, ev.ci, ev.seed, ev.interval_unit)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    if args.csv:
        atomic_write(args.csv, lambda p: result.per_pair.to_csv(p, index=False))
        print(f"per-pair rows written to {args.csv}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
