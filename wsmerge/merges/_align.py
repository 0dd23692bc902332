"""Git Re-Basin (Ainsworth et al., ICLR 2023): permute one CNN's hidden units onto another's,
matching units by their weights or by their activations, then average the two.

Every function is batched over P pairs of CNNs ([P, 2464] each); a pair's result does not
depend on the other pairs of the call.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ..cnn import HIDDEN_SIZES, check_activation, permute_units, unflatten
from ._features import LAYERS, _check_images, _check_weights, layer_inputs

__all__ = ["MATCH_METHODS", "activation_matching", "rebasin", "weight_matching"]

MATCH_METHODS: tuple[str, ...] = ("weights", "activations")

# A coordinate step must beat the current assignment by more than float64 rounding, so that
# ties between equally good assignments cannot make the descent cycle.
_REL_TOL = 1e-10
# Correlations of a constant feature come out 0 instead of 0/0.
_STD_EPS = 1e-12


def weight_matching(
    w_ref: torch.Tensor, w: torch.Tensor, *, max_iter: int = 100, seed: int = 0
) -> list[torch.Tensor]:
    """Permutations (one LongTensor [P, n_k] per hidden layer, as `permute_units` takes) that
    align w [P, 2464] to w_ref [P, 2464] by the paper's weight matching: maximize the inner
    product of the two weight vectors over permutations of w's hidden units.

    Coordinate descent over the hidden layers in a random order (from `seed`): each step
    solves one linear assignment for one layer, the others held fixed, and is kept only if it
    raises the objective; the descent stops after a full pass without a change, or
    `max_iter` passes."""
    _check_weights(w_ref=w_ref, w=w)
    per_pair = [
        _match_weights(_numpy_layers(a), _numpy_layers(b), max_iter, seed) for a, b in zip(w_ref.detach(), w.detach())
    ]
    return _stack_perms(per_pair)


def activation_matching(
    w_ref: torch.Tensor, w: torch.Tensor, images: torch.Tensor, activation: str
) -> list[torch.Tensor]:
    """Permutations (as `weight_matching`) that align w to w_ref by activation matching: for
    each hidden layer, the assignment of w's units to w_ref's that maximizes the summed
    correlation of their outputs on the same images [P, N, 1, 28, 28]. A conv unit's samples
    are its outputs at every spatial position of every image. The layers are matched
    independently, as both models see the same images."""
    _check_weights(w_ref=w_ref, w=w)
    _check_images("images", images, w.shape[0])
    check_activation(activation)
    with torch.no_grad():
        feats_ref = layer_inputs(w_ref, images, activation)[1:5]
        feats = layer_inputs(w, images, activation)[1:5]
    per_layer = []
    for h_ref, h, n in zip(feats_ref, feats, HIDDEN_SIZES):
        rows = []
        for a, b in zip(h_ref, h):
            corr = _correlation(_unit_samples(a, n), _unit_samples(b, n))
            rows.append(linear_sum_assignment(corr.cpu().numpy(), maximize=True)[1])
        per_layer.append(torch.as_tensor(np.stack(rows), dtype=torch.long))
    return per_layer


def rebasin(
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    method: str = "weights",
    images: torch.Tensor | None = None,
    activation: str | None = None,
    seed: int = 0,
) -> torch.Tensor:
    """Git Re-Basin merge [P, 2464]: w2 aligned to w1 (`method` "weights": weight matching
    with `seed`; "activations": activation matching, which needs `images` [P, N, 1, 28, 28]
    and `activation`), then the two averaged."""
    if method == "weights":
        perms = weight_matching(w1, w2, seed=seed)
    elif method == "activations":
        if images is None or activation is None:
            raise ValueError("method 'activations' needs images and activation")
        perms = activation_matching(w1, w2, images, activation)
    else:
        raise ValueError(f"unknown method {method!r}; known: {', '.join(MATCH_METHODS)}")
    return (w1 + permute_units(w2, perms)) / 2


def _match_weights(
    ref: list[tuple[np.ndarray, np.ndarray]], other: list[tuple[np.ndarray, np.ndarray]], max_iter: int, seed: int
) -> list[np.ndarray]:
    """One pair's weight matching (see `weight_matching`), on `_numpy_layers` forms."""
    perms = [np.arange(n) for n in HIDDEN_SIZES]
    order = np.random.default_rng(seed)
    for _ in range(max_iter):
        changed = False
        for k in order.permutation(len(perms)):
            gain = _unit_gain(ref, other, perms, k)
            _, cols = linear_sum_assignment(gain, maximize=True)
            rows = np.arange(len(cols))
            best, current = gain[rows, cols].sum(), gain[rows, perms[k]].sum()
            if best > current + _REL_TOL * (1 + abs(current)):
                perms[k] = cols
                changed = True
        if not changed:
            break
    return perms


def _unit_gain(
    ref: list[tuple[np.ndarray, np.ndarray]],
    other: list[tuple[np.ndarray, np.ndarray]],
    perms: list[np.ndarray],
    k: int,
) -> np.ndarray:
    """[n, n]: entry (i, j) is the inner product of every weight touching reference unit i
    with every weight touching unit j of `other` in hidden layer k, under the current
    permutations of the neighbouring layers: the producer's rows (weights and bias, inputs
    permuted by layer k - 1) and the consumer's input columns (outputs permuted by layer
    k + 1; the output layer is not permuted)."""
    (w_ref, b_ref), (w, b) = ref[k], other[k]
    if k > 0:
        w = w[:, perms[k - 1]]
    n = len(b)
    producer = w_ref.reshape(n, -1) @ w.reshape(n, -1).T + np.outer(b_ref, b)
    c_ref, c = ref[k + 1][0], other[k + 1][0]
    if k + 1 < len(perms):
        c = c[perms[k + 1]]
    return producer + np.einsum("oir,ojr->ij", c_ref, c)


def _layer_matrices(flat: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One CNN [2464] as (weight [out, in_units, r], bias [out]) per layer of `LAYERS`:
    in_units are the hidden units of the layer before (1 for conv1, whose input is the
    image) and r what one input unit contributes to one output (a kernel; for fc1, conv3's
    channel of 3×3 = 9 columns). In this form every layer permutes and merges the same way."""
    p = unflatten(flat)
    out = []
    for name, n_in in zip(LAYERS, (1, *HIDDEN_SIZES)):
        weight = p[f"{name}.weight"]
        out.append((weight.reshape(weight.shape[0], n_in, -1), p[f"{name}.bias"]))
    return out


def _join_layers(layers: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """The flat [2464] vector of `_layer_matrices` forms (its weight, bias order is the
    flat layout's)."""
    return torch.cat([t.reshape(-1) for pair in layers for t in pair])


def _numpy_layers(flat: torch.Tensor) -> list[tuple[np.ndarray, np.ndarray]]:
    # float64: the descent compares sums of hundreds of products.
    return [(w.double().cpu().numpy(), b.double().cpu().numpy()) for w, b in _layer_matrices(flat)]


def _stack_perms(per_pair: list[list[np.ndarray]]) -> list[torch.Tensor]:
    """Per-pair permutations → one LongTensor [P, n_k] per hidden layer."""
    return [torch.as_tensor(np.stack(layer), dtype=torch.long) for layer in zip(*per_pair)]


def _unit_samples(h: torch.Tensor, n: int) -> torch.Tensor:
    """One CNN's outputs of a layer of n units, [N, n, ...] (or [N, n·s] channel-major) →
    [N·s, n]: every spatial position of every image is a sample of a conv unit."""
    return h.reshape(h.shape[0], n, -1).transpose(1, 2).reshape(-1, n)


def _correlation(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Pearson correlation [a, b] of the columns of x [S, a] with those of y [S, b], in
    float64; a constant column correlates 0 with everything."""
    x, y = x.double(), y.double()
    x, y = x - x.mean(0), y - y.mean(0)
    cov = x.T @ y / len(x)
    std = torch.outer(x.pow(2).mean(0).sqrt(), y.pow(2).mean(0).sqrt())
    return cov / std.clamp_min(_STD_EPS)
