"""A canonical order of a CNN's hidden units, so that CNNs computing the same function up to
a permutation of their units read as the same weight vector.

CNNs trained from different zoo seeds differ mostly by such a permutation (wsmerge.cnn's
HIDDEN_UNITS: conv channels and fc1 neurons), so a model that reads raw weight vectors must
learn the symmetry, or recall the CNNs it saw. Bringing every CNN into one order first takes
the symmetry out of what the model reads and writes:

    perms = canonical_perms(weights, "sort")              # [B, 2464] -> one [B, n_k] per layer
    aligned = align(weights, perms)                       # the same functions, canonical order
    assert torch.equal(unalign(aligned, perms), weights)  # bit for bit

Methods (ALIGN): "none" keeps the order; "sort" orders each hidden layer's units by the
L2 norm of their incoming weights and bias, descending; "match" sorts, then permutes the
sorted CNN onto a reference CNN by Git Re-Basin weight matching
(wsmerge.merges._align.weight_matching), so that similar CNNs also line up unit for unit.
"""

from __future__ import annotations

from typing import Sequence

import torch

from wsmerge.cnn import HIDDEN_SIZES, HIDDEN_UNITS, N_PARAMS, permute_units, unflatten
from wsmerge.merges._align import weight_matching

__all__ = ["ALIGN", "align", "canonical_perms", "nearest_to_mean", "unalign"]

ALIGN: tuple[str, ...] = ("none", "sort", "match")


def canonical_perms(
    weights: torch.Tensor, method: str, reference: torch.Tensor | None = None
) -> list[torch.Tensor]:
    """The permutations (one LongTensor [B, n_k] per hidden layer, as `permute_units` takes)
    that bring each CNN of `weights` [B, 2464] into canonical order by `method` (ALIGN).
    A CNN's result depends on its function's weights alone, not on the order its units come
    in nor on the other CNNs of the call: permuted copies of one CNN align to the same vector,
    exactly. "match" aligns onto `reference` ([2464], or [B, 2464] one per CNN)."""
    if weights.dim() != 2 or weights.shape[1] != N_PARAMS:
        raise ValueError(f"weights must be [B, {N_PARAMS}], got {tuple(weights.shape)}")
    if method not in ALIGN:
        raise ValueError(f"unknown alignment {method!r}; known: {', '.join(ALIGN)}")
    if (reference is not None) != (method == "match"):
        raise ValueError(f"alignment {method!r} {'needs' if method == 'match' else 'takes no'} reference CNN")
    weights = weights.detach().cpu()
    if method == "none":
        return [torch.arange(n).repeat(len(weights), 1) for n in HIDDEN_SIZES]
    perms = _sorted(weights)
    if method == "sort":
        return perms
    reference = reference.detach().cpu().expand(len(weights), N_PARAMS)
    # Permuted copies are equal once sorted, so the matching (deterministic) sees equal input.
    matched = weight_matching(reference, align(weights, perms))
    # Sorting takes unit s[i] to place i, matching takes sorted unit m[i] there: s[m[i]].
    return [s.gather(1, m) for s, m in zip(perms, matched)]


def align(weights: torch.Tensor, perms: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, 2464] CNNs with their hidden units in the order `perms` gives (canonical_perms)."""
    return permute_units(weights, perms)


def unalign(weights: torch.Tensor, perms: Sequence[torch.Tensor]) -> torch.Tensor:
    """The inverse of `align(·, perms)`: each unit back where it came from, bit for bit (a
    gather moves values without arithmetic)."""
    # A permutation's argsort is its inverse.
    return permute_units(weights, [p.argsort(dim=-1) for p in perms])


def nearest_to_mean(weights: torch.Tensor) -> int:
    """The row of `weights` [B, 2464] nearest (L2) to their mean; the first on a tie. Of
    sorted CNNs, the most typical one: a reference for "match"."""
    w = weights.detach().double()
    return int(((w - w.mean(0)) ** 2).sum(1).argmin())


def _sorted(weights: torch.Tensor) -> list[torch.Tensor]:
    """canonical_perms' "sort". Layer by layer, so that layer k's incoming weights are already
    in the canonical order of layer k - 1: permuted copies then give each unit the same
    weights element for element, and ties of the norm are broken by those weights
    (lexicographically), never by a unit's position. Only units with exactly equal incoming
    weights and bias keep their relative order."""
    b = len(weights)
    perms = [torch.arange(n).repeat(b, 1) for n in HIDDEN_SIZES]
    for k, ((producers, _, _), n) in enumerate(zip(HIDDEN_UNITS, HIDDEN_SIZES)):
        p = unflatten(permute_units(weights, perms))
        rows = torch.cat([p[name].reshape(b, n, -1) for name in producers], dim=2).double()
        perms[k] = _lexsort(torch.cat([-rows.norm(dim=2, keepdim=True), rows], dim=2))
    return perms


def _lexsort(keys: torch.Tensor) -> torch.Tensor:
    """[B, n, m] → [B, n]: the order of the n rows of each batch entry by keys[..., 0], then
    keys[..., 1], ...: stable sorts from the last key to the first."""
    order = torch.arange(keys.shape[1]).repeat(keys.shape[0], 1)
    for j in reversed(range(keys.shape[2])):
        order = order.gather(1, keys[..., j].gather(1, order).argsort(dim=1, stable=True))
    return order
