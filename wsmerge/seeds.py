"""One configuration trained once per seed: the spread across seeds beside each run's interval.

    cfg = RunConfig.from_yaml("sweeps/configs/train_tiny.yaml", seeds=[0, 1, 2])
    result = train_seeds(cfg, resume=True)     # out/seed-0/, out/seed-1/, out/seed-2/, out/seeds.json
    result.spread["generated/acc_in"]          # {"mean": …, "std": …, "min": …, "max": …}

A bootstrap interval says how much one run's number would move with other test targets;
the spread across seeds says how much it moves with another initialisation, batch order or
split (`RunConfig.vary`). A reader needs both. Each seed is an ordinary run with its own
checkpoint, so a killed repeat resumes seed by seed, and a finished seed is not run again.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from wsmerge.files import write_json
from wsmerge.train import RunConfig, RunResult, train

__all__ = ["SEEDS_FILE", "SPREAD_METRICS", "SeedsResult", "seed_config", "spread", "train_seeds"]

SEEDS_FILE = "seeds.json"
# The test metrics whose spread across seeds is reported (those a run has).
SPREAD_METRICS = (
    "generated/acc_in", "generated/acc_out", "generated/ft_acc_in", "vs_average/acc_in", "vs_copy1/acc_in",
    "vs_task_arithmetic/acc_in", "vs_target/acc_in", "corr/spearman",
)


@dataclass
class SeedsResult:
    runs: dict[int, RunResult]  # seed -> its run
    spread: dict[str, dict[str, float]]  # metric -> mean, std (ddof 1), min, max, n over seeds
    out: Path


def seed_config(cfg: RunConfig, seed: int) -> RunConfig:
    """The run of `cfg` for one of its seeds, in out/seed-<seed>/: the seed set wherever
    `cfg.vary` says, everything else as it is."""
    changes: dict = {"seeds": [], "out": str(Path(cfg.out) / f"seed-{seed}")}
    if "init" in cfg.vary:
        changes["seed"] = seed
    if "order" in cfg.vary:
        changes["order_seed"] = seed
    if "split" in cfg.vary:
        changes["pairs"] = cfg.pairs.replace(seed=seed)
    return cfg.replace(**changes)


def spread(tests: list[dict[str, float]], metrics=SPREAD_METRICS) -> dict[str, dict[str, float]]:
    """Mean, sample standard deviation, min, max and count over runs of each metric that the
    runs report (non-finite values left out; std NaN with fewer than 2)."""
    out = {}
    for m in metrics:
        values = np.array([t.get(m, math.nan) for t in tests], dtype=float)
        values = values[np.isfinite(values)]
        if not len(values):
            continue
        out[m] = {
            "mean": float(values.mean()),
            "std": float(values.std(ddof=1)) if len(values) > 1 else math.nan,
            "min": float(values.min()),
            "max": float(values.max()),
            "n": len(values),
        }
    return out


def train_seeds(
    cfg: RunConfig,
    report: Callable[[int, dict[str, float]], None] | None = None,
    resume: bool = False,
    train_fn: Callable = train,
) -> SeedsResult:
    """Train `cfg` once per seed of `cfg.seeds` (see `seed_config`), then write
    out/seeds.json: each seed's test summary and the spread across seeds. report(seed,
    metrics) after every epoch. `resume` resumes each seed by the rule of `train`."""
    if not cfg.seeds:
        raise ValueError("train_seeds needs a config with seeds (e.g. seeds: [0, 1, 2])")
    runs = {}
    for s in cfg.seeds:
        runs[s] = train_fn(
            seed_config(cfg, s), report=None if report is None else (lambda m, s=s: report(s, m)), resume=resume
        )
    tests = [r.test for r in runs.values()]
    result = SeedsResult(runs, spread(tests), Path(cfg.out))
    write_json(Path(cfg.out) / SEEDS_FILE, {
        "config": cfg.to_dict(),
        "seeds": {str(s): {"out": str(r.out), "best_epoch": r.best_epoch, "test": r.test} for s, r in runs.items()},
        "spread": result.spread,
    })
    return result
