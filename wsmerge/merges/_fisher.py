"""Fisher merging (Matena & Raffel 2022): each parameter is the average of the parents'
values weighted by the parents' diagonal Fisher information, i.e. by how much each parent's
predictions depend on it."""

from __future__ import annotations

import torch

from ..cnn import batched_forward, check_activation
from ._features import _check_images, _check_weights

__all__ = ["diagonal_fisher", "fisher", "fisher_merge"]

# Images per backward call: their per-class gradients, 10 × 2464 floats each, are held at
# once, so this bounds the memory at about 25 MB in float32.
_CHUNK = 256


def diagonal_fisher(w: torch.Tensor, images: torch.Tensor, activation: str) -> torch.Tensor:
    """Each CNN's diagonal Fisher on its own images: w [P, 2464], images [P, N, 1, 28, 28].
    Returns F [P, 2464], F = mean_x Σ_y p(y|x) (∂ log p(y|x) / ∂θ)² with y over all 10
    classes: the exact expectation over the model's predictive distribution rather than a
    sampled label, so the estimate has no label noise.

    Every image needs its own gradient (the squares do not commute with the sum over
    images), so each image gets its own copy of the weights: one batched forward of n
    copies on n images, then one backward per class, all 10 batched (`is_grads_batched`),
    gives the [10, n, 2464] per-image, per-class gradients.
    """
    p = _check_weights(w=w)
    _check_images("images", images, p)
    check_activation(activation)
    out = []
    for i in range(p):
        total = torch.zeros_like(w[i])
        for x in images[i].split(_CHUNK):
            total += _fisher_sum(w[i].detach(), x, activation)
        out.append(total / images.shape[1])
    return torch.stack(out)


def _fisher_sum(theta: torch.Tensor, x: torch.Tensor, activation: str) -> torch.Tensor:
    """Σ_x Σ_y p(y|x) (∂ log p(y|x) / ∂θ)² [2464] of one CNN theta [2464] over images x [n, 1, 28, 28]."""
    n = len(x)
    copies = theta.expand(n, -1).clone().requires_grad_(True)
    with torch.enable_grad():
        log_p = batched_forward(copies, x[:, None], activation)[:, 0].log_softmax(-1)  # [n, 10]
        # Row y of the batch of output gradients picks class y in every image.
        onehot = torch.eye(10, dtype=log_p.dtype, device=log_p.device).unsqueeze(1).expand(10, n, 10)
        (grads,) = torch.autograd.grad(log_p, copies, onehot, is_grads_batched=True)  # [10, n, 2464]
    return torch.einsum("ny,ynk->k", log_p.detach().exp(), grads.square())


def fisher_merge(
    w1: torch.Tensor, w2: torch.Tensor, f1: torch.Tensor, f2: torch.Tensor, *, eps: float = 1e-8
) -> torch.Tensor:
    """(f1 · w1 + f2 · w2) / (f1 + f2) elementwise: w1, w2, f1, f2 [P, 2464], Fishers ≥ 0.

    `eps` is a floor on each Fisher (the `fisher_floor` of Matena & Raffel's code): both are
    replaced by max(f, eps) first, so where both parents' Fishers are below eps the result is
    exactly the plain average, and nowhere is there a division by zero. A parent with zero
    Fisher next to one with Fisher f gets the relative weight eps / (eps + f).
    """
    _check_weights(w1=w1, w2=w2, f1=f1, f2=f2)
    if not eps > 0:
        raise ValueError(f"eps must be > 0, got {eps}")
    for name, f in (("f1", f1), ("f2", f2)):
        if not bool((f >= 0).all()):
            raise ValueError(f"{name} must be non-negative and not NaN")
    f1, f2 = f1.clamp(min=eps), f2.clamp(min=eps)
    return (f1 * w1 + f2 * w2) / (f1 + f2)


def fisher(
    w1: torch.Tensor,
    w2: torch.Tensor,
    images1: torch.Tensor,
    images2: torch.Tensor,
    activation: str,
    *,
    eps: float = 1e-8,
) -> torch.Tensor:
    """Fisher merge of P pairs: w1, w2 [P, 2464]; each parent's Fisher on its own images,
    images1 / images2 [P, N_i, 1, 28, 28] of its own classes. Returns [P, 2464]; `eps` as in
    `fisher_merge`."""
    p = _check_weights(w1=w1, w2=w2)
    _check_images("images1", images1, p)
    _check_images("images2", images2, p)
    f1 = diagonal_fisher(w1, images1, activation)
    f2 = diagonal_fisher(w2, images2, activation)
    return fisher_merge(w1, w2, f1, f2, eps=eps)
