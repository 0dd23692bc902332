"""Loss mixes {name: weight}: validation, the context they need, and their evaluation."""

from __future__ import annotations

import math
from numbers import Real
from typing import Any, Callable, Mapping

import torch

from ..cnn import N_PARAMS
from ._context import LossContext, check_context
from ._registry import LOSSES

__all__ = ["loss_fn", "mix_loss", "paper_mix", "required_context", "validate_mix"]


def _check_name(name: Any) -> str:
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; known: {', '.join(sorted(LOSSES))}")
    return name


def validate_mix(
    mix: Mapping[str, float], options: Mapping[str, Mapping[str, Any]] | None = None
) -> dict[str, float]:
    """A clean {name: float} copy of `mix`, or ValueError: unknown names (listing the known
    ones), weights that are not finite non-negative numbers, an empty or all-zero mix, and
    `options` for unknown losses or with unknown/invalid keys."""
    if not isinstance(mix, Mapping):
        raise ValueError(f"a loss mix must be a mapping name -> weight, got {type(mix).__name__}")
    if not mix:
        raise ValueError(f"empty loss mix; known losses: {', '.join(sorted(LOSSES))}")
    out: dict[str, float] = {}
    for name, w in mix.items():
        _check_name(name)
        if isinstance(w, bool) or not isinstance(w, Real):
            raise ValueError(f"loss {name!r}: weight must be a number, got {w!r}")
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"loss {name!r}: weight must be finite and >= 0, got {w!r}")
        out[name] = float(w)
    if not any(out.values()):
        raise ValueError(f"all weights of the loss mix {out} are zero")
    if options is not None and not isinstance(options, Mapping):
        raise ValueError(f"options must map loss names to option mappings, got {type(options).__name__}")
    for name, raw in (options or {}).items():
        _check_name(name)
        LOSSES[name].parse_options(raw)
    return out


def required_context(mix: Mapping[str, float]) -> set[str]:
    """The LossContext fields the terms of `mix` with non-zero weight read."""
    return set().union(*(LOSSES[n].needs for n, w in validate_mix(mix).items() if w > 0))


def _check_weights(pred: torch.Tensor, target: torch.Tensor, finite: bool) -> None:
    for what, t in (("pred", pred), ("target", target)):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[1] != N_PARAMS or t.shape[0] == 0:
            shape = tuple(t.shape) if isinstance(t, torch.Tensor) else type(t).__name__
            raise ValueError(f"{what} must be [B, {N_PARAMS}] with B > 0, got {shape}")
    if pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    # One reading for both (on a GPU each waits for the queued kernels); which one, on failure.
    if finite and not (torch.isfinite(pred).all() & torch.isfinite(target).all()):
        raise ValueError(f"{'pred' if not torch.isfinite(pred).all() else 'target'} holds non-finite values")


def mix_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mix: Mapping[str, float],
    ctx: LossContext | None = None,
    scales: Mapping[str, float] | None = None,
    check_finite: bool = True,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """(total [B], {name: unweighted term [B]}) for the terms of `mix` with non-zero weight.

    total = Σ weight · term / scale: `scales` (positive, one per term) puts terms that live on
    very different scales (on the tiny zoo: mse ≈ 0.04, contrastive ≈ 5, behavioral ≈ 0.08
    on probabilities and ≈ 9 on logits) on a common one before they are weighed, as the
    behavioral paper's code does; without it the terms are weighed raw.
    Everything is checked (mix, options, scales, shapes, finiteness, each term's context)
    before any term is computed, so a bad call fails fast and names the culprit.
    check_finite=False leaves pred's and target's finiteness to the caller: reading it makes
    the host wait for a GPU's queue, which a training step need not do (wsmerge.train reads
    it with the epoch's loss sums)."""
    ctx = ctx or LossContext()
    weights = {n: w for n, w in validate_mix(mix, ctx.options).items() if w > 0}
    scales = _check_scales(scales, weights)
    _check_weights(pred, target, check_finite)
    for name in weights:
        check_context(ctx, LOSSES[name].needs, pred.shape[0], name)
    terms = {name: LOSSES[name].fn(pred, target, ctx) for name in weights}
    total = sum(w * terms[n] / scales[n] for n, w in weights.items())
    return total, terms


def _check_scales(scales: Mapping[str, float] | None, weights: Mapping[str, float]) -> dict[str, float]:
    if scales is None:
        return {n: 1.0 for n in weights}
    missing = sorted(set(weights) - set(scales))
    if missing:
        raise ValueError(f"loss scales are missing for {missing}")
    for n in weights:
        s = scales[n]
        if isinstance(s, bool) or not isinstance(s, Real) or not math.isfinite(s) or s <= 0:
            raise ValueError(f"loss {n!r}: scale must be a finite number > 0, got {s!r}")
    return {n: float(scales[n]) for n in weights}


def loss_fn(name: str) -> Callable[..., torch.Tensor]:
    """f(pred, target, ctx=None) -> [B] for one registered loss, with mix_loss's checks."""
    _check_name(name)

    def f(pred: torch.Tensor, target: torch.Tensor, ctx: LossContext | None = None) -> torch.Tensor:
        return mix_loss(pred, target, {name: 1.0}, ctx)[1][name]

    f.__name__ = f.__qualname__ = f"{name}_loss"
    f.__doc__ = LOSSES[name].doc
    return f


def paper_mix(gamma: float = 0.05, beta: float = 0.1) -> dict[str, float]:
    """The composite loss of "Structure Is Not Enough" (Eq. 3),
    γ·contrastive + (1−γ)·(β·structural + (1−β)·behavioral), as a mix. The paper's default
    γ = 0.05 (SANE's) and β = 0.1 (best on its validation set); β = 1 is its SANE baseline."""
    for what, v in (("gamma", gamma), ("beta", beta)):
        if not (isinstance(v, Real) and 0.0 <= v <= 1.0):
            raise ValueError(f"{what} must be in [0, 1], got {v!r}")
    return {
        "contrastive": float(gamma),
        "mse": (1 - gamma) * beta,
        "behavioral": (1 - gamma) * (1 - beta),
    }
