"""Numerical helpers shared by several losses."""

from __future__ import annotations

import torch

__all__ = ["probe_generator", "quantile_points", "rademacher", "safe_sqrt"]


def safe_sqrt(x: torch.Tensor) -> torch.Tensor:
    """sqrt with a zero (not NaN/inf) gradient at 0: a norm-type loss sits at exactly 0 when
    the prediction equals the target, and backward must stay finite there."""
    pos = x > 0
    return torch.where(pos, torch.where(pos, x, torch.ones_like(x)).sqrt(), torch.zeros_like(x))


def quantile_points(x: torch.Tensor, n: int) -> torch.Tensor:
    """[B, N] -> [B, n]: the values at ranks floor((k + 1/2) N / n), k = 0..n-1.

    The n-point subsample of an empirical 1-D distribution that is closest to it in W2, and
    deterministic (a random subsample would add noise to the loss); differentiable through
    the sort. n >= N returns the sorted values."""
    s = x.sort(dim=-1).values
    big_n = x.shape[-1]
    if n >= big_n:
        return s
    idx = ((torch.arange(n, device=x.device) + 0.5) * big_n / n).long()
    return s[..., idx]


def probe_generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator | None:
    """Where a loss draws its random numbers: from its own `seed` option if set (a fixed
    estimate, e.g. for comparing values), else from the caller's generator (ctx.generator:
    a training run that owns its generator resumes exactly), else None, torch's global one
    (fresh each call, so training sees every direction)."""
    return torch.Generator().manual_seed(seed) if seed is not None else generator


def rademacher(shape: tuple[int, ...], generator: torch.Generator | None) -> torch.Tensor:
    """±1 probes (float32) for Hutchinson-type estimates E_v ‖Aᵀv‖² = ‖A‖_F², drawn on the
    CPU from `generator` (see `probe_generator`); the caller moves them to its device, so a
    CPU generator serves a model on any device and the draws do not depend on the device."""
    return (torch.randint(0, 2, shape, generator=generator) * 2 - 1).float()
