"""Intervals by target class set and paired comparisons, against computations written out by
hand (numpy loops) and scipy."""

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from wsmerge.evaluate import EvalConfig, interval_summary, loss_accuracy_correlation
from wsmerge.intervals import (
    FEW_TARGETS,
    bootstrap_mean,
    bootstrap_statistic,
    few_units_warning,
    paired_difference,
)


def cluster_bootstrap_by_hand(values, groups, n_boot, ci, seed, statistic=np.mean):
    """The cluster bootstrap spelt out: draw clusters, concatenate their rows, apply."""
    keys = list(dict.fromkeys(groups))
    members = {k: [i for i, g in enumerate(groups) if g == k] for k in keys}
    draws = np.random.default_rng(seed).integers(0, len(keys), size=(n_boot, len(keys)))
    boot = []
    for draw in draws:
        rows = [i for k in draw for i in members[keys[k]]]
        boot.append(statistic(np.asarray(values)[rows]))
    return np.percentile(boot, [50 * (1 - ci), 50 * (1 + ci)])


def test_copies_of_a_target_add_no_certainty_by_target_but_do_by_pair():
    rng = np.random.default_rng(0)
    per_target = rng.normal(70, 10, size=6)
    alone = bootstrap_mean(per_target, [f"t{i}" for i in range(6)], n_boot=2000, seed=3)
    widths = []
    for copies in (1, 5, 20):
        values = np.repeat(per_target, copies)
        groups = np.repeat([f"t{i}" for i in range(6)], copies)
        by_target = bootstrap_mean(values, groups, n_boot=2000, seed=3)
        by_pair = bootstrap_mean(values, None, n_boot=2000, seed=3)
        # Identical copies: the by-target interval is the interval over the 6 distinct values.
        assert (by_target.lo, by_target.hi) == pytest.approx((alone.lo, alone.hi), abs=1e-9)
        assert (by_target.n_units, by_target.n_pairs) == (6, 6 * copies)
        widths.append(by_pair.hi - by_pair.lo)
    # Resampling pairs treats the copies as evidence: the interval shrinks about as 1/sqrt(copies).
    assert widths[0] > 2 * widths[1] > 4 * widths[2] / 2
    assert widths[2] < 0.3 * (alone.hi - alone.lo)


def test_bootstrap_mean_matches_the_loop_with_unequal_clusters_and_nans():
    rng = np.random.default_rng(1)
    sizes = [1, 7, 3, 12, 2]
    groups = [f"{k}" for k, n in enumerate(sizes) for _ in range(n)]
    values = rng.normal(size=len(groups))
    values[4] = np.nan  # left out, with its pair
    iv = bootstrap_mean(values, groups, n_boot=300, ci=0.9, seed=5)
    keep = np.isfinite(values)
    lo, hi = cluster_bootstrap_by_hand(values[keep], [g for g, k in zip(groups, keep) if k], 300, 0.9, 5)
    assert (iv.lo, iv.hi) == pytest.approx((lo, hi))
    assert iv.value == pytest.approx(np.nanmean(values))
    assert (iv.n_units, iv.n_pairs, iv.unit) == (5, len(groups) - 1, "target")
    assert iv.unit_text() == f"5 targets, {len(groups) - 1} pairs"
    # No interval from one cluster, nothing at all from no value.
    one = bootstrap_mean([1.0, 2.0, 3.0], ["a"] * 3)
    assert one.value == 2.0 and math.isnan(one.lo) and one.text() == "2.0 (1 target, 3 pairs)"
    assert math.isnan(bootstrap_mean([np.nan], ["a"]).value)
    with pytest.raises(ValueError, match="one cluster per value"):
        bootstrap_mean([1.0, 2.0], ["a"])


def test_pair_unit_is_the_plain_percentile_bootstrap():
    x = np.random.default_rng(2).uniform(0, 100, size=40)
    iv = bootstrap_mean(x, None, n_boot=500, seed=7)
    draws = np.random.default_rng(7).integers(0, 40, size=(500, 40))
    assert (iv.lo, iv.hi) == pytest.approx(tuple(np.percentile(x[draws].mean(axis=1), [2.5, 97.5])))
    assert iv.unit_text() == "40 pairs"


def test_correlation_interval_resamples_targets():
    rng = np.random.default_rng(3)
    groups = np.repeat(list("abcdefgh"), 6)
    loss = rng.normal(size=48)
    acc = -2 * loss + rng.normal(size=48)
    out = loss_accuracy_correlation(loss, acc, n_boot=200, ci=0.9, seed=4, groups=groups)
    spearman = lambda rows: stats.spearmanr(loss[rows], acc[rows])[0]  # noqa: E731
    lo, hi = cluster_bootstrap_by_hand(np.arange(48), list(groups), 200, 0.9, 4, statistic=spearman)
    assert out["spearman"] == pytest.approx(stats.spearmanr(loss, acc)[0])
    assert (out["spearman_lo"], out["spearman_hi"]) == pytest.approx((lo, hi))
    assert (out["n_units"], out["n_pairs"]) == (8, 48)
    iv = bootstrap_statistic(lambda a, b: float(np.corrcoef(a, b)[0, 1]), loss, acc, groups, 200, 0.9, 4)
    assert iv.value == pytest.approx(stats.pearsonr(loss, acc)[0])
    assert iv.lo == pytest.approx(out["pearson_lo"]) and iv.hi == pytest.approx(out["pearson_hi"])


def test_paired_difference_agrees_with_scipy():
    rng = np.random.default_rng(4)
    groups = np.repeat(list("abcdefg"), [3, 5, 2, 4, 6, 1, 3])
    a = rng.uniform(40, 100, size=len(groups))
    b = a - rng.normal(5, 8, size=len(groups))
    d = paired_difference(a, b, groups, n_boot=400, seed=9)
    per_target = pd.Series(a - b).groupby(groups).mean()
    assert d.value == pytest.approx(np.mean(a - b))
    assert d.p_value == pytest.approx(stats.wilcoxon(per_target.to_numpy()).pvalue)
    lo, hi = cluster_bootstrap_by_hand(a - b, list(groups), 400, 0.95, 9)
    assert (d.lo, d.hi) == pytest.approx((lo, hi))
    assert (d.n_units, d.n_pairs) == (7, len(groups))
    assert d.text().startswith(f"{d.value:+.1f} [") and "7 targets" in d.text() and "p=" in d.text()
    by_pair = paired_difference(a, b, None, n_boot=400, seed=9)
    assert by_pair.p_value == pytest.approx(stats.wilcoxon(a - b).pvalue)
    # No difference anywhere: p 1; one target: no test.
    assert paired_difference(a, a, groups).p_value == 1.0
    assert math.isnan(paired_difference(a[:3], b[:3], groups[:3]).p_value)


def test_few_targets_are_flagged():
    assert few_units_warning(FEW_TARGETS) is None
    assert "6 target class sets" in few_units_warning(6)
    assert "no interval" in few_units_warning(1)


def _frame(acc_gen, acc_avg, c3):
    n = len(c3)
    rows = [{"pair": i, "method": m, "c3": c3[i], "acc_in": acc[i]}
            for i in range(n) for m, acc in (("generated", acc_gen), ("average", acc_avg))]
    return pd.DataFrame(rows)


def test_interval_summary_names_every_comparison():
    rng = np.random.default_rng(5)
    c3 = np.repeat(["0-1-2", "0-1-3", "1-2-3", "0-2-3"], 5)
    gen, avg = rng.uniform(50, 90, 20), rng.uniform(30, 60, 20)
    out = interval_summary(_frame(gen, avg, c3), 300, 0.95, 0, "target")
    d = paired_difference(gen, avg, c3, 300, 0.95, 0)
    assert out["n_targets"] == 4
    assert (out["vs_average/acc_in"], out["vs_average/acc_in_lo"], out["vs_average/acc_in_p"]) == pytest.approx(
        (d.value, d.lo, d.p_value))
    by_pair = interval_summary(_frame(gen, avg, c3), 300, 0.95, 0, "pair")
    plain = bootstrap_mean(gen, None, 300, 0.95, 0)
    assert (by_pair["generated/acc_in_lo"], by_pair["generated/acc_in_hi"]) == pytest.approx((plain.lo, plain.hi))
    with pytest.raises(ValueError, match="interval_unit"):
        EvalConfig(interval_unit="cluster")
