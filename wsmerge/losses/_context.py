"""What a loss may need besides the two weight batches, and the checks on it."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable

import torch

from ..cnn import N_PARAMS, check_activation

__all__ = ["CONTEXT_FIELDS", "OPTIONAL_FIELDS", "LossContext", "check_context"]


@dataclass
class LossContext:
    """Everything beyond (pred, target) that some loss reads; a loss names the fields it
    needs in its `LossSpec.needs`, and those are checked before anything is computed.

    activation: the CNNs' activation name, for the losses that run the CNN forward.
    images: query images, [B, N, 1, 28, 28] (each sample its own, of its target's classes)
        or [N, 1, 28, 28] shared by the batch.
    sources: the source CNNs' weights (w1, w2), each [B, 2464].
    neck: the model's neck (fused bottleneck) for this batch, [B, k].
    neck_aug: the neck for the same pairs after a behaviour-preserving neuron permutation of
        both inputs (see `permute_neurons`), [B, k]: the second view of `contrastive`.
    encode: (weights [B, 2464], k) -> latent [B, d], the model's encoder k ∈ {0, 1}
        (`TransformerAE.encode`), differentiable.
    fuse: (h1 [B, d], h2 [B, d]) -> [B, k], the model's fusion layer, tanh(Linear(h1 ‖ h2))
        (`TransformerAE.fuse`), differentiable.

    Optional, read when set and never required (OPTIONAL_FIELDS):
    project: [B, k] -> [B, p], the contrastive projection head; `contrastive` compares
        project(neck) and project(neck_aug) when it is set, the necks themselves otherwise.
    generator: a CPU torch.Generator for every random draw inside the losses (their
        probes), unless a loss's own `seed` option is set; None: torch's global generator.

    options: per-loss options, e.g. {"quantile": {"q": 0.9}}.
    """

    activation: str | None = None
    images: torch.Tensor | None = None
    sources: tuple[torch.Tensor, torch.Tensor] | None = None
    neck: torch.Tensor | None = None
    neck_aug: torch.Tensor | None = None
    encode: Callable[[torch.Tensor, int], torch.Tensor] | None = None
    fuse: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None
    project: Callable[[torch.Tensor], torch.Tensor] | None = None
    generator: torch.Generator | None = None
    options: dict[str, dict[str, Any]] = field(default_factory=dict)


OPTIONAL_FIELDS: tuple[str, ...] = ("project", "generator")
# The fields a loss may list in its `needs`.
CONTEXT_FIELDS: tuple[str, ...] = tuple(
    f.name for f in fields(LossContext) if f.name != "options" and f.name not in OPTIONAL_FIELDS
)


def _shape(t: Any) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


def _check_sources(value: Any, batch: int) -> str | None:
    want = f"sources must be two [{batch}, {N_PARAMS}] tensors"
    if not (isinstance(value, (tuple, list)) and len(value) == 2):
        return f"{want}, got {type(value).__name__}"
    a, b = value
    for t in (a, b):
        if not isinstance(t, torch.Tensor) or tuple(t.shape) != (batch, N_PARAMS):
            return f"{want}, got {_shape(a)} and {_shape(b)}"
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
        return _check_sources(value, batch)
    if name in ("neck", "neck_aug"):
        if not isinstance(value, torch.Tensor) or value.dim() != 2 or value.shape[0] != batch:
            return f"{name} must be [{batch}, k], got {_shape(value)}"
        return None
    if name in ("encode", "fuse", "project"):
        return None if callable(value) else f"{name} must be callable, got {type(value).__name__}"
    if name == "generator":
        ok = isinstance(value, torch.Generator)
        return None if ok else f"generator must be a torch.Generator, got {type(value).__name__}"
    raise AssertionError(name)


def check_context(ctx: LossContext, needs: frozenset[str], batch: int, loss: str) -> None:
    """Raise ValueError naming `loss` and the field if a needed field is missing or malformed,
    or an optional field is set but malformed (any loss may read those)."""
    missing = sorted(f for f in needs if getattr(ctx, f) is None)
    if missing:
        raise ValueError(f"loss {loss!r} needs LossContext field(s) {missing}, which are not set")
    for name in sorted(needs) + [f for f in OPTIONAL_FIELDS if getattr(ctx, f) is not None]:
        why = _check_field(name, getattr(ctx, name), batch)
        if why:
            raise ValueError(f"loss {loss!r}: {why}")
