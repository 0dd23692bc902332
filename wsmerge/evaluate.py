"""Downstream evaluation: what the generated CNNs are worth as classifiers.

For each merge pair (CNN1 on C1, CNN2 on C2, target CNN3 on C3 = C1 ∪ C2) the generated CNN
and the classic baselines are scored side by side, on the same images:

- accuracy on C3's images (in distribution) and on the other digits (out of distribution);
- forgetting: accuracy on C1's and C2's digits against CNN1's and CNN2's own;
- agreement (same argmax) with the target CNN3 on C3's images;
- collapse: a CNN whose outputs do not separate C3's images, giving one answer to all of them
  or logits that barely move from image to image (`logit_spread` below `collapse_tol`);
- after fine-tuning on C3's training images: accuracy, the step at which it catches up with
  its parents' mean accuracy, and whether it holds its best accuracy (stability);
- the correlation between each pair's Transformer loss and its generated CNN's accuracy,
  which says whether the loss can be trusted as a proxy for downstream quality.

Baselines: `copy1`, `copy2`, `average` ((w1 + w2) / 2), `task_arithmetic`
(init + (w1 − init) + (w2 − init), only when the pairs' shared epoch-0 weights are given),
the merges of `wsmerge.merges` that `EvalConfig.merges` names (Re-Basin, TIES, DARE, Fisher,
RegMean, ZipIt!, distillation: each computed on the same pairs, from unlabeled training
images where it needs them, its seconds per pair recorded), the parents' `ensemble`
(predictions only: not one CNN, never fine-tuned) and `target` (CNN3 itself, the ceiling).
Every CNN of every pair of one activation runs through one batched functional forward
(`wsmerge.cnn.batched_forward`).
"""

from __future__ import annotations

import hashlib
import json
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from scipy import stats

from wsmerge.cnn import N_PARAMS, batched_forward, check_activation, default_chunk, forward_chunks
from wsmerge.config import check_int, check_number, from_dict
from wsmerge.data import N_CLASSES, Split, check_classes
from wsmerge.merges import ENSEMBLE, MERGES, MergeInputs, ensemble_predict
from wsmerge.intervals import UNITS, bootstrap_mean, bootstrap_statistic, paired_difference

__all__ = [
    "METHODS",
    "EvalConfig",
    "EvalResult",
    "baselines_key",
    "catchup_steps",
    "correlation",
    "default_chunk",
    "evaluate_merges",
    "groups_of",
    "interval_summary",
    "loss_accuracy_correlation",
    "predict",
    "stability",
]

# Every method in the order of the per-pair frame: the weight methods (all fine-tuned) lead,
# then the ensemble, then the target.
METHODS: tuple[str, ...] = (
    "generated", "copy1", "copy2", "average", "task_arithmetic", *MERGES, ENSEMBLE, "target"
)
_CLASSIC = ("generated", "copy1", "copy2", "average", "task_arithmetic")

# Columns of `EvalResult.per_pair` that `summary()` averages over pairs.
_PRED_METRICS = (
    "acc_in", "acc_out", "acc_c1", "acc_c2", "forget_c1", "forget_c2", "agreement", "logit_spread"
)
_FT_METRICS = ("ft_acc_in", "ft_acc_out", "ft_drop")
# In `baselines_key`: a change to what `evaluate_merges` keeps in its cache, or to how
# the baselines are computed, bumps it, so that no stored cache of another kind is read.
_CACHE_FORMAT = 1


def _check_merges(names: Any) -> tuple[str, ...]:
    known = (*MERGES, ENSEMBLE)
    if isinstance(names, str) or not isinstance(names, (list, tuple)):
        raise ValueError(f"EvalConfig.merges must be a list of merge names, got {names!r}")
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ValueError(f"EvalConfig.merges: unknown {unknown}; known: {', '.join(known)}")
    if len(set(names)) != len(names):
        raise ValueError(f"EvalConfig.merges: a merge named twice in {list(names)}")
    return tuple(names)


def _check_unit(unit: Any) -> str:
    if unit not in UNITS:
        raise ValueError(f"EvalConfig.interval_unit must be one of {list(UNITS)}, got {unit!r}")
    return unit


@dataclass(frozen=True)
class EvalConfig:
    """How the merges are evaluated; every field is checked on construction."""

    images_per_class: int | None = 200  # evaluation images per digit; None = the whole split
    finetune_steps: int = 200  # 0 disables fine-tuning
    finetune_lr: float = 1e-3  # Adam
    finetune_batch: int = 64  # training images per model per step
    finetune_eval_every: int = 20  # resolution of the accuracy curve (catch-up, stability)
    stability_tolerance: float = (
        1.0  # accuracy points a curve may fall below its best and stay stable
    )
    bootstrap: int = 1000  # resamples for every interval; 0 = no intervals
    ci: float = 0.95
    # What the bootstrap resamples: "target" class sets (all pairs of a drawn target; pairs
    # of one target share its images and CNN) or single "pair"s, which overstates certainty.
    interval_unit: str = "target"
    seed: int = 0
    # Model×image evaluations per forward call; None: by device (see `default_chunk`).
    forward_chunk: int | None = None
    # A logit_spread below this flags a collapsed CNN. Random kaiming-initialised CNNs spread
    # their logits by 0.2–0.7 over C3's images; at 0.01 the softmax moves by about 1%.
    collapse_tol: float = 1e-2
    # The merges of wsmerge.merges scored beside the classic baselines (and `ensemble`), and
    # the unlabeled training images each parent's classes lend those that use images.
    merges: tuple[str, ...] = (*MERGES, ENSEMBLE)
    merge_images: int = 64

    def __post_init__(self):
        ipc = self.images_per_class
        checked = {
            "images_per_class": None if ipc is None else check_int(ipc, "EvalConfig.images_per_class", 1),
            "finetune_steps": check_int(self.finetune_steps, "EvalConfig.finetune_steps", 0),
            "finetune_lr": check_number(self.finetune_lr, "EvalConfig.finetune_lr", 0, open_low=True),
            "finetune_batch": check_int(self.finetune_batch, "EvalConfig.finetune_batch", 1),
            "finetune_eval_every": check_int(self.finetune_eval_every, "EvalConfig.finetune_eval_every", 1),
            "stability_tolerance": check_number(
                self.stability_tolerance, "EvalConfig.stability_tolerance", 0
            ),
            "bootstrap": check_int(self.bootstrap, "EvalConfig.bootstrap", 0),
            "ci": check_number(self.ci, "EvalConfig.ci", 0, 1, open_low=True),
            "interval_unit": _check_unit(self.interval_unit),
            "seed": check_int(self.seed, "EvalConfig.seed", 0),
            "forward_chunk": None
            if self.forward_chunk is None
            else check_int(self.forward_chunk, "EvalConfig.forward_chunk", 1),
            "collapse_tol": check_number(self.collapse_tol, "EvalConfig.collapse_tol", 0),
            "merges": _check_merges(self.merges),
            "merge_images": check_int(self.merge_images, "EvalConfig.merge_images", 1),
        }
        for name, value in checked.items():
            object.__setattr__(self, name, value)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], where: str = "evaluation") -> EvalConfig:
        return from_dict(cls, d, where)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "merges": list(self.merges)}


@dataclass
class EvalResult:
    """per_pair: one row per pair × method. curves: method → acc_in [P, len(curve_steps)]
    along fine-tuning (the fine-tuned methods only; empty without fine-tuning).
    correlation: `loss_accuracy_correlation` of the pairs' loss (empty without one).
    intervals: `interval_summary` of `per_pair` (NaN bounds without bootstrap)."""

    per_pair: pd.DataFrame
    curve_steps: np.ndarray
    curves: dict[str, np.ndarray] = field(default_factory=dict)
    correlation: dict[str, float] = field(default_factory=dict)
    intervals: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, float]:
        """Flat means over pairs, keyed `method/metric`, plus `corr/...` (for a Tune report)."""
        out: dict[str, float] = {"n_pairs": float(self.per_pair["pair"].nunique())}
        for method, rows in self.per_pair.groupby("method", sort=False):
            fine_tuned = method in self.curves
            for col in _PRED_METRICS + (_FT_METRICS if fine_tuned else ()):
                out[f"{method}/{col}"] = float(rows[col].mean())
            # The mean step counts only the pairs that caught up; the rate says how many did.
            out[f"{method}/catchup_steps"] = float(rows["catchup_steps"].mean())
            out[f"{method}/catchup_rate"] = float(rows["catchup_steps"].notna().mean())
            out[f"{method}/collapsed_share"] = float(rows["collapsed"].mean())
            if fine_tuned:
                out[f"{method}/ft_stable_rate"] = float(rows["ft_stable"].astype(float).mean())
        out.update({f"corr/{k}": v for k, v in self.correlation.items()})
        out.update(self.intervals)
        return out


def groups_of(per_pair: pd.DataFrame, unit: str) -> pd.Series | None:
    """The cluster key of each row of a per-pair frame for `unit` (None: each pair alone)."""
    return per_pair["c3"] if unit == "target" else None


def interval_summary(per_pair: pd.DataFrame, n_boot: int, ci: float, seed: int, unit: str) -> dict[str, float]:
    """Intervals and paired comparisons from a per-pair frame (`EvalResult.per_pair` or a
    run's test_pairs.csv), flat for a summary: `n_targets`; `generated/<m>_lo|_hi` for acc_in
    (and ft_acc_in) by `unit`; and for every other method b on the same pairs
    `vs_<b>/<m>`, `_lo`, `_hi`, `_p`: the generated CNN's mean difference to b, its interval
    and the Wilcoxon p over per-target means (see `wsmerge.intervals.paired_difference`)."""
    out: dict[str, float] = {"n_targets": float(per_pair["c3"].nunique())}
    by = {m: rows.sort_values("pair") for m, rows in per_pair.groupby("method", sort=False)}
    gen = by.get("generated")
    if gen is None:
        return out
    for metric in ("acc_in", "ft_acc_in"):
        if metric not in gen or not gen[metric].notna().any():
            continue
        groups = groups_of(gen, unit)
        iv = bootstrap_mean(gen[metric].to_numpy(float), groups, n_boot, ci, seed)
        out[f"generated/{metric}_lo"], out[f"generated/{metric}_hi"] = iv.lo, iv.hi
        for method, rows in by.items():
            if method == "generated" or not rows[metric].notna().any():
                continue
            d = paired_difference(gen[metric].to_numpy(float), rows[metric].to_numpy(float), groups, n_boot, ci, seed)
            key = f"vs_{method}/{metric}"
            out.update({key: d.value, f"{key}_lo": d.lo, f"{key}_hi": d.hi, f"{key}_p": d.p_value})
    return out


# ---------------------------------------------------------------------------- curve metrics


def catchup_steps(curves: np.ndarray, steps: Sequence[int], bar: np.ndarray) -> np.ndarray:
    """First step of each curve ([P, n] accuracies at `steps`) with accuracy >= its bar [P];
    NaN where the curve never gets there."""
    curves = np.asarray(curves, dtype=float)
    steps = np.asarray(steps, dtype=float)
    reached = curves >= np.asarray(bar, dtype=float)[:, None]
    first = np.argmax(reached, axis=1)
    return np.where(reached.any(axis=1), steps[first], np.nan)


def stability(curves: np.ndarray, tolerance: float) -> tuple[np.ndarray, np.ndarray]:
    """(drop, stable) per curve [P, n]: how far the final accuracy sits below the curve's best,
    and whether that is within `tolerance` points."""
    curves = np.asarray(curves, dtype=float)
    drop = curves.max(axis=1) - curves[:, -1]
    return drop, drop <= tolerance


# ---------------------------------------------------------------------------- correlation


def _constant(v: np.ndarray) -> bool:
    return bool(np.all(v == v[0]))


def _statistic(fn: Callable, x: np.ndarray, y: np.ndarray) -> float:
    # A constant side has no correlation; answer NaN instead of letting scipy warn.
    if _constant(x) or _constant(y):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fn(x, y)[0])


_CORRELATIONS: dict[str, Callable] = {
    "spearman": stats.spearmanr,
    "pearson": stats.pearsonr,
    "kendall": stats.kendalltau,
}


def correlation(name: str, x: np.ndarray, y: np.ndarray) -> float:
    """The `name` ("spearman", "pearson" or "kendall") correlation of x and y; NaN where
    either side is constant."""
    return _statistic(_CORRELATIONS[name], x, y)


def loss_accuracy_correlation(
    loss: Sequence[float] | np.ndarray | torch.Tensor,
    acc: Sequence[float] | np.ndarray | torch.Tensor,
    n_boot: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
) -> dict[str, float]:
    """Spearman, Pearson and Kendall correlation of per-pair loss against accuracy, each with
    a percentile-bootstrap CI that resamples the clusters `groups` (one key per pair, e.g. its
    target class set; see `wsmerge.intervals`) or, with `groups=None`, pairs.

    Keys `spearman`, `spearman_lo`, `spearman_hi`, the same for `pearson` and `kendall`, and
    `n_units` (clusters resampled) and `n_pairs`. Pairs where either value is not finite are
    left out; fewer than 3 pairs give NaN, and so do resamples where either side is constant
    (they are left out of the CI).
    """
    x, y = (_to_numpy(v) for v in (loss, acc))
    if x.ndim != 1 or x.shape != y.shape:
        raise ValueError(f"loss and acc must be 1-D of one length, got {x.shape} and {y.shape}")
    check_number(ci, "ci", 0, 1, open_low=True)
    check_int(n_boot, "n_boot", 0)
    out: dict[str, float] = {}
    for name in _CORRELATIONS:
        iv = bootstrap_statistic(lambda a, b: correlation(name, a, b), x, y, groups, n_boot, ci, seed)
        out[name], out[f"{name}_lo"], out[f"{name}_hi"] = iv.value, iv.lo, iv.hi
    out["n_units"], out["n_pairs"] = float(iv.n_units), float(iv.n_pairs)
    return out


def _to_numpy(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        v = v.detach().cpu()
    return np.asarray(v, dtype=float)


# ---------------------------------------------------------------------------- validation


def _check_weights(name: str, w: Any, n_pairs: int, device: torch.device) -> None:
    if not isinstance(w, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if tuple(w.shape) != (n_pairs, N_PARAMS):
        raise ValueError(
            f"{name} must be [{n_pairs}, {N_PARAMS}] (one CNN per pair), got {tuple(w.shape)}"
        )
    if not w.is_floating_point():
        raise ValueError(f"{name} must be floating point, got {w.dtype}")
    if w.device != device:
        raise ValueError(f"{name} is on {w.device} but generated is on {device}")


def _class_sets(name: str, sets: Sequence, n_pairs: int) -> list[tuple[int, ...]]:
    if len(sets) != n_pairs:
        raise ValueError(f"{name} has {len(sets)} entries for {n_pairs} pairs")
    out = []
    for i, s in enumerate(sets):
        try:
            out.append(check_classes(s))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}[{i}]: {e}") from None
    return out


def _require_classes(name: str, split: Split, classes: set[int]) -> None:
    counts = torch.bincount(split.labels, minlength=N_CLASSES)
    missing = sorted(c for c in classes if counts[c] == 0)
    if missing:
        raise ValueError(f"{name} has no images of classes {missing}")


def _validate(generated, w1, w2, w3, init, pair_loss, c1, c2, activations, split, train, cfg):
    if not isinstance(generated, torch.Tensor) or generated.dim() != 2:
        raise ValueError(f"generated must be a [P, {N_PARAMS}] tensor")
    n_pairs = generated.shape[0]
    if n_pairs == 0:
        raise ValueError("no pairs to evaluate")
    named = {"generated": generated, "w1": w1, "w2": w2, "w3": w3}
    if init is not None:
        named["init"] = init
    for name, w in named.items():
        _check_weights(name, w, n_pairs, generated.device)
    sets1, sets2 = _class_sets("c1", c1, n_pairs), _class_sets("c2", c2, n_pairs)
    if len(activations) != n_pairs:
        raise ValueError(f"activations has {len(activations)} entries for {n_pairs} pairs")
    acts = [check_activation(a) for a in activations]
    loss = None
    if pair_loss is not None:
        loss = _to_numpy(pair_loss)
        if loss.shape != (n_pairs,):
            raise ValueError(f"pair_loss must be [{n_pairs}], got {loss.shape}")
    if not isinstance(cfg, EvalConfig):
        raise ValueError(f"cfg must be an EvalConfig, got {type(cfg).__name__}")
    for name, s in (("split", split), ("train", train)):
        if not isinstance(s, Split):
            raise ValueError(f"{name} must be a wsmerge.data.Split, got {type(s).__name__}")
    used = set().union(*sets1, *sets2)
    _require_classes("split", split, used)
    if cfg.finetune_steps or any(not MERGES[m].data_free for m in cfg.merges if m in MERGES):
        _require_classes("train", train, used)
    return sets1, sets2, acts, loss


# ---------------------------------------------------------------------------- evaluation


def _membership(sets: Sequence[tuple[int, ...]], device: torch.device) -> torch.Tensor:
    member = torch.zeros(len(sets), N_CLASSES, dtype=torch.bool)
    for i, s in enumerate(sets):
        member[i, list(s)] = True
    return member.to(device)


def _forward_chunks(
    weights: torch.Tensor, images: torch.Tensor, activation: str, chunk: int | None
) -> Iterator[tuple[slice, slice, torch.Tensor]]:
    """(models, images, logits [m, n, 10]) of each forward call over `predict`'s chunks."""
    own = images.dim() == 5
    n_all = images.shape[1 if own else 0]
    for ms, ns in forward_chunks(weights.shape[0], n_all, chunk or default_chunk(weights.device)):
        yield ms, ns, batched_forward(weights[ms], images[ms, ns] if own else images[ns], activation)


def _argmax(logits: torch.Tensor) -> torch.Tensor:
    pred = logits.argmax(-1)
    pred[~torch.isfinite(logits).all(-1)] = -1
    return pred


def predict(
    weights: torch.Tensor, images: torch.Tensor, activation: str, chunk: int | None = None
) -> torch.Tensor:
    """argmax class [M, N] of M models on images [N, 1, 28, 28] they share or [M, N, 1, 28, 28]
    of their own; -1 (never a label) where a model's logits are not finite.

    Each forward call takes up to `chunk` model×images (None: `default_chunk`; never more
    than `wsmerge.cnn.MAX_MODEL_IMAGES`, where a convolution's output passes 2**31
    elements), as many images as fit and then as many models: one model's images share the
    first convolution.
    """
    m_all, n_all = weights.shape[0], images.shape[-4]
    out = torch.empty(m_all, n_all, dtype=torch.long, device=weights.device)
    for ms, ns, logits in _forward_chunks(weights, images, activation, chunk):
        out[ms, ns] = _argmax(logits)
    return out


def _predict_with_spread(
    weights: torch.Tensor,
    images: torch.Tensor,
    activation: str,
    mask: torch.Tensor,
    chunk: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`predict`'s argmax [M, N] of M models on shared images [N, 1, 28, 28], and from the
    same forward calls each model's logit spread [M]: the mean over the 10 classes of the
    standard deviation (ddof 0) of its logits across the images in its row of mask [M, N];
    NaN where those logits are not finite or the row is empty."""
    m_all, n_all = weights.shape[0], images.shape[0]
    out = torch.empty(m_all, n_all, dtype=torch.long, device=weights.device)
    # Running moments, as the images of one model may span several forward calls; float64
    # keeps E[x²] − E[x]² from cancelling at float32 logits.
    total = weights.new_zeros(m_all, 10, dtype=torch.float64)
    squares = torch.zeros_like(total)
    for ms, ns, logits in _forward_chunks(weights, images, activation, chunk):
        out[ms, ns] = _argmax(logits)
        x = torch.where(mask[ms, ns, None], logits.double(), 0.0)
        total[ms] += x.sum(1)
        squares[ms] += (x**2).sum(1)
    n = mask.sum(1, keepdim=True).double()
    var = (squares / n - (total / n) ** 2).clamp_min(0)
    return out, var.sqrt().mean(1)


def _percent(hit: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """100 × share of `hit` [..., P, N] over the images in `mask` [P, N]; NaN if mask is empty."""
    return 100.0 * (hit & mask).sum(-1).double() / mask.sum(-1).double()


def _accuracies(
    preds: torch.Tensor, labels: torch.Tensor, in1: torch.Tensor, in2: torch.Tensor
) -> dict[str, torch.Tensor]:
    """Percent accuracies [..., P] of preds [..., P, N] on images with `labels` [N];
    in1/in2 [P, 10] mark each pair's C1 and C2."""
    correct = preds == labels
    in3 = (in1 | in2)[:, labels]
    return {
        "acc_in": _percent(correct, in3),
        "acc_out": _percent(correct, ~in3),
        "acc_c1": _percent(correct, in1[:, labels]),
        "acc_c2": _percent(correct, in2[:, labels]),
    }


def _predict_stack(
    stack: torch.Tensor, images: torch.Tensor, activation: str, chunk: int
) -> torch.Tensor:
    """[n_methods, P, D] weights → [n_methods, P, N] predictions."""
    n_methods, n_pairs, d = stack.shape
    return predict(stack.reshape(-1, d), images, activation, chunk).view(n_methods, n_pairs, -1)


def _numpy(d: Mapping[str, torch.Tensor]) -> dict[str, np.ndarray]:
    return {k: v.cpu().numpy() for k, v in d.items()}


def _stack_methods(methods: Sequence[str], generated, w1, w2, w3, init, merged: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """[n, P, N_PARAMS] float32: the weight methods of `methods` in order (not the ensemble);
    merged: the weights of the wsmerge.merges methods."""
    build = {
        "generated": lambda: generated,
        "copy1": lambda: w1,
        "copy2": lambda: w2,
        "average": lambda: (w1 + w2) / 2,
        "task_arithmetic": lambda: init + (w1 - init) + (w2 - init),
        "target": lambda: w3,
        **{name: (lambda w=w: w) for name, w in merged.items()},
    }
    return torch.stack([build[m]().detach().float() for m in methods if m != ENSEMBLE])


def _merge_group(
    names: Sequence[str], w1, w2, init, in1, in2, activation, train: Split, cfg: EvalConfig, gen: torch.Generator
) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """The wsmerge.merges methods `names` on one activation's pairs: their weights [P, D] and
    the seconds each took per pair. Their images: `cfg.merge_images` training images of each
    parent's classes (and of C3), and for distillation the fine-tuning budget's batches of C3
    images, all drawn from `gen`."""
    if not names:
        return {}, {}
    device = w1.device
    pool = train.images.to(device)

    def draw(mask: torch.Tensor) -> torch.Tensor:
        return pool[_sample_batches(train, mask, 1, cfg.merge_images, gen)[:, 0].to(device)]

    in3 = in1 | in2
    inputs = MergeInputs(
        w1=w1, w2=w2, init=init, in1=in1, in2=in2, activation=activation,
        images1=draw(in1), images2=draw(in2), images3=draw(in3),
        batches=_sample_batches(train, in3, cfg.finetune_steps, cfg.finetune_batch, gen).to(device),
        pool=pool, lr=cfg.finetune_lr, seed=cfg.seed,
    )
    weights, seconds = {}, {}
    for name in names:
        start = time.perf_counter()
        with torch.enable_grad():  # Fisher differentiates; evaluate_merges runs under no_grad
            weights[name] = MERGES[name].run(inputs).detach().to(device=device, dtype=torch.float32)
        seconds[name] = (time.perf_counter() - start) / w1.shape[0]
    return weights, seconds


def _sample_batches(
    train: Split, in3: torch.Tensor, steps: int, batch: int, gen: torch.Generator
) -> torch.Tensor:
    """Training-image indices [P, steps, batch], uniform over each pair's C3 images.

    Drawn once for the whole run, so a pair's batches depend neither on how pairs are chunked
    nor on the method: every method of a pair sees the same images, step by step, and their
    curves differ only by where they started. Drawn step-major, so a shorter run replays the
    first steps of a longer one.
    """
    by_class = [train.indices([c]).cpu() for c in range(N_CLASSES)]
    table = torch.nn.utils.rnn.pad_sequence(by_class, batch_first=True)  # [10, largest class]
    counts = torch.tensor([len(b) for b in by_class]) * in3.cpu()  # [P, 10]; 0 outside C3
    ends = counts.cumsum(1)
    total = ends[:, -1:]
    u = torch.rand(steps, len(in3), batch, generator=gen, dtype=torch.float64)
    u = u.transpose(0, 1).flatten(1)
    pos = torch.minimum((u * total).long(), total - 1)  # position in the pair's C3 pool
    cls = torch.searchsorted(ends, pos, right=True)  # skips classes with no images in C3
    offset = pos - (ends.gather(1, cls) - counts.gather(1, cls))
    return table[cls, offset].view(len(in3), steps, batch)


@torch.enable_grad()
def _adam_step(theta, opt, images, labels, activation) -> None:
    logits = batched_forward(theta, images, activation)
    # Summing the per-model mean losses gives each model the gradient it would get alone.
    loss = (
        F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum") / images.shape[1]
    )
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def _finetune_path(
    start: torch.Tensor,
    batches: torch.Tensor,
    train: tuple[torch.Tensor, torch.Tensor],
    activation: str,
    lr: float,
    grid: np.ndarray,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Fine-tune start [n_methods, P, D] on batches [P, steps, B] of train (images, labels);
    yield (grid index, weights [n_methods, P, D]) at every grid step after 0.

    One Adam over the stacked [n_methods·P, D] leaf: Adam is elementwise, so this is exactly
    n_methods·P independent Adams.
    """
    n_methods, n_pairs, d = start.shape
    theta = start.reshape(-1, d).detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    at = {int(s): j for j, s in enumerate(grid) if s > 0}
    for step in range(1, int(grid[-1]) + 1):
        idx = batches[:, step - 1]  # [P, B]
        images = train[0][idx].expand(n_methods, -1, -1, -1, -1, -1).flatten(0, 1)
        labels = train[1][idx].expand(n_methods, -1, -1).flatten(0, 1)
        _adam_step(theta, opt, images, labels, activation)
        if step in at:
            yield at[step], theta.detach().view(n_methods, n_pairs, d)


def _step_grid(cfg: EvalConfig) -> np.ndarray:
    """Steps at which fine-tuning curves are scored: 0, every `finetune_eval_every`, the last."""
    every = np.arange(0, cfg.finetune_steps, cfg.finetune_eval_every)
    return np.unique(np.r_[every, cfg.finetune_steps])


def _own_images(labels: torch.Tensor, in3: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per pair, positions [P, L] of its C3 images among `labels` (L: the largest C3), padded
    with other images, and which positions are real C3 images."""
    mask = in3[:, labels]
    order = torch.argsort((~mask).int(), dim=1, stable=True)[:, : int(mask.sum(1).max())]
    return order, mask.gather(1, order)


def _finetune_group(tuned, activation, in1, in2, images, labels, acc0, train, cfg, gen):
    """Fine-tune tuned [n_methods, P, D] of one activation; acc0 [n_methods, P] is acc_in at step 0.
    Returns the acc_in curves [n_methods, P, len(grid)] and the ft_* metrics [n_methods, P]."""
    n_methods, n_pairs, _ = tuned.shape
    device = tuned.device
    chunk = cfg.forward_chunk or default_chunk(device)
    grid = _step_grid(cfg)
    curves = np.full((n_methods, n_pairs, len(grid)), np.nan)
    curves[..., 0] = acc0
    in3 = in1 | in2
    batches = _sample_batches(train, in3, cfg.finetune_steps, cfg.finetune_batch, gen).to(device)
    train_set = (train.images.to(device), train.labels.to(device))
    # Along the curve each pair scores its own C3 images only, not every digit.
    order, real = _own_images(labels, in3)
    final = torch.empty_like(tuned)
    pairs_per_chunk = max(1, chunk // (n_methods * cfg.finetune_batch))
    for p0 in range(0, n_pairs, pairs_per_chunk):
        sel = slice(p0, p0 + pairs_per_chunk)
        own_images, own_labels = images[order[sel]], labels[order[sel]]
        path = _finetune_path(
            tuned[:, sel], batches[sel], train_set, activation, cfg.finetune_lr, grid
        )
        for j, theta in path:
            if j == len(grid) - 1:
                final[:, sel] = theta
                continue
            preds = torch.stack([predict(t, own_images, activation, chunk) for t in theta])
            hit = preds == own_labels
            curves[:, sel, j] = _percent(hit, real[sel]).cpu().numpy()
    acc = _numpy(_accuracies(_predict_stack(final, images, activation, chunk), labels, in1, in2))
    curves[..., -1] = acc["acc_in"]
    drop, stable = stability(curves.reshape(-1, len(grid)), cfg.stability_tolerance)
    ft = {
        "ft_acc_in": acc["acc_in"],
        "ft_acc_out": acc["acc_out"],
        "ft_drop": drop.reshape(n_methods, n_pairs),
        "ft_stable": stable.reshape(n_methods, n_pairs),
    }
    return curves, ft


def _evaluate_group(methods, stack, activation, in1, in2, images, labels, train, cfg, gen, cache=None):
    """All methods × pairs of one activation; stack [n, P, D]: the weight methods of `methods`
    in order, the target last (only "generated" when the cache holds this activation and
    nothing is fine-tuned). Returns metric → [n_methods, P] (ft_* for the fine-tuned weight
    methods only, which lead) and the fine-tuning curves [n_tuned, P, n_evals] (None without
    fine-tuning). cache: the baselines' predictions of an earlier call on the same pairs and
    images, under `activation` (read, or written when absent); only the generated CNNs are
    run again."""
    n_methods, (n_pairs, d) = len(methods), stack.shape[1:]
    weight_methods = [m for m in methods if m != ENSEMBLE]
    in3 = (in1 | in2)[:, labels]
    # "generated" leads `methods`: the rows after it are the baselines, fixed for a split.
    cached = cache is not None and activation in cache
    if cached and cfg.finetune_steps and "curves" not in cache[activation]:
        raise ValueError("the baselines' cache was made without fine-tuning; evaluate with the config that made it")
    run = 1 if cached else len(weight_methods)
    preds, spread = _predict_with_spread(
        stack[:run].reshape(-1, d), images, activation, in3.repeat(run, 1), cfg.forward_chunk
    )
    preds, spread = preds.view(run, n_pairs, -1), spread.view(run, n_pairs)
    if not cached and ENSEMBLE in methods:
        at = methods.index(ENSEMBLE)
        logits = [_logits(stack[weight_methods.index(c)], images, activation, cfg.forward_chunk) for c in ("copy1", "copy2")]
        preds = torch.cat([preds[:at], ensemble_predict(*logits, in1, in2)[None], preds[at:]])
        spread = torch.cat([spread[:at], spread.new_full((1, n_pairs), math.nan), spread[at:]])
    if cache is not None:
        if cached:
            entry = cache[activation]
            preds, spread = torch.cat([preds, entry["preds"].long()]), torch.cat([spread, entry["spread"]])
        else:
            # Predictions are classes 0-9 or -1: int8 keeps a stored cache small.
            cache[activation] = {"preds": preds[1:].to(torch.int8), "spread": spread[1:]}
    out = _numpy(_accuracies(preds, labels, in1, in2))
    out["agreement"] = (_percent(preds == preds[-1], in3) / 100).cpu().numpy()
    out["logit_spread"] = spread.cpu().numpy()
    # Collapsed: one answer for all of C3's images, or logits too flat to tell them apart
    # (NaN spread, the ensemble's, compares False).
    first = preds.gather(-1, in3.int().argmax(1).expand(n_methods, -1)[..., None])
    one_answer = ((preds == first) | ~in3).all(-1)
    out["collapsed"] = (one_answer | (spread < cfg.collapse_tol)).cpu().numpy()
    own1 = out["acc_c1"][methods.index("copy1")]
    own2 = out["acc_c2"][methods.index("copy2")]
    out["forget_c1"], out["forget_c2"] = own1 - out["acc_c1"], own2 - out["acc_c2"]
    bar = (own1 + own2) / 2
    out["parents_acc"] = np.tile(bar, (len(methods), 1))
    # Without fine-tuning (the ensemble, the target, or finetune_steps = 0) only step 0 can catch up.
    out["catchup_steps"] = np.stack([catchup_steps(a[:, None], [0], bar) for a in out["acc_in"]])
    if not cfg.finetune_steps:
        return out, None
    n_tuned = len(weight_methods) - 1
    # Cached: only the generated CNNs are fine-tuned. Every model takes the same batches
    # (drawn per pair) and its own Adam, so the baselines' results are the ones made with it.
    run = 1 if cached else n_tuned
    curves, ft = _finetune_group(
        stack[:run], activation, in1, in2, images, labels, out["acc_in"][:run], train, cfg, gen
    )
    if cached:
        curves = np.concatenate([curves, cache[activation]["curves"].cpu().numpy()])
        ft = {k: np.concatenate([v, cache[activation]["ft"][k].cpu().numpy()]) for k, v in ft.items()}
    elif cache is not None:
        cache[activation].update(curves=torch.from_numpy(curves[1:]), ft={k: torch.from_numpy(v[1:]) for k, v in ft.items()})
    out.update(ft)
    out["catchup_steps"][:n_tuned] = np.stack([catchup_steps(c, _step_grid(cfg), bar) for c in curves])
    return out, curves


def _logits(weights: torch.Tensor, images: torch.Tensor, activation: str, chunk: int | None) -> torch.Tensor:
    """[M, N, 10] logits of M models on shared images, in `predict`'s chunks."""
    out = torch.empty(weights.shape[0], images.shape[0], 10, device=weights.device)
    for ms, ns, logits in _forward_chunks(weights, images, activation, chunk):
        out[ms, ns] = logits
    return out


def _class_string(classes: tuple[int, ...]) -> str:
    return "-".join(map(str, classes))


def _frame(methods, metrics, sets1, sets2, acts, loss) -> pd.DataFrame:
    """One row per pair × method, pair-major."""
    n_methods, n_pairs = len(methods), len(acts)
    pair = np.repeat(np.arange(n_pairs), n_methods)
    cols: dict[str, Any] = {
        "pair": pair,
        "method": np.tile(methods, n_pairs),
        "activation": np.asarray(acts, dtype=object)[pair],
        "c1": [_class_string(sets1[i]) for i in pair],
        "c2": [_class_string(sets2[i]) for i in pair],
        "c3": [_class_string(tuple(sorted(set(sets1[i]) | set(sets2[i])))) for i in pair],
    }
    if loss is not None:
        cols["pair_loss"] = loss[pair]
    for name in ("parents_acc", *_PRED_METRICS, "collapsed", "catchup_steps", *_FT_METRICS, "ft_stable",
                 "merge_seconds"):
        if name in metrics:
            cols[name] = metrics[name].T.reshape(-1)
    frame = pd.DataFrame(cols)
    frame["collapsed"] = frame["collapsed"].astype(bool)
    if "ft_stable" in frame:
        # NA for the target, which is not fine-tuned.
        frame["ft_stable"] = frame["ft_stable"].map({1.0: True, 0.0: False}).astype("boolean")
    return frame


def baselines_key(
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor,
    c1: Sequence[Sequence[int]],
    c2: Sequence[Sequence[int]],
    activations: Sequence[str],
    split: Split,
    train: Split,
    cfg: EvalConfig,
    init: torch.Tensor | None = None,
) -> str:
    """A digest of everything `evaluate_merges`' baselines depend on (the pairs' weights and
    classes, the scored and training images, the config but its interval settings, the
    device kind and the torch version): calls with equal keys may share a cache."""
    h = hashlib.sha256()
    for t in (w1, w2, w3, init, split.images, split.labels, train.images, train.labels):
        h.update(b"-" if t is None else t.detach().cpu().contiguous().numpy().tobytes())
    settings = {k: v for k, v in cfg.to_dict().items() if k not in ("bootstrap", "ci", "interval_unit")}
    about = [[list(c) for c in c1], [list(c) for c in c2], list(activations), settings, w1.device.type,
             torch.__version__, _CACHE_FORMAT]
    h.update(json.dumps(about, sort_keys=True).encode())
    return h.hexdigest()[:32]


@torch.no_grad()  # the fine-tuning step alone turns gradients back on
def evaluate_merges(
    generated: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    w3: torch.Tensor,
    c1: Sequence[Sequence[int]],
    c2: Sequence[Sequence[int]],
    activations: Sequence[str],
    split: Split,
    train: Split,
    cfg: EvalConfig,
    pair_loss: torch.Tensor | np.ndarray | None = None,
    init: torch.Tensor | None = None,
    cache: dict | None = None,
) -> EvalResult:
    """Score the generated CNNs [P, 2464] against the baselines on the same pairs and images.

    w1, w2, w3: CNN1, CNN2 and the target CNN3 of each pair; c1, c2: their class sets
    (C3 = C1 ∪ C2); activations: each pair's activation. split: the images scored (val or
    test, `cfg.images_per_class` of each digit); train: the fine-tuning images. pair_loss [P]:
    the Transformer's loss per pair, correlated with the generated CNNs' acc_in. init [P, 2464]:
    the pairs' shared epoch-0 weights, which enable the task-arithmetic baseline.
    cache: a dict the caller keeps across calls that differ only in `generated` (a run's
    validation, epoch after epoch; a sweep's trials on the same test pairs, saved under
    `baselines_key`): the baselines never change, so their merges, predictions and
    fine-tuning are made once and kept in it (tensors only, so it saves and loads with
    `torch.load(weights_only=True)`); the results are the same as without it.
    Inputs are left untouched; results are deterministic given `cfg.seed`.
    """
    sets1, sets2, acts, loss = _validate(
        generated, w1, w2, w3, init, pair_loss, c1, c2, activations, split, train, cfg
    )
    device, n_pairs = generated.device, len(acts)
    merges = [m for m in MERGES if m in cfg.merges and MERGES[m].available(init is not None, cfg.finetune_steps)]
    methods = [
        m for m in METHODS
        if (m in _CLASSIC and (m != "task_arithmetic" or init is not None))
        or m in merges or (m == ENSEMBLE and m in cfg.merges) or m == "target"
    ]
    in1, in2 = _membership(sets1, device), _membership(sets2, device)
    # Every digit is scored: C3's are in distribution, the others out of it.
    idx = split.indices(range(N_CLASSES), cfg.images_per_class)
    images, labels = split.images[idx].to(device), split.labels[idx].to(device)
    grid = _step_grid(cfg) if cfg.finetune_steps else np.zeros(0, dtype=int)
    tuned = [m for m in methods[:-1] if m != ENSEMBLE] if cfg.finetune_steps else []
    curves = {m: np.full((n_pairs, len(grid)), np.nan) for m in tuned}
    metrics: dict[str, np.ndarray] = {"merge_seconds": np.full((len(methods), n_pairs), np.nan)}
    gen = torch.Generator().manual_seed(cfg.seed)
    # Its own stream: the merges' images leave the fine-tuning batches as they were.
    merge_gen = torch.Generator().manual_seed(cfg.seed + 1)
    for act in sorted(set(acts)):
        sel = [i for i, a in enumerate(acts) if a == act]
        rows = torch.tensor(sel, device=device)
        weights = [w.index_select(0, rows) for w in (generated, w1, w2, w3)]
        group_init = None if init is None else init.index_select(0, rows)
        cached = cache is not None and act in cache
        if cached:
            stack = weights[0][None].detach().float()  # the baselines' results are cached
            seconds = cache[act]["seconds"]
        else:
            merged, seconds = _merge_group(
                merges, weights[1], weights[2], group_init, in1[rows], in2[rows], act, train, cfg, merge_gen
            )
            stack = _stack_methods(methods, *weights, group_init, merged)
        for name, sec in seconds.items():
            metrics["merge_seconds"][methods.index(name), sel] = sec
        group, group_curves = _evaluate_group(
            methods, stack, act, in1[rows], in2[rows], images, labels, train, cfg, gen, cache
        )
        if cache is not None and not cached:
            cache[act]["seconds"] = dict(seconds)
        for name, values in group.items():
            into = metrics.setdefault(name, np.full((len(methods), n_pairs), np.nan))
            into[: len(values), sel] = values
        if group_curves is not None:
            for m, c in zip(tuned, group_curves, strict=True):
                curves[m][sel] = c
    frame = _frame(methods, metrics, sets1, sets2, acts, loss)
    groups = groups_of(frame[frame["method"] == "generated"], cfg.interval_unit)
    correlation = {}
    if loss is not None:
        acc = metrics["acc_in"][methods.index("generated")]
        correlation = loss_accuracy_correlation(loss, acc, cfg.bootstrap, cfg.ci, cfg.seed, groups)
    intervals = interval_summary(frame, cfg.bootstrap, cfg.ci, cfg.seed, cfg.interval_unit)
    return EvalResult(frame, grid, curves, correlation, intervals)
