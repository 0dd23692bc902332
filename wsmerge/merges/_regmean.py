"""RegMean (Jin et al., ICLR 2023, "Dataless Knowledge Fusion by Merging Weights of
Language Models"): each layer of the merge is the linear map that, in least squares, best
reproduces both parents' outputs of that layer on their own inputs, computed from the
parents' Gram matrices alone.

Every layer is a linear map X · W on rows of inputs: a convolution's rows are its unfolded
patches (every spatial position of every image), its weight reshaped to [out, in·k·k] and
transposed; the bias is the weight of an extra constant-1 input column, so W is [in + 1, out].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cnn import LAYER_SHAPES, check_activation, flatten, unflatten
from ._features import LAYERS, _check_images, _check_weights, layer_inputs

__all__ = ["regmean"]

_SHAPES = dict(LAYER_SHAPES)

# Images whose unfolded rows are held at once while a Gram matrix is summed: conv1's rows,
# 576 positions × 26 float64 columns per image, make this about 30 MB.
_CHUNK = 256


def _rows(layer: str, inputs: torch.Tensor) -> torch.Tensor:
    """A layer's inputs as the rows of its linear map: [rows, in + 1], the last column 1.
    inputs [N, C, H, W] for a convolution (one row per image and output position, columns
    ordered (channel, kernel row, kernel column) as weight.reshape(out, -1)), [N, in] or
    [N, C, H, W] (flattened channel-major) for a linear layer."""
    shape = _SHAPES[f"{layer}.weight"]
    if len(shape) == 4:
        x = F.unfold(inputs, shape[2:]).transpose(1, 2).reshape(-1, shape[1] * shape[2] * shape[3])
    else:
        x = inputs.reshape(len(inputs), -1)
    return torch.cat([x, x.new_ones(len(x), 1)], dim=1)


def _as_matrix(params: dict[str, torch.Tensor], layer: str) -> torch.Tensor:
    """One CNN's layer as W [in + 1, out] in the X · W convention: the weight reshaped to
    [out, in·k·k] and transposed, then the bias as the last row."""
    weight, bias = params[f"{layer}.weight"], params[f"{layer}.bias"]
    return torch.cat([weight.reshape(len(weight), -1).T, bias[None]], dim=0)


def _grams(w: torch.Tensor, images: torch.Tensor, activation: str) -> list[torch.Tensor]:
    """Gram matrices Xᵀ X [in + 1, in + 1] (float64) of the five layers of one CNN
    w [2464] on its images [N, 1, 28, 28], summed over all rows, not averaged."""
    grams: list[torch.Tensor | None] = [None] * len(LAYERS)
    for x in images.split(_CHUNK):
        inputs = layer_inputs(w[None], x[None], activation)
        for k, layer in enumerate(LAYERS):
            rows = _rows(layer, inputs[k][0]).double()
            g = rows.T @ rows
            grams[k] = g if grams[k] is None else grams[k] + g
    return grams


def _solve(a: torch.Tensor, b: torch.Tensor, mean: torch.Tensor) -> torch.Tensor:
    """The W that solves a · W = b (a symmetric PSD, float64) nearest to `mean`.

    a is singular where no input of either parent has a component in some direction (a dead
    unit's column, or collinear columns); W is then not determined there, and the
    pseudo-inverse of the symmetric a (eigenvalues below torch's default relative cutoff
    count as zero) gives the least-squares solution whose difference from `mean`, the plain
    average of the parents, is smallest, so such directions keep the average. Where a is
    regular this is exactly a⁻¹ b."""
    return mean + torch.linalg.pinv(a, hermitian=True) @ (b - a @ mean)


def regmean(
    w1: torch.Tensor,
    w2: torch.Tensor,
    images1: torch.Tensor,
    images2: torch.Tensor,
    activation: str,
    *,
    alpha: float = 0.9,
) -> torch.Tensor:
    """RegMean merge of P pairs: w1, w2 [P, 2464]; images1 / images2 [P, N_i, 1, 28, 28],
    each parent's unlabeled images of its own classes. Returns [P, 2464] in w1's dtype.

    For each of the five layers, parent i's inputs to it on its own images X_i give the Gram
    G_i = X_iᵀ X_i, regularised as G̃_i = α G_i + (1 − α) diag(G_i) (α = 1: the exact
    least-squares merge of [X_1; X_2] W ≈ [X_1 W_1; X_2 W_2]; α = 0: a per-input-column
    weighted average). The merged layer is W = (G̃_1 + G̃_2)⁻¹ (G̃_1 W_1 + G̃_2 W_2), solved in
    float64 (see `_solve` for a singular sum). The Grams are sums over rows, so a parent with
    more images weighs more.
    """
    p = _check_weights(w1=w1, w2=w2)
    _check_images("images1", images1, p)
    _check_images("images2", images2, p)
    check_activation(activation)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    with torch.no_grad():
        return torch.stack([_merge_pair(w1[i], w2[i], images1[i], images2[i], activation, alpha) for i in range(p)])


def _merge_pair(
    w1: torch.Tensor, w2: torch.Tensor, images1: torch.Tensor, images2: torch.Tensor, activation: str, alpha: float
) -> torch.Tensor:
    """RegMean of one pair of flat CNNs [2464]; see `regmean`."""
    grams = [_grams(w, images, activation) for w, images in ((w1, images1), (w2, images2))]
    parents = [unflatten(w.double()) for w in (w1, w2)]
    merged: dict[str, torch.Tensor] = {}
    for k, layer in enumerate(LAYERS):
        reg = [alpha * g[k] + (1 - alpha) * torch.diag(g[k].diagonal()) for g in grams]
        mats = [_as_matrix(params, layer) for params in parents]
        w = _solve(reg[0] + reg[1], reg[0] @ mats[0] + reg[1] @ mats[1], (mats[0] + mats[1]) / 2)
        merged[f"{layer}.weight"] = w[:-1].T.reshape(_SHAPES[f"{layer}.weight"])
        merged[f"{layer}.bias"] = w[-1]
    return flatten(merged).to(w1.dtype)
