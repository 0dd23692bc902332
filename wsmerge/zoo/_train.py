"""Training zoo CNNs with the seed recipe, one model or many per step.

All models of a group share an activation and step together: their weights are one
[K, 2464] leaf tensor run through the grouped-convolution forward, and Adam, being
elementwise, treats each row exactly as if it were trained alone. On a CPU a group is one
model; on a GPU a group is many (the GPU is idle otherwise).
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsmerge.cnn import batched_forward, init_weights
from wsmerge.data import MNIST, Split

from ._config import Job, TrainConfig

__all__ = ["EarlyStopping", "ModelRecord", "bin_sources", "cyclic_lr", "train_group"]

# Images per model per evaluation chunk: bounds the gathered [K, n, 1, 28, 28] tensor.
_EVAL_CHUNK = 4096


class EarlyStopping:
    """Stop once validation accuracy has stayed within `margin` points of the previous
    epoch's for `patience` consecutive epochs (seed report, section 3.2)."""

    def __init__(self, patience: int, margin: float):
        self.patience, self.margin = patience, margin
        self.count = 0
        self.prev: float | None = None

    def update(self, val_acc: float) -> bool:
        # The slack absorbs float noise in percentages, so "exactly the margin" stagnates.
        if self.prev is not None and abs(val_acc - self.prev) <= self.margin + 1e-9:
            self.count += 1
        else:
            self.count = 0
        self.prev = val_acc
        return self.count >= self.patience


def bin_sources(bins: Sequence[int], stopped_epoch: int) -> list[int]:
    """The epoch whose weights fill each bin: a model that stopped early fills every later
    bin with its final weights."""
    return [min(b, stopped_epoch) for b in bins]


def cyclic_lr(step: int, base_lr: float, max_lr: float, half_cycle: int) -> float:
    """Triangular cyclic learning rate, the same curve as torch's CyclicLR('triangular')."""
    cycle = math.floor(1 + step / (2 * half_cycle))
    x = abs(step / half_cycle - 2 * cycle + 1)
    return base_lr + (max_lr - base_lr) * max(0.0, 1.0 - x)


@dataclass
class ModelRecord:
    """Everything the store keeps of one trained model."""

    job: Job
    stopped_epoch: int = 0
    early_stopped: bool = False
    train_loss: list[float] = field(default_factory=list)  # per epoch
    val_acc: list[float] = field(default_factory=list)  # per epoch, percent
    # epoch -> (weights [2464] float32, test acc on own classes, test acc on the others)
    checkpoints: dict[int, tuple[np.ndarray, float, float]] = field(default_factory=dict)


def _job_generator(job: Job) -> torch.Generator:
    # The batch order depends on the job alone, so grouping never changes what a model sees.
    return torch.Generator().manual_seed(zlib.crc32(job.id.encode()) + 1)


def _epoch_batches(idx: torch.Tensor, n_steps: int, batch: int, gen: torch.Generator) -> torch.Tensor:
    """[n_steps, batch] indices: fresh permutations of `idx`, a second one started when a
    group's longest member needs more steps than this model's images fill."""
    need = n_steps * batch
    perms = [idx[torch.randperm(len(idx), generator=gen)] for _ in range(math.ceil(need / len(idx)))]
    return torch.cat(perms)[:need].view(n_steps, batch)


def _padded(index_lists: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(len(i) for i in index_lists)
    idx = torch.zeros(len(index_lists), n, dtype=torch.long)
    mask = torch.zeros(len(index_lists), n, dtype=torch.bool)
    for k, i in enumerate(index_lists):
        idx[k, : len(i)] = i
        mask[k, : len(i)] = True
    return idx, mask


@torch.no_grad()
def _accuracy(weights: torch.Tensor, split: Split, index_lists: list[torch.Tensor], activation: str) -> list[float]:
    """Percent accuracy of each model on its own image list (NaN for an empty list)."""
    if all(len(i) == 0 for i in index_lists):
        return [math.nan] * len(index_lists)
    idx, mask = _padded(index_lists)
    idx, mask = idx.to(split.images.device), mask.to(split.images.device)
    correct = torch.zeros(len(index_lists), device=weights.device)
    for start in range(0, idx.shape[1], _EVAL_CHUNK):
        ci, cm = idx[:, start : start + _EVAL_CHUNK], mask[:, start : start + _EVAL_CHUNK]
        pred = batched_forward(weights, split.images[ci], activation).argmax(-1)
        correct += ((pred == split.labels[ci]) & cm).sum(1)
    counts = mask.sum(1)
    return [100.0 * c / n if n else math.nan for c, n in zip(correct.tolist(), counts.tolist())]


def train_group(
    jobs: Sequence[Job],
    data: MNIST,
    cfg: TrainConfig,
    on_epoch: Callable[[int], None] | None = None,
) -> list[ModelRecord]:
    """Train `jobs` (one shared activation) together on `data`'s device; one record each."""
    activations = {j.activation for j in jobs}
    if len(activations) != 1:
        raise ValueError(f"a training group needs one activation, got {sorted(activations)}")
    (activation,) = activations
    device = data.train.images.device
    records = [ModelRecord(j) for j in jobs]
    gens = [_job_generator(j) for j in jobs]
    train_idx = [data.train.indices(j.classes, cfg.train_per_class) for j in jobs]
    val_idx = [data.val.indices(j.classes, cfg.eval_per_class) for j in jobs]
    test_in = [data.test.indices(j.classes, cfg.eval_per_class) for j in jobs]
    test_out = [data.test.others(j.classes, cfg.eval_per_class) for j in jobs]
    steps = math.ceil(max(len(i) for i in train_idx) / cfg.batch_size)
    half_cycle = max(1, round(cfg.cycle_half_epochs * steps))

    weights = torch.stack([init_weights(j.activation, j.init, j.seed) for j in jobs]).to(device)
    weights.requires_grad_(True)
    opt = torch.optim.Adam([weights], lr=cfg.base_lr)
    stoppers = [EarlyStopping(cfg.patience, cfg.margin) for _ in jobs]
    active = list(range(len(jobs)))  # record index of each row of `weights`
    global_step = 0

    def checkpoint(rows: list[int], epoch: int):
        w = weights.detach()[rows]
        ks = [active[r] for r in rows]
        acc_in = _accuracy(w, data.test, [test_in[k] for k in ks], activation)
        acc_out = _accuracy(w, data.test, [test_out[k] for k in ks], activation)
        for i, (k, ai, ao) in enumerate(zip(ks, acc_in, acc_out)):
            records[k].checkpoints[epoch] = (w[i].cpu().numpy().copy(), ai, ao)

    for epoch in range(1, cfg.last_epoch + 1):
        batches = torch.stack([_epoch_batches(train_idx[k], steps, cfg.batch_size, gens[k]) for k in active])
        batches = batches.to(device)  # [K, steps, B]
        loss_sum = torch.zeros(len(active), device=device)
        for s in range(steps):
            for group in opt.param_groups:
                group["lr"] = cyclic_lr(global_step, cfg.base_lr, cfg.max_lr, half_cycle)
            idx = batches[:, s]
            logits = batched_forward(weights, data.train.images[idx], activation, cfg.dropout, training=True)
            per_model = F.cross_entropy(
                logits.reshape(-1, 10), data.train.labels[idx].reshape(-1), reduction="none"
            ).view(len(active), -1).mean(1)
            opt.zero_grad(set_to_none=True)
            # A sum keeps each model's gradient its own mean-loss gradient.
            per_model.sum().backward()
            opt.step()
            loss_sum += per_model.detach()
            global_step += 1

        val = _accuracy(weights.detach(), data.val, [val_idx[k] for k in active], activation)
        losses = (loss_sum / steps).tolist()
        stopping = []
        for r, k in enumerate(active):
            records[k].train_loss.append(losses[r])
            records[k].val_acc.append(val[r])
            if stoppers[k].update(val[r]) and epoch < cfg.last_epoch:
                stopping.append(r)
        to_save = sorted(set(stopping) | (set(range(len(active))) if epoch in cfg.bins else set()))
        if to_save:
            checkpoint(to_save, epoch)
        for r in stopping:
            records[active[r]].stopped_epoch = epoch
            records[active[r]].early_stopped = True
        if stopping:
            keep = [r for r in range(len(active)) if r not in stopping]
            if not keep:
                active = []
                break
            weights = _compact(opt, weights, keep)
            active = [active[r] for r in keep]
        if on_epoch is not None:
            on_epoch(epoch)

    for k in active:
        records[k].stopped_epoch = cfg.last_epoch
    return records


def _compact(opt: torch.optim.Adam, weights: torch.Tensor, keep: list[int]) -> torch.Tensor:
    """Drop stopped models from the step: slice the weights and their Adam moments."""
    new = weights.detach()[keep].clone().requires_grad_(True)
    state = opt.state.pop(weights)
    opt.state[new] = {
        "step": state["step"],
        "exp_avg": state["exp_avg"][keep].clone(),
        "exp_avg_sq": state["exp_avg_sq"][keep].clone(),
    }
    opt.param_groups[0]["params"] = [new]
    return new
