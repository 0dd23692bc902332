"""How well each weight-space loss predicts the generated CNN's accuracy (seed report: is the
Transformer's loss a proxy for downstream quality?).

`pair_losses` computes every registered loss between the generated and the target weights
of each pair at its exact setting (`EXACT_OPTIONS`), not the cheap approximation training
uses; `predictiveness` correlates each with the generated CNNs' acc_in (and ft_acc_in) by
`wsmerge.evaluate.loss_accuracy_correlation`.

    losses = pair_losses(generated, w3, lambda rows: LossContext(activation="relu",
                         images=queries[rows], sources=(w1[rows], w2[rows]), encode=..., fuse=...))
    losses.values["mix"] = pair_loss  # optional: the trained mix gets its own row
    table = predictiveness(losses, acc_in, ft_acc_in)
    write_predictiveness_csv(table, run_dir / "predictiveness.csv")
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from wsmerge.cnn import N_PARAMS
from wsmerge.config import check_int
from wsmerge.evaluate import _check_weights, _to_numpy, loss_accuracy_correlation
from wsmerge.files import atomic_write
from wsmerge.losses import LOSSES, LossContext, loss_fn

__all__ = [
    "BATCH_COUPLED",
    "EXACT_OPTIONS",
    "PairLosses",
    "exact_options",
    "pair_losses",
    "predictiveness",
    "write_predictiveness_csv",
]

# Per loss, the options that replace its training approximation by the exact value; a loss
# not listed is exact at its defaults. gromov_wasserstein stays at its 32 quantiles: the full
# size costs about a minute per pair (override it with {"n_points": 0}).
EXACT_OPTIONS: dict[str, dict[str, Any]] = {
    # Every diagram point: at the default top 32 the distance is up to 20% off gudhi's.
    "bottleneck": {"top_k": 0},
    "persistence_l2": {"top_k": 0},
    # Every query image of the context, and all ten Jacobian rows instead of probes.
    "behavioral": {"queries": 0},
    "jacobian": {"queries": 0, "probes": 0},
    "fisher": {"queries": 0},
    # One VJP per latent dimension of each encoder instead of probes: about 10 s for 30 pairs
    # at the tiny preset (d_model 64) on a 2-core CPU, but hours at the seed preset's 960,
    # where a GPU or an override such as {"probes": 64} is needed.
    "contractive": {"probes": 0},
    # The default, pinned: the Sinkhorn option is an estimate.
    "wasserstein": {"method": "sort"},
}


# Losses whose value for one sample depends on the rest of its batch (ar_mse divides by
# batch means): each pair is computed alone, so that its value is its own (the report's
# formula for one pair), whatever the batching. They read no context field.
BATCH_COUPLED: tuple[str, ...] = ("ar_mse",)


def exact_options(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, dict[str, Any]]:
    """Every loss's options: EXACT_OPTIONS, updated key by key by `overrides`; unknown losses
    and unknown or invalid options raise ValueError."""
    overrides = overrides or {}
    unknown = sorted(set(overrides) - set(LOSSES))
    if unknown:
        raise ValueError(f"overrides for unknown losses {unknown}; known: {', '.join(sorted(LOSSES))}")
    options = {n: {**EXACT_OPTIONS.get(n, {}), **overrides.get(n, {})} for n in LOSSES}
    for name, raw in options.items():
        LOSSES[name].parse_options(raw)
    return options


def _setting(name: str, raw: Mapping[str, Any]) -> str:
    """Every option the loss runs with, defaults included, as `key=value ...`."""
    parsed = LOSSES[name].parse_options(raw)
    return " ".join(f"{k}={v}" for k, v in dataclasses.asdict(parsed).items())


@dataclass
class PairLosses:
    """values: one row per pair, one column per registered loss; NaN for a skipped loss and
    for pairs whose generated or target weights are not finite.
    settings: loss -> the options it ran with (`key=value ...`).
    skipped: loss -> why it was not computed.
    seconds: loss -> wall time spent computing it, over all batches (computed losses only)."""

    values: pd.DataFrame
    settings: dict[str, str]
    skipped: dict[str, str]
    seconds: dict[str, float]


def _unavailable(ctx: LossContext, skipped: Mapping[str, str]) -> dict[str, str]:
    """Reasons for the losses not yet skipped that need a field `ctx` leaves unset."""
    out = {}
    for name, spec in LOSSES.items():
        missing = sorted(f for f in spec.needs if getattr(ctx, f) is None)
        if name not in skipped and missing:
            out[name] = f"needs LossContext field(s) {missing}, which the context leaves unset"
    return out


@torch.no_grad()  # jacobian and contractive turn gradients on inside, for their derivatives
def pair_losses(
    generated: torch.Tensor,
    target: torch.Tensor,
    context: Callable[[torch.Tensor], LossContext] | None = None,
    batch_size: int = 32,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
    groups: Sequence[Any] | None = None,
) -> PairLosses:
    """Every registered loss between generated [P, 2464] and target [P, 2464], pair by pair.

    context(rows) gives the LossContext of the pairs `rows` (a LongTensor of indices into P,
    at most `batch_size` of them); its options are replaced by `exact_options(overrides)`.
    What it sets decides what is computed: a loss that needs a field it leaves None (e.g.
    `encode` for latent and contractive, `images` for behavioral) is skipped, judged on the
    first batch; without a context only the weight-only losses run. Losses that do not
    compare pred with target (`LossSpec.depends_on_pred` False: contrastive) are skipped.
    groups: one label per pair (e.g. its CNNs' activation); a batch never mixes labels, since
    the losses that run the CNNs take one activation per call.
    """
    if not isinstance(generated, torch.Tensor) or generated.dim() != 2 or len(generated) == 0:
        raise ValueError(f"generated must be a [P, {N_PARAMS}] tensor with P > 0")
    n_pairs = len(generated)
    _check_weights("generated", generated, n_pairs, generated.device)
    _check_weights("target", target, n_pairs, generated.device)
    check_int(batch_size, "batch_size", 1)
    options = exact_options(overrides)
    generated, target = generated.detach(), target.detach()
    finite = (torch.isfinite(generated).all(1) & torch.isfinite(target).all(1)).nonzero().flatten()
    skipped = {
        name: "does not compare generated with target weights (depends_on_pred=False)"
        for name, spec in LOSSES.items()
        if not spec.depends_on_pred
    }
    if len(finite) == 0:
        skipped |= {n: "no pair has finite generated and target weights" for n in LOSSES if n not in skipped}
    values = np.full((n_pairs, len(LOSSES)), np.nan)
    seconds: dict[str, float] = {}
    labels = [None] * n_pairs if groups is None else list(groups)
    if len(labels) != n_pairs:
        raise ValueError(f"groups must give one label per pair ({n_pairs}), got {len(labels)}")
    by_group: dict[Any, list[int]] = {}
    for r in finite.tolist():
        by_group.setdefault(labels[r], []).append(r)
    batches = [rows for g in by_group.values() for rows in torch.tensor(g, dtype=torch.long).split(batch_size)]
    for i, rows in enumerate(batches):
        ctx = dataclasses.replace(context(rows) if context else LossContext(), options=options)
        if i == 0:
            skipped |= _unavailable(ctx, skipped)
        g, t = generated[rows], target[rows]
        for j, name in enumerate(LOSSES):
            if name in skipped:
                continue
            began = time.perf_counter()
            f = loss_fn(name)
            if name in BATCH_COUPLED:
                alone = LossContext(options=options)
                value = torch.cat([f(g[k : k + 1], t[k : k + 1], alone) for k in range(len(rows))])
            else:
                value = f(g, t, ctx)
            values[rows.cpu().numpy(), j] = _to_numpy(value)
            seconds[name] = seconds.get(name, 0.0) + time.perf_counter() - began
    return PairLosses(
        values=pd.DataFrame(values, columns=list(LOSSES)),
        settings={n: _setting(n, raw) for n, raw in options.items()},
        skipped=skipped,
        seconds=seconds,
    )


def predictiveness(
    losses: PairLosses,
    acc_in: Sequence[float] | np.ndarray | torch.Tensor,
    ft_acc_in: Sequence[float] | np.ndarray | torch.Tensor | None = None,
    bootstrap: int = 1000,
    ci: float = 0.95,
    seed: int = 0,
    groups: Sequence | np.ndarray | None = None,
) -> pd.DataFrame:
    """One row per column of `losses.values` (a column the caller adds, such as the trained
    mix's per-pair loss, gets its row too): its `loss` name, `setting`, `skipped` reason
    ("" when computed), `n_pairs` with a finite value, `seconds`, and for acc_in (and
    ft_acc_in when given) the `loss_accuracy_correlation` of the loss against it, keyed
    `acc_in/spearman`, `acc_in/spearman_lo`, ... `ft_acc_in/kendall_hi`. A skipped loss has
    NaN correlations. groups: each pair's cluster for the intervals (its target class set;
    None resamples pairs), see `wsmerge.intervals`."""
    n_pairs = len(losses.values)
    against = {"acc_in": _to_numpy(acc_in)}
    if ft_acc_in is not None:
        against["ft_acc_in"] = _to_numpy(ft_acc_in)
    for what, acc in against.items():
        if acc.shape != (n_pairs,):
            raise ValueError(f"{what} must be [{n_pairs}] (one value per pair), got {acc.shape}")
    rows = []
    for name, column in losses.values.items():
        loss = column.to_numpy(dtype=float)
        row: dict[str, Any] = {
            "loss": name,
            "setting": losses.settings.get(name, ""),
            "skipped": losses.skipped.get(name, ""),
            "n_pairs": int(np.isfinite(loss).sum()),
            "seconds": losses.seconds.get(name, math.nan),
        }
        for what, acc in against.items():
            corr = loss_accuracy_correlation(loss, acc, bootstrap, ci, seed, groups)
            row.update({f"{what}/{k}": v for k, v in corr.items() if not k.startswith("n_")})
        rows.append(row)
    return pd.DataFrame(rows)


def write_predictiveness_csv(table: pd.DataFrame, path: str | os.PathLike) -> Path:
    """Write `predictiveness`'s table to `path` as CSV, atomically."""
    return atomic_write(path, lambda tmp: table.to_csv(tmp, index=False))
