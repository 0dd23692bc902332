"""Intervals whose unit is the target class set, and paired comparisons on the same pairs.

Test pairs are not independent: the pairs of one target class set share its images, and
most share parents too. Resampling pairs as if they were independent reports the certainty
of many units where there are few, so every interval here resamples **clusters** (by
default the pairs' target class sets, keeping all pairs of a drawn target) and says how
many there were:

    iv = bootstrap_mean(acc, groups=c3)                  # Interval(value, lo, hi, 6, 69, "target")
    iv.unit_text()                                       # "6 targets, 69 pairs"
    d = paired_difference(acc_generated, acc_average, groups=c3)
    d.text(".1f")                                        # "+21.7 [+9.3, +30.2], 6 targets, 69 pairs, p=0.031"

With `groups=None` each pair is its own cluster: the pair-level bootstrap, kept as an option.
For the same seed and number of clusters the draws are the same whatever the unit, so on
data where every pair of a target is a copy of the others the two intervals agree exactly
with the interval over the distinct targets alone.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "FEW_TARGETS",
    "UNITS",
    "Interval",
    "PairedDifference",
    "bootstrap_mean",
    "bootstrap_statistic",
    "few_units_warning",
    "paired_difference",
    "unit_text",
]

UNITS = ("target", "pair")
# Below this many targets a by-target interval is wide by construction, and the results say so.
FEW_TARGETS = 10


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def unit_text(n_units: int, n_pairs: int, unit: str = "target") -> str:
    """What an interval resampled: "6 targets, 69 pairs", or "69 pairs" for the pair unit."""
    if unit == "pair":
        return _plural(n_pairs, "pair")
    return f"{_plural(n_units, unit)}, {_plural(n_pairs, 'pair')}"


@dataclass(frozen=True)
class Interval:
    """A statistic with its percentile-bootstrap interval (NaN where it cannot be drawn) and
    the units it was resampled over: `n_units` clusters of `unit`, holding `n_pairs` pairs."""

    value: float
    lo: float
    hi: float
    n_units: int
    n_pairs: int
    unit: str = "target"

    def unit_text(self) -> str:
        return unit_text(self.n_units, self.n_pairs, self.unit)

    def text(self, spec: str = ".1f") -> str:
        if not math.isfinite(self.lo):
            return f"{self.value:{spec}} ({self.unit_text()})"
        return f"{self.value:{spec}} [{self.lo:{spec}}, {self.hi:{spec}}], {self.unit_text()}"


@dataclass(frozen=True)
class PairedDifference(Interval):
    """The mean over pairs of a − b with its cluster-bootstrap interval, and the two-sided
    Wilcoxon signed-rank p-value over the clusters' mean differences (NaN with fewer than
    two clusters, 1.0 when every cluster's difference is zero)."""

    p_value: float = math.nan

    def text(self, spec: str = "+.1f") -> str:
        p = "" if math.isnan(self.p_value) else f", p={self.p_value:.2g}"
        return super().text(spec) + p


def _codes(groups: Sequence | np.ndarray | None, n: int) -> np.ndarray:
    """Cluster number of each of n rows (each row its own cluster when groups is None)."""
    if groups is None:
        return np.arange(n)
    keys = pd.Series(list(groups) if not isinstance(groups, (pd.Series, np.ndarray)) else groups)
    if len(keys) != n:
        raise ValueError(f"groups must give one cluster per value: {len(keys)} for {n} values")
    return pd.factorize(keys.map(lambda k: tuple(k) if isinstance(k, list) else k))[0]


def _unit(groups) -> str:
    return "pair" if groups is None else "target"


def _finite(*arrays: np.ndarray, codes: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    keep = np.logical_and.reduce([np.isfinite(a) for a in arrays])
    return [a[keep] for a in arrays], pd.factorize(codes[keep])[0]


def _draws(n_units: int, n_boot: int, seed: int) -> np.ndarray:
    # Drawn as the pair-level bootstrap draws pairs, so that the two agree on one-pair clusters.
    return np.random.default_rng(seed).integers(0, n_units, size=(n_boot, n_units))


def _percentiles(boot: np.ndarray, ci: float) -> tuple[float, float]:
    boot = boot[np.isfinite(boot)]
    if not len(boot):
        return math.nan, math.nan
    lo, hi = np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)])
    return float(lo), float(hi)


def _cluster_means(x: np.ndarray, codes: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """The pair mean of each resample of clusters, from per-cluster sums and counts."""
    n_units = codes.max() + 1
    sums = np.bincount(codes, weights=x, minlength=n_units)
    counts = np.bincount(codes, minlength=n_units)
    draws = _draws(n_units, n_boot, seed)
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


def bootstrap_mean(
    values: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> Interval:
    """The mean over pairs of the finite `values` and its percentile-bootstrap interval,
    resampling the clusters `groups` (one key per value, e.g. the target class set) with
    replacement and keeping all pairs of each; `groups=None` resamples pairs. The interval
    is NaN with fewer than 2 clusters or no resamples; all is NaN without a finite value."""
    x = np.asarray(values, dtype=float)
    (x,), codes = _finite(x, codes=_codes(groups, len(x)))
    if not len(x):
        return Interval(math.nan, math.nan, math.nan, 0, 0, _unit(groups))
    n_units = int(codes.max()) + 1
    lo = hi = math.nan
    if n_units >= 2 and n_boot:
        lo, hi = _percentiles(_cluster_means(x, codes, n_boot, seed), ci)
    return Interval(float(x.mean()), lo, hi, n_units, len(x), _unit(groups))


def bootstrap_statistic(
    fn: Callable[[np.ndarray, np.ndarray], float],
    x: Sequence[float] | np.ndarray,
    y: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    min_pairs: int = 3,
) -> Interval:
    """fn(x, y) over the pairs where both are finite (NaN with fewer than `min_pairs`), and
    its percentile-bootstrap interval over resampled clusters (resamples where fn is NaN
    are left out). Used for the loss–accuracy correlations."""
    x, y = (np.asarray(v, dtype=float) for v in (x, y))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"x and y must be 1-D of one length, got {x.shape} and {y.shape}")
    (x, y), codes = _finite(x, y, codes=_codes(groups, len(x)))
    n_units = int(codes.max()) + 1 if len(codes) else 0
    if len(x) < min_pairs:
        return Interval(math.nan, math.nan, math.nan, n_units, len(x), _unit(groups))
    value = fn(x, y)
    lo = hi = math.nan
    if n_units >= 2 and n_boot:
        members = [np.flatnonzero(codes == k) for k in range(n_units)]
        boot = np.empty(n_boot)
        for b, draw in enumerate(_draws(n_units, n_boot, seed)):
            rows = np.concatenate([members[k] for k in draw])
            boot[b] = fn(x[rows], y[rows])
        lo, hi = _percentiles(boot, ci)
    return Interval(float(value), lo, hi, n_units, len(x), _unit(groups))


def _wilcoxon(diffs: np.ndarray) -> float:
    if len(diffs) < 2:
        return math.nan
    if not np.any(diffs):
        return 1.0
    with warnings.catch_warnings():  # scipy warns that few clusters give an inexact p
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(diffs, zero_method="wilcox", alternative="two-sided").pvalue)


def paired_difference(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    groups: Sequence | np.ndarray | None = None,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> PairedDifference:
    """a − b on the same pairs (both finite): the mean difference, its bootstrap interval
    over resampled clusters, and a Wilcoxon signed-rank test on the clusters' mean
    differences (on the pairs' differences when `groups` is None)."""
    a, b = (np.asarray(v, dtype=float) for v in (a, b))
    if a.shape != b.shape:
        raise ValueError(f"a and b must be paired (one shape), got {a.shape} and {b.shape}")
    (a, b), codes = _finite(a, b, codes=_codes(groups, len(a)))
    d = a - b
    iv = bootstrap_mean(d, codes, n_boot, ci, seed)
    per_unit = np.bincount(codes, weights=d) / np.bincount(codes) if len(d) else d
    return PairedDifference(iv.value, iv.lo, iv.hi, iv.n_units, iv.n_pairs, _unit(groups), _wilcoxon(per_unit))


def few_units_warning(n_targets: int, where: str = "the test split") -> str | None:
    """A sentence for a results file when `n_targets` is below FEW_TARGETS, else None."""
    if n_targets >= FEW_TARGETS:
        return None
    if n_targets < 2:
        return (f"{where} has {_plural(n_targets, 'target class set')}: no interval by target can be drawn, "
                "and its pairs, which share that target's images and CNN, are not independent units.")
    return (f"{where} has only {_plural(n_targets, 'target class set')}: intervals resampled by target are "
            f"wide by construction (fewer than {FEW_TARGETS} units), and a difference needs to be large to show.")
