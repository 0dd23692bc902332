"""Building a zoo with long-lived Ray actors.

Each actor loads MNIST once (onto its GPU when it has one) and trains the job groups it is
handed; the driver writes each finished model's shard atomically, so a build killed at
any point resumes by skipping the shards already on disk. Zoo training is deliberately not
a Tune sweep: thousands of short trials would spend hours in trial overhead.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ray
import torch
from tqdm.auto import tqdm

from wsmerge.data import load_mnist

from ._config import Job, TrainConfig, ZooConfig
from ._plan import plan_groups, train_images
from ._store import ZooStore
from ._train import ModelRecord, train_group

__all__ = ["BuildOptions", "BuildReport", "build_zoo"]


@dataclass(frozen=True)
class BuildOptions:
    actors: int | None = None  # default: as many as the cluster's resources hold
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    # Models trained per step by one actor; the zoo is the same whatever it is. On a CPU,
    # 2 to 4 cost what one does per model (a lone model runs beside a frozen copy of
    # itself, see _train._forward); on a GPU, hundreds to thousands.
    models_per_step: int = 4
    data_root: str | None = None
    progress: bool = True

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        g = self.gpus_per_actor
        if g < 0 or (g > 1 and not float(g).is_integer()):
            raise ValueError(f"gpus_per_actor must be a fraction in [0, 1] or a whole number, got {self.gpus_per_actor}")
        if self.models_per_step < 1:
            raise ValueError(f"models_per_step must be >= 1, got {self.models_per_step}")


@dataclass(frozen=True)
class BuildReport:
    total: int
    skipped: int  # already done before this run
    trained: int


@ray.remote
class ZooWorker:
    def __init__(self, train: TrainConfig, data_root: str | None, threads: int):
        torch.set_num_threads(threads)
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.data = load_mnist(data_root).to(self.device)
        self.train = train

    def train_jobs(self, jobs: list[Job]) -> list[ModelRecord]:
        return train_group(jobs, self.data, self.train)


def _n_actors(opts: BuildOptions, n_groups: int) -> int:
    res = ray.available_resources()
    cpus, gpus = res.get("CPU", 0), res.get("GPU", 0)
    fits = cpus // opts.cpus_per_actor
    if opts.gpus_per_actor > 0:
        fits = min(fits, gpus // opts.gpus_per_actor)
        if fits < 1:
            raise ValueError(f"gpus_per_actor={opts.gpus_per_actor} but the Ray cluster has {gpus:g} free GPUs")
    if opts.actors is None:
        return max(1, min(int(fits), n_groups))
    n = min(opts.actors, n_groups)
    if n > fits:
        # Ray would start the actors that fit and leave the rest pending for ever.
        need = f"{n} × {opts.cpus_per_actor:g} CPU" + (f" + {opts.gpus_per_actor:g} GPU" if opts.gpus_per_actor else "")
        raise ValueError(
            f"--actors {opts.actors}: {n} actors need {need}, but Ray has {cpus:g} CPUs and {gpus:g} GPUs "
            f"free, room for {int(fits)}; ask for fewer actors or fewer CPUs per actor"
        )
    return n


def build_zoo(config: ZooConfig, out: str | os.PathLike, opts: BuildOptions = BuildOptions()) -> BuildReport:
    """Train every job of `config` not yet in the store at `out`; safe to rerun after a kill."""
    store = ZooStore(Path(out), config).open()
    total = len(config.jobs())
    pending = store.pending()  # verifies every existing shard before any training
    report = BuildReport(total=total, skipped=total - len(pending), trained=len(pending))
    if not pending:
        return report
    images = train_images(pending, config.train, load_mnist(opts.data_root))
    groups = plan_groups(pending, opts.models_per_step, images)
    started_ray = not ray.is_initialized()
    if started_ray:
        if os.environ.get("RAY_ADDRESS"):
            ray.init()  # join the cluster (ray up cluster/gpu.yaml) as it is configured
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    try:
        _run(store, groups, images, opts, report)
    finally:
        if started_ray:
            ray.shutdown()
    return report


def _run(store: ZooStore, groups: list[list[Job]], images: dict[Job, int], opts: BuildOptions,
         report: BuildReport) -> None:
    n = _n_actors(opts, len(groups))
    threads = max(1, int(opts.cpus_per_actor))
    actors = [
        ZooWorker.options(num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor).remote(
            store.config.train, opts.data_root, threads
        )
        for _ in range(n)
    ]
    # Longest groups first (a group's step count is its largest member's): a 10-class
    # model started last would leave the other actors idle while it trains.
    queue = sorted(groups, key=lambda g: (max(images[j] for j in g), len(g)))
    in_flight: dict[ray.ObjectRef, ray.actor.ActorHandle] = {}

    def submit(actor):
        if queue:
            in_flight[actor.train_jobs.remote(queue.pop())] = actor

    # Two groups per actor keep it busy while the driver writes the previous result.
    for actor in actors * 2:
        submit(actor)
    bar = tqdm(
        total=report.total, initial=report.skipped, unit="model", desc=f"zoo {store.config.name}",
        disable=not opts.progress, smoothing=0.1,
    )
    try:
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor = in_flight.pop(ref)
            records = ray.get(ref)
            for record in records:
                store.write(record)
            bar.update(len(records))
            submit(actor)
    finally:
        bar.close()
        for actor in actors:
            ray.kill(actor)
