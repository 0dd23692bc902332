"""Task-vector merges: each parent is its shared initialisation plus a task vector
τ_i = w_i − init, and the merge combines the two task vectors entry by entry.

Also the argument checks that every merge of two CNNs shares.
"""

from __future__ import annotations

import torch

from ..cnn import N_PARAMS
from ._features import _check_weights

__all__ = ["dare", "ties"]


def _trim(tau: torch.Tensor, k: int) -> torch.Tensor:
    """tau [P, n] with all but each row's k largest magnitudes set to zero. A stable sort
    breaks ties at the threshold by position (the lower index is kept), so exactly k entries
    survive and the result does not depend on the sort kernel."""
    order = tau.abs().sort(dim=1, descending=True, stable=True).indices[:, :k]
    keep = torch.zeros_like(tau, dtype=torch.bool).scatter_(1, order, True)
    return tau * keep


def ties(
    w1: torch.Tensor, w2: torch.Tensor, init: torch.Tensor, *, density: float = 0.2, scale: float = 1.0
) -> torch.Tensor:
    """TIES-merging (Yadav et al. 2023) of P pairs: w1, w2, init [P, 2464], init each pair's
    shared initialisation. Returns init + scale · τ [P, 2464].

    Trim: each task vector keeps its round(density · 2464) largest-magnitude entries, over
    all of the model's parameters at once (ties at the threshold go to the lower index).
    Elect: each parameter's sign is the sign of the sum of the two trimmed entries.
    Disjoint mean: τ is the mean of the trimmed entries whose sign is the elected one; zeros
    never count, and τ = 0 where no entry agrees. Where the sum is exactly 0 (equal and
    opposite entries) no sign is elected and τ = 0, which is also the plain mean; the
    reference code would instead take the majority sign over all parameters.
    """
    _check_weights(w1=w1, w2=w2, init=init)
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    k = round(density * N_PARAMS)
    trimmed = torch.stack([_trim(w - init, k) for w in (w1, w2)])  # [2, P, n]
    elected = trimmed.sum(0).sign()
    agree = (trimmed.sign() == elected) & (trimmed != 0)
    count = agree.sum(0)
    merged = (trimmed * agree).sum(0) / count.clamp(min=1)
    return init + scale * merged


def dare(
    w1: torch.Tensor,
    w2: torch.Tensor,
    init: torch.Tensor,
    *,
    drop: float = 0.9,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """DARE (Yu et al. 2024) of P pairs, then task arithmetic: w1, w2, init [P, 2464].
    Returns init + Σ_i m_i ⊙ τ_i / (1 − drop) [P, 2464], m_i a random keep-mask.

    Each entry of each task vector is dropped with probability `drop`; the kept ones are
    rescaled so that every entry keeps its expectation, so the mean over draws is plain
    task arithmetic init + τ_1 + τ_2. The randomness is one draw u = torch.rand((2, P, 2464))
    from `generator` (torch's global one when None), on the generator's device; entry j of
    τ_i in pair p is kept where u[i, p, j] >= drop.
    """
    p = _check_weights(w1=w1, w2=w2, init=init)
    if not 0.0 <= drop < 1.0:
        raise ValueError(f"drop must be in [0, 1), got {drop}")
    device = generator.device if generator is not None else w1.device
    u = torch.rand((2, p, N_PARAMS), generator=generator, device=device).to(w1.device)
    taus = torch.stack([w1 - init, w2 - init])
    return init + (taus * (u >= drop)).sum(0) / (1.0 - drop)
