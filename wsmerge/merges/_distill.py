"""The two output-level references: the parents as an ensemble, and a CNN distilled from it.

Neither merges weights. The ensemble is what two CNNs can do together at twice the cost; the
distilled CNN is what a data-using method reaches with the same budget as fine-tuning, from
the same start every merge shares (the pair's epoch-0 weights), so it bounds what fine-tuning
a generated CNN should reach.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..cnn import batched_forward
from ._features import _check_weights

__all__ = ["distill", "ensemble_predict", "ensemble_probs"]


def _check_masks(logits1: torch.Tensor, in1: torch.Tensor, in2: torch.Tensor) -> None:
    p = logits1.shape[0]
    for name, m in (("in1", in1), ("in2", in2)):
        if m.shape != (p, 10) or m.dtype != torch.bool:
            raise ValueError(f"{name} must be a boolean [{p}, 10] class mask, got {m.dtype} {tuple(m.shape)}")
        if not m.any(1).all():
            raise ValueError(f"{name}: every pair's parent must have at least one class")


def ensemble_probs(logits1: torch.Tensor, logits2: torch.Tensor, in1: torch.Tensor, in2: torch.Tensor) -> torch.Tensor:
    """[P, N, 10]: each parent's softmax over its own classes (in1/in2 [P, 10]), combined class
    by class by the more confident parent (elementwise max; 0 outside C1 ∪ C2), renormalised.
    A parent's head was trained on its classes only: its other logits say nothing."""
    if logits1.shape != logits2.shape or logits1.dim() != 3 or logits1.shape[-1] != 10:
        raise ValueError(f"logits must both be [P, N, 10], got {tuple(logits1.shape)} and {tuple(logits2.shape)}")
    _check_masks(logits1, in1, in2)
    p1 = logits1.masked_fill(~in1[:, None], float("-inf")).softmax(-1)
    p2 = logits2.masked_fill(~in2[:, None], float("-inf")).softmax(-1)
    both = torch.maximum(p1, p2)
    return both / both.sum(-1, keepdim=True)


def ensemble_predict(logits1: torch.Tensor, logits2: torch.Tensor, in1: torch.Tensor, in2: torch.Tensor) -> torch.Tensor:
    """[P, N]: the most probable class across both parents, each on its own classes."""
    return ensemble_probs(logits1, logits2, in1, in2).argmax(-1)


@torch.enable_grad()
def distill(
    w1: torch.Tensor,
    w2: torch.Tensor,
    init: torch.Tensor,
    in1: torch.Tensor,
    in2: torch.Tensor,
    activation: str,
    batches: torch.Tensor,
    images: torch.Tensor,
    lr: float = 1e-3,
) -> torch.Tensor:
    """[P, 2464]: for each pair a CNN trained from `init` [P, 2464] to match the parents'
    ensemble (`ensemble_probs`) on unlabeled images: one Adam step per column of batches
    [P, steps, B] (indices into images [M, 1, 28, 28], each pair's drawn from its union of
    classes), soft-target cross-entropy, the same lr as fine-tuning. One Adam over the [P, D]
    leaf: Adam is elementwise, so the pairs train independently."""
    p = _check_weights(init=init, w1=w1, w2=w2)
    if batches.dim() != 3 or batches.shape[0] != p:
        raise ValueError(f"batches must be [{p}, steps, B], got {tuple(batches.shape)}")
    theta = init.detach().float().clone().requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    teachers = torch.stack([w1, w2]).detach().float()
    for step in range(batches.shape[1]):
        x = images[batches[:, step]]  # [P, B, 1, 28, 28]
        with torch.no_grad():
            t = batched_forward(teachers.flatten(0, 1), x.repeat(2, 1, 1, 1, 1), activation).view(2, p, *x.shape[1:2], 10)
            target = ensemble_probs(t[0], t[1], in1, in2)
        logits = batched_forward(theta, x, activation)
        # Summed per-pair means: each pair gets the gradient it would get alone.
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(0, 1), reduction="sum") / x.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return theta.detach()
