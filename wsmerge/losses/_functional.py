"""Losses that run the CNNs: compare what the predicted and target CNNs compute on query
images, through the shared `batched_forward` (report 4.5.2, 4.5.3; the paper's L_B).

Each uses the first `queries` query images of each sample (ctx.images, per sample or
shared): a CNN evaluation with its backward costs about 0.12 ms per image here, so the
defaults are sized to keep a batch of 32 within 50 ms (bench/loss_cost.md)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.autograd import forward_ad

from ..cnn import batched_forward
from ..devices import to_device
from ._common import probe_generator, rademacher, safe_sqrt
from ._registry import register


def _queries(images: torch.Tensor, n: int) -> torch.Tensor:
    """The first n query images (all if n == 0), [N,...] shared or [B, N, ...] per sample."""
    if n == 0:
        return images
    return images[:n] if images.dim() == 4 else images[:, :n]


def _check_queries(n: int) -> None:
    if n < 0:
        raise ValueError(f"queries must be >= 0 (0 = all of ctx.images), got {n}")


_OUTPUTS = ("probs", "logits")


@dataclass(frozen=True)
class BehavioralOptions:
    queries: int = 8
    output: str = "probs"

    def __post_init__(self):
        _check_queries(self.queries)
        if self.output not in _OUTPUTS:
            raise ValueError(f"output must be one of {list(_OUTPUTS)}, got {self.output!r}")


def _behaviour(logits: torch.Tensor, output: str) -> torch.Tensor:
    return logits if output == "logits" else torch.softmax(logits, dim=-1)


@register("behavioral", options=BehavioralOptions, needs=("activation", "images"))
def behavioral(pred, target, ctx, opt):
    """Behavioral loss ("Structure Is Not Enough", Eq. 1, L_B): mean over query images and
    the 10 classes of (f_pred(x) − f_target(x))², on unlabeled images of the target's classes.

    output="probs" (default): f(x) is the softmax of the CNN's logits, as in the paper's code,
    whose `l2` behavioral loss (the variant the paper found stable, where cross-entropy and
    distillation were not) is the MSE of softmax outputs, averaged like this one.
    output="logits": f(x) is the logits. Why one might pick them: probabilities saturate, so
    a predicted CNN with huge, wrong logits sits where the softmax is flat and gets almost
    no gradient, while the logits' gradient stays proportional to the error. Why not by
    default: logits are on an arbitrary scale (a CNN with its logits doubled classifies
    alike yet differs), so they also chase differences that change no prediction, and
    their squared error is unbounded and harder to weigh against other terms.

    queries: query images per sample (default 8; 0 = all of ctx.images). With per-sample
    images ([B, N, ...]) each pair's CNNs see only their own 8, whereas the paper shows
    every model of a batch the same 256 queries. The trade is cost against noise: a CNN
    forward and backward costs about 0.12 ms per image here, so 8 queries keep a batch of
    32 pairs near 30 ms where 256 would take about 1 s (bench/loss_cost.md); the price is a
    noisier estimate per step, unbiased when the caller draws fresh images each batch."""
    x = _queries(ctx.images, opt.queries)
    with torch.no_grad():
        ref = _behaviour(batched_forward(target, x, ctx.activation), opt.output)
    return ((_behaviour(batched_forward(pred, x, ctx.activation), opt.output) - ref) ** 2).mean(dim=(1, 2))


def input_jacobian_products(
    weights: torch.Tensor, images: torch.Tensor, activation: str, probes: torch.Tensor, create_graph: bool
) -> torch.Tensor:
    """[B, n, P, 784]: vᵀ J(x) for each sample's CNN, query image x and probe v of
    probes [P, 10], J(x) = d logits / d image. probes = I₁₀ gives the full Jacobian.

    One backward for all: each image is repeated P times and copy j back-propagates
    probes[j]; create_graph keeps the result differentiable in the weights (double backward)."""
    b = weights.shape[0]
    x = images.expand(b, *images.shape[-4:]) if images.dim() == 4 else images
    n, k = x.shape[1], probes.shape[0]
    with torch.enable_grad():
        xr = x.unsqueeze(2).expand(b, n, k, 1, 28, 28).reshape(b, n * k, 1, 28, 28).detach().requires_grad_()
        out = batched_forward(weights, xr, activation).reshape(b, n, k, 10)
        (grad,) = torch.autograd.grad((out * probes.to(out)).sum(), xr, create_graph=create_graph)
    return grad.reshape(b, n, k, 28 * 28)


@dataclass(frozen=True)
class JacobianOptions:
    queries: int = 1
    probes: int = 2
    seed: int | None = None

    def __post_init__(self):
        _check_queries(self.queries)
        if self.probes < 0:
            raise ValueError(f"probes must be >= 0 (0 = exact), got {self.probes}")


@register("jacobian", options=JacobianOptions, needs=("activation", "images"))
def jacobian(pred, target, ctx, opt):
    """Jacobian Frobenius loss [4.5.2], w.r.t. inputs: sqrt(mean_x ‖J_pred(x) − J_target(x)‖_F²),
    J(x) = d logits / d image [10 × 784], over the query images x (the RMS over images of the
    report's per-image Frobenius norm, so it does not grow with their number).

    Differentiable in pred by double backward. ‖ΔJ‖_F² = E_v ‖vᵀΔJ‖² is estimated with
    `probes` Rademacher vectors v over the 10 logits (default 2; the same for both CNNs;
    drawn from `seed` if set, else ctx.generator, else torch's global generator; 0 = exact,
    all ten rows), which cuts the cost 5x. Default queries=1 per sample (32 images per batch of
    32, fresh ones each batch if the caller draws them so) keeps a batch within 50 ms."""
    x = _queries(ctx.images, opt.queries)
    if opt.probes == 0:
        v, scale = torch.eye(10), 1.0
    else:
        v, scale = rademacher((opt.probes, 10), probe_generator(opt.seed, ctx.generator)), 1.0 / opt.probes
    v = to_device(v, pred.device)
    jp = input_jacobian_products(pred, x, ctx.activation, v, create_graph=torch.is_grad_enabled())
    jt = input_jacobian_products(target, x, ctx.activation, v, create_graph=False)
    return safe_sqrt(scale * ((jp - jt) ** 2).sum(dim=(2, 3)).mean(dim=1))


@dataclass(frozen=True)
class FisherOptions:
    queries: int = 4

    def __post_init__(self):
        _check_queries(self.queries)


@register("fisher", options=FisherOptions, needs=("activation", "images"))
def fisher(pred, target, ctx, opt):
    """Fisher information distance [4.5.3], to first order: sqrt(Δᵀ F(θ_t) Δ), Δ = pred −
    target, F(θ_t) the Fisher information of the target CNN's predictive distribution on the
    query images.

    Approximations, stated: (1) the geodesic integral ∫ sqrt(γ̇ᵀ F(γ) γ̇) is replaced by its
    value for the straight segment with F frozen at the target — exact to first order as
    pred → target, the regime of a reconstruction loss; (2) the expectation over inputs is
    the mean over the query images. F is the full (not diagonal) Fisher of softmax outputs,
    Jᵀ(diag p − ppᵀ)J, with the model's own p (no labels needed, unlike the empirical Fisher),
    and is never formed: with u = JΔ from one forward-mode JVP, ΔᵀFΔ = mean_x Var_p(u).
    Not symmetric (the metric is the target's). Default queries=4 per sample."""
    x = _queries(ctx.images, opt.queries)
    with forward_ad.dual_level():
        out = batched_forward(forward_ad.make_dual(target.detach(), pred - target.detach()), x, ctx.activation)
        logits, u = forward_ad.unpack_dual(out)
    p = torch.softmax(logits, dim=-1)
    var = (p * u**2).sum(dim=-1) - ((p * u).sum(dim=-1)) ** 2
    return safe_sqrt(var.clamp_min(0).mean(dim=1))
