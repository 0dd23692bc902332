"""Training zoo CNNs with the seed recipe, one model or many per step.

All models of a group step together: their weights are the rows of one [K, 2464] tensor
run through `batched_forward` (grouped convolutions; on a CPU, batches of 16 images or
more model by model).
Nothing a model sees depends on the rest of its group: each model has its own epoch length, cyclic schedule,
Adam step count, batch order and dropout masks, and a model whose epoch has ended sits out
the group's remaining steps (no update, no Adam state change). So a zoo is the same, bit
for bit on a CPU, however its jobs are grouped (tests/test_zoo_train.py).
"""

from __future__ import annotations

import functools
import math
import zlib
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from wsmerge.cnn import ACTIVATIONS, batched_forward, default_chunk, forward_chunks, init_weights
from wsmerge.devices import cudnn_autotuned, to_device
from wsmerge.data import MNIST, Split

from ._config import Job, TrainConfig

__all__ = ["EarlyStopping", "ModelRecord", "bin_sources", "cyclic_lr", "train_group"]

# Model-images per compiled evaluation forward call (wsmerge.cnn.MAX_MODEL_IMAGES caps it):
# as many as a training step of 1024 models × 64 images, which keeps a GPU busy; there the
# first convolution's 5×5 patches take 3.8 GB in float32 and its output 1.2 GB (at 2**18,
# the earlier size, 15 GB and 4.8 GB). Eager calls take default_chunk's, fewer on a CPU.
_EVAL_MODEL_IMAGES = 2**16
# Compiled evaluation calls take this many images a model, every split padded to a multiple
# of it: one graph a group width serves every split and class set, and padding wastes
# little (the full zoo's two-class validation, 2,055 images, runs as 2,176; the benchmark's
# 200 as 256, where a whole split a call would compile a graph per split length).
_EVAL_IMAGE_STEP = 2**7

# On a GPU a group's step narrows as its models pass their own epoch, to the narrowest of
# its widths (the group's, halved while at least this many) that holds the models still
# stepping: each width is a compiled graph (and a cuDNN timing), so there are few. The full
# zoo's groups of 1,013 models (1024 a step) leave 15% of their step slots idle at their
# full width, 8% narrowed to 506; groups of 3,039 (4096 a step) 33% and 11% (plan_build).
# Narrower than 256 models a step saves little: on an H100 a bf16 step of 256 models took
# about 6 ms, one of 1,024 about 14 (bench/gpu.py).
_NARROWEST = 256

# Where train_group(compile=True) compiles: a CPU keeps the eager step, whose grouping
# invariance is tested bit for bit (tests may add "cpu" to check the compiled path).
_COMPILE_DEVICES = ("cuda",)

# torch.optim.Adam's defaults, which the seed recipe uses.
_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


def _compiles(compile: bool, device) -> bool:
    """Whether train_group(compile=compile) compiles on `device`."""
    return compile and torch.device(device).type in _COMPILE_DEVICES


def _phase(name: str) -> torch.profiler.record_function:
    """A labelled range in a torch.profiler trace (bench/gpu.py --profile splits an epoch's
    time by them); without a profiler running it costs microseconds."""
    return torch.profiler.record_function(f"zoo.{name}")


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


def cyclic_lr(step, base_lr: float, max_lr: float, half_cycle):
    """Triangular cyclic learning rate, the same curve as torch's CyclicLR('triangular');
    `step` and `half_cycle` may be numpy arrays (float64 throughout, as torch's scheduler)."""
    cycle = np.floor(1 + step / (2 * half_cycle))
    x = np.abs(step / half_cycle - 2 * cycle + 1)
    return base_lr + (max_lr - base_lr) * np.maximum(0.0, 1.0 - x)


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


def _job_key(job: Job) -> int:
    return zlib.crc32(job.id.encode())


def _job_generator(job: Job) -> torch.Generator:
    # The batch order depends on the job alone, so grouping never changes what a model sees.
    return torch.Generator().manual_seed(_job_key(job) + 1)


def _draw_batches(index_lists: list[torch.Tensor], steps: np.ndarray, batch: int, gens: list[torch.Generator]) -> torch.Tensor:
    """[K, S, B] image indices of an epoch's batches, S = max(steps): model k permutes its
    images, index_lists[k], with its own generator, and cuts them into steps[k] full batches,
    the last one completed from the permutation's start; the steps past its epoch, which it
    sits out, repeat its last batch. Written in place, a few operations a model: built
    apart and stacked, 1024 models of 10,610 images (a pair of classes) took 2.1-2.3× as
    long on a 2-core host, 0.27-0.30 s against 0.13 (bench/gpu.py), where an H200 runs that
    epoch's bf16 steps in about 1.5 s (scaled from a profiled epoch of 2,000 images)."""
    out = torch.empty(len(index_lists), int(max(steps)), batch, dtype=torch.long)
    perm = torch.empty(max(len(i) for i in index_lists), dtype=torch.long)
    for row, idx, n_steps, gen in zip(out, index_lists, steps, gens):
        n, need, flat = len(idx), int(n_steps) * batch, row.view(-1)
        torch.randperm(n, generator=gen, out=perm[:n])
        torch.index_select(idx, 0, perm[:n], out=flat[:n])
        for start in range(n, need, n):  # fewer images than a batch wrap more than once
            flat[start : start + n][: need - start] = flat[: min(n, need - start)]
        row[n_steps:] = row[n_steps - 1]
    return out


def _padded(index_lists: list[torch.Tensor], device) -> tuple[torch.Tensor, torch.Tensor]:
    n = max(1, max(len(i) for i in index_lists))
    idx = torch.zeros(len(index_lists), n, dtype=torch.long)
    mask = torch.zeros(len(index_lists), n, dtype=torch.bool)
    for k, i in enumerate(index_lists):
        idx[k, : len(i)] = i
        mask[k, : len(i)] = True
    return idx.to(device), mask.to(device)


def _step_loss(weights, images, labels, activation, dropout, seeds):
    """Each model's mean cross-entropy on its own batch [M]."""
    logits = batched_forward(weights, images, activation, dropout, seeds)
    per_image = F.cross_entropy(logits.float().reshape(-1, 10), labels.reshape(-1), reduction="none")
    return per_image.view(len(weights), -1).mean(1)


@functools.cache
def _compiled(fn):
    # The training step: one graph per group width and precision, as activations come as
    # ids (batched_forward), so any mix shares it, and a group keeps its width as models
    # stop (see train_group). The evaluation forward: one graph per group width (_accuracy).
    # Static shapes, because inductor fails on this graph with a symbolic model count
    # (torch 2.11-2.13: "cannot determine truth value of Relational"). A build compiles a
    # step graph for each width its groups step at (plan_build's step_graphs: the full zoo
    # at 4096 models a step, 4) and an evaluation graph for each eval_call_models of its
    # groups' sizes (1 there); the benchmark tries more.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(fn, dynamic=False)


def live_counts(steps: np.ndarray) -> np.ndarray:
    """The models still in their epoch at each step of a group's epoch, from each model's steps."""
    return np.bincount(steps - 1)[::-1].cumsum()[::-1]


def step_width(live: int, width: int, exact: bool) -> int:
    """The rows of a step of a group `width` models wide when `live` of them have not
    finished their epoch: `live` if `exact` (a CPU's eager step, where each model costs its
    own forward), else the narrowest of the group's widths that holds them (_NARROWEST)."""
    if exact:
        return live
    while width // 2 >= max(live, min(width, _NARROWEST)):
        width //= 2
    return width


def eval_call_models(width: int) -> int:
    """Models in each compiled evaluation call of a group `width` models wide: one graph
    serves every group of a value."""
    return max(1, min(width, _EVAL_MODEL_IMAGES // _EVAL_IMAGE_STEP))


def _widened(x: torch.Tensor, width: int) -> torch.Tensor:
    """x [n, ...] with rows appended, detached copies of its first, up to `width` rows: a
    compiled call keeps its shape as models leave the group, and the copies' outputs are
    dropped (no gradient flows through them)."""
    return torch.cat([x, x[:1].detach().expand(width - len(x), *x.shape[1:])]) if len(x) < width else x


@torch.no_grad()
def _accuracy(
    weights: torch.Tensor, split: Split, idx: torch.Tensor, mask: torch.Tensor, activations, width: int | None = None,
    chunk: int | None = None,
) -> list[float]:
    """Percent accuracy of each model (activations: one per row, names, or ids when
    compiled) on its row of idx [K, n] where mask [K, n] is set (NaN for an empty row).
    Eagerly, in forward calls of `chunk` model-images (None: `wsmerge.cnn.default_chunk`).
    `width` (a group's width): through the compiled forward, in calls of one shape whatever
    K, the split and the group's classes: eval_call_models(width) models × _EVAL_IMAGE_STEP
    images, the rest padded (rows with copies of the first, dropped; images masked out)."""
    n_rows = len(weights)
    if width is None:
        chunks = forward_chunks(n_rows, idx.shape[1], chunk or default_chunk(weights.device))
        forward = batched_forward
    else:
        per_call = eval_call_models(width)
        k = -(-n_rows // per_call) * per_call
        length = max(1, -(-idx.shape[1] // _EVAL_IMAGE_STEP)) * _EVAL_IMAGE_STEP
        idx, mask = (F.pad(x, (0, length - x.shape[1])) for x in (idx, mask))
        weights, idx, mask, activations = (_widened(x, k) for x in (weights, idx, mask, activations))
        chunks = ((slice(m, m + per_call), slice(i, i + _EVAL_IMAGE_STEP))
                  for m in range(0, k, per_call) for i in range(0, length, _EVAL_IMAGE_STEP))
        forward = _compiled(batched_forward)
    correct = torch.zeros(len(weights), dtype=torch.long, device=weights.device)
    for ms, ns in chunks:
        ci = idx[ms, ns]
        pred = forward(weights[ms], split.images[ci], activations[ms]).argmax(-1)
        correct[ms] += ((pred == split.labels[ci]) & mask[ms, ns]).sum(1)
    counts = mask.sum(1)
    return [100.0 * c / n if n else math.nan for c, n in zip(correct[:n_rows].tolist(), counts[:n_rows].tolist())]


@torch.no_grad()
def _adam_step(w, m, v, grad, neg_step, bc2_sqrt, active) -> None:
    """torch.optim.Adam's update (its single-tensor path, op for op, so a model's weights
    match torch's bit for bit) with a step size and bias correction per row; rows not
    `active` keep their weights and moments."""
    keep = active.unsqueeze(1)
    m_new = m.lerp(grad, 1 - _BETA1)
    v_new = v.mul(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
    denom = (v_new.sqrt() / bc2_sqrt.unsqueeze(1)).add_(_EPS)
    w.copy_(torch.where(keep, w + neg_step.unsqueeze(1) * m_new / denom, w))
    m.copy_(torch.where(keep, m_new, m))
    v.copy_(torch.where(keep, v_new, v))


class _Schedule:
    """Per model: steps per epoch, cyclic half-cycle, and the Adam bias corrections by step."""

    def __init__(self, steps: np.ndarray, cfg: TrainConfig):
        self.cfg = cfg
        self.steps = steps
        self.half = np.array([max(1, round(cfg.cycle_half_epochs * s)) for s in steps])
        # Python floats, as torch.optim.Adam computes them (numpy's pow may differ in the last bit).
        n = cfg.last_epoch * int(steps.max()) + 1
        self.bc1 = np.array([1.0] + [1 - _BETA1**t for t in range(1, n)])
        self.bc2_sqrt = np.array([1.0] + [(1 - _BETA2**t) ** 0.5 for t in range(1, n)])

    def select(self, rows: list[int]) -> "_Schedule":
        out = object.__new__(_Schedule)
        out.__dict__.update(self.__dict__, steps=self.steps[rows], half=self.half[rows])
        return out

    def epoch(self, epoch: int, device) -> tuple[torch.Tensor, ...]:
        """[S, K] tables of the epoch's S = max steps: the negated Adam step size, the bias
        correction, whether each model steps, and each model's own update index."""
        s = np.arange(int(self.steps.max()))[:, None]
        active = s < self.steps[None, :]
        t = (epoch - 1) * self.steps[None, :] + s
        lr = cyclic_lr(t, self.cfg.base_lr, self.cfg.max_lr, self.half[None, :])
        neg_step = np.where(active, -(lr / self.bc1[t + 1]), 0.0)
        bc2 = np.where(active, self.bc2_sqrt[t + 1], 1.0)
        to = lambda a, dtype: torch.from_numpy(np.ascontiguousarray(a)).to(device, dtype)  # noqa: E731
        return to(neg_step, torch.float32), to(bc2, torch.float32), to(active, torch.bool), to(t, torch.long)


@cudnn_autotuned
def train_group(
    jobs: Sequence[Job],
    data: MNIST,
    cfg: TrainConfig,
    compile: bool = False,
) -> list[ModelRecord]:
    """Train `jobs` together on `data`'s device; one record each, in their order, the same
    as each job trained alone. `compile`: on a GPU, the training step (forward and loss, at
    one of the group's few widths whatever models have stopped, see step_width) and the
    evaluation forward (in calls of one shape a split) through torch.compile (bf16 on an
    H200, the step alone: 1.08× the model-images per second at 256 models a step, 1.19× at
    1024, after seconds of compiling per width); the CPU always runs eagerly."""
    # Rows of one activation side by side: each run of them is one activation call.
    order = sorted(range(len(jobs)), key=lambda k: jobs[k].activation)
    jobs = [jobs[k] for k in order]
    acts = [j.activation for j in jobs]
    device = data.train.images.device
    bf16 = device.type == "cuda" and cfg.precision == "bf16"
    compiled = _compiles(compile, device)
    loss_fn = _compiled(_step_loss) if compiled else _step_loss
    # The activations of records `sel` (a LongTensor): ids for a compiled call, names for an eager one.
    act_ids = torch.tensor([ACTIVATIONS.index(a) for a in acts], device=device)
    act_of = lambda sel: act_ids[sel] if compiled else [acts[k] for k in sel.tolist()]  # noqa: E731
    records = [ModelRecord(j) for j in jobs]
    gens = [_job_generator(j) for j in jobs]
    # Index lists on the host, one per class set (the activations of a class set share it):
    # batches are drawn there and copied once an epoch, as a GPU would spend more time
    # launching K small permutation kernels than running them.
    lists = {
        name: {c: get(c, budget).cpu() for c in {j.classes for j in jobs}}
        for name, get, budget in (
            ("train", data.train.indices, cfg.train_per_class),
            ("val", data.val.indices, cfg.eval_per_class),
            ("in", data.test.indices, cfg.eval_per_class),
            ("out", data.test.others, cfg.eval_per_class),
        )
    }
    train_idx = [lists["train"][j.classes] for j in jobs]
    # [K, n] image indices and masks by record index, for every job's whole run.
    evals = {name: _padded([lists[name][j.classes] for j in jobs], device) for name in ("val", "in", "out")}
    sched = _Schedule(np.array([math.ceil(len(i) / cfg.batch_size) for i in train_idx]), cfg)
    # Dropout masks hash (job, own update index): a stream per job, as the batch order.
    keys = torch.tensor([_job_key(j) & 0x7FFFFFFF for j in jobs], dtype=torch.long, device=device) << 32

    w = torch.stack([init_weights(j.activation, j.init, j.seed) for j in jobs]).to(device).requires_grad_(True)
    m, v = torch.zeros_like(w), torch.zeros_like(w)
    stoppers = [EarlyStopping(cfg.patience, cfg.margin) for _ in jobs]
    rows = list(range(len(jobs)))  # record index of each row of `w`

    def accuracy(split: Split, name: str, weights: torch.Tensor, ks: list[int]) -> list[float]:
        sel = torch.tensor(ks, device=device)
        return _accuracy(weights, split, evals[name][0][sel], evals[name][1][sel], act_of(sel),
                         len(jobs) if compiled else None)

    def checkpoint(sel: list[int], epoch: int):
        ws, ks = w.detach()[sel], [rows[r] for r in sel]
        with _phase("test"):
            acc = {name: accuracy(data.test, name, ws, ks) for name in ("in", "out")}
            host = ws.cpu().numpy()
        for i, k in enumerate(ks):
            records[k].checkpoints[epoch] = (host[i].copy(), acc["in"][i], acc["out"][i])

    def draw() -> torch.Tensor:
        """The next epoch's batches of the models in training, on the host: [K, S, B]."""
        return _draw_batches([train_idx[k] for k in rows], sched.steps, cfg.batch_size, [gens[k] for k in rows])

    with _phase("draw"):
        upcoming = draw()
    for epoch in range(1, cfg.last_epoch + 1):
        with _phase("steps"):
            neg_step, bc2, active, t = sched.epoch(epoch, device)
            n_steps = len(active)
            batches = upcoming.to(device)
            step_acts = act_of(torch.tensor(rows, device=device))
            loss_sum = torch.zeros(len(rows), device=device)
            live_at = live_counts(sched.steps)
            for s in range(n_steps):
                live = int(live_at[s])
                if s == 0 or live != live_at[s - 1]:
                    # Models past their own epoch leave the step, which then narrows (see
                    # step_width); on a GPU the rows left are found once and copied without
                    # the host waiting, and where fewer rows step than the width, rows
                    # refilled with copies of the first keep the step's shape (their losses
                    # dropped, no gradient through them).
                    part = np.flatnonzero(sched.steps > s) if live < len(rows) else None
                    part_on = None if part is None else to_device(torch.from_numpy(part), device)
                    width = step_width(live, len(jobs), exact=device.type == "cpu" and not compiled)
                idx, seeds, w_in, acts_in = batches[:, s], keys + t[s], w, step_acts
                if part is not None:
                    idx, seeds, w_in = idx[part_on], seeds[part_on], w[part_on]
                    acts_in = acts_in[part_on] if compiled else [acts_in[i] for i in part]
                if width > live:
                    idx, seeds, w_in = (_widened(x, width) for x in (idx, seeds, w_in))
                    acts_in = (_widened(acts_in, width) if compiled
                               else acts_in + acts_in[:1] * (width - live))
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=bf16):
                    per_model = loss_fn(w_in, data.train.images[idx], data.train.labels[idx], acts_in, cfg.dropout, seeds)
                per_model = per_model[:live]
                # A sum keeps each model's gradient its own mean-loss gradient.
                (grad,) = torch.autograd.grad(per_model.sum(), w)
                _adam_step(w, m, v, grad, neg_step[s], bc2[s], active[s])
                if part is None:
                    loss_sum += per_model.detach()
                else:
                    loss_sum.index_add_(0, part_on, per_model.detach())

        # Drawn here, a GPU still runs the epoch's queued steps meanwhile (the validation
        # waits for them): 0.14-0.17 s an epoch for 4096 models of 2,000 images on a 2-core
        # host, against 1.6 s of GPU work at 5M model-images/s.
        with _phase("draw"):
            upcoming = draw() if epoch < cfg.last_epoch else None
        with _phase("validation"):
            val = accuracy(data.val, "val", w.detach(), rows)
        losses = (loss_sum / torch.from_numpy(sched.steps).to(device)).tolist()
        stopping = []
        for r, k in enumerate(rows):
            records[k].train_loss.append(losses[r])
            records[k].val_acc.append(val[r])
            if stoppers[k].update(val[r]) and epoch < cfg.last_epoch:
                stopping.append(r)
        to_save = sorted(set(stopping) | (set(range(len(rows))) if epoch in cfg.bins else set()))
        if to_save:
            checkpoint(to_save, epoch)
        for r in stopping:
            records[rows[r]].stopped_epoch = epoch
            records[rows[r]].early_stopped = True
        if stopping:
            keep = [r for r in range(len(rows)) if r not in stopping]
            if not keep:
                rows = []
                break
            # Stopped models leave the step; every tensor indexed by row follows.
            w = w.detach()[keep].requires_grad_(True)
            m, v, keys = m[keep], v[keep], keys[keep]
            sched = sched.select(keep)
            rows = [rows[r] for r in keep]
            # Their batches were drawn already; the steps only stopped models needed go.
            upcoming = upcoming[keep, : int(sched.steps.max())]

    for k in rows:
        records[k].stopped_epoch = cfg.last_epoch
    in_order = [records[0]] * len(records)
    for i, k in enumerate(order):
        in_order[k] = records[i]
    return in_order
