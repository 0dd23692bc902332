"""The sweep engine end to end on a tiny zoo: a sweep through the real entry point, a driver
killed part-way and run again, a trial that raises and is retried, and the bad inputs that
must fail before Ray starts."""

import gc
import itertools
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import optuna
import pytest
import ray
import torch
import yaml
from ray.tune import ExperimentAnalysis

from procs import kill_marked
from runs import tiny_sweep
from sweeps import engine
from sweeps.hparams import HparamSpace, HparamSweep
from sweeps.hparams import main as hparams_main
from sweeps.loss_combo import LossComboSweep, LossSpace
from sweeps.loss_combo import main as loss_combo_main
from wsmerge.results import read_table
from wsmerge.model import n_params
from wsmerge.train import CHECKPOINT, RunConfig, disk_bytes, train

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
FAKE_KEY = "fake0wandb0key0that0must0never0be0written0anywhere00"


def _write(path, cfg):
    path.write_text(yaml.safe_dump(cfg))
    return path


def _tune_trials(folder):
    return {t.trial_id: t.status for t in ExperimentAnalysis(str(folder / engine.TUNE)).trials}


def _study(folder):
    return optuna.load_study(study_name=folder.name, storage=f"sqlite:///{folder / 'study.db'}")


def _complete(study):
    return [t for t in study.get_trials() if t.state == optuna.trial.TrialState.COMPLETE]


def _history(run_dir):
    return json.loads((run_dir / "history.json").read_text())["history"]


def _check_finished(folder, n, epochs, stopped=False):
    """Every trial ended and was tested, once: in Tune, in its run directory and in the
    Optuna study. With `stopped`, some may have been stopped by the scheduler before their
    last epoch (and tested after the sweep)."""
    trials = _tune_trials(folder)
    assert len(trials) == n and set(trials.values()) == {"TERMINATED"}, trials
    for trial_id in trials:
        run_dir = folder / engine.TRIALS / trial_id
        ran = [h["epoch"] for h in _history(run_dir)]
        assert ran == list(range(1, len(ran) + 1)) and (len(ran) == epochs or stopped and 0 < len(ran) < epochs)
        assert (run_dir / "result.json").is_file()
    complete = _complete(_study(folder))
    assert sorted(t.user_attrs["tune_trial_id"] for t in complete) == sorted(trials)
    assert all(t.values is not None for t in complete)
    return trials


def test_sweep_end_to_end_writes_everything_and_never_the_wandb_key(sweep_zoo, tmp_path, ray_local, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)  # offline all the same: the config says so
    asha = {"kind": "asha", "grace_period": 1, "reduction_factor": 2}
    cfg = tiny_sweep(sweep_zoo, scheduler=asha, repeat={"top": 1, "seeds": [1]})
    del cfg["run"]["evaluation"]["merges"]  # every merge, as by default: the ranking shows them
    config = _write(tmp_path / "sweep.yaml", cfg)
    args = ["--config", str(config), "--results", str(tmp_path / "results"), "--name", "e2e"]
    temp_before = set(Path(tempfile.gettempdir()).glob("*wandb*"))
    assert loss_combo_main(args) == 0
    folder = tmp_path / "results" / "e2e"
    # W&B's logging actors leave no folder in /tmp behind (this process's own go at its exit).
    ours = {Path(o.name) for o in gc.get_objects() if isinstance(o, tempfile.TemporaryDirectory)}
    assert set(Path(tempfile.gettempdir()).glob("*wandb*")) - temp_before - ours == set()

    trials = _check_finished(folder, 3, 2, stopped=True)
    # The first trial at ASHA's rung always goes on to its last epoch.
    assert any(len(_history(folder / engine.TRIALS / t)) == 2 for t in trials)
    saved = engine.load_sweep(LossComboSweep, folder / engine.SWEEP_FILE)
    assert saved == engine.load_sweep(LossComboSweep, config)
    # Each trial's mix is its own Optuna parameters, never empty.
    for t in _complete(_study(folder)):
        ck = torch.load(folder / engine.TRIALS / t.user_attrs["tune_trial_id"] / "checkpoint.pt", weights_only=True)
        cfg = json.loads(ck["config"])
        assert cfg["losses"] == {k.split(".", 1)[1]: v for k, v in t.params.items() if k.startswith("weight.")}
        assert cfg["losses"] and cfg["lr"] == t.params["lr"]
    # Tune keeps one checkpoint a trial: a file naming its last epoch. The run's checkpoints
    # are in trials/ alone, with nothing left of the folders they were reported from.
    for trial_id in trials:
        (ckpt,) = (folder / engine.TUNE / trial_id).glob("checkpoint_*")
        assert [p.name for p in ckpt.iterdir() if not p.name.startswith(".")] == [engine.TUNE_MARKER]
        marker = json.loads((ckpt / engine.TUNE_MARKER).read_text())
        assert marker["epoch"] == len(_history(folder / engine.TRIALS / trial_id))
        assert not [p for p in (folder / engine.TRIALS / trial_id).iterdir() if p.name.startswith(".tune")]
    assert not list((folder / engine.TUNE).rglob("*.pt"))
    assert len(list((folder / "wandb").glob("offline-run-*"))) == 3

    # The trial with the best validation acc_in was trained again with seed 1, for its spread.
    best = max(trials, key=lambda t: max(h["val/generated/acc_in"] for h in _history(folder / engine.TRIALS / t)))
    repeated = read_table(folder / "repeats.csv")
    assert repeated["trial"].tolist() == [best] and repeated["seeds"].tolist() == ["0 1"]
    assert json.loads((folder / "repeats" / best / "seed-1" / "result.json").read_text())["config"]["seed"] == 1
    assert repeated.loc[0, "acc_in/n"] == 2 and "## Across seeds" in (folder / "ranking.md").read_text()
    # Beside the mixes, every merge on the same test pairs, with what it costs.
    shown = {line.split(" | ")[0].strip("| ") for line in (folder / "ranking.md").read_text().splitlines()}
    assert {"rebasin", "ties", "dare", "rebasin_act", "fisher", "regmean", "zipit", "ensemble"} <= shown

    # The same command again: nothing left to run, nothing run twice.
    files = lambda: {p: p.read_bytes() for d in (engine.TRIALS, "repeats") for p in (folder / d).rglob("*")  # noqa: E731
                     if p.is_file()}
    before = files()
    assert loss_combo_main(args) == 0
    assert files() == before
    assert len(_complete(_study(folder))) == 3

    leaks = [p for p in folder.rglob("*") if p.is_file() and FAKE_KEY.encode() in p.read_bytes()]
    assert not leaks, f"the W&B key was written to {leaks}"


def test_killed_driver_resumes_every_trial_once(sweep_zoo, tmp_path, ray_env):
    config = _write(tmp_path / "sweep.yaml", tiny_sweep(sweep_zoo, run={**tiny_sweep(sweep_zoo)["run"], "epochs": 3}))
    cmd = [sys.executable, "-m", "sweeps.loss_combo", "--config", str(config), "--results", str(tmp_path / "r"),
           "--name", "killed"]
    folder = tmp_path / "r" / "killed"
    log = tmp_path / "first-run.log"
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ray_env, start_new_session=True, stdout=out, stderr=out)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if list((folder / engine.TUNE).glob("*/checkpoint_*")):
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"the sweep ended before it could be killed: {log.read_text()[-3000:]}"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    kill_marked("RAY_TMPDIR", ray_env["RAY_TMPDIR"])

    finished = {p: p.read_bytes() for p in (folder / engine.TRIALS).glob("*/result.json")}
    assert len(finished) < 3
    # Trials cut off part-way, and their epochs as they were before the kill.
    cut = {d.name: _history(d) for d in (folder / engine.TRIALS).iterdir()
           if (d / "history.json").exists() and not (d / "result.json").exists()}
    assert cut
    done = subprocess.run(cmd, cwd=REPO, env=ray_env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    _check_finished(folder, 3, 3)
    # Trials that had finished before the kill were not run again; those cut off went on
    # from their last checkpoint, not from the start.
    assert {p: p.read_bytes() for p in finished} == finished
    for trial_id, first in cut.items():
        assert _history(folder / engine.TRIALS / trial_id)[: len(first)] == first
    numbers = [t.number for t in _complete(_study(folder))]
    assert len(set(numbers)) == len(numbers) == 3


def _raising_once(after_epoch):
    """train, but the first run of each trial raises after `after_epoch` (the marker file in
    its run directory remembers that it did)."""

    def train_raising_once(cfg, report, resume, zoo=None):
        marker = Path(cfg.out) / "raised-once"

        def report_then_raise(metrics):
            report(metrics)
            if metrics["epoch"] == after_epoch and not marker.exists():
                marker.touch()
                raise RuntimeError(f"a trial that raises after epoch {after_epoch}")

        return train(cfg, report=report_then_raise, resume=resume, zoo=zoo)

    return train_raising_once


def test_a_trial_that_raises_is_retried_from_its_checkpoint(sweep_zoo, tmp_path, ray_local, capsys):
    results = tmp_path / "results"
    config = _write(tmp_path / "flaky.yaml", tiny_sweep(sweep_zoo, num_samples=2, max_failures=1))
    assert loss_combo_main(["--config", str(config), "--results", str(results)], train_fn=_raising_once(1)) == 0
    trials = _check_finished(results / "flaky", 2, 2)
    assert all((results / "flaky" / engine.TRIALS / t / "raised-once").exists() for t in trials)
    assert capsys.readouterr().out.count("retrying it from its last checkpoint") == 2

    # Out of retries, the trial fails the sweep; the same command again resumes it.
    config = _write(tmp_path / "broken.yaml", tiny_sweep(sweep_zoo, num_samples=1, max_failures=0))
    args = ["--config", str(config), "--results", str(results)]
    assert loss_combo_main(args, train_fn=_raising_once(1)) == 1
    assert "1 trial(s) failed; run the same command again" in capsys.readouterr().err
    assert set(_tune_trials(results / "broken").values()) == {"ERROR"}
    assert loss_combo_main(args) == 0
    _check_finished(results / "broken", 1, 2)


def _bad(tmp_path, **changes):
    return tiny_sweep(tmp_path / "zoo", **changes)


@pytest.mark.parametrize(
    "main, make, message",
    [
        (loss_combo_main, lambda t: _bad(t, space={"losses": ["mse", "nope"]}), "space.losses: unknown loss 'nope'"),
        (loss_combo_main, lambda t: _bad(t, space={"losses": []}), "space.losses: expected 'all' or a non-empty list"),
        (hparams_main, lambda t: {**_bad(t, space={}), "run": {**_bad(t)["run"], "losses": {"mse": 1.0}}},
         "space: empty search space"),
        (loss_combo_main, lambda t: _bad(t, space={"losses": "all", "lr": {"low": 1e-2, "high": 1e-3}}),
         "space.lr: inverted range, low 0.01 > high 0.001"),
        (hparams_main, lambda t: _bad(t, space={"d_model": {"choices": [32, 64]}}),
         "space.d_model: d_model is n_heads × head_dim"),
        (hparams_main, lambda t: _bad(t, space={"lr": {"low": 1e-3, "high": 1e-2}}, run={**_bad(t)["run"], "lr": 1e-3}),
         "run.lr: searched (space.lr); remove it from run"),
        (hparams_main, lambda t: _bad(t, space={"warmup_steps": {"choices": [-1, 8]}}),
         "space.warmup_steps: warmup_steps must be an integer >= 0, got -1"),
        (hparams_main, lambda t: _bad(t, space={"align": {"choices": ["sort", "rank"]}}),
         "space.align.choices[1]: unknown 'rank'; known: ['none', 'sort', 'match']"),
        (hparams_main, lambda t: _bad(t, space={"align": {"low": 0, "high": 2}}),
         "space.align: a setting of names is searched as {choices: [..]} of ['none', 'sort', 'match']"),
        (hparams_main, lambda t: _bad(t, space={"permutations": {"choices": ["sort", 4]}}),
         "space.permutations.choices[0] must be an integer, got 'sort'"),
        (hparams_main, lambda t: _bad(t, space={"permutations": {"low": -1, "high": 4}}),
         "space.permutations: permutations must be an integer >= 0, got -1"),
        (hparams_main, lambda t: _bad(t, space={"align": {"choices": ["sort"]}}, run={**_bad(t)["run"], "align": "sort"}),
         "run.align: searched (space.align); remove it from run"),
        (loss_combo_main, lambda t: _bad(t, num_sample=3), "unknown keys ['num_sample']"),
        (loss_combo_main, lambda t: _bad(t, run={**_bad(t)["run"], "epoch": 2}), "run: unknown keys ['epoch']"),
        (loss_combo_main, lambda t: _bad(t, run={**_bad(t)["run"], "out": "x"}), "run.out: set by the sweep"),
        (loss_combo_main, lambda t: _bad(t, run={**_bad(t)["run"], "losses": {"mse": 1.0}}),
         "run.losses: the mix is what this sweep searches"),
        (loss_combo_main, lambda t: _bad(t, objectives=[{"metric": "test/generated/acc_in", "mode": "max"}]),
         "objectives[0]: metric 'test/generated/acc_in' is not a validation metric"),
        (loss_combo_main, lambda t: _bad(t, scheduler={"kind": "asha", "grace_period": 2}),
         "scheduler.grace_period (2) must be below run.epochs (2)"),
        (loss_combo_main, lambda t: _bad(t, repeat={"top": 1, "seeds": [0, 1]}), "repeat.seeds: 0 is run.seed"),
        (loss_combo_main, lambda t: _bad(t, repeat={"top": 1, "vary": ["weights"]}), "vary must name some of"),
        (loss_combo_main, lambda t: _bad(t, run={**_bad(t)["run"], "seeds": [1, 2]}), "run.seeds: a trial is one run"),
        (loss_combo_main, lambda t: "space: [unclosed", "malformed YAML"),
    ],
)
def test_bad_inputs_fail_before_ray_starts(tmp_path, capsys, main, make, message):
    cfg = make(tmp_path)
    path = tmp_path / "bad.yaml"
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    assert main(["--config", str(path), "--results", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and message in err, err
    assert not ray.is_initialized()


def test_an_existing_name_with_another_config_is_refused(sweep_zoo, tmp_path, capsys):
    first = engine.load_sweep(LossComboSweep, _write(tmp_path / "a.yaml", tiny_sweep(sweep_zoo)))
    engine.prepare_folder(first, tmp_path / "results" / "taken")
    other = _write(tmp_path / "b.yaml", tiny_sweep(sweep_zoo, num_samples=5))
    args = ["--config", str(other), "--results", str(tmp_path / "results"), "--name", "taken"]
    assert loss_combo_main(args) == 2
    err = capsys.readouterr().err
    assert "holds a sweep with another config (num_samples: 3 there, 5 now)" in err and "--resume" in err
    assert not ray.is_initialized()
    # Its own config, or --resume, is accepted (up to the zoo, missing here).
    assert engine.prepare_folder(first, tmp_path / "results" / "taken") is True


def test_a_sweep_whose_checkpoints_would_not_fit_is_refused_before_ray_starts(sweep_zoo, tmp_path, capsys,
                                                                             monkeypatch):
    cfg = tiny_sweep(sweep_zoo, repeat={"top": 1, "seeds": [1, 2]})  # 3 trials and 2 repeats
    sweep = engine.load_sweep(LossComboSweep, _write(tmp_path / "big.yaml", cfg))
    each = disk_bytes(sweep.run)
    folder = tmp_path / "results" / "big"
    free = {"bytes": 5 * each - 1}
    monkeypatch.setattr(engine.shutil, "disk_usage", lambda path: SimpleNamespace(free=free["bytes"]))
    args = ["--config", str(tmp_path / "big.yaml"), "--results", str(tmp_path / "results")]
    assert loss_combo_main(args) == 2
    err = capsys.readouterr().err
    assert f"the sweep's 5 runs to come keep about {5 * each / 1e9:.2f} GB of checkpoints" in err, err
    # Nothing was written: the same name with a smaller num_samples is no other sweep.
    assert not ray.is_initialized() and not folder.exists()
    # Runs that hold a checkpoint already are on the disk: a resumed sweep needs room for the rest.
    for run_dir in (folder / engine.TRIALS / "a", folder / "repeats" / "a" / "seed-1"):
        run_dir.mkdir(parents=True)
        (run_dir / CHECKPOINT).touch()
    free["bytes"] = 3 * each
    engine.check_disk(sweep, folder)
    free["bytes"] -= 1
    with pytest.raises(ValueError, match="the sweep's 3 runs to come"):
        engine.check_disk(sweep, folder)


def test_the_disk_a_sweep_plans_for_is_its_largest_model_s(sweep_zoo):
    run = RunConfig.from_dict({"zoo": str(sweep_zoo), "out": "x", "model": {"preset": "tiny"}})
    losses = LossSpace.from_dict({"losses": ["mse", "fft"]}, "space", {})
    assert losses.largest(run) == run
    sizes = {"n_heads": {"choices": [4, 1, 2]}, "head_dim": {"low": 4, "high": 16}, "neck": {"choices": [8, 32, 16]},
             "n_layers": {"low": 1, "high": 2}, "lr": {"low": 1e-4, "high": 1e-2}}
    space = HparamSpace.from_dict(sizes, "space", {})
    # Every corner of the space, each a model of its own: the largest is the one planned for.
    corners = itertools.product(*(space._searched()[k].extremes() for k in sizes))
    largest = max(n_params(space.apply(run, dict(zip(sizes, c))).model) for c in corners)
    assert n_params(space.largest(run).model) == largest == n_params(run.model.replace(d_model=64, n_heads=4,
                                                                                       neck=32, n_layers=2))


def _sample(space, n):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(n):
        trial = study.ask()
        space(trial)
        yield trial.params
        study.tell(trial, 0.0)


def test_search_spaces_sample_only_valid_runs(sweep_zoo):
    run = RunConfig.from_dict({"zoo": str(sweep_zoo), "out": "x", "model": {"preset": "tiny"}})
    losses = LossSpace.from_dict({"losses": ["mse", "fft", "behavioral"]}, "space", {})
    mixes = [losses.apply(run, p).losses for p in _sample(losses, 200)]
    assert all(mixes) and {n for m in mixes for n in m} == {"mse", "fft", "behavioral"}
    assert all(0.01 <= w <= 1.0 for m in mixes for w in m.values())
    heads = HparamSpace.from_dict(
        {"n_heads": {"choices": [1, 3, 4]}, "head_dim": {"choices": [5, 8]}, "n_layers": {"low": 1, "high": 2}},
        "space", {},
    )
    models = [heads.apply(run, p).model for p in _sample(heads, 50)]
    assert {m.d_model for m in models} == {5, 8, 15, 24, 20, 32}
    assert all(m.d_model % m.n_heads == 0 for m in models)


def test_the_symmetry_levers_are_searchable(tmp_path):
    run = RunConfig.from_dict({"zoo": str(tmp_path), "out": "x"})
    space = HparamSpace.from_dict(
        {"align": {"choices": ["none", "sort", "match"]}, "permutations": {"low": 0, "high": 20}}, "space", {}
    )
    assert space.to_dict() == {"permutations": {"low": 0, "high": 20, "log": False},
                               "align": {"choices": ["none", "sort", "match"]}}
    runs = [space.apply(run, p) for p in _sample(space, 40)]
    assert {r.align for r in runs} == {"none", "sort", "match"}
    assert all(isinstance(r.permutations, int) and 0 <= r.permutations <= 20 for r in runs)
    assert len({r.permutations for r in runs}) > 5


def test_hparams_tiny_default_config_is_valid():
    cfg = engine.load_sweep(HparamSweep, REPO / "sweeps" / "configs" / "hparams_tiny.yaml")
    assert cfg.zoo_profile == "tiny" and cfg.run.losses
    cfg = engine.load_sweep(LossComboSweep, REPO / "sweeps" / "configs" / "loss_combo_tiny.yaml")
    assert cfg.run.loss_scaling == "first" and len(cfg.space.losses) > 10
