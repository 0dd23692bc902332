"""What a build will do before it does it: the training groups, the work, the disk, the time.

Ray-free, so that a machine without Ray (a bare GPU box running bench/gpu.py) can plan and
train groups too.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from wsmerge.cnn import ACTIVATIONS, N_PARAMS, init_weights
from wsmerge.data import MNIST
from wsmerge.devices import cudnn_autotuned

from ._config import Job, TrainConfig, ZooConfig
from ._store import record_table
from ._train import (
    ModelRecord, _accuracy, _compiles, _padded, eval_call_models, live_counts, step_width, train_group,
)

__all__ = [
    "BuildPlan", "ProbeRates", "compile_seconds", "plan_build", "plan_groups", "probe_rates", "train_images",
    "validation_forward",
]


def train_images(jobs: list[Job], cfg: TrainConfig, data: MNIST) -> dict[Job, int]:
    """Training images of each job: what one epoch of it costs."""
    counts = {}
    for job in jobs:
        if job.classes not in counts:
            counts[job.classes] = len(data.train.indices(job.classes, cfg.train_per_class))
    return {j: counts[j.classes] for j in jobs}


def plan_groups(jobs: list[Job], models_per_step: int, images: Mapping[Job, int]) -> list[list[Job]]:
    """Groups of neighbouring image counts: a group's epoch lasts as long as its largest
    member's, and the others sit out the steps past their own epoch, so similar counts leave
    little of the step idle. Activations mix (every class set comes in each of them, with the
    same image count), which keeps large groups' counts close: 15% of the full zoo's step
    slots idle at 1024 models a step, against 50% in groups of one activation. Group sizes
    differ by one at most, so that no model is left alone (on a CPU a lone model costs
    two, see _train._forward) unless there is one job."""
    members = sorted(jobs, key=lambda j: (images[j], j.activation, j.id))
    n_groups = -(-len(members) // models_per_step)
    bounds = [round(i * len(members) / n_groups) for i in range(n_groups + 1)]
    return [members[a:b] for a, b in zip(bounds, bounds[1:])]


@dataclass(frozen=True)
class ProbeRates:
    train: float  # model-images a second trained, a small validation and test included
    evaluate: float  # model-images a second of the validation and test forwards
    # Seconds compiling a training step's graph (with cuDNN's timings of its shapes) and an
    # evaluation graph: what a build pays once for each of plan_build's step_graphs and
    # eval_graphs, in each actor. 0 where nothing compiles (a CPU, or compile off).
    step_compile: float = 0.0
    eval_compile: float = 0.0


def validation_forward(jobs: list[Job], data: MNIST, per_class: int | None, compile: bool):
    """The validation forward of `jobs`' models on their validation sets (at most
    `per_class` images a class) as train_group runs it on `data`'s device, one group:
    a function of their weights [K, 2464] that returns their accuracies, and the
    model-images it runs."""
    device = data.val.images.device
    idx, mask = _padded([data.val.indices(j.classes, per_class).cpu() for j in jobs], device)
    compiled = _compiles(compile, device)
    acts = (torch.tensor([ACTIVATIONS.index(j.activation) for j in jobs], device=device) if compiled
            else [j.activation for j in jobs])
    accuracy = cudnn_autotuned(_accuracy)
    return (lambda weights: accuracy(weights, data.val, idx, mask, acts, len(jobs) if compiled else None)), int(
        mask.sum())


def _eval_images(classes: tuple[int, ...], per_class: int | None, data: MNIST) -> tuple[int, int]:
    """Forward images of a model of `classes`: its validation, and its test (its own classes'
    test images and the others')."""
    test = len(data.test.indices(classes, per_class)) + len(data.test.others(classes, per_class))
    return len(data.val.indices(classes, per_class)), test


def _seconds(fn, data: MNIST) -> float:
    start = time.perf_counter()
    fn()
    if data.train.images.is_cuda:
        torch.cuda.synchronize()
    return time.perf_counter() - start


def compile_seconds(jobs: list[Job], data: MNIST, cfg: TrainConfig, compile: bool) -> tuple[float, float]:
    """Seconds a group of `jobs` spends compiling on `data`'s device, (0, 0) where it does
    not compile: its training step's graph and its evaluation graph. The evaluation first:
    its first validation call's time over a second one's; then a first train_group run
    with `cfg` over a second one (cuDNN's timings of the step's shapes included). A graph
    this process compiled already counts about 0."""
    if not _compiles(compile, data.train.images.device):
        return 0.0, 0.0
    validate, _ = validation_forward(jobs, data, 8, compile)
    weights = torch.stack([init_weights(j.activation, j.init, j.seed) for j in jobs]).to(data.val.images.device)
    evaluate = [_seconds(lambda: validate(weights), data) for _ in range(2)]
    run = lambda: train_group(jobs, data, cfg, compile=compile)  # noqa: E731
    step = [_seconds(run, data) for _ in range(2)]
    return max(0.0, step[0] - step[1]), max(0.0, evaluate[0] - evaluate[1])


def probe_rates(
    jobs: list[Job], data: MNIST, cfg: TrainConfig, seconds: float = 3.0, compile: bool = False
) -> ProbeRates:
    """Rates of `train_group` on `jobs` (one group) with this recipe on `data`'s device, from
    one-epoch runs of about 16 steps (the first of each kind a warm-up, not counted): with 8
    evaluation images a class, and with the recipe's evaluation sets, whose extra forward
    images over the extra time are the evaluation's rate; and the group's compile_seconds."""
    short = dataclasses.replace(cfg, max_epochs=1, bins=(1,), train_per_class=8 * cfg.batch_size, eval_per_class=8)
    full_eval = dataclasses.replace(short, eval_per_class=cfg.eval_per_class)

    def timed(run_cfg: TrainConfig, budget: float) -> float:
        run = lambda: train_group(jobs, data, run_cfg, compile=compile)  # noqa: E731
        run()
        seconds = [_seconds(run, data)]
        while sum(seconds) < budget:
            seconds.append(_seconds(run, data))
        return sum(seconds) / len(seconds)

    step_compile, eval_compile = compile_seconds(jobs, data, short, compile)
    small = timed(short, seconds)
    whole = timed(full_eval, seconds / 3)
    extra = sum(sum(_eval_images(j.classes, full_eval.eval_per_class, data))
                - sum(_eval_images(j.classes, short.eval_per_class, data)) for j in jobs)
    return ProbeRates(
        train=sum(train_images(jobs, short, data).values()) / small,
        evaluate=extra / (whole - small) if extra > 0 and whole > small else math.inf,
        step_compile=step_compile,
        eval_compile=eval_compile,
    )


@dataclass(frozen=True)
class BuildPlan:
    jobs: int
    groups: int
    model_images: int  # every job to its last bin: early stopping only lowers it
    # Forward only: its validation each epoch and its test (own classes and the others) at each bin.
    eval_images: int
    idle_share: float  # of the group steps' model slots, those of models past their epoch
    disk_bytes: int
    # Model slots (rows × steps of an epoch, every group) by the steps' width: a step
    # narrows as its models pass their epoch (step_width), and a width's cost a slot is its own.
    slots_by_width: dict[int, int]
    # The graphs the build compiles (0 where it does not): one a step width, one for each
    # eval_call_models of its groups' sizes. Each actor compiles those of its groups. Like
    # model_images, with every model to its last epoch: early stopping can narrow a step
    # to a width no full epoch reaches, one more graph.
    step_graphs: int
    eval_graphs: int


def _shard_bytes(cfg: TrainConfig) -> int:
    rng = np.random.default_rng(0)
    rec = ModelRecord(Job((0, 1), "relu", "kaiming_uniform", 0), stopped_epoch=cfg.last_epoch)
    rec.train_loss = rng.random(cfg.last_epoch).tolist()
    rec.val_acc = (100 * rng.random(cfg.last_epoch)).tolist()
    for e in cfg.bins:
        rec.checkpoints[e] = (rng.standard_normal(N_PARAMS).astype(np.float32), 99.0, 0.0)
    sink = pa.BufferOutputStream()
    pq.write_table(record_table(rec, cfg.bins), sink)
    return sink.getvalue().size


def plan_build(
    config: ZooConfig, jobs: list[Job], models_per_step: int, data: MNIST, device="cpu", compile: bool = True
) -> BuildPlan:
    """The work and the disk of training `jobs` of `config` in groups of `models_per_step`
    on `device` (`compile`: the build's option)."""
    cfg = config.train
    images = train_images(jobs, cfg, data)
    groups = plan_groups(jobs, models_per_step, images)
    compiled = _compiles(compile, device)
    exact = torch.device(device).type == "cpu" and not compiled
    by_width: dict[int, int] = {}
    used = 0
    for group in groups:
        steps = np.array([-(-images[j] // cfg.batch_size) for j in group])
        used += int(steps.sum())
        for n in live_counts(steps):
            width = step_width(int(n), len(group), exact)
            by_width[width] = by_width.get(width, 0) + width
    evaluated = {}
    for c in {j.classes for j in jobs}:
        val, test = _eval_images(c, cfg.eval_per_class, data)
        evaluated[c] = val * cfg.last_epoch + test * len(cfg.bins)
    slots = sum(by_width.values())
    return BuildPlan(
        jobs=len(jobs),
        groups=len(groups),
        model_images=sum(images.values()) * cfg.last_epoch,
        eval_images=sum(evaluated[j.classes] for j in jobs),
        idle_share=1 - used / slots if slots else 0.0,
        disk_bytes=_shard_bytes(cfg) * len(jobs),
        slots_by_width=dict(sorted(by_width.items())),
        step_graphs=len(by_width) if compiled else 0,
        eval_graphs=len({eval_call_models(len(g)) for g in groups}) if compiled else 0,
    )
