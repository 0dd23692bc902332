"""ZipIt! (Stoica et al., ICLR 2024): merge two CNNs trained on different classes by
"zipping" each hidden layer's features, pairing the most correlated features of both models
together, including two features of the same model, which a permutation cannot do.

Hidden layer k of the merged CNN has merged features z_k = M_k f_k, f_k the 2n stacked
features of both models and M_k [n, 2n] the mean of each group of zipped features; the
unmerge U_k [2n, n] copies a merged feature back to each of its members. Each layer's
merged weights are M_k · blockdiag(W_1, W_2) · U_{k-1}: both models' layers fed the
unmerged features, their outputs merged.
"""

from __future__ import annotations

import numpy as np
import torch

from ..cnn import HIDDEN_SIZES, check_activation
from ._align import _correlation, _join_layers, _layer_matrices, _unit_samples
from ._features import _check_images, _check_weights, layer_inputs

__all__ = ["zipit"]

N_CLASSES = 10


def zipit(
    w1: torch.Tensor,
    w2: torch.Tensor,
    in1: torch.Tensor,
    in2: torch.Tensor,
    images: torch.Tensor,
    activation: str,
    *,
    alpha: float = 0.0,
) -> torch.Tensor:
    """ZipIt! merges [P, 2464] of P pairs of CNNs w1, w2 [P, 2464] of one `activation`.

    Features are both original models' hidden-layer outputs on the same images
    [P, N, 1, 28, 28] (a conv feature: every spatial position of every image is a sample).
    The 10-way head gives class c the logit of the parent that owns it (in1, in2 [P, 10]
    class-membership masks), the mean of both parents' logits for a class both or neither
    own. `alpha` in [0, 1) is the paper's α: at 0 every feature is zipped once, so each
    merged feature is a pair; above it, a zipped feature may be zipped again, its
    correlations scaled by α."""
    _check_weights(w1=w1, w2=w2)
    n_pairs = w1.shape[0]
    for mask, name in ((in1, "in1"), (in2, "in2")):
        if tuple(mask.shape) != (n_pairs, N_CLASSES):
            raise ValueError(f"{name} must be [{n_pairs}, {N_CLASSES}], got {tuple(mask.shape)}")
    _check_images("images", images, n_pairs)
    check_activation(activation)
    if not 0.0 <= alpha < 1.0:
        raise ValueError(f"alpha must be in [0, 1), got {alpha}")
    with torch.no_grad():
        feats1 = layer_inputs(w1, images, activation)[1:5]
        feats2 = layer_inputs(w2, images, activation)[1:5]
        merged = [
            _zip_pair(w1[p], w2[p], [h[p] for h in feats1], [h[p] for h in feats2], in1[p], in2[p], alpha)
            for p in range(n_pairs)
        ]
    return torch.stack(merged).to(w1.dtype)


def _zip_pair(
    w1: torch.Tensor,
    w2: torch.Tensor,
    feats1: list[torch.Tensor],
    feats2: list[torch.Tensor],
    in1: torch.Tensor,
    in2: torch.Tensor,
    alpha: float,
) -> torch.Tensor:
    """One pair's merge [2464]: feats are each model's hidden-layer outputs h1..h4."""
    merges, unmerges = [], []
    for h1, h2, n in zip(feats1, feats2, HIDDEN_SIZES):
        merge, unmerge = _zip_matrices(_unit_samples(h1, n), _unit_samples(h2, n), alpha)
        merges.append(merge.to(w1.device))
        unmerges.append(unmerge.to(w1.device))
    share1 = _head_share(in1.bool(), in2.bool()).to(w1.device)
    merges.append(torch.cat([torch.diag(share1), torch.diag(1 - share1)], dim=1))
    # conv1's input, the image, is shared: each model reads it as it is.
    unmerges.insert(0, torch.ones(2, 1, dtype=torch.float64, device=w1.device))
    layers = []
    for (wa, ba), (wb, bb), merge, unmerge in zip(
        _layer_matrices(w1.double()), _layer_matrices(w2.double()), merges, unmerges
    ):
        (ma, mb), (ua, ub) = merge.split(len(ba), dim=1), unmerge.split(wa.shape[1], dim=0)
        weight = torch.einsum("om,mjr,jk->okr", ma, wa, ua) + torch.einsum("om,mjr,jk->okr", mb, wb, ub)
        layers.append((weight, ma @ ba + mb @ bb))
    return _join_layers(layers)


def _head_share(in1: torch.Tensor, in2: torch.Tensor) -> torch.Tensor:
    """[10] float64: how much of class c's logit comes from the first parent: 1 if it owns c
    alone, 0 if the second does, 1/2 if both or neither do."""
    return torch.where(in1 == in2, 0.5, in1.double()).double()


def _zip_matrices(x1: torch.Tensor, x2: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge [n, 2n] and unmerge [2n, n] (float64) of one hidden layer from both models'
    samples x1, x2 [S, n]: the greedy zip of their 2n features into n groups, a merged
    feature the mean of its group."""
    both = torch.cat([x1, x2], dim=1)
    corr = _correlation(both, both).cpu().numpy()
    # Symmetric exactly, so the greedy choice does not depend on the matmul's rounding.
    groups = _greedy_zip((corr + corr.T) / 2, x1.shape[1], alpha)
    unmerge = torch.zeros(2 * x1.shape[1], len(groups), dtype=torch.float64)
    for m, group in enumerate(groups):
        unmerge[group, m] = 1.0
    return unmerge.T / unmerge.sum(0)[:, None], unmerge


def _greedy_zip(corr: np.ndarray, n_keep: int, alpha: float) -> list[list[int]]:
    """Groups of the features of a [F, F] correlation matrix, greedily: zip the two most
    correlated features (or groups) until n_keep remain. Groups come ordered by their
    smallest feature, so zipping a model with a copy of itself keeps the first model's order.

    A zipped group is as correlated with another feature as its least correlated member
    (ZipIt!'s min linkage), scaled by alpha; at alpha 0 it is never zipped again."""
    sims = corr.astype(np.float64, copy=True)
    np.fill_diagonal(sims, -np.inf)
    groups = [[i] for i in range(len(sims))]
    while len(groups) > n_keep:
        i, j = sorted(np.unravel_index(np.argmax(sims), sims.shape))
        groups[i] += groups.pop(j)
        linked = alpha * np.minimum(sims[i], sims[j]) if alpha > 0 else np.full(len(sims), -np.inf)
        sims[i, :], sims[:, i] = linked, linked
        sims[i, i] = -np.inf
        sims = np.delete(np.delete(sims, j, axis=0), j, axis=1)
    return groups
