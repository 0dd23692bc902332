"""The zoo CNN's activations layer by layer: what data-using merges match, weigh or regress on."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cnn import N_PARAMS, activation_fn, unflatten

__all__ = ["LAYERS", "layer_inputs"]

# The five weight layers in order; layer k reads layer_inputs(...)[k] and its output, after
# pooling and the activation, is layer k + 1's input.
LAYERS: tuple[str, ...] = ("conv1", "conv2", "conv3", "fc1", "fc2")


def _check_weights(**named: torch.Tensor) -> int:
    """The number of pairs P, after checking that every named tensor is a floating-point
    [P, 2464] with one P for all; a ValueError names the first one that is not."""
    first, p = None, None
    for name, t in named.items():
        if t.dim() != 2 or t.shape[1] != N_PARAMS or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point [P, {N_PARAMS}] tensor, got {t.dtype} {tuple(t.shape)}")
        if first is None:
            first, p = name, t.shape[0]
        elif t.shape[0] != p:
            raise ValueError(f"{first} and {name} differ in pairs: {p} vs {t.shape[0]}")
    if not p:
        raise ValueError("no pairs to merge (P = 0)")
    return p


def _check_images(name: str, images: torch.Tensor, p: int) -> None:
    """Raise a ValueError naming `images` unless it is [p, N, 1, 28, 28] with N ≥ 1."""
    if images.dim() != 5 or images.shape[0] != p or images.shape[2:] != (1, 28, 28) or images.shape[1] == 0:
        raise ValueError(f"{name} must be [{p}, N, 1, 28, 28] with N >= 1, got {tuple(images.shape)}")


def layer_inputs(weights: torch.Tensor, images: torch.Tensor, activation: str) -> list[torch.Tensor]:
    """What each layer of each CNN sees: weights [P, 2464], images [P, N, 1, 28, 28] (one
    batch per CNN). Returns [images, h1 [P,N,8,12,12], h2 [P,N,6,4,4], h3 [P,N,4,3,3],
    h4 [P,N,20], logits [P,N,10]]: the input of conv1, conv2, conv3, fc1 (which reads h3 flattened
    channel-major) and fc2, then the output. Differentiable; the same function as
    `wsmerge.cnn.batched_forward`, one CNN at a time."""
    _check_images("images", images, _check_weights(weights=weights))
    act = activation_fn(activation)
    p = unflatten(weights)
    outs: list[list[torch.Tensor]] = [[] for _ in range(6)]
    for i in range(weights.shape[0]):
        x = images[i].to(weights.dtype)
        h1 = act(F.max_pool2d(F.conv2d(x, p["conv1.weight"][i], p["conv1.bias"][i]), 2))
        h2 = act(F.max_pool2d(F.conv2d(h1, p["conv2.weight"][i], p["conv2.bias"][i]), 2))
        h3 = act(F.conv2d(h2, p["conv3.weight"][i], p["conv3.bias"][i]))
        h4 = act(F.linear(h3.flatten(1), p["fc1.weight"][i], p["fc1.bias"][i]))
        logits = F.linear(h4, p["fc2.weight"][i], p["fc2.bias"][i])
        for out, t in zip(outs, (x, h1, h2, h3, h4, logits)):
            out.append(t)
    return [torch.stack(o) for o in outs]
