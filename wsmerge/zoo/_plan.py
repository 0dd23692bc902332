"""What a build will do before it does it: the training groups, the work, the disk, the time.

Ray-free, so that a machine without Ray (a bare GPU box running bench/gpu.py) can plan and
train groups too.
"""

from __future__ import annotations

import dataclasses
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
from ._train import ModelRecord, train_group

__all__ = ["BuildPlan", "plan_build", "plan_groups", "probe_rate", "train_images"]


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


def probe_rate(jobs: list[Job], data: MNIST, cfg: TrainConfig, seconds: float = 3.0, compile: bool = False) -> float:
    """Model-images per second of `train_group` on `jobs` with this recipe on `data`'s
    device, from one-epoch runs of about 16 steps (the first one, a warm-up that also
    compiles, not counted), evaluation included."""
    short = dataclasses.replace(cfg, max_epochs=1, bins=(1,), train_per_class=8 * cfg.batch_size, eval_per_class=8)
    per_run = sum(train_images(jobs, short, data).values())
    train_group(jobs, data, short, compile=compile)
    runs, start = 0, time.perf_counter()
    while runs < 1 or time.perf_counter() - start < seconds:
        train_group(jobs, data, short, compile=compile)
        runs += 1
    if data.train.images.is_cuda:
        torch.cuda.synchronize()
    return per_run * runs / (time.perf_counter() - start)


@dataclass(frozen=True)
class BuildPlan:
    jobs: int
    groups: int
    model_images: int  # every job to its last bin: early stopping only lowers it
    idle_share: float  # of the group steps' model slots, those of models past their epoch
    disk_bytes: int


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


def plan_build(config: ZooConfig, jobs: list[Job], models_per_step: int, data: MNIST) -> BuildPlan:
    """The work and the disk of training `jobs` of `config` in groups of `models_per_step`."""
    cfg = config.train
    images = train_images(jobs, cfg, data)
    groups = plan_groups(jobs, models_per_step, images)
    steps = lambda j: -(-images[j] // cfg.batch_size)  # noqa: E731
    used = sum(steps(j) for j in jobs)
    slots = sum(len(g) * max(steps(j) for j in g) for g in groups)
    return BuildPlan(
        jobs=len(jobs),
        groups=len(groups),
        model_images=sum(images.values()) * cfg.last_epoch,
        idle_share=1 - used / slots if slots else 0.0,
        disk_bytes=_shard_bytes(cfg) * len(jobs),
    )
