"""What a loss may need besides the two weight batches, and the checks on it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from ..cnn import N_PARAMS, check_activation

__all__ = ["CONTEXT_FIELDS", "LossContext", "check_context"]


@dataclass
class LossContext:
    """Everything beyond (pred, target) that some loss reads; a loss names the fields it
    needs in its `LossSpec.needs`, and those are checked before anything is computed.

    activation: the CNNs' activation name, for the losses that run the CNN forward.
    images: query images, [B, N, 1, 28, 28] (each sample its own, of its target's classes)
        or [N, 1, 28, 28] shared by the batch.
    sources: the source CNNs' weights (w1, w2), each [B, 2464].
    latents: encoder latents of the two inputs (h1, h2), each [B, d].
    neck: the model's neck (fused bottleneck) for this batch, [B, k].
    neck_aug: the neck for the same pairs after a behaviour-preserving neuron permutation of
        both inputs (see `permute_neurons`), [B, k]: the second view of `contrastive`.
    encode: weights [B, 2464] -> latent [B, d], differentiable (the model's encoder).
    options: per-loss options, e.g. {"quantile": {"q": 0.9}}.
    """

    activation: str | None = None
    images: torch.Tensor | None = None
    sources: tuple[torch.Tensor, torch.Tensor] | None = None
    latents: tuple[torch.Tensor, torch.Tensor] | None = None
    neck: torch.Tensor | None = None
    neck_aug: torch.Tensor | None = None
    encode: Callable[[torch.Tensor], torch.Tensor] | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


CONTEXT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(LossContext) if f.name != "options")


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_pair(value: Any, batch: int, what: str, width: int | None) -> str | None:
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        return f"{what} must be a pair of tensors, got {type(value).__name__}"
    a, b = value
    for t in (a, b):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != batch:
            return f"{what} must be two [{batch}, d] tensors, got {_shape(a)} and {_shape(b)}"
    if a.shape != b.shape or (width is not None and a.shape[1] != width):
        want = f"[{batch}, {width}]" if width else "the same shape"
        return f"{what} must both be {want}, got {_shape(a)} and {_shape(b)}"
    return None


def _check_field(name: str, value: Any, batch: int) -> str | None:
    """A reason the field is unusable for a batch of `batch` samples, or None."""
    if name == "activation":
        try:
            check_activation(value)
        except ValueError as e:
            return str(e)
        return None
    if name == "images":
        ok = isinstance(value, torch.Tensor) and (
            (value.dim() == 4 and tuple(value.shape[1:]) == (1, 28, 28))
            or (value.dim() == 5 and value.shape[0] == batch and tuple(value.shape[2:]) == (1, 28, 28))
        )
        if not ok or value.shape[-4] == 0:
            return f"images must be [N,1,28,28] or [{batch},N,1,28,28] with N>0, got {_shape(value)}"
        return None
    if name == "sources":
        return _check_pair(value, batch, "sources", N_PARAMS)
    if name == "latents":
        return _check_pair(value, batch, "latents", None)
    if name in ("neck", "neck_aug"):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != batch:
            return f"{name} must be [{batch}, k], got {_shape(value)}"
        return None
    if name == "encode":
        return None if callable(value) else f"encode must be callable, got {type(value).__name__}"
    raise AssertionError(name)


def check_context(ctx: LossContext, needs: frozenset[str], batch: int, loss: str) -> None:
    """Raise ValueError naming `loss` and the field if a needed field is missing or malformed."""
    missing = sorted(f for f in needs if getattr(ctx, f) is None)
    if missing:
        raise ValueError(f"loss {loss!r} needs LossContext field(s) {missing}, which are not set")
    for name in sorted(needs):
        why = _check_field(name, getattr(ctx, name), batch)
        if why:
            raise ValueError(f"loss {loss!r}: {why}")
