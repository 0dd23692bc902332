"""The zoo builder end to end: the real CLI, two Ray actors, a SIGKILL part-way, a resume."""

import dataclasses
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import ray
import torch

from sweeps.zoo import main as zoo_main
from wsmerge.cnn import ACTIVATIONS, INITS
from wsmerge.zoo import ZooStoreError, build_zoo, load, profile, train_group

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


def _zoo_cmd(out, *extra):
    return [sys.executable, "-m", "sweeps.zoo", "--profile", "tiny", "--out", str(out), "--actors", "2",
            "--no-progress", *extra]


def test_killed_build_resumes_without_loss_or_duplicates(tmp_path, ray_env, mnist):
    out = tmp_path / "zoo"
    cfg = profile("tiny")
    n_jobs, n_bins = len(cfg.jobs()), len(cfg.train.bins)
    proc = subprocess.Popen(_zoo_cmd(out, "--models-per-step", "2"), cwd=REPO, env=ray_env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    shards = out / "shards"
    while time.time() < deadline and proc.poll() is None:
        if shards.is_dir() and len(list(shards.glob("*.parquet"))) >= 4:
            break
        time.sleep(0.05)
    assert proc.poll() is None, f"build ended before it could be killed: {proc.stderr.read().decode()[-2000:]}"
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
    proc.wait()

    before = {p.name: p.read_bytes() for p in shards.glob("*.parquet")}
    assert 4 <= len(before) < n_jobs
    with pytest.raises(ZooStoreError, match="incomplete zoo"):
        load(out)

    # Resumed with another grouping, which changes no model.
    done = subprocess.run(_zoo_cmd(out, "--models-per-step", "5"), cwd=REPO, env=ray_env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"({len(before)} already built, {n_jobs - len(before)} trained now)" in done.stdout

    df = load(out)
    assert len(df) == n_jobs * n_bins
    assert not df.duplicated(["job_id", "epoch_bin"]).any()
    assert set(df.job_id) == {j.id for j in cfg.jobs()}
    # Shards finished before the kill were kept as they were, not retrained.
    for name, data in before.items():
        assert (shards / name).read_bytes() == data
    assert not list(shards.glob(".*.tmp"))
    # Even the tiny budget learns: 2-class models are far above chance on their classes.
    last = df[df.epoch_bin == df.epoch_bin.max()]
    assert last[last.n_classes == 2].test_acc_in.median() > 90

    again = subprocess.run(_zoo_cmd(out), cwd=REPO, env=ray_env, capture_output=True, text=True, timeout=120)
    assert f"({n_jobs} already built, 0 trained now)" in again.stdout

    # A model from before the kill and one from after, each trained alone here on one thread
    # as an actor trains: the same bits.
    after = sorted(set(df.job_id) - {Path(n).stem for n in before})[0]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for job in [j for j in cfg.jobs() if j.id in (Path(min(before)).stem, after)]:
            (alone,) = train_group([job], mnist, cfg.train)
            rows = df[df.job_id == job.id].sort_values("epoch_bin")
            expected = np.stack([alone.checkpoints[e][0] for e in rows.epoch])
            assert np.array_equal(np.stack(rows.weights), expected), job.id
    finally:
        torch.set_num_threads(threads)


def test_store_errors_come_before_ray_starts(tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "data.bin").write_bytes(b"x")
    with pytest.raises(ZooStoreError, match="holds other files"):
        build_zoo(profile("tiny"), out)
    assert not ray.is_initialized()


@pytest.mark.parametrize(
    "args, message",
    [
        (["--profile", "huge"], "invalid choice: 'huge'"),
        (["--activations", "relu,swish"], "unknown activation 'swish'"),
        (["--inits", "orthogonal"], "unknown init 'orthogonal'"),
        (["--actors", "0"], "actors must be >= 1"),
        (["--gpus-per-actor", "1.5"], "gpus_per_actor"),
        (["--data-root", "/nonexistent"], "/nonexistent"),
    ],
)
def test_cli_bad_arguments(tmp_path, capsys, args, message):
    try:
        code = zoo_main(["--out", str(tmp_path / "z"), *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "z").exists()


def test_cli_yaml_config(tmp_path, capsys):
    from sweeps.zoo import parse_args, resolve_config

    good = tmp_path / "good.yaml"
    good.write_text("profile: tiny\nactivations: [gelu]\ntrain: {max_epochs: 4, bins: [2, 4]}\n")
    cfg = resolve_config(parse_args(["--config", str(good)]))
    assert cfg.activations == ("gelu",) and cfg.train.bins == (2, 4) and cfg.train.train_per_class == 400
    cases = {
        "bad.yaml": ("profile: [tiny\n", "malformed YAML"),
        "unknown.yaml": ("profile: tiny\nactivation: [relu]\n", "unknown keys ['activation']"),
        "profile.yaml": ("profile: medium\n", "unknown profile 'medium'"),
        "bins.yaml": ("train: {bins: [3, 50]}\n", "past max_epochs"),
        "types.yaml": ('train: {max_epochs: "seven"}\n', "train.max_epochs must be an integer, got 'seven'"),
        "exponent.yaml": ("train: {base_lr: 1e-4}\n", "train.base_lr must be a number, got '1e-4' (a string: YAML reads"),
        "seeds.yaml": ("seeds: [zero]\n", "zoo.seeds[] must be an integer, got 'zero'"),
        "list.yaml": ("activations: relu\n", "zoo.activations must be a list, got 'relu'"),
    }
    for name, (text, message) in cases.items():
        (tmp_path / name).write_text(text)
        assert zoo_main(["--config", str(tmp_path / name), "--out", str(tmp_path / "z")]) == 2
        err = capsys.readouterr().err
        assert message in err and name in err
    assert not (tmp_path / "z").exists()


def test_cli_help_explains_the_layout_and_the_choices(capsys):
    with pytest.raises(SystemExit):
        zoo_main(["--help"])
    out = capsys.readouterr().out
    for word in ("manifest.json", "init.parquet", "shards/<job_id>.parquet", "--plan", *ACTIVATIONS, *INITS):
        assert word in out


def test_the_cluster_s_bf16_zoo_is_the_full_profile_in_bf16_under_its_own_name():
    from sweeps.zoo import parse_args, resolve_config
    cfg = resolve_config(parse_args(["--config", str(Path(__file__).parents[1] / "cluster" / "zoo_full_bf16.yaml")]))
    full = profile("full")
    assert (cfg.name, cfg.train.precision, full.train.precision) == ("full_bf16", "bf16", "fp32")
    assert cfg.replace(name="full", train=full.train) == full
    assert dataclasses.replace(cfg.train, precision="fp32") == full.train


def test_cli_plan_trains_nothing(tmp_path, capsys, mnist):
    out = tmp_path / "z"
    assert zoo_main(["--profile", "tiny", "--out", str(out), "--plan"]) == 0
    text = capsys.readouterr().out
    cfg = profile("tiny")
    jobs = cfg.jobs()
    images = sum(len(mnist.train.indices(j.classes, cfg.train.train_per_class)) for j in jobs)
    assert f"{len(jobs)} models to train (0 already built)" in text
    assert f"model-images: {images * cfg.train.last_epoch:,} trained " in text
    t, per = cfg.train, cfg.train.eval_per_class
    evaluated = sum(len(mnist.val.indices(j.classes, per)) * t.last_epoch + len(t.bins) * (
        len(mnist.test.indices(j.classes, per)) + len(mnist.test.others(j.classes, per))) for j in jobs)
    assert f"{evaluated:,} evaluated (validation each epoch, test at each bin)" in text
    assert re.search(r"disk: [\d.]+ MiB", text)
    assert re.search(r"probe: [\d,]+ model-images/s trained, [\d,]+ evaluated", text)
    assert re.search(r"projected: [\d.,]+ min with 1 actor \([\d.,]+ training, [\d.,]+ evaluating\)", text)
    assert "no GPU" not in text
    assert not out.exists()
    if not torch.cuda.is_available():
        # GPU actors planned on a machine without one: the CPU's projection, said so.
        assert zoo_main(["--profile", "tiny", "--out", str(out), "--plan", "--gpus-per-actor", "1",
                         "--models-per-step", "1"]) == 0
        assert ("note: --gpus-per-actor 1 but this machine has no GPU: the probe runs on its CPU, so the projected "
                "time is a CPU's") in capsys.readouterr().out


def test_cli_plan_counts_compiling_in_each_actor(tmp_path, capsys, mnist, monkeypatch):
    # What --plan prints on a GPU, where the step compiles: the CPU made to compile as one,
    # and the probe's figures fixed, so that the arithmetic shows.
    import sweeps.zoo
    from wsmerge.zoo import ProbeRates, _train, plan_build
    monkeypatch.setattr(_train, "_COMPILE_DEVICES", ("cuda", "cpu"))
    rates = ProbeRates(train=1000.0, evaluate=3000.0, step_compile=12.0, eval_compile=3.0)
    monkeypatch.setattr(sweeps.zoo, "probe_rates", lambda *a, **k: rates)
    cfg = profile("tiny")
    plan = plan_build(cfg, cfg.jobs(), 8, mnist, "cpu")
    assert plan.step_graphs > 1 and plan.eval_graphs > 1  # groups of 7 and 8 models, each its own width
    args = ["--profile", "tiny", "--out", str(tmp_path / "z"), "--plan", "--models-per-step", "8", "--actors", "2"]
    assert zoo_main(args) == 0
    text = capsys.readouterr().out
    compiling = (12 * plan.step_graphs + 3 * plan.eval_graphs) / 60
    assert (f"compiling: {plan.step_graphs} training-step graphs (one a step width; 12 s the probe's) and "
            f"{plan.eval_graphs} evaluation graphs (3 s): {compiling:.1f} min in each actor") in text
    train, evaluate = plan.model_images / (1 - plan.idle_share) / 1000 / 60, plan.eval_images / 3000 / 60
    # Two actors share the training and the evaluation; each compiles its own graphs.
    assert (f"projected: {(train + evaluate) / 2 + compiling:,.1f} min with 2 actors ({train / 2:,.1f} training, "
            f"{evaluate / 2:,.1f} evaluating, {compiling:,.1f} compiling)") in text
    assert zoo_main(args + ["--no-compile"]) == 0
    text = capsys.readouterr().out
    assert "  compiling:" not in text and " compiling)" not in text


def test_explicit_actors_beyond_the_resources_stop_before_training(tmp_path, capsys, ray_local):
    out = tmp_path / "z"
    code = zoo_main(["--profile", "tiny", "--out", str(out), "--actors", "5", "--no-progress"])
    assert code == 2
    err = capsys.readouterr().err
    assert "--actors 5: 5 actors need 5 × 1 CPU, but Ray has 2 CPUs and 0 GPUs free, room for 2" in err
    assert not list((out / "shards").glob("*.parquet"))
