"""The results of a sweep, on a sweep folder written here in the formats `wsmerge.train.train`
and the sweep engine write: three tested trials, one training (history and checkpoint), one
that has written only its history, one not started, and the Optuna study. Every number the
tables show is checked against numpy/scipy computed here from the trials' files."""

import json

import numpy as np
import optuna
import pandas as pd
import pytest
import torch
import yaml
from scipy import stats

from sweeps.report import main as report
from wsmerge.evaluate import loss_accuracy_correlation
from wsmerge.files import write_json
from wsmerge.predictiveness import PairLosses, predictiveness, write_predictiveness_csv
from test_intervals import cluster_bootstrap_by_hand

from wsmerge.results import (
    COMPLETE,
    EMPTY,
    PARTIAL,
    collect,
    mix_string,
    param_importances,
    read_table,
    write_results,
)
from wsmerge.train import RunConfig

N_PAIRS = 8
TARGETS = ("0-1-2", "0-1-3", "0-2-3", "1-2-3")  # two test pairs each
# A data-free merge below the average, one using images above it, the ensemble (never fine-tuned).
METHODS = ("generated", "copy1", "copy2", "average", "task_arithmetic", "ties", "fisher", "ensemble", "target")
SECONDS = {"ties": 0.001, "fisher": 0.02}
PER_PAIR = ("acc_in", "acc_out", "acc_c1", "acc_c2", "forget_c1", "forget_c2", "agreement", "logit_spread")
EXACT = ("mse", "behavioral", "fisher", "contrastive")  # contrastive: skipped, as train skips it
SKIP_REASON = "does not compare generated with target weights (depends_on_pred=False)"
# The same test pairs in every trial: the baselines do not depend on the trial.
BASE_ACC = {"copy1": 45.0, "copy2": 47.0, "average": 50.0, "task_arithmetic": 44.0, "ties": 40.0, "fisher": 60.0,
            "ensemble": 70.0, "target": 90.0}
PNG = b"\x89PNG\r\n\x1a\n"
FILES = {
    "trials.parquet", "ranking.csv", "ranking.md", "ranking.png", "loss_predictiveness.csv",
    "loss_predictiveness.md", "loss_vs_accuracy.png", "learning_curves.png", "param_importances.png",
}

# trial id -> (mix, lr, the generated CNNs' mean test acc_in relative to the average's)
TESTED = {
    "t_00000": ({"mse": 1.0}, 1e-3, -2.0),
    "t_00001": ({"mse": 0.3, "behavioral": 0.8}, 2e-3, +15.0),
    "t_00002": ({"behavioral": 1.0, "contrastive": 0.05}, 5e-4, -20.0),
}


def _config(mix, lr, out):
    return RunConfig.from_dict(dict(
        zoo="zoo/tiny", out=str(out), losses=mix, lr=lr, loss_scaling="first", progress=False,
        model={"preset": "tiny", "d_model": 32, "d_ff": 64, "neck": 16},
        pairs={"overlap": [0, 1], "split_by": "target", "epoch_bins": [2], "max_pairs_per_target": 2},
        evaluation={"images_per_class": 20, "finetune_steps": 4, "finetune_eval_every": 2, "bootstrap": 20},
        epochs=3, batch_size=8, predictiveness_images=8,
    )).to_dict()


def _history(rng, mix, epochs, best):
    rows = []
    for epoch in range(1, epochs + 1):
        acc = 30 + 10 * epoch - (15 * (epoch - best) if epoch > best else 0) + rng.normal()
        rows.append({"epoch": epoch, "train/loss": 1 / epoch, "train/lr": 1e-3, "val/generated/acc_in": acc,
                     "val/average/acc_in": 52.0, "val/corr/spearman": -0.3, "val/loss/loss": 1 / epoch,
                     "val/generated/catchup_steps": np.nan,
                     "best_epoch": min(epoch, best)})
    return {"loss_scales": {n: 0.5 for n in mix}, "best_epoch": best, "history": rows}


def _test_pairs(rng, mix, shift):
    """test_pairs.csv of one trial: one row per pair × method, pair-major, as evaluate_merges
    and train write it (the exact/ columns on the generated rows only)."""
    rows = []
    for p in range(N_PAIRS):
        for m in METHODS:
            noise = rng.normal(0, 3) if m == "generated" else 0.0
            acc = BASE_ACC.get(m, BASE_ACC["average"] + shift) + (p - N_PAIRS / 2) + noise
            row = {"pair": p, "method": m, "activation": ("relu", "tanh")[p % 2], "c1": "0-1", "c2": "1-2",
                   "c3": TARGETS[p % len(TARGETS)], "pair_loss": 0.0, "parents_acc": 46.0}
            row.update({k: acc + rng.normal() for k in PER_PAIR})
            row["acc_in"] = acc
            row.update(collapsed=False, catchup_steps=2.0 if m != "target" and p % 3 else np.nan)
            if m not in ("target", "ensemble"):
                row.update(ft_acc_in=acc + 5, ft_acc_out=1.0, ft_drop=0.0, ft_stable=True)
            row["merge_seconds"] = SECONDS.get(m, np.nan)
            rows.append(row)
    frame = pd.DataFrame(rows)
    gen = frame["method"] == "generated"
    loss = 2.0 - frame.loc[gen, "acc_in"] / 100 + rng.normal(0, 0.05, N_PAIRS)
    frame["pair_loss"] = np.repeat(loss.to_numpy(), len(METHODS))
    frame["loss/loss"] = frame["pair_loss"]
    for n in mix:
        frame[f"loss/{n}"] = frame["pair_loss"] / len(mix)
    exact = pd.DataFrame({n: rng.normal(1, 0.3, N_PAIRS) for n in EXACT})
    exact["fisher"] = 5 - frame.loc[gen, "acc_in"].to_numpy() / 20  # a good proxy: pooled |rho| ranks it first
    exact["contrastive"] = np.nan
    exact["mix"] = loss.to_numpy()
    for n in exact:
        frame.loc[gen, f"exact/{n}"] = exact[n].to_numpy()
    return frame, exact


def _summary(frame):
    out = {"n_pairs": float(N_PAIRS)}
    for m, rows in frame.groupby("method", sort=False):
        for col in PER_PAIR + (("ft_acc_in",) if m != "target" else ()):
            out[f"{m}/{col}"] = float(rows[col].mean())
        out[f"{m}/catchup_steps"] = float(rows["catchup_steps"].mean())
        out[f"{m}/catchup_rate"] = float(rows["catchup_steps"].notna().mean())
    gen = frame[frame["method"] == "generated"]
    corr = loss_accuracy_correlation(gen["loss/loss"], gen["acc_in"], 20)
    out.update({f"corr/{k}": v for k, v in corr.items()})
    out.update({f"loss/{k.removeprefix('loss/')}": float(gen[k].mean()) for k in frame if k.startswith("loss/")})
    return out


def _write_tested(trials, trial_id, mix, lr, shift, rng):
    out = trials / trial_id
    out.mkdir(parents=True)
    history = _history(rng, mix, 3, 2)
    frame, exact = _test_pairs(rng, mix, shift)
    frame.to_csv(out / "test_pairs.csv", index=False)
    gen = frame[frame["method"] == "generated"]
    losses = PairLosses(exact, {n: "" for n in exact}, {"contrastive": SKIP_REASON},
                        {n: 0.01 for n in exact if n != "contrastive"})
    table = predictiveness(losses, gen["acc_in"], gen["ft_acc_in"], 20)
    write_predictiveness_csv(table, out / "loss_predictiveness.csv")
    result = {"config": _config(mix, lr, out), "test": _summary(frame), "epochs": 3, "best_epoch": 2,
              "stopped_early": False, "loss_scales": history["loss_scales"]}
    write_json(out / "result.json", result)
    write_json(out / "history.json", history)


def _write_study(folder, params_values):
    """The engine's study: named after the sweep folder, in its study.db, one trial per Tune
    trial with the LossSpace's parameters and the objective at the kept epoch."""
    storage = optuna.storages.RDBStorage(f"sqlite:///{folder / 'study.db'}")
    study = optuna.create_study(study_name=folder.name, storage=storage, direction="maximize")
    for trial_id, (mix, lr, value) in params_values.items():
        params = {"lr": lr}
        dists = {"lr": optuna.distributions.FloatDistribution(1e-4, 3e-3, log=True)}
        for n in ("mse", "behavioral", "contrastive"):
            params[f"loss.{n}"] = n in mix
            dists[f"loss.{n}"] = optuna.distributions.CategoricalDistribution([True, False])
            if n in mix:
                params[f"weight.{n}"] = mix[n]
                dists[f"weight.{n}"] = optuna.distributions.FloatDistribution(0.01, 1.0, log=True)
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, values=[value],
                                                  user_attrs={"tune_trial_id": trial_id}))


def _sweep(root, name="loss_combo_fake", tested=TESTED, study=True):
    folder = root / name
    trials = folder / "trials"
    trials.mkdir(parents=True)
    (folder / "sweep.yaml").write_text(yaml.safe_dump({
        "sweep": "loss_combo", "space": {"losses": ["mse", "behavioral", "contrastive"]},
        "objectives": [{"metric": "val/generated/acc_in", "mode": "max"}], "storage": None,
    }))
    rng = np.random.default_rng(1)
    for trial_id, (mix, lr, shift) in tested.items():
        _write_tested(trials, trial_id, mix, lr, shift, rng)
    # Training: its checkpoint holds its config; another has written only its history so far.
    mix = {"mse": 0.5, "behavioral": 0.5}
    (trials / "t_90003").mkdir()
    write_json(trials / "t_90003" / "history.json", _history(rng, mix, 2, 2))
    torch.save({"config": json.dumps(_config(mix, 1.5e-3, trials / "t_90003")), "model": {"w": torch.zeros(4)}},
               trials / "t_90003" / "checkpoint.pt")
    (trials / "t_90004").mkdir()
    write_json(trials / "t_90004" / "history.json", _history(rng, mix, 1, 1))
    (trials / "t_90005").mkdir()
    if study:
        _write_study(folder, {t: (mix, lr, 50 + shift) for t, (mix, lr, shift) in tested.items()})
    return folder


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    folder = _sweep(tmp_path_factory.mktemp("results"))
    return folder, write_results(folder)


def _generated(folder, trial_id):
    frame = pd.read_csv(folder / "trials" / trial_id / "test_pairs.csv")
    return frame[frame["method"] == "generated"]


# ---------------------------------------------------------------------------------- files


def test_every_results_file_is_written_and_every_plot_is_a_png(built):
    folder, paths = built
    assert set(paths) == FILES
    assert all(p == folder / name and p.is_file() for name, p in paths.items())
    for name in FILES:
        if name.endswith(".png"):
            data = (folder / name).read_bytes()
            assert data[:8] == PNG and len(data) > 10_000, name
    assert not list(folder.glob(".*.tmp")), "atomic writes leave no temp file"


def test_trials_table_has_one_row_per_trial_with_its_status_config_and_metrics(built):
    folder, _ = built
    table = pd.read_parquet(folder / "trials.parquet").set_index("trial")
    assert list(table.index) == ["t_00000", "t_00001", "t_00002", "t_90003", "t_90004", "t_90005"]
    assert list(table["status"]) == [COMPLETE] * 3 + [PARTIAL, PARTIAL, EMPTY]
    # The mix: a weight per loss of any trial, 0 when out of the trial's mix, NaN when unknown.
    assert table.loc["t_00001", ["loss/behavioral", "loss/mse", "loss/contrastive"]].tolist() == [0.8, 0.3, 0.0]
    assert table.loc["t_90003", ["loss/behavioral", "loss/mse", "loss/contrastive"]].tolist() == [0.5, 0.5, 0.0]
    assert table.loc[["t_90004", "t_90005"], "loss/mse"].isna().all()
    assert table.loc["t_90003", "config/lr"] == 1.5e-3  # from the training trial's checkpoint
    assert pd.isna(table.loc["t_90004", "config/lr"])
    assert table.loc["t_00002", "config/model/d_model"] == 32
    assert table.loc["t_00000", "config/pairs/overlap"] == "[0, 1]"
    assert "config/out" not in table
    assert table["epochs"].tolist()[:5] == [3, 3, 3, 2, 1] and pd.isna(table.loc["t_90005", "epochs"])
    assert table["best_epoch"].tolist()[:5] == [2, 2, 2, 2, 1]
    assert table["stopped_early"].tolist()[:3] == [False] * 3 and table["stopped_early"][3:].isna().all()
    for trial_id in TESTED:
        result = json.loads((folder / "trials" / trial_id / "result.json").read_text())
        history = json.loads((folder / "trials" / trial_id / "history.json").read_text())
        assert table.loc[trial_id, "test/generated/acc_in"] == result["test"]["generated/acc_in"]
        assert table.loc[trial_id, "test/corr/spearman_lo"] == result["test"]["corr/spearman_lo"]
        best = history["history"][history["best_epoch"] - 1]  # the best epoch, not the last
        assert table.loc[trial_id, "val/generated/acc_in"] == best["val/generated/acc_in"]
        assert table.loc[trial_id, "scale/mse" if "mse" in TESTED[trial_id][0] else "scale/behavioral"] == 0.5
    assert np.isfinite(table.loc["t_90003", "val/generated/acc_in"])
    # Strict JSON's null is NaN again.
    assert table["val/generated/catchup_steps"].isna().all() and table["test/target/catchup_steps"][:3].isna().all()
    assert table["test/target/catchup_steps"].dtype == float
    assert pd.isna(table.loc["t_90003", "test/generated/acc_in"])


# -------------------------------------------------------------------------------- ranking


def test_ranking_orders_trials_by_their_paired_difference_to_the_best_data_free_baseline(built):
    folder, _ = built
    rank = pd.read_csv(folder / "ranking.csv")
    assert rank["trial"].tolist() == ["t_00001", "t_00000", "t_00002"]
    assert rank["rank"].tolist() == [1, 2, 3]
    assert rank["mix"].tolist() == ["0.80·behavioral + 0.30·mse", "1.00·mse", "1.00·behavioral + 0.05·contrastive"]
    assert "config/lr" in rank and "config/epochs" not in rank  # only what differs between trials
    for _, row in rank.iterrows():
        frame = pd.read_csv(folder / "trials" / row["trial"] / "test_pairs.csv")
        by = {m: f.sort_values("pair") for m, f in frame.groupby("method")}
        gen, groups = by["generated"], list(by["generated"]["c3"])
        acc = gen["acc_in"].to_numpy()
        # Intervals resample the 4 target class sets, keeping both pairs of each.
        lo, hi = cluster_bootstrap_by_hand(acc, groups, 1000, 0.95, 0)
        assert (row["n_targets"], row["n_pairs"]) == (len(TARGETS), N_PAIRS)
        assert row["acc_in"] == pytest.approx(acc.mean())
        assert (row["acc_in_lo"], row["acc_in_hi"]) == pytest.approx((lo, hi))
        for m in BASE_ACC:
            assert row[m] == pytest.approx(by[m]["acc_in"].mean())
        assert row["best_baseline"] == "average"  # the best of copy1, copy2, average, task arithmetic here
        diff = acc - by["average"]["acc_in"].to_numpy()
        per_target = pd.Series(diff).groupby(groups).mean().to_numpy()
        assert row["vs_best"] == pytest.approx(diff.mean()) == pytest.approx(row["vs_average"])
        assert (row["vs_best_lo"], row["vs_best_hi"]) == pytest.approx(
            tuple(cluster_bootstrap_by_hand(diff, groups, 1000, 0.95, 0)))
        assert row["vs_best_p"] == pytest.approx(stats.wilcoxon(per_target).pvalue)
        assert row["beats_best"] == (row["vs_best_lo"] > 0)
        assert row["vs_target"] == pytest.approx((acc - by["target"]["acc_in"].to_numpy()).mean())
        assert row["forgetting"] == pytest.approx((gen["forget_c1"].mean() + gen["forget_c2"].mean()) / 2)
        assert row["ft_acc_in"] == pytest.approx(gen["ft_acc_in"].mean())
        ft_diff = gen["ft_acc_in"].to_numpy() - by["average"]["ft_acc_in"].to_numpy()
        assert row["ft_vs_average"] == pytest.approx(ft_diff.mean())
        assert row["catchup_rate"] == pytest.approx(gen["catchup_steps"].notna().mean())
        rho = lambda rows: stats.spearmanr(gen["loss/loss"].to_numpy()[rows], acc[rows])[0]  # noqa: E731
        assert row["spearman"] == pytest.approx(rho(np.arange(N_PAIRS)))
        lo, hi = np.nanpercentile(_draws_of(rho, groups), [2.5, 97.5])
        assert (row["spearman_lo"], row["spearman_hi"]) == pytest.approx((lo, hi))
    assert rank["beats_best"].tolist() == [True, False, False]


def _draws_of(statistic, groups, n_boot=1000, seed=0):
    """The statistic on every cluster resample, by hand (NaN kept, as a constant side gives)."""
    keys = list(dict.fromkeys(groups))
    draws = np.random.default_rng(seed).integers(0, len(keys), size=(n_boot, len(keys)))
    return [statistic([i for k in d for i, g in enumerate(groups) if g == keys[k]]) for d in draws]


def test_ranking_md_shows_paired_differences_with_their_unit(built):
    folder, _ = built
    text = (folder / "ranking.md").read_text()
    assert "6 trial(s): 3 tested (complete), 2 training" in text and "1 not started" in text
    assert "**test** pairs" in text and "*validation* epoch" in text
    assert "(4 targets, 8 pairs)" in text and "fewer than 10 units" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and "·" in line]
    assert [line.split(" | ")[-1].strip(" |") for line in table] == ["t_00001", "t_00000", "t_00002"]
    rank = pd.read_csv(folder / "ranking.csv")
    first = rank.iloc[0]
    shown = (f"+{first['vs_best']:.1f} [+{first['vs_best_lo']:.1f}, +{first['vs_best_hi']:.1f}] "
             f"p={first['vs_best_p']:.2g} (average)")
    assert "| 1 | 0.80·behavioral + 0.30·mse | 0.002 |" in table[0] and shown in table[0]
    assert "− best data-free [CI] p" in text and "− target [CI] p" in text
    # The baselines' own accuracy, once, before and after fine-tuning, and the top trial against each.
    average = next(line for line in text.splitlines() if line.startswith("| average |"))
    assert average.startswith(f"| average | 49.5 | {first['average_ft_acc_in']:.1f} | +{first['vs_average']:.1f} [")
    assert average.endswith("| – | data-free |")
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["ties"].endswith("| 0.001 | data-free |") and rows["fisher"].endswith("| 0.02 | uses training images |")
    assert rows["ensemble"].startswith("| ensemble | 69.5 | – |") and rows["ensemble"].endswith("two CNNs (predictions) |")
    assert "## Parameter importances" in text and "| lr |" in text
    for png in ("ranking.png", "loss_vs_accuracy.png", "learning_curves.png", "param_importances.png"):
        assert f"]({png})" in text


# --------------------------------------------------------------------- loss predictiveness


def test_loss_predictiveness_aggregates_medians_and_pools_test_pairs(built):
    folder, _ = built
    table = pd.read_csv(folder / "loss_predictiveness.csv", keep_default_na=False, na_values=[""]).set_index("loss")
    per_trial = pd.concat([pd.read_csv(folder / "trials" / t / "loss_predictiveness.csv") for t in TESTED])
    generated = pd.concat([_generated(folder, t) for t in TESTED])
    computed = [n for n in table.index if table.loc[n, "n_trials"] > 0]
    assert set(computed) == {"mse", "behavioral", "fisher", "mix"}
    for name in computed:
        rows = per_trial[per_trial["loss"] == name]
        for against in ("acc_in", "ft_acc_in"):
            values = rows[f"{against}/spearman"]
            assert table.loc[name, f"{against}/spearman_median"] == pytest.approx(np.median(values))
            assert table.loc[name, f"{against}/spearman_min"] == pytest.approx(values.min())
            assert table.loc[name, f"{against}/spearman_max"] == pytest.approx(values.max())
        rho = stats.spearmanr(generated[f"exact/{name}"], generated["acc_in"])[0]
        assert table.loc[name, "pooled/spearman"] == pytest.approx(rho)
        assert table.loc[name, "pooled/n_pairs"] == N_PAIRS * len(TESTED)
        assert table.loc[name, "pooled/n_units"] == len(TARGETS)  # resampled by target, across trials
        assert table.loc[name, "pooled/spearman_lo"] <= rho <= table.loc[name, "pooled/spearman_hi"]
    pooled = table.loc[computed, "pooled/spearman"].abs().tolist()
    assert pooled == sorted(pooled, reverse=True) and computed[0] == "fisher"
    assert table.index[-1] == "contrastive" and table.loc["contrastive", "n_trials"] == 0
    assert table.loc["contrastive", "skipped"] == SKIP_REASON and table.loc["contrastive", "skipped_trials"] == 3
    text = (folder / "loss_predictiveness.md").read_text()
    assert "## Skipped losses" in text and f"**contrastive** (in 3 of 3 trials): {SKIP_REASON}" in text
    assert "resamples the test **target class sets** (4 targets)" in text
    assert text.index("| fisher |") < text.index("| mse |")


# ---------------------------------------------------------------------------- importances


def test_param_importances_need_a_study_that_can_tell_parameters_apart(built, tmp_path):
    folder, _ = built
    importances, note = param_importances(collect(folder))
    values = importances["val/generated/acc_in"]
    assert {"lr", "loss.mse"} <= set(values) and sum(values.values()) == pytest.approx(1)
    assert "3 complete trials" in note
    one = _sweep(tmp_path, "one", {"t_00000": TESTED["t_00000"]})
    assert param_importances(collect(one)) == ({}, "the Optuna study has 1 complete trial(s); "
                                                   "importances need at least 2")
    same = _sweep(tmp_path, "same", {t: (TESTED["t_00000"][0], 1e-3, s) for t, (_, _, s) in TESTED.items()})
    assert "one value" in param_importances(collect(same))[1]
    none = _sweep(tmp_path, "none", study=False)
    assert "no Optuna study" in param_importances(collect(none))[1]
    paths = write_results(none, n_boot=20)
    assert "param_importances.png" not in paths
    assert "Not available: no Optuna study" in (none / "ranking.md").read_text()


# ------------------------------------------------------------------------ partial sweeps


def test_a_sweep_without_tested_trials_gets_its_files_and_says_so(tmp_path):
    folder = _sweep(tmp_path, tested={}, study=False)
    paths = write_results(folder, n_boot=20)
    assert set(paths) == FILES - {"ranking.png", "loss_vs_accuracy.png", "param_importances.png"}
    assert "No complete trial yet" in (folder / "ranking.md").read_text()
    assert pd.read_csv(folder / "ranking.csv").empty
    assert pd.read_parquet(folder / "trials.parquet")["status"].tolist() == [PARTIAL, PARTIAL, EMPTY]
    assert (folder / "learning_curves.png").read_bytes()[:8] == PNG

    bare = tmp_path / "bare"  # just prepared: sweep.yaml, no trial folder yet
    bare.mkdir()
    (bare / "sweep.yaml").write_text("sweep: loss_combo\n")
    paths = write_results(bare)
    assert set(paths) == {"trials.parquet", "ranking.csv", "ranking.md", "loss_predictiveness.csv",
                          "loss_predictiveness.md"}
    assert pd.read_parquet(bare / "trials.parquet").empty
    assert "0 trial(s)" in (bare / "ranking.md").read_text()


# ----------------------------------------------------------------------------------- units


def test_mix_string_puts_the_heaviest_term_first():
    assert mix_string({"mse": 0.1, "behavioral": 0.42, "fisher": 0.0}) == "0.42·behavioral + 0.10·mse"
    assert mix_string({"mse": 0.004}) == "0.004·mse"


# ------------------------------------------------------------------------------------ CLI


def test_report_prints_the_top_of_the_ranking(tmp_path, capsys):
    tested = {f"t_{i:05d}": ({"mse": 1.0, "behavioral": 0.1 * (i + 1)}, 1e-3, 5.0 * i) for i in range(11)}
    folder = _sweep(tmp_path, "many", tested, study=False)
    assert report(["many", "--results", str(tmp_path), "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "11 complete, 2 partial, 1 empty" in out and "top 10 of 11" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "·mse" in line]
    assert [r.split(" | ")[-1].strip(" |") for r in rows] == [f"t_{i:05d}" for i in range(10, 0, -1)]
    assert str(folder / "ranking.md") in out
    # A path works as well as a name.
    assert report([str(folder), "--bootstrap", "0", "--top", "3"]) == 0
    assert "top 3 of 11" in capsys.readouterr().out


def test_trial_ids_that_look_like_numbers_stay_names(tmp_path, capsys):
    # Ray's ids are eight hex digits; these two read as an int and as the float 1.2e+46.
    tested = {"20277932": ({"mse": 1.0}, 1e-3, 5.0), "12e45678": ({"behavioral": 1.0}, 1e-3, -5.0)}
    folder = _sweep(tmp_path, "numeric", tested, study=False)
    write_results(folder, n_boot=20)
    assert read_table(folder / "ranking.csv")["trial"].tolist() == ["20277932", "12e45678"]
    assert set(pd.read_parquet(folder / "trials.parquet")["trial"]) >= {"20277932", "12e45678"}
    assert report([str(folder), "--bootstrap", "20"]) == 0
    assert "| 12e45678 |" in capsys.readouterr().out


def test_report_on_a_missing_sweep_exits_2(tmp_path, capsys):
    assert report(["nothing", "--results-dir", str(tmp_path)]) == 2
    assert "no such sweep folder" in capsys.readouterr().err
    (tmp_path / "stray").mkdir()
    assert report(["stray", "--results", str(tmp_path)]) == 2
    assert "not a sweep folder" in capsys.readouterr().err
