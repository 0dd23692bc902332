"""Building a zoo with long-lived Ray actors.

Each actor loads MNIST once (onto its GPU when it has one) and trains the job groups it is
handed; the driver writes each finished model's shard atomically, so a build killed at
any point resumes by skipping the shards already on disk. An actor lost with its node
hands its groups to the actors left, which train them from the start: the models come out
the same (a model never depends on its group or its actor). Zoo training is deliberately
not a Tune sweep: thousands of short trials would spend hours in trial overhead.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import ray
import torch
from tqdm.auto import tqdm

from wsmerge.cluster import node_id, ray_session
from wsmerge.data import load_mnist

from ._config import Job, TrainConfig, ZooConfig
from ._plan import plan_groups, train_images
from ._store import ZooStore
from ._train import ModelRecord, train_group

__all__ = ["ActorsLost", "BuildOptions", "BuildReport", "build_zoo"]


@dataclass(frozen=True)
class BuildOptions:
    actors: int | None = None  # default: as many as the cluster's resources hold
    cpus_per_actor: float = 1.0
    gpus_per_actor: float = 0.0
    # Models trained per step by one actor; the zoo is the same whatever it is. None: 1 for
    # CPU actors, where a batch of 16 images or more runs model by model anyway
    # (wsmerge.cnn.batched_forward) and single models share out over the actors best; 256
    # for GPU actors, which want hundreds to thousands (at 1024 the full zoo makes 6
    # groups, too few for 8 GPUs).
    models_per_step: int | None = None
    # On a GPU, the training step through torch.compile (_train.train_group); no effect on a CPU.
    compile: bool = True
    data_root: str | None = None
    progress: bool = True
    address: str | None = None  # a Ray cluster to join (default: $RAY_ADDRESS, else a local Ray)

    def __post_init__(self):
        if self.actors is not None and self.actors < 1:
            raise ValueError(f"actors must be >= 1, got {self.actors}")
        if self.cpus_per_actor <= 0:
            raise ValueError(f"cpus_per_actor must be > 0, got {self.cpus_per_actor}")
        g = self.gpus_per_actor
        if g < 0 or (g > 1 and not float(g).is_integer()):
            raise ValueError(f"gpus_per_actor must be a fraction in [0, 1] or a whole number, got {self.gpus_per_actor}")
        if self.models_per_step is None:
            object.__setattr__(self, "models_per_step", 256 if g > 0 else 1)
        if self.models_per_step < 1:
            raise ValueError(f"models_per_step must be >= 1, got {self.models_per_step}")


@dataclass(frozen=True)
class BuildReport:
    total: int
    skipped: int  # already done before this run
    trained: int
    actors: dict[str, int] = field(default_factory=dict)  # Ray node id -> actors placed there
    models: dict[str, int] = field(default_factory=dict)  # Ray node id -> models it trained
    gpus: dict[str, list] = field(default_factory=dict)  # Ray node id -> GPU ids its actors got
    lost: list[str] = field(default_factory=list)  # jobs whose actor died, trained again elsewhere

    def placement(self) -> str:
        """Where the models were trained, a line per node (empty when none was)."""
        lines = []
        for node in sorted(self.actors):
            gpus = sorted(set(self.gpus.get(node, [])))
            lines.append(f"  node {node[:8]}: {self.actors[node]} actors{f' on GPUs {gpus}' if gpus else ''}, "
                         f"{self.models.get(node, 0)} models")
        if self.lost:
            lines.append(f"  {len(self.lost)} models whose actor was lost (a node gone) were trained again by others")
        return "\n".join(lines)


class ActorsLost(RuntimeError):
    """Every actor of a build died (their nodes gone) with models still to train."""


@ray.remote
class ZooWorker:
    def __init__(self, train: TrainConfig, data_root: str | None, threads: int, compile: bool):
        torch.set_num_threads(threads)
        self.compile = compile
        self.device = "cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu"
        self.data = load_mnist(data_root).to(self.device)
        self.train = train

    def where(self) -> tuple[str, list]:
        """The node and the GPU ids Ray gave this actor."""
        return node_id(), [str(g) for g in ray.get_gpu_ids()]

    def train_jobs(self, jobs: list[Job]) -> list[ModelRecord]:
        return train_group(jobs, self.data, self.train, compile=self.compile)


def _fits(res: dict, opts: BuildOptions) -> int:
    n = res.get("CPU", 0) // opts.cpus_per_actor
    if opts.gpus_per_actor > 0:
        n = min(n, res.get("GPU", 0) // opts.gpus_per_actor)
    return int(n)


def _n_actors(opts: BuildOptions, n_groups: int) -> int:
    res = ray.available_resources()
    cpus, gpus = res.get("CPU", 0), res.get("GPU", 0)
    # An actor lives on one node: count what each node holds, capped by what is free now.
    fits = min(_fits(res, opts), sum(_fits(n["Resources"], opts) for n in ray.nodes() if n["Alive"]))
    if opts.gpus_per_actor > 0 and fits < 1:
        raise ValueError(f"gpus_per_actor={opts.gpus_per_actor} but no node of the Ray cluster has that much "
                         f"free ({gpus:g} GPUs free in all)")
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
    with ray_session(opts.address):
        _run(store, groups, images, opts, report)
    return report


def _run(store: ZooStore, groups: list[list[Job]], images: dict[Job, int], opts: BuildOptions,
         report: BuildReport) -> None:
    n = _n_actors(opts, len(groups))
    threads = max(1, int(opts.cpus_per_actor))
    # SPREAD: on a cluster, one actor per GPU across the nodes before two share one.
    actors = [
        ZooWorker.options(
            num_cpus=opts.cpus_per_actor, num_gpus=opts.gpus_per_actor, scheduling_strategy="SPREAD"
        ).remote(store.config.train, opts.data_root, threads, opts.compile)
        for _ in range(n)
    ]
    where = dict(zip(actors, ray.get([a.where.remote() for a in actors])))
    for node, gpus in where.values():
        report.actors[node] = report.actors.get(node, 0) + 1
        report.gpus.setdefault(node, []).extend(gpus)
    models = Counter()
    # Longest groups first (a group's step count is its largest member's): a 10-class
    # model started last would leave the other actors idle while it trains.
    queue = sorted(groups, key=lambda g: (max(images[j] for j in g), len(g)))
    in_flight: dict[ray.ObjectRef, tuple[ray.actor.ActorHandle, list[Job]]] = {}
    alive = set(actors)

    def submit(actor):
        if queue and actor in alive:
            group = queue.pop()
            in_flight[actor.train_jobs.remote(group)] = (actor, group)

    # One group per actor at a time, the next to whichever actor is free first: a second one
    # queued behind a long group would wait there while another actor sits idle (the
    # driver's write between two groups takes milliseconds).
    for actor in actors:
        submit(actor)
    bar = tqdm(
        total=report.total, initial=report.skipped, unit="model", desc=f"zoo {store.config.name}",
        disable=not opts.progress, smoothing=0.1,
    )
    try:
        while in_flight:
            (ref,), _ = ray.wait(list(in_flight), num_returns=1)
            actor, group = in_flight.pop(ref)
            try:
                records = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.ObjectLostError) as e:
                # Its node is gone (or the actor crashed): the group goes to the actors left,
                # next in line; the actor's other group comes back here the same way.
                alive.discard(actor)
                queue.append(group)
                report.lost.extend(j.id for j in group)
                tqdm.write(f"zoo: an actor on node {where[actor][0][:8]} was lost ({type(e).__name__}); "
                           f"its {len(group)} models go to the {len(alive)} actors left")
                if not alive:
                    built = report.skipped + sum(models.values())
                    raise ActorsLost(
                        f"every actor was lost; {report.total - built} models are not trained yet: run the same "
                        f"command again to train them (the {built} built are kept)"
                    ) from e
                _fill(alive, in_flight, submit)
                continue
            for record in records:
                store.write(record)
            models[where[actor][0]] += len(records)
            bar.update(len(records))
            submit(actor)
    finally:
        bar.close()
        report.models.update(models)
        for actor in actors:
            ray.kill(actor)


def _fill(alive: set, in_flight: dict, submit) -> None:
    """Give each live actor without a group in flight one: requeued work must not wait for
    a busy actor while another sits idle."""
    busy = {actor for actor, _ in in_flight.values()}
    for actor in alive - busy:
        submit(actor)
