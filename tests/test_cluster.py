"""A two-node Ray cluster on this machine, made as `ray up` makes one: `ray start --head` and a
worker node (`ray start --address`), each declaring 2 CPUs and one logical GPU. The real
entry points join it with --address and write under --storage: the zoo and a sweep spread
over both nodes with the GPU fractions they ask for, and when the worker node is killed
part-way no zoo job and no finished trial is lost, and what comes out equals a run that
lost nothing. Also: the launcher configs pass Ray's own validation."""

import copy
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import jsonschema
import numpy as np
import optuna
import procs
import pytest
import ray
import torch
import yaml
from procs import kill_marked
from ray.autoscaler._private.util import prepare_config, validate_config
from ray.tune import ExperimentAnalysis
from runs import same, strip_time, tiny_sweep

from sweeps import engine
from sweeps.loss_combo import main as loss_combo_main
from sweeps.zoo import main as zoo_main
from sweeps.zoo import parse_args, resolve_config
from wsmerge.cluster import STORAGE_ENV, check_shared, storage_root, under
from wsmerge.train import train
from wsmerge.zoo import BuildOptions, load, train_group
from wsmerge.zoo._build import _n_actors

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
# Inherited by every process of the worker node (raylet, workers, agents): killing all of
# them at once is what losing the machine does.
NODE_MARK = "WSMERGE_TEST_NODE"
# A dead node noticed in about a second (by default Ray waits some 15 s).
FAST_HEALTH = {"health_check_period_ms": 300, "health_check_failure_threshold": 3, "health_check_initial_delay_ms": 0}


# --------------------------------------------------------------------- launcher configs


@pytest.mark.parametrize("name", ["gpu.yaml", "local.yaml"])
def test_launcher_configs_pass_rays_validation(name):
    raw = yaml.safe_load((REPO / "cluster" / name).read_text())
    # What `ray up` does before it reaches the cloud: fill in the provider's defaults, merge
    # the node types, then check the result against the launcher's schema.
    prepared = prepare_config(copy.deepcopy(raw))
    validate_config(prepared)
    with pytest.raises(jsonschema.ValidationError):  # the schema is strict: a misspelt key fails
        validate_config({**prepared, "max_worker": 2})
    # `ray` is not on a node's PATH: the start commands put the venv's bin first.
    for command in prepared["head_start_ray_commands"] + prepared["worker_start_ray_commands"]:
        assert command.startswith("export PATH=$HOME/wsmerge/.venv/bin:$PATH WSMERGE_STORAGE=/shared && ray stop")
    assert any("scripts/setup.sh cluster" in c for c in prepared["setup_commands"])


# --------------------------------------------------------------------------- two nodes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """Ray nodes started on this machine with `ray start`, as `ray up` starts them on
    machines: a head, then worker nodes, each with 2 CPUs and the logical GPUs asked for."""

    def __init__(self, tmp: str):
        self.tmp = tmp  # short: socket paths have a length limit
        self.env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_TMPDIR=tmp)  # RAY_TMPDIR marks every process
        self.address = f"127.0.0.1:{_free_port()}"
        self.head: str | None = None  # Ray node ids
        self.worker: str | None = None

    def _start(self, args: list[str], env: dict, gpus: int) -> None:
        ray_cli = str(Path(sys.executable).with_name("ray"))
        subprocess.run([ray_cli, "start", *args, "--num-cpus=2", f"--num-gpus={gpus}",
                        "--object-store-memory=300000000", "--disable-usage-stats"],
                       env=env, check=True, capture_output=True, timeout=120)

    def _alive(self, n: int) -> set[str]:
        ray.init(address=self.address, log_to_driver=False)
        try:
            deadline = time.time() + 30
            while len(alive := {node["NodeID"] for node in ray.nodes() if node["Alive"]}) != n:
                assert time.time() < deadline, f"{len(alive)} live Ray nodes, expected {n}"
                time.sleep(0.2)
            return alive
        finally:
            ray.shutdown()

    def start_head(self, gpus: int) -> None:
        port = self.address.rsplit(":", 1)[1]
        self._start(["--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={self.tmp}",
                     f"--system-config={json.dumps(FAST_HEALTH)}"], self.env, gpus)
        (self.head,) = self._alive(1)

    def add_worker(self, gpus: int) -> None:
        self._start([f"--address={self.address}"], {**self.env, NODE_MARK: self.tmp}, gpus)
        (self.worker,) = self._alive(2) - {self.head}

    def kill_worker(self) -> None:
        """Every process of the worker node at once, as losing the machine does."""
        kill_marked(NODE_MARK, self.tmp)


@pytest.fixture
def local_cluster():
    cluster = LocalCluster(tempfile.mkdtemp(prefix="r", dir="/tmp"))
    try:
        yield cluster
    finally:
        kill_marked("RAY_TMPDIR", cluster.tmp)
        shutil.rmtree(cluster.tmp, ignore_errors=True)


@pytest.fixture
def two_nodes(local_cluster):
    local_cluster.start_head(gpus=1)
    local_cluster.add_worker(gpus=1)
    return local_cluster


def _driver_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WSMERGE_STORAGE")}
    return {**env, "RAY_AUTH_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------------- zoo


def _zoo_config(storage: Path):
    """The tiny profile's 22 jobs on fewer images and epochs, as a zoo YAML in `storage`, and
    the config the CLI reads from it."""
    path = storage / "zoo.yaml"
    path.write_text("profile: tiny\ntrain: {max_epochs: 2, bins: [1, 2], train_per_class: 200, eval_per_class: 50}\n")
    return resolve_config(parse_args(["--config", str(path)]))


def _zoo_cmd(storage: Path, address: str) -> list[str]:
    # Half a GPU an actor: a node's CPUs would hold four, its one GPU holds two.
    return [sys.executable, "-m", "sweeps.zoo", "--config", str(storage / "zoo.yaml"), "--storage", str(storage),
            "--out", "zoo", "--address", address, "--cpus-per-actor", "0.5", "--gpus-per-actor", "0.5",
            "--models-per-step", "1", "--no-progress"]


def _build_and_kill_worker(cluster: LocalCluster, storage: Path) -> tuple[int, str, dict[str, bytes]]:
    """Run the zoo CLI on the cluster, kill the worker node once 3 models are built; the
    build's exit code, its output, and the shards there were at the kill."""
    log = storage / "build.log"
    with log.open("w") as out:
        proc = subprocess.Popen(_zoo_cmd(storage, cluster.address), cwd=REPO, env=_driver_env(), stdout=out,
                                stderr=subprocess.STDOUT)
    shards = storage / "zoo" / "shards"  # --out zoo, under --storage
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None and len(list(shards.glob("*.parquet"))) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, f"the build ended before the node could be killed: {log.read_text()[-3000:]}"
    before = {p.name: p.read_bytes() for p in shards.glob("*.parquet")}
    cluster.kill_worker()
    return proc.wait(timeout=300), log.read_text(), before


def _check_as_if_alone(zoo: Path, cfg, mnist, jobs=None) -> None:
    """Every job of `cfg` once, and each of `jobs` (default: all) the bits it has when trained
    alone as an actor trains it (one thread): whatever was lost on the way, the zoo is the
    one an undisturbed build makes."""
    df = load(zoo)
    assert sorted(set(df.job_id)) == sorted(j.id for j in cfg.jobs())
    assert not df.duplicated(["job_id", "epoch_bin"]).any()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for job in cfg.jobs() if jobs is None else jobs:
            (alone,) = train_group([job], mnist, cfg.train)
            rows = df[df.job_id == job.id].sort_values("epoch_bin")
            assert np.array_equal(np.stack(rows.weights), np.stack([alone.checkpoints[e][0] for e in rows.epoch])), job.id
    finally:
        torch.set_num_threads(threads)


def test_zoo_build_spreads_over_both_nodes_and_loses_nothing_with_one(two_nodes, tmp_path, mnist):
    cfg = _zoo_config(tmp_path)
    jobs = cfg.jobs()
    code, text, before = _build_and_kill_worker(two_nodes, tmp_path)
    assert code == 0, text[-3000:]
    assert len(before) < len(jobs)

    # Both nodes held two actors, each on GPU 0 of its node, and trained models.
    placed = dict(re.findall(r"node (\w{8}): (2 actors on GPUs \['0'\], \d+ models)", text))
    assert set(placed) == {two_nodes.head[:8], two_nodes.worker[:8]}, text
    assert all(int(p.split()[-2]) > 0 for p in placed.values()), text
    # The worker's actors died with work in flight; the head's actors trained it.
    lost = int(re.search(r"(\d+) models whose actor was lost", text).group(1))
    assert lost >= 1 and "was lost (ActorDiedError)" in text, text
    assert f"(0 already built, {len(jobs)} trained now)" in text
    _check_as_if_alone(tmp_path / "zoo", cfg, mnist)

    again = subprocess.run(_zoo_cmd(tmp_path, two_nodes.address), cwd=REPO, env=_driver_env(), capture_output=True,
                           text=True, timeout=120)
    assert again.returncode == 0 and f"({len(jobs)} already built, 0 trained now)" in again.stdout, again.stderr


def test_a_zoo_build_that_loses_every_actor_is_finished_by_a_rerun(local_cluster, tmp_path, mnist):
    cfg = _zoo_config(tmp_path)
    jobs = cfg.jobs()
    local_cluster.start_head(gpus=0)  # no GPU on the head: every actor goes to the worker
    local_cluster.add_worker(gpus=1)
    code, text, before = _build_and_kill_worker(local_cluster, tmp_path)
    assert code == 1, text[-3000:]
    missing = int(re.search(r"every actor was lost; (\d+) models are not trained yet: run the same command "
                            r"again", text).group(1))
    shards = tmp_path / "zoo" / "shards"
    kept = {p.name: p.read_bytes() for p in shards.glob("*.parquet")}
    assert before.items() <= kept.items() and missing == len(jobs) - len(kept) > 0

    local_cluster.add_worker(gpus=1)  # a node comes back
    again = subprocess.run(_zoo_cmd(tmp_path, local_cluster.address), cwd=REPO, env=_driver_env(),
                           capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"({len(kept)} already built, {len(jobs) - len(kept)} trained now)" in again.stdout
    assert {p.name: p.read_bytes() for p in shards.glob("*.parquet") if p.name in kept} == kept
    _check_as_if_alone(tmp_path / "zoo", cfg, mnist, [j for j in jobs if f"{j.id}.parquet" not in kept])


# ------------------------------------------------------------------------------- sweep


def _sweep_config(path: Path) -> Path:
    cfg = tiny_sweep(
        "zoo",  # relative: read under --storage
        num_samples=4,
        concurrency=4,
        startup_trials=4,  # every trial drawn at random: the same four in every run
        # Half a GPU a trial: two a node at once, though its CPUs would hold four.
        cpus_per_trial=0.5,
        gpus_per_trial=0.5,
        max_failures=2,
        wandb={"mode": "disabled"},
    )
    path.write_text(yaml.safe_dump(cfg))
    return path


def _placed(log_dir: str, kill: tuple[str, str] | None, together: int = 4):
    """train, recording where each run of a trial went (node, GPU ids, start, end). Trials
    wait until `together` of them have started (Tune starts them one by one, and these are
    short), so the cluster must hold that many at once. With `kill` (a node id and its
    mark), the first trial there to finish epoch 1 kills its whole node, itself included."""

    def train_placed(cfg, report, resume, zoo=None):
        node, gpus, start = ray.get_runtime_context().get_node_id(), ray.get_gpu_ids(), time.time()
        record = Path(log_dir) / f"{Path(cfg.out).name}-{uuid.uuid4().hex[:8]}.json"
        write = lambda **end: record.write_text(json.dumps(  # noqa: E731
            {"trial": Path(cfg.out).name, "node": node, "gpus": [str(g) for g in gpus], "start": start, **end}))
        write()
        deadline = time.time() + 300  # a guard against a hang: starting 4 trials on 2 loaded cores took over 120 s
        while len({p.name.rsplit("-", 1)[0] for p in Path(log_dir).glob("*.json")}) < together:
            assert time.time() < deadline, f"fewer than {together} trials ran at once"
            time.sleep(0.1)

        def report_then_kill(metrics):
            report(metrics)
            if kill is not None and node == kill[0] and metrics["epoch"] == 1:
                kill_marked(NODE_MARK, kill[1])
                os.kill(os.getpid(), signal.SIGKILL)  # as a lost machine takes every process with it

        result = train(cfg, report=report_then_kill, resume=resume, zoo=zoo)
        write(end=time.time())
        return result

    return train_placed


def _runs(log_dir: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in log_dir.glob("*.json")]


def _most_at_once(runs: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in runs] + [(r["end"], -1) for r in runs], key=lambda e: (e[0], e[1]))
    at_once = most = 0
    for _, step in events:
        at_once += step
        most = max(most, at_once)
    return most


def _outcome(folder: Path) -> dict:
    """Each trial's test result and epochs, keyed by what it ran (its config less its folders)."""
    out = {}
    for d in (folder / engine.TRIALS).iterdir():
        result = json.loads((d / "result.json").read_text())
        history = json.loads((d / "history.json").read_text())["history"]
        key = json.dumps({k: v for k, v in result["config"].items() if k not in ("out", "baseline_cache")}, sort_keys=True)
        out[key] = (result["test"], strip_time(history))
    return out


def test_sweep_spreads_over_both_nodes_and_loses_nothing_with_one(two_nodes, tmp_path, sweep_zoo):
    ray.cloudpickle.register_pickle_by_value(procs)  # the trial kills its node with procs' helper
    shutil.copytree(sweep_zoo, tmp_path / "zoo")
    config = _sweep_config(tmp_path / "sweep.yaml")
    args = ["--config", str(config), "--storage", str(tmp_path), "--results", "r", "--address", two_nodes.address]
    logs = {name: tmp_path / f"{name}-runs" for name in ("whole", "lost")}
    for d in logs.values():
        d.mkdir()

    assert loss_combo_main([*args, "--name", "whole"], train_fn=_placed(str(logs["whole"]), None)) == 0
    assert not ray.is_initialized()
    whole = _runs(logs["whole"])
    assert {r["node"] for r in whole} == {two_nodes.head, two_nodes.worker}
    assert all(r["gpus"] == ["0"] for r in whole)
    for node in (two_nodes.head, two_nodes.worker):
        assert _most_at_once([r for r in whole if r["node"] == node]) <= 2

    kill = (two_nodes.worker, two_nodes.tmp)
    assert loss_combo_main([*args, "--name", "lost"], train_fn=_placed(str(logs["lost"]), kill)) == 0
    lost = _runs(logs["lost"])
    cut = {r["trial"] for r in lost if r["node"] == two_nodes.worker and "end" not in r}
    assert cut, "no trial was running on the worker node when it was killed"
    # Those trials went on elsewhere from their checkpoint: each ran twice, ending on the head.
    for trial in cut:
        assert [r["node"] for r in sorted(lost, key=lambda r: r["start"]) if r["trial"] == trial][-1] == two_nodes.head
    folder = tmp_path / "r" / "lost"
    statuses = {t.trial_id: t.status for t in ExperimentAnalysis(str(folder / engine.TUNE)).trials}
    assert len(statuses) == 4 and set(statuses.values()) == {"TERMINATED"}
    study = optuna.load_study(study_name="lost", storage=f"sqlite:///{folder / 'study.db'}")
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials()) == 4

    # The same four trials with the same results as the sweep that lost nothing.
    expected, got = _outcome(tmp_path / "r" / "whole"), _outcome(folder)
    assert sorted(got) == sorted(expected)
    for key in expected:
        assert same(got[key], expected[key]), key


def test_actors_are_counted_node_by_node_and_storage_is_checked_on_each(two_nodes, tmp_path, monkeypatch):
    ray.init(address=two_nodes.address, log_to_driver=False)
    try:
        # 1.2 CPUs an actor: the cluster's 4 CPUs add up to 3, but each 2-CPU node holds one.
        assert _n_actors(BuildOptions(cpus_per_actor=1.2), 10) == 2
        with pytest.raises(ValueError, match="--actors 3: 3 actors need 3 × 1.2 CPU.*room for 2"):
            _n_actors(BuildOptions(cpus_per_actor=1.2, actors=3), 10)

        check_shared([tmp_path / "results"], [])  # both nodes share this machine's disk
        # What a node with its own disk would read: not the driver's file.
        monkeypatch.setattr("wsmerge.cluster._read", lambda path: None)
        with pytest.raises(ValueError, match=r"node .* does not see .*results as the driver does"):
            check_shared([tmp_path / "results"], [])
    finally:
        ray.shutdown()
    assert not list((tmp_path / "results").iterdir())  # no probe left behind


def test_storage_roots_relative_paths_and_must_exist(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert storage_root(None) is None and under(None, "zoo/tiny") == Path("zoo/tiny")
    assert under(storage_root(str(tmp_path)), "zoo/tiny") == tmp_path.resolve() / "zoo/tiny"
    assert under(tmp_path, "/abs/zoo") == Path("/abs/zoo")
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path))
    assert storage_root(None) == tmp_path.resolve()
    monkeypatch.setenv(STORAGE_ENV, str(tmp_path / "not-mounted"))
    with pytest.raises(ValueError, match=rf"\${STORAGE_ENV} .*not-mounted: not a directory"):
        storage_root(None)
    # Before anything is built or started, from either command line.
    missing = str(tmp_path / "gone")
    assert zoo_main(["--profile", "tiny", "--storage", missing, "--no-progress"]) == 2
    assert loss_combo_main(["--storage", missing]) == 2
    err = capsys.readouterr().err
    assert err.count(f"--storage {missing}: not a directory") == 2
    assert not (tmp_path / "gone").exists()


def test_the_gpu_sweep_config_is_valid_and_asks_for_gpus():
    from sweeps.engine import load_sweep
    from sweeps.loss_combo import LossComboSweep

    cfg = load_sweep(LossComboSweep, REPO / "sweeps" / "configs" / "loss_combo_gpu.yaml")
    assert cfg.gpus_per_trial == 0.5 and cfg.run.precision == "bf16" and cfg.zoo_profile is None
    assert cfg.run.zoo == "zoo/full"  # relative: read under the cluster's shared storage
