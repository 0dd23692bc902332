"""The sweep engine behind `python -m sweeps.loss_combo` and `python -m sweeps.hparams`.

A sweep is a YAML config (its search space, the fixed `run:` settings of every trial, and how
to search) run as Ray Tune trials suggested by Optuna, each trial one `wsmerge.train.train`
run. Everything it writes goes under one folder:

    results/<name>/
      sweep.yaml          the resolved config; the same command again continues this sweep,
                          another config under the same name is refused
      study.db            the Optuna study, every trial once (any SQLAlchemy URL: `storage:`)
      tune/               Ray Tune's experiment state; a trial's checkpoint there names its
                          last epoch, the run's own stays in trials/
      trials/<trial id>/  each trial's run: checkpoint.pt, best.pt, history.json,
                          result.json (test pairs), test_pairs.csv
      wandb/              one W&B run a trial: offline unless WANDB_API_KEY is set

On a Ray cluster (cluster/README.md), `--address` (or RAY_ADDRESS) joins it and trials are
placed by `cpus_per_trial` and `gpus_per_trial`; relative paths (`--results`, `run.zoo`)
are read under `--storage` (or WSMERGE_STORAGE), which every node must see: the sweep
checks that before its first trial. A trial whose node is lost is retried elsewhere from
its last checkpoint (`max_failures`); finished trials are kept.

Trials are chosen on validation pairs only: the scheduler (ASHA) stops trials on the
validation acc_in of each epoch, and the searcher scores a trial by its objectives at the
epoch `train` keeps (the best validation acc_in). Test metrics stay in result.json.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Mapping

import optuna
import torch
import yaml
from ray import tune
from ray.tune.result import TRAINING_ITERATION
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
from ray.tune.search.optuna import OptunaSearch

from wsmerge.cluster import STORAGE_ENV, check_shared, node_id, ray_session, storage_root, under
from wsmerge.config import check_int, check_number, from_dict, read_yaml
from wsmerge.files import atomic_write
from wsmerge.results import (
    BASELINE_CACHE, REPEATS, STUDY_FILE, SWEEP_FILE, TRIALS, collect, ranking_summary, read_table, write_results,
)
from wsmerge.seeds import train_seeds
from wsmerge.train import CHECKPOINT, SELECT, RunConfig, ZooTables, disk_bytes, read_zoo, train
from wsmerge.zoo import MANIFEST, PROFILES, BuildOptions, ZooStoreError, build_zoo, profile

__all__ = [
    "BEST_PREFIX",
    "STUDY_FILE",
    "SWEEP_FILE",
    "TRIALS",
    "TUNE",
    "TUNE_MARKER",
    "Objective",
    "Param",
    "SchedulerConfig",
    "SweepConfig",
    "RepeatConfig",
    "SweepSearch",
    "WandbConfig",
    "check_disk",
    "load_sweep",
    "main",
    "open_storage",
    "prepare_folder",
    "repeat_top",
    "run_sweep",
]

TUNE = "tune"
# The one file of a trial's checkpoint in Tune: the epoch it ends (see _Reporter).
TUNE_MARKER = "epoch.json"
# What the searcher is told of a trial: its objectives at the epoch whose model it delivers
# (train tests the best validation epoch, not the last).
BEST_PREFIX = "best/"
# Set by the sweep for every trial, never by its config.
_SWEEP_RUN_KEYS = ("out", "progress")


# --------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class Param:
    """One searched setting: a range `{low, high}` (log-uniform with `log: true`) or a list
    `{choices: [...]}`. Whether it is an integer, or one of some names, is the space's
    business, not the YAML's."""

    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple | None = None
    integer: bool = False

    @classmethod
    def parse(
        cls, raw: Any, where: str, *, integer: bool = False, log: bool = False, names: tuple[str, ...] | None = None
    ) -> "Param":
        """`names`: the setting is one of these strings, so only choices of them are valid."""
        if not isinstance(raw, Mapping):
            expected = "{choices: [..]}" if names else "{low: .., high: ..} or {choices: [..]}"
            raise ValueError(f"{where}: expected {expected}, got {raw!r}")
        unknown = sorted(set(raw) - {"low", "high", "log", "choices"})
        if unknown:
            raise ValueError(f"{where}: unknown keys {unknown}; known: ['choices', 'high', 'log', 'low']")
        if names and "choices" not in raw:
            raise ValueError(f"{where}: a setting of names is searched as {{choices: [..]}} of {list(names)}")
        # Types only: whether a value suits its setting is the run config's check (SweepConfig).
        number = check_int if integer else check_number
        if "choices" in raw:
            if {"low", "high", "log"} & set(raw):
                raise ValueError(f"{where}: give either choices or low/high, not both")
            choices = raw["choices"]
            if not isinstance(choices, list) or not choices:
                raise ValueError(f"{where}.choices: expected a non-empty list, got {choices!r}")
            if names:
                values = tuple(_name(v, f"{where}.choices[{i}]", names) for i, v in enumerate(choices))
            else:
                values = tuple(number(v, f"{where}.choices[{i}]", -math.inf) for i, v in enumerate(choices))
            if len(set(values)) != len(values):
                raise ValueError(f"{where}.choices: repeated values in {list(values)}")
            return cls(choices=values, integer=integer)
        if "low" not in raw or "high" not in raw:
            raise ValueError(f"{where}: a range needs both low and high, got {dict(raw)}")
        low, high = number(raw["low"], f"{where}.low", -math.inf), number(raw["high"], f"{where}.high", -math.inf)
        if low > high:
            raise ValueError(f"{where}: inverted range, low {low} > high {high}")
        log = raw.get("log", log)
        if not isinstance(log, bool):
            raise ValueError(f"{where}.log: expected true or false, got {log!r}")
        if log and low <= 0:
            raise ValueError(f"{where}: a log-uniform range needs low > 0, got {low}")
        return cls(low=low, high=high, log=log, integer=integer)

    def extremes(self) -> tuple:
        """The values a config must accept for every sample of this setting to be valid."""
        return self.choices if self.choices is not None else (self.low, self.high)

    def suggest(self, trial, name: str):
        if self.choices is not None:
            return trial.suggest_categorical(name, list(self.choices))
        if self.integer:
            return trial.suggest_int(name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(name, self.low, self.high, log=self.log)

    def to_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


def _name(value: Any, where: str, names: tuple[str, ...]) -> str:
    if value not in names:
        raise ValueError(f"{where}: unknown {value!r}; known: {list(names)}")
    return value


@dataclass(frozen=True)
class Objective:
    """What the searcher maximises or minimises: a validation metric of the trial's kept epoch."""

    metric: str = SELECT
    mode: str = "max"

    def __post_init__(self):
        if not isinstance(self.metric, str) or not self.metric.startswith("val/"):
            raise ValueError(
                f"metric {self.metric!r} is not a validation metric (val/...): test pairs never take part in a choice"
            )
        if self.mode not in ("max", "min"):
            raise ValueError(f"mode must be max or min, got {self.mode!r}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Early stopping of trials on each epoch's validation acc_in: `asha`, or `fifo` (none)."""

    kind: str = "asha"
    grace_period: int = 1  # epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # 1/reduction_factor of the trials go on at each rung

    def __post_init__(self):
        if self.kind not in ("asha", "fifo"):
            raise ValueError(f"kind must be asha or fifo, got {self.kind!r}")
        check_int(self.grace_period, "grace_period", 1)
        check_number(self.reduction_factor, "reduction_factor", 1, open_low=True)


@dataclass(frozen=True)
class WandbConfig:
    """W&B logging of every trial. `auto`: online when WANDB_API_KEY is set, else offline
    (no account needed; the runs stay under the sweep folder)."""

    project: str = "wsmerge"
    mode: str = "auto"

    def __post_init__(self):
        if not isinstance(self.project, str) or not self.project:
            raise ValueError(f"project must be a non-empty string, got {self.project!r}")
        if self.mode not in ("auto", "online", "offline", "disabled"):
            raise ValueError(f"mode must be auto, online, offline or disabled, got {self.mode!r}")

    def resolved_mode(self) -> str:
        if self.mode != "auto":
            return self.mode
        return "online" if os.environ.get("WANDB_API_KEY") else "offline"


@dataclass(frozen=True)
class RepeatConfig:
    """After the sweep, the `top` trials by best validation acc_in (never by test) are
    trained again once per seed of `seeds` (wsmerge.seeds, varying `vary`), so that the
    ranking shows their spread across seeds beside the within-run intervals."""

    top: int = 0  # 0: no repeats
    seeds: tuple = (1, 2)
    vary: tuple = ("init", "order")

    def __post_init__(self):
        check_int(self.top, "top", 0)
        if not isinstance(self.seeds, (list, tuple)) or not self.seeds:
            raise ValueError(f"seeds: expected a non-empty list of seeds, got {self.seeds!r}")
        object.__setattr__(self, "seeds", tuple(check_int(x, "seeds", 0) for x in self.seeds))
        object.__setattr__(self, "vary", tuple(self.vary))


def _sub(cls, value, where: str):
    return value if isinstance(value, cls) else from_dict(cls, value, where)


@dataclass(frozen=True)
class SweepConfig:
    """One sweep; every field is validated on construction. Subclasses name their search
    space type (`SPACE`) and command."""

    SPACE: ClassVar[type]
    COMMAND: ClassVar[str]

    space: Any
    # The fixed settings of every trial: a wsmerge.train.RunConfig without `out` (each
    # trial writes to trials/<trial id>/) and without the keys the space searches.
    run: Any = field(default_factory=dict)
    num_samples: int = 8
    concurrency: int = 2  # trials at once
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0  # a fraction shares a GPU between trials
    max_failures: int = 2  # retries of a trial that raised, each from its last checkpoint
    sampler: str = "tpe"  # tpe or random
    startup_trials: int = 10  # TPE samples at random until this many trials have finished
    seed: int = 0
    # One objective, or two for a multi-objective (Pareto) search, e.g. add
    # {metric: val/corr/spearman, mode: min}: a loss whose value predicts accuracy.
    objectives: tuple = (Objective(),)
    scheduler: Any = field(default_factory=SchedulerConfig)
    storage: str | None = None  # SQLAlchemy URL of the Optuna study; None: sqlite study.db
    zoo_profile: str | None = None  # build this zoo profile at run.zoo when it is missing
    wandb: Any = field(default_factory=WandbConfig)
    repeat: Any = field(default_factory=RepeatConfig)

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if isinstance(self.run, Mapping):
            raw = dict(self.run)
            for key in _SWEEP_RUN_KEYS:
                if key in raw:
                    raise ValueError(f"run.{key}: set by the sweep for each trial; remove it")
            if not isinstance(self.space, Mapping):
                raise ValueError(f"space: expected a mapping, got {type(self.space).__name__}")
            set_("space", self.SPACE.from_dict(dict(self.space), "space", raw))
            raw = self.space.prepare_run(raw)
            set_("run", RunConfig.from_dict({**raw, "out": TRIALS, "progress": False}, "run"))
            self.space.check(self.run)
        for name in ("num_samples", "concurrency", "startup_trials"):
            check_int(getattr(self, name), name, 1)
        check_int(self.max_failures, "max_failures", 0)
        check_int(self.seed, "seed", 0)
        check_number(self.cpus_per_trial, "cpus_per_trial", 0, open_low=True)
        check_number(self.gpus_per_trial, "gpus_per_trial", 0)
        if self.sampler not in ("tpe", "random"):
            raise ValueError(f"sampler must be tpe or random, got {self.sampler!r}")
        objectives = self.objectives
        if not isinstance(objectives, (list, tuple)) or not 1 <= len(objectives) <= 2:
            raise ValueError(f"objectives: expected a list of one or two {{metric, mode}}, got {objectives!r}")
        set_("objectives", tuple(_sub(Objective, o, f"objectives[{i}]") for i, o in enumerate(objectives)))
        if len({o.metric for o in self.objectives}) != len(self.objectives):
            raise ValueError("objectives: the same metric twice")
        set_("scheduler", _sub(SchedulerConfig, self.scheduler, "scheduler"))
        if self.scheduler.kind == "asha" and self.scheduler.grace_period >= self.run.epochs:
            raise ValueError(
                f"scheduler.grace_period ({self.scheduler.grace_period}) must be below run.epochs "
                f"({self.run.epochs}): ASHA stops trials only before their last epoch (kind: fifo for none)"
            )
        set_("wandb", _sub(WandbConfig, self.wandb, "wandb"))
        set_("repeat", _sub(RepeatConfig, self.repeat, "repeat"))
        if self.run.seeds:
            raise ValueError("run.seeds: a trial is one run; repeat the best trials with repeat: {top, seeds}")
        if self.run.seed in self.repeat.seeds:
            raise ValueError(f"repeat.seeds: {self.run.seed} is run.seed, the seed every trial already ran")
        # The repeats' own checks (vary names), before anything runs.
        self.run.replace(seeds=list(self.repeat.seeds), vary=list(self.repeat.vary))
        if self.storage is not None and (not isinstance(self.storage, str) or "://" not in self.storage):
            raise ValueError(f"storage must be an SQLAlchemy URL such as sqlite:///study.db, got {self.storage!r}")
        if self.zoo_profile is not None and self.zoo_profile not in PROFILES:
            raise ValueError(f"zoo_profile: unknown profile {self.zoo_profile!r}; known: {sorted(PROFILES)}")

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "SweepConfig":
        return from_dict(cls, d, where)

    def to_dict(self) -> dict[str, Any]:
        run = self.run.to_dict()
        for key in _SWEEP_RUN_KEYS:
            del run[key]
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d.update(
            run=self.space.strip_run(run),
            space=self.space.to_dict(),
            objectives=[dataclasses.asdict(o) for o in self.objectives],
            scheduler=dataclasses.asdict(self.scheduler),
            wandb=dataclasses.asdict(self.wandb),
            repeat=dataclasses.asdict(self.repeat),
        )
        return json.loads(json.dumps(d))  # tuples → lists, as YAML reads them back


def load_sweep(
    cls: type[SweepConfig], path: str | os.PathLike, num_samples: int | None = None, zoo: str | None = None
) -> SweepConfig:
    """The sweep config in `path`, with the command line's overrides, or ValueError naming
    the file and the key."""
    raw = read_yaml(path)
    command = raw.pop("sweep", cls.COMMAND)
    if command != cls.COMMAND:
        raise ValueError(f"{path}: a {command} sweep, not a {cls.COMMAND} sweep")
    if num_samples is not None:
        raw["num_samples"] = num_samples
    if zoo is not None:
        run = raw.get("run", {})
        raw["run"] = {**run, "zoo": zoo} if isinstance(run, Mapping) else run
    return cls.from_dict(raw, str(path))


# --------------------------------------------------------------------------- the folder


def _diff(saved: Any, now: Any, at: str = "") -> list[str]:
    if isinstance(saved, dict) and isinstance(now, dict):
        keys = sorted(set(saved) | set(now), key=str)
        return [d for k in keys for d in _diff(saved.get(k), now.get(k), f"{at}.{k}" if at else str(k))]
    if saved == now:
        return []
    return [f"{at} differs" if at == "storage" else f"{at}: {saved!r} there, {now!r} now"]  # a URL may hold a password


def prepare_folder(cfg: SweepConfig, folder: Path) -> bool:
    """Write sweep.yaml into a new sweep folder, or check that an existing one ran with
    the same config. True when the folder already held this sweep."""
    saved_path = folder / SWEEP_FILE
    now = {"sweep": cfg.COMMAND, **cfg.to_dict()}
    if saved_path.is_file():
        # Through the config class, so that a key added since the sweep started reads as its default.
        saved = {"sweep": cfg.COMMAND, **load_sweep(type(cfg), saved_path).to_dict()}
        diffs = _diff(saved, now)
        if diffs:
            raise ValueError(
                f"{folder} holds a sweep with another config ({'; '.join(diffs)}). "
                f"To continue it, run it with its own config (--name {folder.name} --resume uses "
                f"{saved_path}); to start a new sweep, choose another --name, or delete {folder}."
            )
        return True
    if folder.exists() and any(folder.iterdir()):
        raise ValueError(f"{folder} exists and holds no {SWEEP_FILE}: not a sweep folder; choose another --name")
    folder.mkdir(parents=True, exist_ok=True)
    header = f"# The config of this sweep, written by python -m sweeps.{cfg.COMMAND}: a rerun continues it.\n"
    text = header + yaml.safe_dump(now, sort_keys=False)
    atomic_write(saved_path, lambda p: Path(p).write_text(text))
    return False


def check_disk(cfg: SweepConfig, folder: Path) -> None:
    """A ValueError when the runs still to come would not fit on the disk under `folder`:
    every trial and repeat keeps its checkpoint.pt and best.pt (`wsmerge.train.disk_bytes`,
    at the largest model the space allows), and a run that finds the disk full fails
    part-way. Runs that already hold a checkpoint count as written. Checked before the folder
    is made, so that a smaller sweep under the same name is no other config."""
    runs = cfg.num_samples + cfg.repeat.top * len(cfg.repeat.seeds)
    patterns = (f"{TRIALS}/*/{CHECKPOINT}", f"{REPEATS}/*/*/{CHECKPOINT}")
    written = sum(1 for pattern in patterns for _ in folder.glob(pattern))
    each = disk_bytes(cfg.space.largest(cfg.run))
    disk = next(p for p in (folder, *folder.absolute().parents) if p.exists())
    need, free = each * max(0, runs - written), shutil.disk_usage(disk).free
    if need > free:
        gb = lambda n: f"{n / 1e9:.2f} GB"  # noqa: E731
        raise ValueError(
            f"{folder}: the sweep's {runs - written} runs to come keep about {gb(need)} of checkpoints "
            f"({gb(each)} each: checkpoint.pt with the optimizer's state, and best.pt), and {gb(free)} "
            f"is free there; free some space, or lower num_samples or repeat.top"
        )


# --------------------------------------------------------------------------------- trials


def _trial(
    params: dict[str, Any],
    *,
    cfg: SweepConfig,
    trials: Path,
    zoo: ZooTables,
    train_fn: Callable = train,
) -> None:
    """One trial: the run config of `params`, trained in trials/<trial id>/. A retried or
    restored trial continues its checkpoint there, on whichever node it runs (the sweep folder
    is on storage every node sees, `check_shared`); one that finished before the driver could
    record it is left as it is (train's resume)."""
    torch.set_num_threads(max(1, int(cfg.cpus_per_trial)))
    out = trials / tune.get_context().get_trial_id()
    # The trials share their test and validation pairs: the first to score them keeps the
    # baselines' results for the others.
    run = cfg.space.apply(cfg.run, params).replace(
        out=str(out), zoo=zoo.path, baseline_cache=str(trials.parent / BASELINE_CACHE)
    )
    train_fn(run, report=_Reporter(out, cfg.objectives), resume=True, zoo=zoo)


class _Reporter:
    """train's per-epoch report to Tune: the metrics and the objectives at the kept epoch.

    The run's checkpoint stays in trials/<trial id>/ alone. Tune is handed a checkpoint that
    only names the epoch: reporting one is what makes Tune snapshot the experiment then (so a
    killed sweep resumes each trial from its last epoch), and a copy of checkpoint.pt and
    best.pt there would double the sweep's disk (the tiny preset's pair is 130 MB, the seed
    preset's 3.4 GB) and copy them again at every epoch."""

    def __init__(self, out: Path, objectives: tuple[Objective, ...]):
        self.out = out
        self.objectives = objectives

    def __call__(self, metrics: dict[str, float]) -> None:
        missing = [o.metric for o in self.objectives if o.metric not in metrics]
        if missing:
            raise ValueError(f"objectives {missing} are not among the metrics a trial reports")
        history = json.loads((self.out / "history.json").read_text())["history"]
        kept = next((h for h in history if h["epoch"] == metrics["best_epoch"]), {})
        best = {BEST_PREFIX + o.metric: kept.get(o.metric, math.nan) for o in self.objectives}
        with tempfile.TemporaryDirectory(dir=self.out, prefix=".tune-checkpoint") as stage:
            (Path(stage) / TUNE_MARKER).write_text(json.dumps({"epoch": metrics["epoch"], "run": str(self.out)}))
            # node: the Ray node this epoch ran on, so that where a trial ran shows in its results.
            tune.report({**metrics, **best, "node": node_id()}, checkpoint=tune.Checkpoint.from_directory(stage))


# ------------------------------------------------------------------------------- searcher


class SweepSearch(OptunaSearch):
    """OptunaSearch that limits the trials running at once and keeps its study true to the
    Tune trials across driver restarts:

    - a trial asked for by a driver that died before Tune saved its state is no Tune trial
      of the sweep: it is marked failed (`close_orphans`);
    - a trial that failed for good stays running in the study, since the next run of the
      sweep resumes it from its checkpoint and then reports it (Optuna cannot reopen a
      finished trial). Tune's own concurrency limiter would drop that report: it forgets a
      trial once it has failed, so the limit lives here (and such a resumed trial runs
      beside `max_concurrent` others, as far as the trials' resources allow);
    - each study trial records its Tune trial id (user attribute `tune_trial_id`).
    """

    def __init__(self, *, max_concurrent: int, **kwargs):
        super().__init__(**kwargs)
        self._max_concurrent = max_concurrent
        self._live: set[str] = set()

    def suggest(self, trial_id: str):
        if len(self._live) >= self._max_concurrent:
            return None
        params = super().suggest(trial_id)
        self._live.add(trial_id)
        self._ot_trials[trial_id].set_user_attr("tune_trial_id", trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict):
        # Optuna keeps a value per step; Tune's training_iteration starts again at 1 when a
        # trial is restored, the epoch goes on.
        super().on_trial_result(trial_id, {**result, TRAINING_ITERATION: result["epoch"]})

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False):
        self._live.discard(trial_id)
        if not error:
            super().on_trial_complete(trial_id, result, error)

    def restore(self, checkpoint_path: str):
        super().restore(checkpoint_path)
        self.close_orphans()

    def close_orphans(self) -> None:
        known = {t.number for t in self._ot_trials.values()}
        for t in self._ot_study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            if t.number not in known:
                self._ot_study.tell(t.number, state=optuna.trial.TrialState.FAIL)


def open_storage(cfg: SweepConfig, folder: Path) -> optuna.storages.RDBStorage:
    """The Optuna storage of the sweep in `folder`, or a ValueError (without the URL, which
    may hold a password)."""
    url = cfg.storage or f"sqlite:///{folder.resolve() / STUDY_FILE}"
    try:
        return optuna.storages.RDBStorage(url)
    except Exception as e:  # a malformed URL, a database driver not installed, no server there
        raise ValueError(f"storage: cannot open the study's database ({type(e).__name__})") from None


def _searcher(cfg: SweepConfig, name: str, storage: optuna.storages.BaseStorage) -> SweepSearch:
    sampler = (
        optuna.samplers.TPESampler(seed=cfg.seed, n_startup_trials=cfg.startup_trials)
        if cfg.sampler == "tpe"
        else optuna.samplers.RandomSampler(seed=cfg.seed)
    )
    metrics = [BEST_PREFIX + o.metric for o in cfg.objectives]
    modes = [o.mode for o in cfg.objectives]
    single = len(metrics) == 1
    return SweepSearch(
        max_concurrent=cfg.concurrency,
        space=cfg.space,
        metric=metrics[0] if single else metrics,
        mode=modes[0] if single else modes,
        sampler=sampler,
        study_name=name,
        storage=storage,
    )


# --------------------------------------------------------------------------------- driver


@contextlib.contextmanager
def _environ(**values: str):
    """os.environ with `values` while the sweep runs."""
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _sweep_environ(wandb_mode: str) -> dict[str, str]:
    env = {
        # A snapshot of the experiment after every trial checkpoint (num_to_keep=1) is what
        # lets a killed sweep resume each trial from its last epoch; Tune warns about it.
        "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    }
    if wandb_mode == "offline":
        # Ray's W&B logger asks for an API key unless WANDB_MODE says offline, even when it
        # is told to log offline.
        env["WANDB_MODE"] = "offline"
    return env


class _Progress(tune.Callback):
    """A line per trial event and epoch, instead of Tune's tables of every metric."""

    def __init__(self, trials: Path):
        self.trials = trials

    def on_trial_start(self, iteration, trials, trial, **info):
        params = "  ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in trial.config.items())
        print(f"trial {trial.trial_id} started: {params}", flush=True)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        print(
            f"trial {trial.trial_id} epoch {result['epoch']}: train loss {result['train/loss']:.4g}, "
            f"val acc_in {result[SELECT]:.1f}%",
            flush=True,
        )

    def on_trial_complete(self, iteration, trials, trial, **info):
        if (self.trials / trial.trial_id / "result.json").exists():
            print(f"trial {trial.trial_id} ended: tested", flush=True)
        else:
            print(f"trial {trial.trial_id} stopped by the scheduler after epoch {trial.last_result.get('epoch')}",
                  flush=True)

    def on_trial_recover(self, iteration, trials, trial, **info):
        print(f"trial {trial.trial_id} raised; retrying it from its last checkpoint", flush=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        print(f"trial {trial.trial_id} failed: {trial.error_file}", flush=True)


def _trial_dirname(trial) -> str:
    return trial.trial_id


def _has_state(experiment: Path) -> bool:
    """Whether Tune saved the experiment's state: it writes tuner.pkl as it starts and its
    first experiment_state-*.json a moment later."""
    return tune.Tuner.can_restore(str(experiment)) and any(experiment.glob("experiment_state-*.json"))


def run_sweep(cfg: SweepConfig, folder: Path, storage=None, *, train_fn: Callable = train):
    """Run (or continue) the sweep in `folder` and return Tune's ResultGrid. The folder
    must have been prepared (`prepare_folder`) and Ray started; `storage`: the study's
    (`open_storage`, opened here when None)."""
    folder = folder.resolve()
    # Read once here and put in Ray's object store once: every trial gets the same tables.
    zoo = read_zoo(Path(cfg.run.zoo).resolve())
    trials = folder / TRIALS
    trials.mkdir(exist_ok=True)
    trainable = tune.with_resources(
        tune.with_parameters(_trial, cfg=cfg, trials=trials, zoo=zoo, train_fn=train_fn),
        {"cpu": cfg.cpus_per_trial, "gpu": cfg.gpus_per_trial},
    )
    experiment = folder / TUNE
    mode = cfg.wandb.resolved_mode()
    with _environ(**_sweep_environ(mode)):
        if _has_state(experiment):
            tuner = tune.Tuner.restore(str(experiment), trainable=trainable, resume_errored=True)
        else:
            searcher = _searcher(cfg, folder.name, storage or open_storage(cfg, folder))
            searcher.close_orphans()
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(
                    search_alg=searcher,
                    scheduler=_scheduler(cfg),
                    num_samples=cfg.num_samples,
                    reuse_actors=True,
                    trial_dirname_creator=_trial_dirname,
                ),
                run_config=tune.RunConfig(
                    name=TUNE,
                    storage_path=str(folder),
                    failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
                    checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                    callbacks=[_Progress(trials), *_wandb(cfg, folder, mode)],
                    verbose=0,
                ),
            )
        return tuner.fit()


def test_stopped_trials(folder: Path, trial_ids: list[str], train_fn: Callable = train) -> list[str]:
    """Test the best epoch of each of the ended (not failed) trials `trial_ids` that the
    scheduler stopped before its end (Tune ends it at its last report, before `train` tests
    it): the ranking covers every trial, and the choice of epoch stays the validation's.
    Returns the trial ids tested here."""
    tested = []
    for out in (folder / TRIALS / t for t in sorted(trial_ids)):
        if (out / "result.json").exists() or not (out / CHECKPOINT).exists():
            continue
        ck = torch.load(out / CHECKPOINT, map_location="cpu", weights_only=True)
        run = RunConfig.from_dict(json.loads(ck["config"]), str(out / CHECKPOINT))
        print(f"trial {out.name}: stopped at epoch {ck['epoch']}, testing its best epoch", flush=True)
        train_fn(run.replace(out=str(out), epochs=int(ck["epoch"]), progress=False), report=None, resume=True)
        tested.append(out.name)
    return tested


def repeat_top(cfg: SweepConfig, folder: Path, train_fn: Callable = train) -> list[str]:
    """Train the `cfg.repeat.top` tested trials with the best validation acc_in again, once
    per repeat seed, in repeats/<trial id>/seed-<s>/ (resumed by train's rule: a rerun of
    the sweep finishes them and runs nothing twice). Returns the trial ids repeated."""
    if not cfg.repeat.top:
        return []
    done = [t for t in collect(folder).complete if t.history]
    best = lambda t: max((h.get(SELECT, -math.inf) for h in t.history["history"]), default=-math.inf)  # noqa: E731
    chosen = sorted(done, key=lambda t: (-best(t), t.id))[: cfg.repeat.top]
    for t in chosen:
        run = RunConfig.from_dict(t.result["config"], f"{t.id}/result.json").replace(
            out=str(folder / REPEATS / t.id), seeds=list(cfg.repeat.seeds), vary=list(cfg.repeat.vary),
            epochs=cfg.run.epochs, progress=False,
        )
        print(f"trial {t.id}: repeating with seeds {list(cfg.repeat.seeds)}", flush=True)
        train_seeds(run, resume=True, train_fn=train_fn)
    return [t.id for t in chosen]


def _scheduler(cfg: SweepConfig):
    if cfg.scheduler.kind == "fifo":
        return FIFOScheduler()
    # A trial tests its model after its last epoch's report, and a trial that ASHA stops
    # stops at that report: its rungs end before the last epoch (max_t), and a trial past
    # them runs on to its end (stop_last_trials=False).
    return ASHAScheduler(
        time_attr="epoch",
        metric=SELECT,
        mode="max",
        max_t=cfg.run.epochs - 1,
        grace_period=cfg.scheduler.grace_period,
        reduction_factor=cfg.scheduler.reduction_factor,
        stop_last_trials=False,
    )


def _wandb(cfg: SweepConfig, folder: Path, mode: str) -> list:
    if mode == "disabled":
        return []
    from sweeps._wandb_logger import SweepWandb  # wandb costs trial workers 0.4 s to import

    return [SweepWandb(project=cfg.wandb.project, group=folder.name, mode=mode, dir=str(folder))]


# ------------------------------------------------------------------------------------ CLI


def parse_args(command: str, doc: str, argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"python -m sweeps.{command}", description=doc.split("\n")[0])
    p.add_argument("--config", type=Path, help=f"YAML sweep config (default sweeps/configs/{command}_tiny.yaml)")
    p.add_argument("--name", help="the sweep's folder under --results (default: the config file's name)")
    p.add_argument("--results", type=Path, default=Path("results"),
                   help="where sweep folders go (default results, under --storage when given)")
    p.add_argument("--storage", help=f"a directory every node sees, for the relative --results and run.zoo "
                                     f"(default ${STORAGE_ENV}, else the current directory)")
    p.add_argument("--address", help="the Ray cluster to join (default $RAY_ADDRESS, else a local Ray)")
    p.add_argument("--num-samples", type=int, help="override the config's num_samples")
    p.add_argument("--zoo", help="override the config's run.zoo")
    p.add_argument("--resume", action="store_true", help="continue the sweep --name with the config saved in it")
    return p.parse_args(argv)


def _resolve(args: argparse.Namespace, cls: type[SweepConfig], default: Path) -> tuple[SweepConfig, Path]:
    root = storage_root(args.storage)
    results = under(root, args.results)
    if args.resume:
        if args.config or args.num_samples is not None or args.zoo:
            raise ValueError("--resume continues a sweep with its saved config: drop --config, --num-samples, --zoo")
        name = args.name or default.stem
        saved = results / name / SWEEP_FILE
        if not saved.is_file():
            raise ValueError(f"{saved}: no sweep to resume")
        return load_sweep(cls, saved), results / name
    path = args.config or default
    cfg = load_sweep(cls, path, args.num_samples, args.zoo)
    if root is not None:
        cfg = dataclasses.replace(cfg, run=cfg.run.replace(zoo=str(under(root, cfg.run.zoo))))
    return cfg, results / (args.name or path.stem)


def _summary(cfg: SweepConfig, grid, folder: Path) -> str:
    metrics = [BEST_PREFIX + o.metric for o in cfg.objectives]
    rows = []
    for r in grid:
        values = [r.metrics.get(m, math.nan) for m in metrics] if r.metrics else [math.nan] * len(metrics)
        rows.append((r.metrics.get("trial_id", "?") if r.metrics else "?", values, r.error))
    sign = -1 if cfg.objectives[0].mode == "max" else 1
    rows.sort(key=lambda row: (row[2] is not None, math.inf if math.isnan(row[1][0]) else sign * row[1][0]))
    names = ", ".join(o.metric for o in cfg.objectives)
    lines = [f"trials in {folder / TRIALS} ({names} at each trial's kept epoch; test results in result.json):"]
    for trial_id, values, error in rows:
        shown = "  ".join(f"{v:.4g}" for v in values)
        lines.append(f"  {trial_id}  {shown}" + ("  (failed)" if error is not None else ""))
    return "\n".join(lines)


def main(argv: list[str] | None, cls: type[SweepConfig], doc: str, *, train_fn: Callable = train) -> int:
    """The command line of a sweep: exit 0 when every trial ended, 1 when some failed for
    good (a rerun retries them), 2 on a bad config, 130 on Ctrl-C."""
    args = parse_args(cls.COMMAND, doc, argv)
    default = Path(__file__).parent / "configs" / f"{cls.COMMAND}_tiny.yaml"
    resume_hint = "run the same command again to continue"
    try:
        cfg, folder = _resolve(args, cls, default)
        if cfg.zoo_profile is None and not Path(cfg.run.zoo).is_dir():
            raise ValueError(f"run.zoo: {cfg.run.zoo} is not a zoo directory (python -m sweeps.zoo builds one)")
        check_disk(cfg, folder)
        prepare_folder(cfg, folder)
        storage = open_storage(cfg, folder)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    resume_hint += f" (or: python -m sweeps.{cls.COMMAND} --name {folder.name} --results {args.results} --resume)"
    try:
        return _run(cfg, folder, storage, train_fn, resume_hint, args.address)
    except KeyboardInterrupt:
        print(f"\ninterrupted; {resume_hint}", file=sys.stderr)
        return 130
    except ZooStoreError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def _run(cfg: SweepConfig, folder: Path, storage, train_fn: Callable, resume_hint: str,
         address: str | None = None) -> int:
    with ray_session(address):
        if cfg.zoo_profile is not None and not Path(cfg.run.zoo).exists():
            print(f"building the {cfg.zoo_profile} zoo at {cfg.run.zoo}", flush=True)
            build_zoo(profile(cfg.zoo_profile), cfg.run.zoo, BuildOptions(progress=False))
        try:
            check_shared([folder], [Path(cfg.run.zoo) / MANIFEST])
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        grid = run_sweep(cfg, folder, storage, train_fn=train_fn)
    print(_summary(cfg, grid, folder))
    ended = [r.metrics["trial_id"] for r in grid if r.error is None and r.metrics and "trial_id" in r.metrics]
    test_stopped_trials(folder, ended, train_fn)
    repeat_top(cfg, folder, train_fn)
    try:
        written = write_results(folder)
        print(ranking_summary(read_table(folder / "ranking.csv")))
        print(f"results: {folder / 'ranking.md'} and {len(written)} more files in {folder}")
    except Exception as e:  # a reporting problem must not change what the sweep did
        print(f"could not write the results ({type(e).__name__}: {e}); "
              f"rebuild them with python -m sweeps.report {folder}", file=sys.stderr)
    if grid.num_terminated + grid.num_errors < cfg.num_samples:
        print(f"interrupted; {resume_hint}", file=sys.stderr)
        return 130
    if grid.num_errors:
        print(f"{grid.num_errors} trial(s) failed; {resume_hint}: they resume from their last checkpoint",
              file=sys.stderr)
        return 1
    return 0
