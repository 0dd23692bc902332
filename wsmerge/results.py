"""The results of a sweep: the tables and plots a researcher compares, rebuilt from its folder.

    paths = write_results("results/loss_combo_tiny")   # or: python -m sweeps.report loss_combo_tiny

It reads every `trials/<trial id>/` of the sweep in whatever state it is (tested, still
training, not started) and writes beside them:

    trials.parquet              one row per trial: status, config, epochs, test/ and val/ metrics
    ranking.csv, ranking.md     the tested trials ranked by their generated CNNs' test acc_in
                                minus the best data-free baseline's on the same pairs, with
                                intervals resampling test target class sets
    ranking.png                 those paired differences with their intervals
    repeats.csv                 the best trials' spread across seeds, when the sweep repeated them
    loss_predictiveness.csv/.md each loss's correlation with accuracy, over trials and pooled
    loss_vs_accuracy.png        the Transformer's loss against acc_in per test pair, top 3
    learning_curves.png         validation acc_in per epoch, top 5 trials
    param_importances.png       Optuna's parameter importances, when the study can tell them

The ranking is on test pairs and feeds no choice back: inside a trial the tested model is
the one of its best validation epoch, and the sweep's searcher sees validation metrics only.
"""

from __future__ import annotations

import json
import math
import textwrap
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
import torch
import yaml
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from wsmerge.evaluate import METHODS, correlation, loss_accuracy_correlation
from wsmerge.merges import ENSEMBLE, MERGES
from wsmerge.intervals import bootstrap_mean, bootstrap_statistic, few_units_warning, paired_difference, unit_text
from wsmerge.files import atomic_write
from wsmerge.seeds import SEEDS_FILE, spread
from wsmerge.train import CHECKPOINT, PREDICTIVENESS, SELECT

__all__ = [
    "BASELINES",
    "COMPLETE",
    "EMPTY",
    "PARTIAL",
    "SweepNotFound",
    "SweepTrials",
    "DATA_FREE",
    "Trial",
    "collect",
    "loss_predictiveness",
    "mix_string",
    "param_importances",
    "ranking",
    "ranking_markdown",
    "ranking_summary",
    "read_table",
    "trials_table",
    "write_results",
]

# The sweep folder's layout, as sweeps/engine.py writes it; spelt out here because the
# engine imports Ray, which reading results must not need.
SWEEP_FILE = "sweep.yaml"
STUDY_FILE = "study.db"
TRIALS = "trials"
REPEATS = "repeats"  # repeats/<trial id>/: the top trials trained again with other seeds
BASELINE_CACHE = "baselines"  # the baselines' evaluations the runs share (RunConfig.baseline_cache)

COMPLETE, PARTIAL, EMPTY = "complete", "partial", "empty"
BASELINES: tuple[str, ...] = tuple(m for m in METHODS if m != "generated")
# The merges that need neither data nor training: a mix must beat the best of them to matter.
DATA_FREE: tuple[str, ...] = ("copy1", "copy2", "average", "task_arithmetic", *(m for m in MERGES if MERGES[m].data_free))
# The baselines whose paired differences get a column of ranking.md (ranking.csv has them all).
_MD_VS: tuple[str, ...] = ("copy1", "copy2", "average", "task_arithmetic", "target")
# Run settings the sweep sets per trial (where it writes, how chatty, how many epochs a
# trial the scheduler stopped ran before its test, where the baselines are kept), not
# hyperparameters.
_NOT_SETTINGS = ("out", "progress", "epochs", "baseline_cache")
_META = ("trial", "status", "epochs", "best_epoch", "stopped_early")
_RANKING_BASE = (
    "rank", "trial", "mix", "acc_in", "acc_in_lo", "acc_in_hi", "best_baseline", "vs_best", "vs_best_lo",
    "vs_best_hi", "vs_best_p", "beats_best", "forgetting",
    "spearman", "spearman_lo", "spearman_hi",
    *(f"vs_{b}{s}" for b in BASELINES for s in ("", "_lo", "_hi", "_p")), *BASELINES,
    "n_targets", "n_pairs", "best_epoch", "epochs", "stopped_early",
)
_RANKING_FT = ("ft_acc_in", "ft_acc_in_lo", "ft_acc_in_hi", "ft_vs_average", "ft_vs_average_lo", "ft_vs_average_hi",
               "ft_vs_average_p", "catchup_steps", "catchup_rate", "average_ft_acc_in")
# Each baseline's fine-tuned acc_in and seconds per pair (the merges'), for the baselines table.
_RANKING_METHODS = (*(f"{b}_ft_acc_in" for b in BASELINES), *(f"{b}_seconds" for b in BASELINES))
_PLOT_RANKED = 30  # rows of ranking.png; beyond that the labels no longer fit a page
_PLOT_SCATTER = 3
_PLOT_CURVES = 5
_DPI = 120


class SweepNotFound(FileNotFoundError):
    """The folder is missing or holds no sweep."""


# --------------------------------------------------------------------------------- reading


@dataclass
class Trial:
    """One trial's run directory as it is now. config: its RunConfig as a dict (from
    result.json, else from checkpoint.pt), None when neither is there yet."""

    id: str
    status: str
    config: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    history: dict[str, Any] | None = None  # history.json: loss_scales, best_epoch, history
    pairs: pd.DataFrame | None = None  # test_pairs.csv
    predictiveness: pd.DataFrame | None = None  # loss_predictiveness.csv

    @property
    def generated(self) -> pd.DataFrame:
        """The generated CNNs' rows of test_pairs.csv, one per test pair."""
        return self.pairs[self.pairs["method"] == "generated"]

    @property
    def mix(self) -> str:
        return mix_string(self.config.get("losses", {})) if self.config else ""


@dataclass
class SweepTrials:
    folder: Path
    name: str  # the folder's name: the engine's Optuna study name
    config: dict[str, Any]  # sweep.yaml; empty when absent
    trials: list[Trial] = field(default_factory=list)

    @property
    def complete(self) -> list[Trial]:
        return [t for t in self.trials if t.status == COMPLETE]

    def get(self, trial_id: str) -> Trial:
        return next(t for t in self.trials if t.id == trial_id)

    @cached_property
    def table(self) -> pd.DataFrame:
        return trials_table(self)


def collect(sweep_dir: str | Path) -> SweepTrials:
    """Every trial of the sweep in `sweep_dir`; SweepNotFound when it holds no sweep."""
    folder = Path(sweep_dir)
    if not folder.is_dir():
        raise SweepNotFound(f"{folder}: no such sweep folder")
    if not (folder / SWEEP_FILE).is_file() and not (folder / TRIALS).is_dir():
        raise SweepNotFound(f"{folder}: not a sweep folder (neither {SWEEP_FILE} nor {TRIALS}/ in it)")
    config = yaml.safe_load((folder / SWEEP_FILE).read_text()) if (folder / SWEEP_FILE).is_file() else {}
    trials_dir = folder / TRIALS
    # Hidden entries are the leftovers of atomic writes, not trials.
    dirs = [p for p in trials_dir.iterdir() if p.is_dir() and not p.name.startswith(".")] if trials_dir.is_dir() else []
    dirs.sort()
    return SweepTrials(folder, folder.resolve().name, config or {}, [_read_trial(d) for d in dirs])


def _metrics(d: Mapping[str, Any]) -> dict[str, Any]:
    # train writes strict JSON, where a NaN metric (no pair caught up, a constant side of a
    # correlation) is null.
    return {k: math.nan if v is None else v for k, v in d.items()}


def _read_trial(d: Path) -> Trial:
    history = json.loads((d / "history.json").read_text()) if (d / "history.json").is_file() else None
    if history is not None:
        history["history"] = [_metrics(h) for h in history["history"]]
    if (d / "result.json").is_file():
        # train writes result.json last: every other file of a tested run is there by then.
        result = json.loads((d / "result.json").read_text())
        result["test"] = _metrics(result["test"])
        pairs = pd.read_csv(d / "test_pairs.csv")
        table = pd.read_csv(d / PREDICTIVENESS) if (d / PREDICTIVENESS).is_file() else None
        if table is not None:
            table["skipped"] = table["skipped"].fillna("")
        return Trial(d.name, COMPLETE, result["config"], result, history, pairs, table)
    if history is not None:
        return Trial(d.name, PARTIAL, _checkpoint_config(d / CHECKPOINT), history=history)
    return Trial(d.name, EMPTY)


def _checkpoint_config(path: Path) -> dict[str, Any] | None:
    """The run config saved in a training checkpoint; mapped, not read, since the model and
    optimizer states in it are all the rest of the file."""
    if not path.is_file():
        return None
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return json.loads(saved["config"])
    except Exception:  # a checkpoint of another format only costs this trial's config columns
        return None


# ---------------------------------------------------------------------------- trials table


def _flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, Mapping):
            out.update(_flatten(v, f"{prefix}{k}/"))
        else:
            # Lists as JSON text: a Parquet column holds one type, and `[0, 1]` reads as one.
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, (list, tuple)) else v
    return out


def trials_table(sweep: SweepTrials) -> pd.DataFrame:
    """One row per trial (the rows of trials.parquet): `trial`, `status`, `epochs` run,
    `best_epoch`, `stopped_early` (NA until tested); the mix as `loss/<name>` weights (0 when
    out of it); every other run setting as `config/<key>/<subkey>`; each term's divisor
    `scale/<name>`; the test summary as `test/<method>/<metric>`; and the best epoch's
    validation metrics `val/<method>/<metric>`. Columns of an unknown config are NaN."""
    names = sorted({n for t in sweep.trials if t.config for n in t.config.get("losses", {})})
    rows = []
    for t in sweep.trials:
        row: dict[str, Any] = {"trial": t.id, "status": t.status}
        if t.history is not None:
            row["epochs"], row["best_epoch"] = len(t.history["history"]), t.history["best_epoch"]
            row.update({f"scale/{k}": v for k, v in t.history["loss_scales"].items()})
            best = next((h for h in t.history["history"] if h["epoch"] == t.history["best_epoch"]), {})
            row.update({k: v for k, v in best.items() if k.startswith("val/")})
        if t.result is not None:
            row.update(epochs=t.result["epochs"], best_epoch=t.result["best_epoch"])
            row["stopped_early"] = t.result["stopped_early"]
            row.update({f"scale/{k}": v for k, v in t.result["loss_scales"].items()})
            row.update({f"test/{k}": v for k, v in t.result["test"].items()})
        if t.config is not None:
            mix = t.config.get("losses", {})
            row.update({f"loss/{n}": float(mix.get(n, 0.0)) for n in names})
            settings = {k: v for k, v in t.config.items() if k not in ("losses", *_NOT_SETTINGS)}
            row.update({f"config/{k}": v for k, v in _flatten(settings).items()})
        rows.append(row)
    table = pd.DataFrame(rows, columns=None if rows else list(_META))
    for col in _META:
        if col not in table:
            table[col] = pd.NA
    groups = ("loss/", "config/", "scale/", "test/", "val/")
    ordered = list(_META) + [c for g in groups for c in sorted(c for c in table if c.startswith(g))]
    table = table[ordered]
    table["epochs"] = table["epochs"].astype("Int64")
    table["best_epoch"] = table["best_epoch"].astype("Int64")
    table["stopped_early"] = table["stopped_early"].astype("boolean")
    return table


# --------------------------------------------------------------------------------- ranking


def _weight(w: float) -> str:
    return f"{w:.2f}" if w >= 0.01 else f"{w:.1g}"


def mix_string(losses: Mapping[str, float]) -> str:
    """A loss mix as "0.42·behavioral + 0.10·mse", heaviest term first."""
    terms = sorted((-w, n) for n, w in losses.items() if w > 0)
    return " + ".join(f"{_weight(-w)}·{n}" for w, n in terms)


def _searched(table: pd.DataFrame) -> list[str]:
    """The config columns whose value differs between tested trials: what the sweep searched
    besides the mix (an hparams sweep's model and optimiser settings, a mix sweep's lr)."""
    done = table[table["status"] == COMPLETE]
    return [c for c in table if c.startswith("config/") and done[c].astype(str).nunique() > 1]


def _diff(row: dict[str, Any], key: str, d) -> None:
    row.update({key: d.value, f"{key}_lo": d.lo, f"{key}_hi": d.hi, f"{key}_p": d.p_value})


def ranking(sweep: SweepTrials, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """The tested trials, best first, by how far their generated CNNs' mean test acc_in lies
    above the best data-free baseline on the same pairs; one row each (the rows of
    ranking.csv). Every interval resamples test **target class sets** (all pairs of a drawn
    target; `wsmerge.intervals`), over `n_targets` targets holding `n_pairs` pairs.

    `acc_in`, `acc_in_lo`, `acc_in_hi`: the generated CNNs' mean and interval;
    `best_baseline`: the DATA_FREE method with the highest mean acc_in on these pairs;
    `vs_best*`: generated − it, paired per pair (mean, interval, Wilcoxon p over per-target
    means); `beats_best`: the interval's lower bound above 0. `vs_<b>*`: the same against
    every baseline b; BASELINES: their mean acc_in. `forgetting`: mean of forget_c1 and
    forget_c2; `spearman*`: the Transformer loss's rank correlation with acc_in over test
    pairs. With fine-tuning also `ft_acc_in*`, `ft_vs_average*` (against the average baseline
    fine-tuned alike), `catchup_steps` (mean over the pairs that caught up), `catchup_rate`
    and `average_ft_acc_in`. The searched settings follow `mix`."""
    searched = _searched(sweep.table)
    config = sweep.table.set_index("trial")[searched]
    rows = []
    for t in sweep.complete:
        by = {m: r.sort_values("pair") for m, r in t.pairs.groupby("method", sort=False)}
        gen = by["generated"]
        groups = gen["c3"]
        acc = gen["acc_in"].to_numpy(float)
        iv = bootstrap_mean(acc, groups, n_boot, ci, seed)
        row: dict[str, Any] = {"trial": t.id, "mix": t.mix, **config.loc[t.id].to_dict()}
        row.update(acc_in=iv.value, acc_in_lo=iv.lo, acc_in_hi=iv.hi, n_targets=iv.n_units, n_pairs=iv.n_pairs)
        row.update({m: by[m]["acc_in"].mean() if m in by else math.nan for m in BASELINES})
        for b in BASELINES:
            if b in by:
                _diff(row, f"vs_{b}", paired_difference(acc, by[b]["acc_in"].to_numpy(float), groups, n_boot, ci, seed))
        free = {b: row[b] for b in DATA_FREE if np.isfinite(row[b])}
        best = max(free, key=free.get)
        row["best_baseline"] = best
        row.update({k.replace(f"vs_{best}", "vs_best"): v for k, v in row.items() if k.startswith(f"vs_{best}")})
        # NaN compares False: a trial without an interval never counts as beating the baseline.
        row["beats_best"] = bool(row["vs_best_lo"] > 0)
        row["forgetting"] = (gen["forget_c1"].mean() + gen["forget_c2"].mean()) / 2
        rho = bootstrap_statistic(lambda x, y: correlation("spearman", x, y), gen["loss/loss"], acc, groups, n_boot, ci, seed)
        row.update(spearman=rho.value, spearman_lo=rho.lo, spearman_hi=rho.hi)
        if "ft_acc_in" in gen and gen["ft_acc_in"].notna().any():
            ft = gen["ft_acc_in"].to_numpy(float)
            ft_iv = bootstrap_mean(ft, groups, n_boot, ci, seed)
            row.update(ft_acc_in=ft_iv.value, ft_acc_in_lo=ft_iv.lo, ft_acc_in_hi=ft_iv.hi)
            average = by["average"]["ft_acc_in"].to_numpy(float)
            _diff(row, "ft_vs_average", paired_difference(ft, average, groups, n_boot, ci, seed))
            # average_ft_acc_in comes with every baseline's fine-tuned acc_in, below.
            row.update(catchup_steps=gen["catchup_steps"].mean(), catchup_rate=gen["catchup_steps"].notna().mean())
        for b, rows_b in by.items():
            if b in BASELINES and "ft_acc_in" in rows_b and rows_b["ft_acc_in"].notna().any():
                row[f"{b}_ft_acc_in"] = rows_b["ft_acc_in"].mean()
            if b in MERGES and "merge_seconds" in rows_b and rows_b["merge_seconds"].notna().any():
                row[f"{b}_seconds"] = rows_b["merge_seconds"].mean()
        row.update(best_epoch=t.result["best_epoch"], epochs=t.result["epochs"])
        row["stopped_early"] = t.result["stopped_early"]
        rows.append(row)
    ft = [c for c in _RANKING_FT if any(c in row for row in rows)]
    methods = [c for c in _RANKING_METHODS if c not in _RANKING_FT and any(c in row for row in rows)]
    order = [*_RANKING_BASE[:3], *searched, *_RANKING_BASE[3:13], *ft, *_RANKING_BASE[13:], *methods]
    if not rows:
        return pd.DataFrame(columns=order)
    table = pd.DataFrame(rows)
    table = table.sort_values(["vs_best", "vs_best_lo", "trial"], ascending=[False, False, True], na_position="last")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reindex(columns=order).reset_index(drop=True)


def repeats(sweep: SweepTrials, rank: pd.DataFrame) -> pd.DataFrame:
    """The trials the sweep repeated with other seeds (repeats/<id>/seeds.json), one row each:
    `seeds` (the trial's own and the repeats'), and for the test acc_in of the generated CNNs
    and its difference to the trial's best data-free baseline the mean, std, min and max over
    those runs (`acc_in/mean`, ..., `vs_best/max`), beside the trial's within-run interval."""
    rows = []
    ranked = rank.set_index("trial") if len(rank) else rank
    for path in sorted((sweep.folder / REPEATS).glob(f"*/{SEEDS_FILE}")):
        trial_id = path.parent.name
        if trial_id not in ranked.index:
            continue
        t, saved = sweep.get(trial_id), json.loads(path.read_text())
        best = ranked.loc[trial_id, "best_baseline"]
        tests = [t.result["test"], *(v["test"] for v in saved["seeds"].values())]
        metrics = {"acc_in": "generated/acc_in", "vs_best": f"vs_{best}/acc_in"}
        row: dict[str, Any] = {
            "trial": trial_id, "mix": t.mix, "best_baseline": best,
            "seeds": " ".join(map(str, [t.config.get("seed", 0), *saved["seeds"]])),
            "acc_in_lo": ranked.loc[trial_id, "acc_in_lo"], "acc_in_hi": ranked.loc[trial_id, "acc_in_hi"],
        }
        for name, key in metrics.items():
            values = spread(tests, (key,)).get(key, {})
            row.update({f"{name}/{k}": values.get(k, math.nan) for k in ("mean", "std", "min", "max", "n")})
        rows.append(row)
    return pd.DataFrame(rows)


def _repeats_md(table: pd.DataFrame) -> list[str]:
    if table.empty:
        return []
    lines = ["## Across seeds", "",
             "The best trials by validation acc_in, trained again with other seeds (same config, other "
             "initialisation and batch order; repeats/<trial>/): mean ± standard deviation [min, max] of "
             "their test figures over the runs, beside one run's interval by target.", ""]
    rows = []
    for _, r in table.iterrows():
        def spread_text(name: str, spec: str) -> str:
            return (f"{r[f'{name}/mean']:{spec}} ± {r[f'{name}/std']:.1f} "
                    f"[{r[f'{name}/min']:{spec}}, {r[f'{name}/max']:{spec}}]")
        rows.append([str(r["trial"]), r["mix"], r["seeds"], spread_text("acc_in", ".1f"),
                     f"[{_num(r['acc_in_lo'])}, {_num(r['acc_in_hi'])}]",
                     f"{spread_text('vs_best', '+.1f')} ({_short(r['best_baseline'])})"])
    header = ["trial", "mix", "seeds", "acc_in across seeds", "one run's acc_in interval", "− best data-free across seeds"]
    return lines + [_md_table(header, rows), ""]


# --------------------------------------------------------------------- loss predictiveness


def loss_predictiveness(sweep: SweepTrials, n_boot: int = 1000, ci: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """Each loss of the tested trials' loss_predictiveness.csv, one row each (the rows of the
    aggregated loss_predictiveness.csv): `n_trials` in which it was computed; the median, min
    and max over them of its Spearman correlation with acc_in (`acc_in/spearman_median`, ...)
    and, with fine-tuning, with ft_acc_in; `pooled/...`: `loss_accuracy_correlation` of its
    `exact/<loss>` values against generated acc_in over every (trial, test pair) together,
    `pooled/n_pairs` of them, resampled by target class set (`pooled/n_units` targets);
    `skipped`: the reason where some trial skipped it, in `skipped_trials` trials. Sorted by |pooled Spearman|, the losses no trial computed last."""
    tables = [t.predictiveness.assign(trial=t.id) for t in sweep.complete if t.predictiveness is not None]
    if not tables:
        return pd.DataFrame(columns=["loss", "n_trials", "pooled/n_pairs", "skipped", "skipped_trials"])
    per_trial = pd.concat(tables, ignore_index=True)
    generated = pd.concat([t.generated for t in sweep.complete], ignore_index=True)
    against = [a for a in ("acc_in", "ft_acc_in") if f"{a}/spearman" in per_trial]
    rows = []
    for name, rows_of in per_trial.groupby("loss", sort=False):
        computed = rows_of[rows_of["skipped"] == ""]
        skipped = rows_of[rows_of["skipped"] != ""]
        row: dict[str, Any] = {"loss": name, "n_trials": len(computed)}
        for a in against:
            values = computed[f"{a}/spearman"].to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            stats = (np.median(values), values.min(), values.max()) if len(values) else (math.nan,) * 3
            row.update(zip((f"{a}/spearman_median", f"{a}/spearman_min", f"{a}/spearman_max"), stats))
        column = f"exact/{name}"
        loss = generated[column] if column in generated else pd.Series(math.nan, index=generated.index)
        pooled = loss_accuracy_correlation(loss.to_numpy(dtype=float), generated["acc_in"], n_boot, ci, seed,
                                           generated["c3"])
        row.update({f"pooled/{k}": v for k, v in pooled.items()})
        row["pooled/n_pairs"], row["pooled/n_units"] = int(pooled["n_pairs"]), int(pooled["n_units"])
        row["skipped"] = skipped["skipped"].iloc[0] if len(skipped) else ""
        row["skipped_trials"] = len(skipped)
        rows.append(row)
    table = pd.DataFrame(rows)
    key = table["pooled/spearman"].abs().fillna(-1) - 2 * (table["n_trials"] == 0)
    return table.iloc[np.argsort(-key.to_numpy(), kind="stable")].reset_index(drop=True)


# ------------------------------------------------------------------------ importances


def _load_study(sweep: SweepTrials) -> tuple[optuna.Study | None, str]:
    url = sweep.config.get("storage")
    where = "the storage sweep.yaml names"  # a database URL may hold a password: never echoed
    if not url:
        path = sweep.folder / STUDY_FILE
        if not path.is_file():
            return None, f"no Optuna study: {STUDY_FILE} is not in the sweep folder"
        url, where = f"sqlite:///{path.resolve()}", STUDY_FILE
    try:
        return optuna.load_study(study_name=sweep.name, storage=optuna.storages.RDBStorage(url)), ""
    except Exception as e:  # the sweep may be writing the database; the rest of the results need none of it
        return None, f"the Optuna study {sweep.name!r} could not be read from {where} ({type(e).__name__})"


def _objective_names(study: optuna.Study, sweep: SweepTrials) -> list[str]:
    if study.metric_names:
        return list(study.metric_names)
    objectives = sweep.config.get("objectives") or []
    if len(objectives) == len(study.directions):
        return [o["metric"] for o in objectives]
    return [f"objective {i + 1}" for i in range(len(study.directions))]


def param_importances(
    sweep: SweepTrials, study: optuna.Study | None = None
) -> tuple[dict[str, dict[str, float]], str]:
    """Optuna's parameter importances (its default, PED-ANOVA) of `study` (None: the sweep's
    own), per objective, each normalised to sum 1, and a sentence saying what they rest on,
    or why there are none (no study, fewer than 2 complete trials, no parameter that varied,
    or trials that do not tell the parameters apart)."""
    if study is None:
        study, why = _load_study(sweep)
        if study is None:
            return {}, why
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if len(done) < 2:
        return {}, f"the Optuna study has {len(done)} complete trial(s); importances need at least 2"
    params = {p for t in done for p in t.params}
    if not any(len({repr(t.params.get(p)) for t in done}) > 1 for p in params):
        return {}, "every parameter took one value in the complete trials: nothing to tell apart"
    out = {}
    for i, (name, direction) in enumerate(zip(_objective_names(study, sweep), study.directions)):
        # PED-ANOVA rates what it takes to reach low target values.
        sign = -1.0 if direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its few-trials warnings: the note says how many there are
            raw = optuna.importance.get_param_importances(
                study, target=lambda t, i=i, sign=sign: sign * t.values[i], normalize=False
            )
        total = sum(raw.values())
        if total > 0:
            out[name] = {p: v / total for p, v in raw.items()}
    if not out:
        return {}, f"the {len(done)} complete trials do not tell the parameters apart (every importance is 0)"
    return out, f"PED-ANOVA (Optuna's default) over the {len(done)} complete trials of the Optuna study"


# -------------------------------------------------------------------------------- plots


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    return atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=_DPI))


def _fmt(v: Any) -> str:
    return f"{v:.3g}" if isinstance(v, float) else str(v)


def _describe(row: Mapping[str, Any], searched: Sequence[str], with_mix: bool, width: int) -> str:
    """A trial's label: its mix (when mixes differ) and its searched settings, wrapped."""
    parts = [row["mix"]] if with_mix else []
    settings = ", ".join(f"{c.removeprefix('config/')} {_fmt(row[c])}" for c in searched)
    parts += [settings] if settings else []
    text = "; ".join(parts) or row["mix"]
    return "\n".join(textwrap.wrap(text, width, break_on_hyphens=False))


def _labels(rank: pd.DataFrame, width: int) -> list[str]:
    searched = [c for c in rank if c.startswith("config/")]
    with_mix = rank["mix"].nunique() > 1 or not searched
    return [f"#{r['rank']} " + _describe(r, searched, with_mix, width) for _, r in rank.iterrows()]


def _plot_ranking(rank: pd.DataFrame, name: str, ci: float, path: Path) -> Path:
    shown = rank.head(_PLOT_RANKED)
    labels = _labels(shown, 60)
    heights = np.array([label.count("\n") + 1 for label in labels])
    fig = _figure(11, 1.8 + 0.2 * heights.sum() + 0.15 * len(shown))
    ax = fig.add_subplot()
    # Rank 1 on top, each row as tall as its label.
    y = -(np.cumsum(heights) - heights / 2)
    kinds = ((True, "tab:green", "interval above 0: beats every data-free merge"),
             (False, "tab:blue", "interval reaches 0 or below"))
    for beats, color, label in kinds:
        sel = (shown["beats_best"] == beats).to_numpy()
        if sel.any():
            rows = shown[sel]
            err = np.vstack([rows["vs_best"] - rows["vs_best_lo"], rows["vs_best_hi"] - rows["vs_best"]])
            ax.errorbar(rows["vs_best"], y[sel], xerr=np.nan_to_num(err), fmt="o", color=color, capsize=3, label=label)
    ax.axvline(0, color="black", linestyle="--")
    # The target CNN3 on this axis: how far the ceiling lies above the best data-free baseline.
    ceiling = np.nanmedian([r["target"] - r[r["best_baseline"]] for _, r in shown.iterrows()])
    if np.isfinite(ceiling):
        ax.axvline(ceiling, color="tab:red", linestyle="-", label=f"target CNN3 (the ceiling), {ceiling:+.1f}")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(-heights.sum() - 0.5, 0.5)
    best = shown["best_baseline"].mode()
    units = unit_text(int(shown["n_targets"].median()), int(shown["n_pairs"].median()))
    ax.set_xlabel(f"test acc_in: generated − best data-free baseline ({best.iloc[0] if len(best) else '?'}), "
                  f"points, paired\n{ci:.0%} bootstrap interval resampling targets ({units})")
    more = f" (top {len(shown)} of {len(rank)})" if len(rank) > len(shown) else ""
    ax.set_title(f"{name}: trials ranked on test pairs{more}")
    ax.grid(axis="x", alpha=0.3)
    fig.legend(loc="outside lower center", ncols=3, fontsize=8)
    return _save(fig, path)


def _plot_loss_vs_accuracy(rank: pd.DataFrame, sweep: SweepTrials, path: Path) -> Path:
    shown = rank.head(_PLOT_SCATTER)
    labels = _labels(shown, 40)
    fig = _figure(4.2 * len(shown) + 0.8, 4.8)
    axes = fig.subplots(1, len(shown), sharey=True, squeeze=False)[0]
    activations = sorted({a for r in shown["trial"] for a in sweep.get(r).generated["activation"]})
    colors = dict(zip(activations, ("tab:blue", "tab:orange", "tab:green", "tab:red")))
    for ax, (_, row), label in zip(axes, shown.iterrows(), labels):
        gen = sweep.get(row["trial"]).generated
        for act, rows in gen.groupby("activation"):
            ax.scatter(rows["loss/loss"], rows["acc_in"], s=18, alpha=0.8, color=colors.get(act), label=act)
        spearman = _interval(row["spearman"], row["spearman_lo"], row["spearman_hi"], "+.2f")
        ax.set_title(f"{label}\nSpearman {spearman}", fontsize=8)
        ax.set_xlabel("Transformer loss (the trained mix, scaled)")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test acc_in of the generated CNN (%)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncols=len(names), fontsize=8, title="activation")
    fig.suptitle("Does the Transformer's loss predict accuracy? One point per test pair, top 3 trials")
    return _save(fig, path)


def _plot_learning_curves(order: list[str], rank: pd.DataFrame, sweep: SweepTrials, path: Path) -> Path:
    fig = _figure(10, 6.5)
    ax = fig.add_subplot()
    labels = dict(zip(rank["trial"], _labels(rank, 70)))
    for i, trial_id in enumerate(order):
        t = sweep.get(trial_id)
        epochs = [h["epoch"] for h in t.history["history"]]
        values = [h.get(SELECT, math.nan) for h in t.history["history"]]
        label = labels.get(trial_id, f"(not tested yet) {t.mix or 'mix unknown'}") + f"  [{trial_id}]"
        (line,) = ax.plot(epochs, values, marker=".", label=label)
        best = t.history["best_epoch"]
        if best in epochs:
            ax.plot(best, values[epochs.index(best)], marker="*", markersize=14, color=line.get_color(),
                    markeredgecolor="black", linestyle="none",
                    label="best epoch (the tested model)" if i == 0 else None)
    average = sweep.get(order[0]).history["history"][-1].get("val/average/acc_in")
    if average is not None:
        ax.axhline(average, color="black", linestyle="--", label=f"average baseline {average:.1f}%")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation acc_in of the generated CNNs (%)")
    ax.set_title(f"{sweep.name}: validation acc_in per epoch, top {len(order)} trials")
    ax.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=1, fontsize=8)
    return _save(fig, path)


def _by_importance(importances: dict[str, dict[str, float]]) -> list[str]:
    """The parameters, the most important (for any objective) first."""
    params = {p for v in importances.values() for p in v}
    return sorted(params, key=lambda p: -max(v.get(p, 0.0) for v in importances.values()))


def _plot_importances(importances: dict[str, dict[str, float]], note: str, name: str, path: Path) -> Path:
    params = _by_importance(importances)[::-1]  # barh draws bottom up: the most important on top
    fig = _figure(9, 1.8 + 0.35 * len(params) * len(importances))
    ax = fig.add_subplot()
    height = 0.8 / len(importances)
    for i, (objective, values) in enumerate(importances.items()):
        y = np.arange(len(params)) + (i - (len(importances) - 1) / 2) * height
        ax.barh(y, [values.get(p, 0.0) for p in params], height=height, label=objective)
    ax.set_yticks(np.arange(len(params)), params)
    ax.set_xlabel("importance (share of the objective's variation, sums to 1)")
    ax.set_title(f"{name}: parameter importances\n" + textwrap.fill(note, 90), fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.legend(title="objective", fontsize=8)
    return _save(fig, path)


# ------------------------------------------------------------------------------ markdown


def _num(v: Any, spec: str = ".1f") -> str:
    return f"{v:{spec}}" if isinstance(v, (int, float, np.number)) and np.isfinite(v) else "–"


def _interval(v: Any, lo: Any, hi: Any, spec: str) -> str:
    if not (isinstance(lo, (int, float, np.number)) and np.isfinite(lo)):
        return _num(v, spec)
    return f"{_num(v, spec)} [{_num(lo, spec)}, {_num(hi, spec)}]"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _short(method: str) -> str:
    return method.replace("task_arithmetic", "task arith.")


def _vs(r: Mapping[str, Any], key: str) -> str:
    p = r.get(f"{key}_p")
    tail = f" p={p:.2g}" if isinstance(p, (int, float, np.number)) and np.isfinite(p) else ""
    return _interval(r[key], r[f"{key}_lo"], r[f"{key}_hi"], "+.1f") + tail


def ranking_markdown(rank: pd.DataFrame, top: int | None = None) -> str:
    """The ranking (as `ranking` returns it or ranking.csv holds it) as a Markdown table:
    paired differences to the baselines, each with its interval, rather than accuracies to
    compare by eye."""
    searched = [c for c in rank if c.startswith("config/")]
    ft = "ft_acc_in" in rank and rank["ft_acc_in"].notna().any()
    others = [b for b in _MD_VS if f"vs_{b}" in rank and rank[f"vs_{b}"].notna().any()]
    header = ["#", "mix", *(c.removeprefix("config/") for c in searched), "acc_in [CI]",
              "− best data-free [CI] p", "forgetting"]
    header += ["ft_acc_in [CI]", "ft − average ft [CI] p", "catch-up steps", "catch-up rate"] if ft else []
    header += ["Spearman loss~acc [CI]", *(f"− {_short(b)} [CI] p" for b in others), "best epoch / run", "trial"]
    rows = []
    for _, r in rank.head(top).iterrows():
        row = [str(r["rank"]), r["mix"], *(_fmt(r[c]) for c in searched)]
        best = f"{_vs(r, 'vs_best')} ({_short(r['best_baseline'])})" if isinstance(r["best_baseline"], str) else "–"
        row += [_interval(r["acc_in"], r["acc_in_lo"], r["acc_in_hi"], ".1f"), best, _num(r["forgetting"])]
        if ft:
            row += [_interval(r["ft_acc_in"], r["ft_acc_in_lo"], r["ft_acc_in_hi"], ".1f"), _vs(r, "ft_vs_average"),
                    _num(r["catchup_steps"], ".0f"), _num(r["catchup_rate"], ".0%")]
        row += [_interval(r["spearman"], r["spearman_lo"], r["spearman_hi"], "+.2f")]
        row += [_vs(r, f"vs_{b}") for b in others]
        early = " (stopped early)" if pd.notna(r["stopped_early"]) and bool(r["stopped_early"]) else ""
        row += [f"{r['best_epoch']} / {r['epochs']}{early}", str(r["trial"])]
        rows.append(row)
    return _md_table(header, rows)


def read_table(path: str | Path) -> pd.DataFrame:
    """A results CSV (ranking.csv, repeats.csv) as written, trial ids as text.

    Trial ids are eight hex digits: left to pandas, 20277932 reads as an integer and 12e45678
    as the float 1.2e+46, which no longer names a trial folder.
    """
    return pd.read_csv(path, dtype={"trial": str})


def ranking_summary(rank: pd.DataFrame, ci: float = 0.95, top: int = 3) -> str:
    """A few lines for the terminal at the end of a sweep: the best `top` trials' test acc_in
    and their paired difference to the best data-free baseline, each interval with its unit."""
    if rank.empty:
        return "no trial tested yet"
    n_targets, n_pairs = int(rank["n_targets"].median()), int(rank["n_pairs"].median())
    lines = [f"top {min(top, len(rank))} of {len(rank)} tested trials on test pairs ({ci:.0%} intervals resampling "
             f"{unit_text(n_targets, n_pairs, 'target class set')}):"]
    for _, r in rank.head(top).iterrows():
        lines.append(f"  #{r['rank']} {r['mix']}")
        lines.append(f"     acc_in {_interval(r['acc_in'], r['acc_in_lo'], r['acc_in_hi'], '.1f')}; "
                     f"− {_short(r['best_baseline'])} (best data-free) {_vs(r, 'vs_best')}; "
                     f"− target {_vs(r, 'vs_target')}")
    warning = few_units_warning(n_targets)
    return "\n".join(lines + ([f"note: {warning}"] if warning else []))


def _kind(method: str) -> str:
    if method in DATA_FREE:
        return "data-free"
    if method in MERGES:
        return "uses training images"
    return "two CNNs (predictions)" if method == ENSEMBLE else "ceiling"


def _baselines_md(rank: pd.DataFrame) -> str:
    """The baselines' own test acc_in and fine-tuned acc_in, the top trial's paired difference
    to each, and each merge's seconds per pair (the same for every trial that tested the
    same pairs, hence medians over trials)."""
    top = rank.iloc[0]
    rows = []
    for b in BASELINES:
        if b not in rank or not rank[b].notna().any():
            continue
        ft, sec = f"{b}_ft_acc_in", f"{b}_seconds"
        rows.append([
            _short(b), _num(rank[b].median()), _num(rank[ft].median()) if ft in rank else "–",
            _vs(top, f"vs_{b}") if f"vs_{b}" in top and pd.notna(top[f"vs_{b}"]) else "–",
            _num(rank[sec].median(), ".2g") if sec in rank else "–", _kind(b),
        ])
    return _md_table(["baseline", "test acc_in", "after fine-tuning", f"#1 ({top['trial']}) − it [CI] p",
                      "seconds per pair", "kind"], rows)


def _counts(sweep: SweepTrials) -> str:
    n = {s: sum(t.status == s for t in sweep.trials) for s in (COMPLETE, PARTIAL, EMPTY)}
    return (f"{len(sweep.trials)} trial(s): {n[COMPLETE]} tested (complete), {n[PARTIAL]} training or stopped "
            f"before testing (partial: history.json only), {n[EMPTY]} not started (empty)")


def _ranking_md(sweep: SweepTrials, rank: pd.DataFrame, repeated: pd.DataFrame, importances: dict, note: str,
                written: Mapping[str, Path], n_boot: int, ci: float, seed: int) -> str:
    lines = [f"# Ranking of the sweep {sweep.name}", "", _counts(sweep) + ".", ""]
    if rank.empty:
        lines += ["No complete trial yet: a trial enters the ranking once it has tested its model "
                  "(trials/<id>/result.json). Rebuild with `python -m sweeps.report "
                  f"{sweep.name}` later.", ""]
    else:
        n_targets, n_pairs = int(rank["n_targets"].median()), int(rank["n_pairs"].median())
        lines += [
            "Each row is a tested trial. **acc_in** is the in-distribution accuracy (%, on the digits "
            "C3 = C1 ∪ C2) of the CNNs its TransformerAE generates for the **test** pairs, right after "
            f"prediction, averaged over the {n_pairs} test pairs. Trials are ranked by how far that lies "
            "above the **best data-free baseline** on the same pairs (the best of copying a parent, "
            "weight averaging and task arithmetic). The ranking is on test pairs, which no choice saw: "
            "each trial's tested model is the one of its best *validation* epoch, and the sweep's "
            "searcher saw validation metrics only.",
            "",
            f"**Intervals** ([CI]) are {ci:.0%} percentile-bootstrap intervals ({n_boot} resamples, seed "
            f"{seed}) that resample the test **target class sets** ({unit_text(n_targets, n_pairs)}), "
            "keeping all pairs of a drawn target: pairs of one target share its images and CNN, so "
            "they are not independent units.",
        ]
        warning = few_units_warning(n_targets)
        lines += ["", f"> **Note:** {warning}"] if warning else []
        lines += [
            "",
            "- **− best data-free**: generated − the best data-free baseline (named), per pair on the "
            "same pairs: the mean difference in points, its interval, and a Wilcoxon signed-rank p over "
            "the per-target mean differences. An interval above 0 means the mix beats every merge that "
            "needs no data. **− copy1 … − target**: the same against each baseline (against the target "
            "CNN3, the ceiling, it is the gap left).",
            "- **forgetting**: accuracy points the generated CNN loses on C1's and C2's digits against "
            "CNN1 and CNN2 themselves (mean of forget_c1 and forget_c2).",
        ]
        if "ft_acc_in" in rank and rank["ft_acc_in"].notna().any():
            lines += ["- **ft_acc_in**: acc_in after fine-tuning on C3's training images; **ft − average ft**: "
                      "its paired difference to the average baseline fine-tuned alike; **catch-up steps**: "
                      "mean fine-tuning steps until the generated CNN reaches its parents' mean accuracy, over "
                      "the pairs that did (their share: **catch-up rate**)."]
        lines += [
            "- **Spearman loss~acc**: rank correlation over test pairs of the Transformer's loss with "
            "the generated CNN's acc_in; negative means a lower loss comes with a better CNN.",
        ]
        searched = [c.removeprefix("config/") for c in rank if c.startswith("config/")]
        if searched:
            lines += [f"- Settings that differ between trials: {', '.join(searched)}."]
        lines += ["", ranking_markdown(rank), "",
                  "The baselines on the same test pairs: their acc_in before and after the same fine-tuning, "
                  "the top trial's paired difference to each, and what each merge costs. Data-free merges "
                  "are bars any mix must clear; those using training images (of each parent's classes, "
                  "unlabeled) and the parents' ensemble show what data buys:", "", _baselines_md(rank), ""]
        lines += _repeats_md(repeated)
    lines += ["## Parameter importances", ""]
    if importances:
        params = _by_importance(importances)
        lines += [f"From {note}; they explain the search's objectives, measured on validation pairs.", ""]
        lines += [_md_table(["parameter", *importances], [[p, *(_num(v.get(p), ".2f") for v in importances.values())]
                                                         for p in params]), ""]
    else:
        lines += [f"Not available: {note}.", ""]
    plots = {"ranking.png": "each trial's paired difference to the best data-free baseline, with its interval",
             "loss_vs_accuracy.png": "the Transformer's loss against acc_in per test pair, top 3 trials",
             "learning_curves.png": "validation acc_in per epoch, top 5 trials",
             "param_importances.png": "parameter importances"}
    shown = [f"- [{f}]({f}): {what}" for f, what in plots.items() if f in written]
    if shown:
        lines += ["## Plots", "", *shown, ""]
    lines += ["Per-loss correlations with accuracy, over trials: [loss_predictiveness.md](loss_predictiveness.md). "
              "Every trial's config and metrics: trials.parquet."]
    return "\n".join(lines) + "\n"


def _predictiveness_md(sweep: SweepTrials, table: pd.DataFrame, n_boot: int, ci: float) -> str:
    lines = [f"# Loss predictiveness in the sweep {sweep.name}", ""]
    if table.empty:
        lines += ["No tested trial has a loss_predictiveness.csv yet (it comes with result.json when "
                  "predictiveness_images > 0)."]
        return "\n".join(lines) + "\n"
    ft = "ft_acc_in/spearman_median" in table
    n_units = int(table["pooled/n_units"].max()) if "pooled/n_units" in table and table["pooled/n_units"].notna().any() else 0
    units = f"{n_units} target{'s' * (n_units != 1)}"
    lines += [
        "How well each weight-space loss between a generated CNN and its target CNN3, at its exact "
        "setting, predicts the generated CNN's test acc_in: a good proxy correlates strongly and "
        "negatively (lower loss, better CNN).",
        "",
        "- **pooled Spearman**: over every (trial, test pair) of the tested trials together "
        f"(**points** of them), with a {ci:.0%} percentile-bootstrap interval ({n_boot} resamples) that "
        f"resamples the test **target class sets** ({units}), each with all its points across trials; "
        "the table is sorted by its absolute value.",
        "- **per-trial Spearman**: the median [min, max] over the **trials** that computed the loss of "
        "its correlation over each trial's own test pairs (loss_predictiveness.csv of each trial)"
        + (", against acc_in and against ft_acc_in after fine-tuning." if ft else ", against acc_in."),
        "- **mix** is each trial's own trained loss mix, so its row pools different losses.",
        "",
    ]
    computed = table[table["n_trials"] > 0]
    header = ["loss", "pooled Spearman [CI]", "points", "trials", "per-trial Spearman (acc_in)"]
    header += ["per-trial Spearman (ft_acc_in)"] if ft else []
    rows = []
    for _, r in computed.iterrows():
        row = [r["loss"], _interval(r["pooled/spearman"], r["pooled/spearman_lo"], r["pooled/spearman_hi"], "+.2f"),
               str(r["pooled/n_pairs"]), str(r["n_trials"])]
        for a in ("acc_in", "ft_acc_in") if ft else ("acc_in",):
            row.append(_interval(r[f"{a}/spearman_median"], r[f"{a}/spearman_min"], r[f"{a}/spearman_max"], "+.2f"))
        rows.append(row)
    lines += [_md_table(header, rows), ""]
    skipped = table[table["skipped_trials"] > 0]
    if len(skipped):
        total = sum(t.predictiveness is not None for t in sweep.complete)
        lines += ["## Skipped losses", ""]
        lines += [f"- **{r['loss']}** (in {r['skipped_trials']} of {total} trials): {r['skipped']}"
                  for _, r in skipped.iterrows()]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------- writing


def _curve_order(rank: pd.DataFrame, sweep: SweepTrials) -> list[str]:
    """The trials whose learning curves are drawn: the best tested ones, then, while the
    sweep runs, the untested ones with the best validation acc_in so far."""
    def best(t: Trial) -> float:
        values = [h.get(SELECT, math.nan) for h in t.history["history"]]
        return max((v for v in values if np.isfinite(v)), default=-math.inf)

    partial = sorted((t for t in sweep.trials if t.status == PARTIAL), key=best, reverse=True)
    return (list(rank["trial"]) + [t.id for t in partial])[:_PLOT_CURVES]


def write_results(
    sweep_dir: str | Path,
    study: optuna.Study | None = None,
    *,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
) -> dict[str, Path]:
    """Rebuild every results file of the sweep in `sweep_dir` (see the module docstring),
    finished or not, atomically; returns file name -> path of those written this time (a plot
    without data to draw is left out). study: the sweep's Optuna study (None: load it from
    the sweep's storage). SweepNotFound when `sweep_dir` holds no sweep."""
    sweep = collect(sweep_dir)
    folder = sweep.folder
    written: dict[str, Path] = {}

    def put(name: str, write) -> None:
        written[name] = atomic_write(folder / name, write)

    put("trials.parquet", lambda p: sweep.table.to_parquet(p, index=False))
    rank = ranking(sweep, n_boot, ci, seed)
    put("ranking.csv", lambda p: rank.to_csv(p, index=False))
    repeated = repeats(sweep, rank)
    if len(repeated):
        put("repeats.csv", lambda p: repeated.to_csv(p, index=False))
    predictive = loss_predictiveness(sweep, n_boot, ci, seed)
    put("loss_predictiveness.csv", lambda p: predictive.to_csv(p, index=False))
    put("loss_predictiveness.md", lambda p: Path(p).write_text(_predictiveness_md(sweep, predictive, n_boot, ci)))
    if len(rank):
        written["ranking.png"] = _plot_ranking(rank, sweep.name, ci, folder / "ranking.png")
        written["loss_vs_accuracy.png"] = _plot_loss_vs_accuracy(rank, sweep, folder / "loss_vs_accuracy.png")
    order = _curve_order(rank, sweep)
    if order:
        written["learning_curves.png"] = _plot_learning_curves(order, rank, sweep, folder / "learning_curves.png")
    importances, note = param_importances(sweep, study)
    if importances:
        written["param_importances.png"] = _plot_importances(importances, note, sweep.name,
                                                             folder / "param_importances.png")
    text = _ranking_md(sweep, rank, repeated, importances, note, written, n_boot, ci, seed)
    put("ranking.md", lambda p: Path(p).write_text(text))
    return written
