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

from wsmerge.cnn import N_PARAMS
from wsmerge.data import MNIST

from ._config import Job, TrainConfig, ZooConfig
from ._store import record_table
from ._train import ModelRecord, live_counts, step_width, train_group

__all__ = ["BuildPlan", "ProbeRates", "plan_build", "plan_groups", "probe_rates", "train_images"]


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


def _eval_images(classes: tuple[int, ...], per_class: int | None, data: MNIST) -> tuple[int, int]:
    """Forward images of a model of `classes`: its validation, and its test (its own classes'
    test images and the others')."""
    test = len(data.test.indices(classes, per_class)) + len(data.test.others(classes, per_class))
    return len(data.val.indices(classes, per_class)), test


def probe_rates(
    jobs: list[Job], data: MNIST, cfg: TrainConfig, seconds: float = 3.0, compile: bool = False
) -> ProbeRates:
    """Rates of `train_group` on `jobs` with this recipe on `data`'s device, from one-epoch
    runs of about 16 steps (the first of each kind a warm-up that also compiles, not
    counted): with 8 evaluation images a class, and with the recipe's evaluation sets, whose
    extra forward images over the extra time are the evaluation's rate."""
    short = dataclasses.replace(cfg, max_epochs=1, bins=(1,), train_per_class=8 * cfg.batch_size, eval_per_class=8)
    full_eval = dataclasses.replace(short, eval_per_class=cfg.eval_per_class)

    def timed(run_cfg: TrainConfig, budget: float) -> float:
        train_group(jobs, data, run_cfg, compile=compile)
        runs, start = 0, time.perf_counter()
        while runs < 1 or time.perf_counter() - start < budget:
            train_group(jobs, data, run_cfg, compile=compile)
            runs += 1
        if data.train.images.is_cuda:
            torch.cuda.synchronize()
        return (time.perf_counter() - start) / runs

    small = timed(short, seconds)
    whole = timed(full_eval, seconds / 3)
    extra = sum(sum(_eval_images(j.classes, full_eval.eval_per_class, data))
                - sum(_eval_images(j.classes, short.eval_per_class, data)) for j in jobs)
    return ProbeRates(
        train=sum(train_images(jobs, short, data).values()) / small,
        evaluate=extra / (whole - small) if extra > 0 and whole > small else math.inf,
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


def plan_build(config: ZooConfig, jobs: list[Job], models_per_step: int, data: MNIST, device="cpu") -> BuildPlan:
    """The work and the disk of training `jobs` of `config` in groups of `models_per_step`
    on `device`."""
    cfg = config.train
    images = train_images(jobs, cfg, data)
    groups = plan_groups(jobs, models_per_step, images)
    exact = torch.device(device).type == "cpu"
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
    )
