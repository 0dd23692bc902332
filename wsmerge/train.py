"""Training the merge TransformerAE: one function a sweep trial calls.

    cfg = RunConfig.from_yaml("sweeps/configs/train_tiny.yaml")
    result = train(cfg, report=print)          # report(metrics) after every epoch

Each epoch trains on the train pairs with the loss mix, writes a checkpoint (model,
optimizer, epoch, every RNG state, metrics so far) atomically, evaluates the CNNs the model
writes for the validation pairs, and reports. A run started again with `resume=True`
continues from its last checkpoint and ends bit-for-bit where an uninterrupted run ends.
The last step evaluates the test pairs (targets never seen in training) with fine-tuning.

Two levers against the permutation symmetry of the CNNs (the same function in many unit
orders): `align` brings every CNN, input and target, into a canonical order of its hidden
units before the model reads it (wsmerge.align), and maps each generated CNN back into its
target's own order before it is evaluated; `permutations` feeds the encoders permuted copies
of the training inputs. Both together: the copies permute the aligned inputs.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from wsmerge.align import ALIGN, align, canonical_perms, nearest_to_mean, unalign
from wsmerge.cnn import HIDDEN_SIZES, permute_units
from wsmerge.config import check_int, check_number, from_dict, read_yaml
from wsmerge.data import MNIST, load_mnist
from wsmerge.devices import cudnn_autotuned, to_device
from wsmerge.evaluate import EvalConfig, baselines_key, evaluate_merges, groups_of
from wsmerge.files import atomic_write, write_json
from wsmerge.losses import LossContext, mix_loss, permute_neurons, required_context, validate_mix
from wsmerge.model import ModelConfig, TransformerAE
from wsmerge.pairs import SPLITS, PairConfig, Pairs, make_pairs
from wsmerge.predictiveness import pair_losses, predictiveness, write_predictiveness_csv
from wsmerge.zoo import load, load_init, weights_matrix

__all__ = ["BEST", "CHECKPOINT", "PREDICTIVENESS", "SCALINGS", "SELECT", "VARY", "RunConfig", "RunResult", "ZooTables",
           "disk_bytes", "make_optimizer", "read_zoo", "train"]

CHECKPOINT = "checkpoint.pt"
BEST = "best.pt"
PREDICTIVENESS = "loss_predictiveness.csv"  # the model of the epoch with the best validation acc_in: the one tested
SCALINGS = ("none", "first")
VARY = ("init", "order", "split")  # what a repeat's seed sets (RunConfig.vary)
_FORMAT = "wsmerge-run-checkpoint"
# What picks the best epoch (and drives early stopping): the validation pairs' in-distribution
# accuracy of the generated CNNs. Test pairs never take part in a choice.
SELECT = "val/generated/acc_in"
# Fields that may differ between a run and the run it resumes: where it writes, how long
# it goes on, and how chatty it is.
_RESUMABLE_CHANGES = ("out", "epochs", "progress", "baseline_cache")


@dataclass(frozen=True)
class RunConfig:
    """One TransformerAE training run; every field is validated on construction."""

    zoo: str  # a zoo store directory (python -m sweeps.zoo)
    out: str  # the run's directory: checkpoint, metrics, per-pair results
    model: ModelConfig = field(default_factory=ModelConfig)
    pairs: PairConfig = field(default_factory=PairConfig)
    losses: dict[str, float] = field(default_factory=lambda: {"mse": 1.0})
    loss_options: dict[str, dict[str, Any]] = field(default_factory=dict)
    # How the mix weighs its terms: "none" adds them raw; "first" divides each by its mean
    # over the first `scale_batches` training batches (frozen, and kept in the checkpoint),
    # as the behavioral paper's code does, so that its weights weigh terms of about 1 (raw,
    # mse ≈ 0.04 beside contrastive ≈ 5 makes the structural term vanish). Unset: "first"
    # for a mix of two or more terms, "none" for one.
    loss_scaling: str | None = None
    scale_batches: int = 5
    evaluation: EvalConfig = field(default_factory=EvalConfig)
    # Query images per test pair for `loss_predictiveness.csv`: every registered loss between
    # the generated and target CNNs at its exact setting, correlated with their accuracy
    # (0: no table; about 1 s a pair at 64 on a 2-core CPU).
    predictiveness_images: int = 64
    # Fine-tuning steps in the per-epoch validation; the test evaluation at the end uses
    # evaluation.finetune_steps. Fine-tuning every epoch costs minutes on a CPU.
    val_finetune_steps: int = 0
    epochs: int = 10
    # Stop when validation acc_in has not improved for this many epochs (0: never).
    early_stopping: int = 0
    batch_size: int = 32
    lr: float = 1e-4
    # Optimizer steps over which the learning rate rises linearly from lr/warmup_steps to lr:
    # Adam's first steps, taken on barely estimated second moments, otherwise move every
    # generated weight at once and the behavioral loss on their logits spikes.
    warmup_steps: int = 20
    weight_decay: float = 0.01
    grad_clip: float = 1.0
    # Query images drawn per pair and step, from the training images of the pair's target
    # classes, for the losses that run the CNNs (behavioral, jacobian, fisher; each uses the
    # first `queries` of its options). The behavioral paper shows each model 256; every
    # image costs a forward and backward of each generated CNN, so the CPU default is 8.
    query_images: int = 8
    # Behaviour-preserving copies of each training input CNN, its hidden units randomly
    # permuted (drawn once, from the data seed + 4): each step feeds each encoder one of the
    # CNN and its copies, at random, against the unpermuted target (0: none; the behavioral
    # paper's code uses 20). Validation and test inputs are never permuted.
    permutations: int = 0
    # The hidden-unit order every CNN is brought into before the model reads it (wsmerge.align):
    # "none", "sort" or "match" (onto each activation's most typical training CNN).
    align: str = "none"
    seed: int = 0  # model init and dropout; also batch order while order_seed is unset
    order_seed: int | None = None  # batch order, query images and permutations (None: seed)
    # Repeats: the same configuration once per seed (wsmerge.seeds.train_seeds, in
    # out/seed-<s>/), each seed setting what `vary` names: "init" (seed), "order"
    # (order_seed), "split" (pairs.seed). Empty: one run with `seed`.
    seeds: list[int] = field(default_factory=list)
    vary: list[str] = field(default_factory=lambda: ["init", "order"])
    device: str = "auto"  # auto: cuda when present
    # Autocast precision on CUDA (the report trains in bf16); the CPU always runs fp32.
    precision: str = "bf16"
    # On a GPU, the TransformerAE's forward through torch.compile: 1.42× the seed preset's
    # mse-only samples per second at batch 1024 on an H200, after about 30 s of compiling
    # (no effect on a CPU).
    compile: bool = False
    progress: bool = True
    # A folder for runs scored on the same pairs (a sweep sets <sweep>/baselines for its
    # trials and repeats): the first to evaluate a split stores its baselines' merges,
    # predictions and fine-tuning there, under `wsmerge.evaluate.baselines_key`, and the
    # others read them, with the same results. None: every run computes its own.
    baseline_cache: str | None = None

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        if isinstance(self.model, Mapping):
            set_("model", ModelConfig.from_dict(dict(self.model), "model"))
        if isinstance(self.pairs, Mapping):
            set_("pairs", PairConfig.from_dict(dict(self.pairs), "pairs"))
        if isinstance(self.evaluation, Mapping):
            set_("evaluation", EvalConfig.from_dict(dict(self.evaluation), "evaluation"))
        if not isinstance(self.losses, Mapping):
            raise ValueError(f"losses must be a mapping name -> weight, got {type(self.losses).__name__}")
        set_("losses", validate_mix(self.losses, self.loss_options))
        if self.loss_scaling is None:
            set_("loss_scaling", "first" if sum(w > 0 for w in self.losses.values()) > 1 else "none")
        if self.loss_scaling not in SCALINGS:
            raise ValueError(f"loss_scaling must be one of {list(SCALINGS)}, got {self.loss_scaling!r}")
        for name in ("epochs", "batch_size", "query_images", "scale_batches"):
            check_int(getattr(self, name), name, 1)
        for name in ("val_finetune_steps", "warmup_steps", "early_stopping", "predictiveness_images", "permutations"):
            check_int(getattr(self, name), name, 0)
        if self.order_seed is not None:
            check_int(self.order_seed, "order_seed", 0)
        if self.align not in ALIGN:
            raise ValueError(f"align must be one of {list(ALIGN)}, got {self.align!r}")
        if not isinstance(self.seeds, (list, tuple)) or not isinstance(self.vary, (list, tuple)):
            raise ValueError(f"seeds and vary must be lists, got {self.seeds!r} and {self.vary!r}")
        set_("seeds", [check_int(s, "seeds", 0) for s in self.seeds])
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        unknown = [v for v in self.vary if v not in VARY]
        if unknown or not self.vary:
            raise ValueError(f"vary must name some of {list(VARY)}, got {list(self.vary)}")
        set_("vary", list(self.vary))
        for name in ("lr", "grad_clip"):
            check_number(getattr(self, name), name, 0, open_low=True)
        check_number(self.weight_decay, "weight_decay", 0, 1)
        if self.baseline_cache is not None and not isinstance(self.baseline_cache, str):
            raise ValueError(f"baseline_cache must be a folder path or null, got {self.baseline_cache!r}")
        if not isinstance(self.compile, bool):
            raise ValueError(f"compile must be true or false, got {self.compile!r}")
        if self.precision not in ("bf16", "fp32"):
            raise ValueError(f"precision must be bf16 or fp32, got {self.precision!r}")
        if self.device not in ("auto", "cpu", "cuda") and not str(self.device).startswith("cuda:"):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {self.device!r}")

    @classmethod
    def from_dict(cls, d: Any, where: str = "run config") -> "RunConfig":
        return from_dict(cls, d, where)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike, **overrides) -> "RunConfig":
        return cls.from_dict({**read_yaml(path), **overrides}, str(path))

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["model"] = self.model.to_dict()
        d["pairs"] = self.pairs.to_dict()
        d["evaluation"] = self.evaluation.to_dict()
        return json.loads(json.dumps(d))  # tuples → lists, so saved and fresh configs compare equal

    def replace(self, **changes) -> "RunConfig":
        return dataclasses.replace(self, **changes)


@dataclass
class RunResult:
    history: list[dict[str, float]]  # one report per epoch
    test: dict[str, float]  # test-pair summary (flat method/metric keys) of the best epoch's model
    out: Path
    best_epoch: int  # the epoch whose model was tested (best validation acc_in)
    scales: dict[str, float]  # what each term of the mix was divided by (1 without scaling)
    # True when `train(resume=True)` found the run already finished and tested: nothing ran.
    already_complete: bool = False


# --------------------------------------------------------------------------------- set-up


@dataclass(frozen=True)
class _Augment:
    """The permuted copies of the training inputs (RunConfig.permutations): per hidden layer,
    [rows, copies + 1, n_k] unit orders of each zoo row, copy 0 the CNN itself (uint8: the
    largest layer has 20 units). Drawn for every row, so that a CNN's copies do not depend on
    which other CNNs the split puts in training."""

    perms: list[torch.Tensor]

    @classmethod
    def draw(cls, n_rows: int, copies: int, gen: torch.Generator) -> "_Augment":
        perms = []
        for n in HIDDEN_SIZES:
            # float64 keys: ties, which argsort would break by position, are all but impossible.
            drawn = torch.rand(n_rows, copies, n, generator=gen, dtype=torch.float64).argsort(dim=2)
            perms.append(torch.cat([torch.arange(n).expand(n_rows, 1, n), drawn], dim=1).to(torch.uint8))
        return cls(perms)

    def __call__(self, weights: torch.Tensor, rows: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        """weights [B, 2464] of the rows' CNNs, each swapped for one of its copies, from `gen`."""
        copy = torch.randint(self.perms[0].shape[1], (len(rows),), generator=gen)
        return permute_units(weights, [p[rows, copy] for p in self.perms])


class _QueryPools:
    """The training images of each target class set, where a batch's query images are drawn:
    on the host (looking a pair's draws up on a GPU would make the host wait, every pair),
    in one table padded to the largest pool, so that a batch's draws are a few operations
    whatever its size (a draw a pair took two, 128 of a paper-mix step's 1,142 at batch 64)."""

    def __init__(self, pools: dict[tuple[int, ...], torch.Tensor]):
        self.row = {t: i for i, t in enumerate(pools)}
        self.size = torch.tensor([len(p) for p in pools.values()])
        self.table = torch.nn.utils.rnn.pad_sequence(list(pools.values()), batch_first=True)

    def draw(self, targets: list[tuple[int, ...]], n: int, gen: torch.Generator) -> torch.Tensor:
        """[B, n] image indices, uniform with replacement over each target's pool: 62-bit
        draws modulo the pool's size (a relative bias below 2⁻⁴⁶ for pools under 2¹⁶
        images, as MNIST's are, which no run can see)."""
        rows = torch.tensor([self.row[t] for t in targets])
        picks = torch.randint(2**62, (len(rows), n), generator=gen) % self.size[rows, None]
        return self.table[rows[:, None], picks]


@dataclass
class _Data:
    pairs: Pairs
    weights: torch.Tensor  # the zoo's [R, 2464] on the device
    init: dict[str, torch.Tensor]  # split -> shared epoch-0 weights of each pair
    mnist: MNIST
    pools: _QueryPools
    # The CNNs as the model reads and writes them: `weights` in canonical order
    # (RunConfig.align), or `weights` itself. The baselines always see `weights`.
    inputs: torch.Tensor
    # Per hidden layer [R, n_k]: the unit order that made each row of `inputs` (None: none).
    order: list[torch.Tensor] | None
    augment: _Augment | None  # RunConfig.permutations; None without

    def target_order(self, split: str, generated: torch.Tensor) -> torch.Tensor:
        """The model's CNNs for `split` in the unit order of their targets in the zoo."""
        if self.order is None:
            return generated
        target = torch.from_numpy(self.pairs.indices(split)[2])
        return unalign(generated, [p[target] for p in self.order])


def _device(cfg: RunConfig) -> torch.device:
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {cfg.device!r} asked for, but torch sees no GPU")
    return torch.device(cfg.device)


@dataclass(frozen=True)
class ZooTables:
    """A zoo store read once (`read_zoo`): a sweep puts it in Ray's object store and hands it
    to every trial, instead of each trial reading and parsing the Parquet shards again."""

    path: str
    checkpoints: pd.DataFrame  # wsmerge.zoo.load
    init: pd.DataFrame  # wsmerge.zoo.load_init


def read_zoo(path: str | os.PathLike) -> ZooTables:
    return ZooTables(str(path), load(path), load_init(path))


def _load_data(cfg: RunConfig, device: torch.device, tables: ZooTables | None) -> _Data:
    """Everything read from disk, and every error in it, before any training starts."""
    if tables is None:
        tables = read_zoo(cfg.zoo)
    elif Path(tables.path).resolve() != Path(cfg.zoo).resolve():
        raise ValueError(f"the zoo handed to train was read from {tables.path}, but the config's zoo is {cfg.zoo}")
    zoo = tables.checkpoints
    pairs = make_pairs(zoo, cfg.pairs)
    matrix = weights_matrix(zoo)
    # Checked once here, so that a training step need not read it off the device.
    used = _used_rows(pairs)
    bad = used[~np.isfinite(matrix[used]).all(axis=1)]
    if len(bad):
        named = ", ".join(f"{j} at epoch {e}" for j, e in zoo.iloc[bad[:5]][["job_id", "epoch"]].values)
        raise ValueError(f"{cfg.zoo}: {len(bad)} checkpoint(s) the pairs use hold non-finite weights ({named}"
                         f"{', …' if len(bad) > 5 else ''})")
    weights = torch.from_numpy(matrix).to(device)
    init_df = tables.init
    init = {s: pairs.init_weights(s, init_df).to(device) for s in ("train", "val", "test")}
    mnist = load_mnist().to(device)
    targets = sorted({t for s in ("train", "val", "test") for t in pairs[s]["c3"]})
    pools = _QueryPools({t: mnist.train.indices(t).cpu() for t in targets})
    inputs, order = weights, None
    if cfg.align != "none":
        order = _canonical_order(cfg.align, pairs, weights.cpu(), zoo["activation"].to_numpy())
        inputs = align(weights, order)
    augment = None
    if cfg.permutations:
        gen = torch.Generator().manual_seed(_data_seed(cfg) + 4)
        augment = _Augment.draw(len(zoo), cfg.permutations, gen)
    return _Data(pairs, weights, init, mnist, pools, inputs, order, augment)


def _used_rows(pairs: Pairs) -> np.ndarray:
    """The zoo rows some pair of some split uses, sorted."""
    return np.unique(np.concatenate([np.concatenate(pairs.indices(s)) for s in SPLITS]))


def _canonical_order(
    method: str, pairs: Pairs, weights: torch.Tensor, activations: np.ndarray
) -> list[torch.Tensor]:
    """Per hidden layer [R, n_k]: the unit order (wsmerge.align) of each zoo row that a pair
    uses, the identity elsewhere. "match" matches each activation's CNNs onto its training
    CNN (any role) whose sorted vector is nearest the mean of its sorted training CNNs."""
    used = _used_rows(pairs)
    train = np.unique(np.concatenate(pairs.indices("train")))
    order = [torch.arange(n).repeat(len(weights), 1) for n in HIDDEN_SIZES]
    for act in sorted(set(activations[used])):
        rows = torch.from_numpy(used[activations[used] == act])
        reference = None
        if method == "match":
            fit = train[activations[train] == act]
            if not len(fit):
                raise ValueError(f"align match: no training CNN of activation {act} to match its CNNs onto")
            ranked = align(weights[fit], canonical_perms(weights[fit], "sort"))
            reference = ranked[nearest_to_mean(ranked)]
        for o, p in zip(order, canonical_perms(weights[rows], method, reference)):
            o[rows] = p
    return order


def _data_seed(cfg: RunConfig) -> int:
    return cfg.seed if cfg.order_seed is None else cfg.order_seed


def _batches(acts: list[str], batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    """Shuffled batches of pair rows, each of one activation (the losses that run the CNNs
    run one activation per call)."""
    out = []
    for act in sorted(set(acts)):
        rows = torch.tensor([i for i, a in enumerate(acts) if a == act])
        rows = rows[torch.randperm(len(rows), generator=gen)]
        out += list(rows.split(batch_size))
    order = torch.randperm(len(out), generator=gen).tolist()
    return [out[i] for i in order]


def _query_images(data: _Data, targets: list[tuple[int, ...]], n: int, gen: torch.Generator) -> torch.Tensor:
    """[B, n, 1, 28, 28]: for each pair, n training images of its target's classes."""
    images = data.mnist.train.images
    return images[to_device(data.pools.draw(targets, n, gen), images.device)]


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW fused into one kernel, on a GPU and on a CPU. On an H200, with its default
    multi-tensor path the seed preset's mse-only step at batch 64 ran at 1,581 samples/s,
    fused at 2,351. On a 2-core CPU, where its default is a loop over the parameters, a
    tiny-preset step at batch 32 took 0.65-0.68x the loop's time fused with mse alone and
    0.72-0.84x with the paper mix, in three runs (bench/merge_throughput.py)."""
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, fused=True)


def _merge(cfg: RunConfig, model: TransformerAE, w1, w2, w3, act, targets, data: _Data, gen, device, scales=None,
           check_finite=True):
    """The model's output for one batch and the loss mix on it: (generated, total, terms).
    Every random draw (query images, permutations, the losses' probes) comes from `gen`.
    check_finite: mix_loss's (False: the caller checks the generated CNNs)."""
    needs = required_context(cfg.losses)
    images = _query_images(data, targets, cfg.query_images, gen) if "images" in needs else None
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=device.type == "cuda" and cfg.precision == "bf16"):
        # The contrastive term's second view: the same pairs after neuron permutations,
        # which change the weights but not the functions, in the pairs' own encoder pass.
        views = (permute_neurons(w1, gen), permute_neurons(w2, gen)) if "neck_aug" in needs else None
        out = model(w1, w2, views=views)
    ctx = LossContext(
        activation=act,
        images=images,
        sources=(w1, w2),
        neck=out.neck.float(),
        neck_aug=None if out.neck_aug is None else out.neck_aug.float(),
        encode=model.encode,
        fuse=model.fuse,
        project=model.project if model.projection is not None else None,
        generator=gen,
        options=cfg.loss_options,
    )
    pred = out.weights.float()
    total, terms = mix_loss(pred, w3, cfg.losses, ctx, scales, check_finite=check_finite)
    return pred, total, terms


# ---------------------------------------------------------------------------- checkpoints


def _comparable(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if k not in _RESUMABLE_CHANGES}


def _load_checkpoint(path: Path, cfg: RunConfig) -> dict[str, Any]:
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or not a torch file at all
        raise ValueError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    if not isinstance(ck, dict) or ck.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a wsmerge training checkpoint")
    # Through RunConfig, so that a key added since the checkpoint was written reads as its default.
    saved = RunConfig.from_dict(json.loads(ck["config"]), f"{path} (its saved config)").to_dict()
    if _comparable(saved) != _comparable(cfg.to_dict()):
        diffs = [
            f"{k}: {saved.get(k)!r} there, {v!r} now"
            for k, v in _comparable(cfg.to_dict()).items()
            if saved.get(k) != v
        ]
        raise ValueError(f"{path}: written by a run with another config ({'; '.join(diffs)})")
    return ck


# ---------------------------------------------------------------------------------- train


def _train_batches(cfg, data, gen, device):
    """(rows, w1, w2, w3, activation, targets) of each training batch, in the epoch's order;
    with augmentation, w1 and w2 each a copy drawn from `gen` (the target is not permuted)."""
    w1_all, w2_all, w3_all = data.pairs.tensors("train", data.inputs)
    cnn1, cnn2, _ = (torch.from_numpy(i) for i in data.pairs.indices("train"))
    meta = data.pairs.meta("train")
    for rows in _batches(meta["activation"], cfg.batch_size, gen):
        r = to_device(rows, device)
        w1, w2 = w1_all[r], w2_all[r]
        if data.augment is not None:
            w1, w2 = data.augment(w1, cnn1[rows], gen), data.augment(w2, cnn2[rows], gen)
        targets = [meta["c3"][i] for i in rows.tolist()]
        yield rows, w1, w2, w3_all[r], meta["activation"][rows[0]], targets


def _loss_scales(cfg, model, data, device) -> dict[str, float]:
    """Each term's divisor: its mean over the first `scale_batches` batches of training
    pairs, measured on the untrained model (in eval mode, with generators of their own, so
    that training draws the same whatever the scaling), or 1 without scaling."""
    if cfg.loss_scaling == "none":
        return {n: 1.0 for n, w in cfg.losses.items() if w > 0}
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    sums: dict[str, float] = {}
    count = 0
    model.eval()
    for i, (_, w1, w2, w3, act, targets) in enumerate(_train_batches(cfg, data, gen, device)):
        if i == cfg.scale_batches:
            break
        _, _, terms = _merge(cfg, model, w1, w2, w3, act, targets, data, gen, device)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + v.detach().sum().item()
        count += len(w1)
    scales = {k: v / count for k, v in sums.items()}
    bad = {k: v for k, v in scales.items() if not (math.isfinite(v) and v > 0)}
    if bad:
        raise ValueError(f"loss_scaling 'first': terms {bad} are not > 0 on the first batches; use loss_scaling: none")
    return scales


def _train_step(
    cfg, model, opt, batch, data, gen, device, scales
) -> tuple[torch.Tensor, dict[str, torch.Tensor], torch.Tensor]:
    """One optimizer step on `batch` (a `_train_batches` item): the mean loss, each term's
    per-sample values and whether the generated CNNs were finite, left on the device
    (reading them waits for the GPU)."""
    _, w1, w2, w3, act, targets = batch
    pred, total, terms = _merge(cfg, model, w1, w2, w3, act, targets, data, gen, device, scales, check_finite=False)
    loss = total.mean()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    opt.step()
    return loss, terms, torch.isfinite(pred).all()


# Seconds between the progress bar's loss readings: each waits for the GPU's queue to drain,
# so the epoch's sums stay on the device and are read once at its end.
_POSTFIX_SECONDS = 1.0


def _train_epoch(cfg, model, opt, sched, data, gen, device, bar, scales, epoch) -> dict[str, float]:
    model.train()
    # float64 on the device, the same sums as Python's floats of each step's values, and
    # beside them the count of steps whose generated CNNs were not finite.
    sums: dict[str, torch.Tensor] = {}
    count, shown = 0, time.monotonic()

    def add(key: str, value: torch.Tensor, n: int, scale: float = 1.0) -> None:
        sums[key] = sums.get(key, 0.0) + value.detach().double() / scale * n

    def read() -> dict[str, float]:
        """The sums, in one reading; a diverged model stops the run before its epoch is
        saved, so a resume starts from the last finite one."""
        values = dict(zip(sums, torch.stack(list(sums.values())).tolist()))
        diverged = values.pop("diverged")
        if diverged:
            raise ValueError(
                f"epoch {epoch}: the model generated non-finite weights (NaN or inf) in {diverged:.0f} "
                f"step(s): training diverged; a lower lr or grad_clip may keep it finite"
            )
        return values

    for batch in _train_batches(cfg, data, gen, device):
        loss, terms, finite = _train_step(cfg, model, opt, batch, data, gen, device, scales)
        sched.step()
        n = len(batch[0])
        add("diverged", ~finite, 1)
        add("loss", loss, n)
        for k, v in terms.items():
            mean = v.mean()
            add(k, mean, n)
            add(f"scaled/{k}", mean, n, scales[k])
        count += n
        bar.update(n)
        if time.monotonic() - shown >= _POSTFIX_SECONDS:
            bar.set_postfix(loss=f"{read()['loss'] / count:.4g}")
            shown = time.monotonic()
    means = {f"train/{k}": v / count for k, v in read().items()}
    bar.set_postfix(loss=f"{means['train/loss']:.4g}")
    return means


@torch.no_grad()
def _generate(cfg, model, data, split, device, gen, scales) -> tuple[torch.Tensor, dict[str, np.ndarray]]:
    """The model's CNNs for every pair of `split` (in the unit order it reads and writes) and
    each pair's loss terms (unweighted) and total (the trained objective, scaled), computed
    as in training but without dropout or augmentation."""
    model.eval()
    w1_all, w2_all, w3_all = data.pairs.tensors(split, data.inputs)
    meta = data.pairs.meta(split)
    generated = torch.empty_like(w3_all)
    per_pair: dict[str, np.ndarray] = {}
    acts = meta["activation"]
    for act in sorted(set(acts)):
        rows_all = torch.tensor([i for i, a in enumerate(acts) if a == act])
        for rows in rows_all.split(cfg.batch_size):
            r = rows.to(device)
            targets = [meta["c3"][i] for i in rows.tolist()]
            with torch.enable_grad():  # jacobian, fisher and contractive differentiate inside
                pred, total, terms = _merge(
                    cfg, model, w1_all[r], w2_all[r], w3_all[r], act, targets, data, gen, device, scales
                )
            generated[r] = pred.detach()
            for k, v in {"loss": total, **terms}.items():
                per_pair.setdefault(k, np.full(len(acts), np.nan))[rows.numpy()] = v.detach().float().cpu().numpy()
    return generated, per_pair


def _read_baselines(path: Path, device) -> dict:
    """A stored baselines' cache, or {} when there is none or it cannot be read (a run
    evaluates the baselines then, and stores them again)."""
    if not path.exists():
        return {}
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except Exception as e:  # a truncated or foreign file costs the evaluation, not the run
        warnings.warn(f"{path}: unreadable baselines' cache ({e}); evaluating the baselines again")
        return {}


def _evaluate(cfg, model, data, split, device, eval_cfg: EvalConfig, scales, exact: bool = False, cache=None):
    """(EvalResult, summary, table) of `split`: `table` is the loss-predictiveness table when
    `exact`, else None. cache: kept by the caller across epochs (see evaluate_merges)."""
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # the same query images every epoch
    generated, losses = _generate(cfg, model, data, split, device, gen, scales)
    w1, w2, w3 = data.pairs.tensors(split, data.weights)
    meta = data.pairs.meta(split)
    images = data.mnist.val if split == "val" else data.mnist.test
    inputs = (w1, w2, w3, meta["c1"], meta["c2"], meta["activation"], images, data.mnist.train, eval_cfg)
    stored = made = None
    if cfg.baseline_cache and not cache:
        # The validation's cache is the caller's, filled in place; the test's is this call's.
        cache = {} if cache is None else cache
        stored = Path(cfg.baseline_cache) / f"{split}-{baselines_key(*inputs, init=data.init[split])}.pt"
        cache.update(_read_baselines(stored, device))
        made = not cache
    result = evaluate_merges(
        data.target_order(split, generated), *inputs, pair_loss=losses["loss"], init=data.init[split], cache=cache
    )
    if made:
        stored.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(stored, lambda p: torch.save(cache, p))
    for k, v in losses.items():
        result.per_pair[f"loss/{k}"] = result.per_pair["pair"].map(dict(enumerate(v)))
    table = None
    if exact and cfg.predictiveness_images:
        table = _loss_predictiveness(cfg, model, data, split, device, generated, result, losses["loss"])
    summary = result.summary()
    summary.update({f"loss/{k}": float(np.mean(v)) for k, v in losses.items()})
    return result, summary, table


@torch.no_grad()
def _loss_predictiveness(cfg, model, data, split, device, generated, result, pair_loss) -> pd.DataFrame:
    """Every registered loss at its exact setting between the generated and the target CNN of
    each pair (added to the generated rows of `result.per_pair` as `exact/<loss>`), and the
    table of their correlations with acc_in and ft_acc_in; the trained mix is the row `mix`.
    In the unit order the model reads and writes, as the trained mix."""
    model.eval()
    w1, w2, w3 = data.pairs.tensors(split, data.inputs)
    meta = data.pairs.meta(split)
    gen = torch.Generator().manual_seed(cfg.seed + 3)
    images = _query_images(data, meta["c3"], cfg.predictiveness_images, gen)

    def context(rows: torch.Tensor) -> LossContext:
        r = rows.to(device)
        return LossContext(
            activation=meta["activation"][int(rows[0])], images=images[r], sources=(w1[r], w2[r]),
            neck=model(w1[r], w2[r]).neck.float(), encode=model.encode, fuse=model.fuse, generator=gen,
        )

    losses = pair_losses(generated, w3, context, cfg.batch_size, groups=meta["activation"])
    losses.values["mix"] = pair_loss
    gen_rows = result.per_pair["method"] == "generated"
    by_pair = result.per_pair[gen_rows].set_index("pair").sort_index()
    for name in losses.values:
        result.per_pair.loc[gen_rows, f"exact/{name}"] = result.per_pair.loc[gen_rows, "pair"].map(losses.values[name])
    ft = by_pair["ft_acc_in"].to_numpy() if "ft_acc_in" in by_pair else None
    ev = cfg.evaluation
    groups = groups_of(by_pair, ev.interval_unit)
    return predictiveness(losses, by_pair["acc_in"].to_numpy(), ft, ev.bootstrap, ev.ci, ev.seed, groups)


def _rng_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"torch": torch.get_rng_state(), "loader": gen.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any], gen: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    gen.set_state(state["loader"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _finished(cfg: RunConfig, out: Path, checkpoint: dict[str, Any]) -> RunResult | None:
    """The result of a run that trained all its epochs (or stopped early) and was tested,
    read back from its files; None when there is something left to do."""
    history = json.loads(checkpoint["history"])
    best_epoch = int(checkpoint["best_epoch"])
    path = out / "result.json"
    if not path.exists() or (len(history) < cfg.epochs and not _stopped_early(cfg, history, best_epoch)):
        return None
    saved = json.loads(path.read_text())
    if saved.get("epochs") != len(history):  # tested before the last epochs ran: test again
        return None
    test = {k: math.nan if v is None else v for k, v in saved["test"].items()}
    return RunResult(history, test, out, best_epoch, json.loads(checkpoint["scales"]), already_complete=True)


def _stopped_early(cfg: RunConfig, history: list[dict[str, float]], best_epoch: int) -> bool:
    return bool(cfg.early_stopping) and bool(history) and history[-1]["epoch"] - best_epoch >= cfg.early_stopping


def disk_bytes(cfg: RunConfig) -> int:
    """What a run of `cfg` keeps on disk, near enough to plan by: checkpoint.pt (the model and
    AdamW's two moments of every parameter) and best.pt (the model), in float32; its other
    files are kilobytes. The tiny preset's pair is 130 MB, the seed preset's 3.4 GB."""
    with torch.device("meta"):
        model = TransformerAE(cfg.model)
    state = sum(t.numel() for t in model.state_dict().values())
    return 4 * (2 * state + 2 * model.num_parameters())


def _save_best(path: Path, model: TransformerAE, epoch: int, value: float) -> None:
    saved = {"format": _FORMAT, "epoch": epoch, SELECT: value, "model": model.state_dict()}
    atomic_write(path, lambda p: torch.save(saved, p))


def _load_best(path: Path, model: TransformerAE) -> int:
    try:
        best = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: unreadable best-epoch model ({type(e).__name__}: {e})") from None
    if not isinstance(best, dict) or best.get("format") != _FORMAT:
        raise ValueError(f"{path}: not a wsmerge best-epoch model")
    model.load_state_dict(best["model"])
    return int(best["epoch"])


def _isolated(fn, device: torch.device):
    """fn() without touching torch's global RNG (which dropout draws from): the evaluation
    between two epochs must leave training's random stream as a resumed run finds it."""
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        return fn()


@cudnn_autotuned
def train(
    cfg: RunConfig,
    report: Callable[[dict[str, float]], None] | None = None,
    resume: bool = False,
    zoo: ZooTables | None = None,
) -> RunResult:
    """Train, validate every epoch, test the best epoch's model at the end. `resume`:
    continue the checkpoint in `cfg.out` if there is one, start if there is none, and return
    a finished run's saved result without running anything (`already_complete`); without
    `resume`, `cfg.out` must not hold a run. zoo: `cfg.zoo` already read (`read_zoo`).
    On a GPU, cuDNN times its algorithms for the CNN forwards of the losses and the
    evaluation (grouped convolutions, one group a generated CNN), as the zoo's training does."""
    if cfg.seeds:
        raise ValueError(f"the config asks for seeds {cfg.seeds}: run it with wsmerge.seeds.train_seeds")
    out = Path(cfg.out)
    ck_path = out / CHECKPOINT
    if not resume and ck_path.exists():
        raise FileExistsError(f"{ck_path} exists: resume it (--resume) or choose another out")
    checkpoint = _load_checkpoint(ck_path, cfg) if resume and ck_path.exists() else None
    if checkpoint is not None:
        done = _finished(cfg, out, checkpoint)
        if done is not None:
            return done
    device = _device(cfg)
    data = _load_data(cfg, device, zoo)
    out.mkdir(parents=True, exist_ok=True)

    torch.manual_seed(cfg.seed)
    model = TransformerAE(cfg.model).to(device)
    model.set_normalization(data.inputs[torch.from_numpy(np.unique(np.concatenate(data.pairs.indices("train"))))])
    if cfg.compile and device.type == "cuda":
        model.compile()  # in place: the state dict keeps its keys
    opt = make_optimizer(model, cfg.lr, cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: min(1.0, (step + 1) / max(cfg.warmup_steps, 1)))
    gen = torch.Generator().manual_seed(_data_seed(cfg))
    history: list[dict[str, float]] = []
    start_epoch, best_epoch, best_value = 1, 0, -math.inf
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        opt.load_state_dict(checkpoint["optimizer"])
        sched.load_state_dict(checkpoint["scheduler"])
        _set_rng_state(checkpoint["rng"], gen)
        history = json.loads(checkpoint["history"])
        start_epoch = int(checkpoint["epoch"]) + 1
        scales = json.loads(checkpoint["scales"])
        best_epoch, best_value = int(checkpoint["best_epoch"]), float(checkpoint["best_value"])
    else:
        scales = _isolated(lambda: _loss_scales(cfg, model, data, device), device)

    val_cfg = dataclasses.replace(cfg.evaluation, finetune_steps=cfg.val_finetune_steps)
    val_cache: dict = {}  # the baselines' validation predictions, made in the first epoch
    n_train = len(data.pairs["train"])
    bar = tqdm(total=n_train * (cfg.epochs - start_epoch + 1), unit="pair", desc="train", disable=not cfg.progress)
    try:
        for epoch in range(start_epoch, cfg.epochs + 1):
            if _stopped_early(cfg, history, best_epoch):
                break
            t0 = time.perf_counter()
            metrics = {"epoch": epoch, **_train_epoch(cfg, model, opt, sched, data, gen, device, bar, scales, epoch)}
            metrics["train/seconds"] = time.perf_counter() - t0
            metrics["train/lr"] = opt.param_groups[0]["lr"]
            _, val, _ = _isolated(
                lambda: _evaluate(cfg, model, data, "val", device, val_cfg, scales, cache=val_cache), device
            )
            metrics.update({f"val/{k}": v for k, v in val.items()})
            metrics["val/seconds"] = time.perf_counter() - t0 - metrics["train/seconds"]
            # NaN (no validation pair scored) never counts as an improvement.
            if metrics[SELECT] > best_value:
                best_epoch, best_value = epoch, metrics[SELECT]
                _save_best(out / BEST, model, epoch, best_value)
            metrics["best_epoch"] = best_epoch
            history.append(metrics)
            saved = {
                "format": _FORMAT,
                "config": json.dumps(cfg.to_dict()),
                "epoch": epoch,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "rng": _rng_state(gen),
                "history": json.dumps(history),
                "scales": json.dumps(scales),
                "best_epoch": best_epoch,
                "best_value": best_value,
            }
            atomic_write(ck_path, lambda p: torch.save(saved, p))
            record = {"loss_scales": scales, "best_epoch": best_epoch, "history": history}
            write_json(out / "history.json", record)
            if report is not None:
                report(metrics)
    finally:
        bar.close()

    if best_epoch:
        _load_best(out / BEST, model)
    result, test, table = _isolated(
        lambda: _evaluate(cfg, model, data, "test", device, cfg.evaluation, scales, exact=True), device
    )
    atomic_write(out / "test_pairs.csv", lambda p: result.per_pair.to_csv(p, index=False))
    if table is not None:
        write_predictiveness_csv(table, out / PREDICTIVENESS)
    summary = {
        "config": cfg.to_dict(),
        "test": test,
        "epochs": len(history),
        "best_epoch": best_epoch,
        "stopped_early": _stopped_early(cfg, history, best_epoch) and len(history) < cfg.epochs,
        "loss_scales": scales,
    }
    write_json(out / "result.json", summary)
    return RunResult(history, test, out, best_epoch, scales)
