"""Losses on the weights themselves, position by position (report 4.5.1, 4.5.6–4.5.10)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..cnn import layer_slices
from ._common import safe_sqrt
from ._registry import register

# The report's "layers" for 4.5.7 and 4.5.9 are the CNN's ten tensors (weights and biases
# apart): their sizes differ by up to 120x, which is what the per-layer normalisation is for.
_SEGMENTS: tuple[slice, ...] = tuple(layer_slices().values())


def _segment_mse(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[B, n_segments]: the MSE of each layer tensor."""
    d2 = (pred - target) ** 2
    return torch.stack([d2[:, s].mean(dim=1) for s in _SEGMENTS], dim=1)


@register("mse")
def mse(pred, target, ctx, opt):
    """Structural loss: mean over the 2464 parameters of (pred − target)². The baseline of
    the report and the paper's L_S ("implemented using the mean-squared-error loss")."""
    return ((pred - target) ** 2).mean(dim=1)


@dataclass(frozen=True)
class QuantileOptions:
    q: float = 0.5

    def __post_init__(self):
        if not 0.0 < self.q < 1.0:
            raise ValueError(f"q must be in (0, 1), got {self.q}")


@register("quantile", options=QuantileOptions)
def quantile(pred, target, ctx, opt):
    """Q-quantile (pinball) loss [4.5.1]: mean_i ρ_Q(t_i − p_i), ρ_Q(u) = u(Q − 1{u<0}).

    u is target − pred, as in quantile regression, so Q > 0.5 penalises predicting too
    low more than too high. Zero at pred = target; symmetric only at Q = 0.5 (then it is
    half the mean absolute error). Option q (default 0.5)."""
    u = target - pred
    return torch.maximum(opt.q * u, (opt.q - 1.0) * u).mean(dim=1)


@register("norm_diff")
def norm_diff(pred, target, ctx, opt):
    """Difference in norm [4.5.6]: | ‖pred‖₂ − ‖target‖₂ |. Blind to direction: zero for
    any prediction on the target's sphere, so it is only an auxiliary term."""
    return (pred.norm(dim=1) - target.norm(dim=1)).abs()


@dataclass(frozen=True)
class MapeOptions:
    eps: float = 1e-3

    def __post_init__(self):
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


@register("mape", options=MapeOptions)
def mape(pred, target, ctx, opt):
    """MAPE [4.5.8]: 100 · mean_i |p_i − t_i| / (|t_i| + ε), in percent.

    ε (option eps, default 1e-3, about 1% of a typical weight's size) keeps near-zero
    target weights (e.g. zero-initialised biases) from dominating. Not symmetric: the target
    sets the scale."""
    return 100.0 * ((pred - target).abs() / (target.abs() + opt.eps)).mean(dim=1)


@dataclass(frozen=True)
class ArMseOptions:
    lam: float = 1.0
    floor: float = 1e-2
    eps: float = 1e-12
    detach_denominator: bool = True

    def __post_init__(self):
        if not (self.lam >= 0 and self.floor >= 0 and self.eps > 0):
            raise ValueError(
                f"need lam >= 0, floor >= 0 and eps > 0, got lam={self.lam}, floor={self.floor}, eps={self.eps}"
            )


@register("ar_mse", options=ArMseOptions)
def ar_mse(pred, target, ctx, opt):
    """Auto-regressive MSE [4.5.7]: L_1 + Σ_{k≥2} λ · L_k / (L_{k−1} + ε) over the ten layer
    tensors in state_dict order (conv1.weight … fc2.bias), L_k the MSE of tensor k over
    the batch, with a constant λ (option lam, default 1).

    Per sample b: L_1,b + λ Σ_{k≥2} L_k,b / D_{k−1}, D_{k−1} = L_{k−1} + floor · S_k + eps,
    where L_k,b is the sample's MSE of tensor k, L_{k−1} the batch mean as in the report
    and S_k the batch mean of target tensor k's mean square. The batch mean of these values
    is the report's loss with D for its denominator; a sample's value thus depends on its
    batch (for B = 1 it is its own).

    The floor (option, default 1e-2), relative to the scale of the tensor in the numerator,
    bounds each ratio by that tensor's relative squared error / floor. The report's ε
    (absolute) does not: an almost exact tensor k−1, such as a near-zero bias predicted to
    within 1e-4 (MSE 1e-8), divides L_k by ~ε, and a prediction that is better on the bias
    scores orders of magnitude worse. (Not the bias's own scale: the zoo's biases start at 0.)
    eps (default 1e-12) only keeps D > 0 where tensor k−1 is exact across the batch and
    the target's tensor k is all zero. The denominator is detached by default (option
    detach_denominator): otherwise the cheapest way to lower L_k/L_{k−1} is to make the
    earlier tensor worse, the opposite of the intent. Zero at pred = target."""
    seg = _segment_mse(pred, target)
    prev = seg[:, :-1].mean(dim=0)
    if opt.detach_denominator:
        prev = prev.detach()
    scale = torch.stack([(target[:, s] ** 2).mean() for s in _SEGMENTS[1:]])
    return seg[:, 0] + opt.lam * (seg[:, 1:] / (prev + opt.floor * scale + opt.eps)).sum(dim=1)


@dataclass(frozen=True)
class LayerwiseOptions:
    scale: str = "count"
    eps: float = 1e-8

    def __post_init__(self):
        if self.scale not in ("count", "norm"):
            raise ValueError(f"scale must be 'count' or 'norm', got {self.scale!r}")


@register("layerwise", options=LayerwiseOptions)
def layerwise(pred, target, ctx, opt):
    """Layer-wise normalised loss [4.5.9]: Σ_ℓ ‖p_ℓ − t_ℓ‖² / s_ℓ over the ten layer tensors.

    scale="count" (default): s_ℓ = |Θ_ℓ|, the report's formula (a sum of per-tensor MSEs,
    so fc2.bias's 10 values weigh as much as conv2.weight's 1200). scale="norm":
    s_ℓ = ‖t_ℓ‖² + eps, the relative squared error per tensor."""
    if opt.scale == "count":
        return _segment_mse(pred, target).sum(dim=1)
    return sum(
        ((pred[:, s] - target[:, s]) ** 2).sum(dim=1) / ((target[:, s] ** 2).sum(dim=1) + opt.eps)
        for s in _SEGMENTS
    )


@dataclass(frozen=True)
class JensenShannonOptions:
    temperature: float = 0.05

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register("jensen_shannon", options=JensenShannonOptions)
def jensen_shannon(pred, target, ctx, opt):
    """Jensen–Shannon distance [4.5.10]: sqrt(JSD(p ‖ q)) in nats, p = softmax(pred / τ),
    q = softmax(target / τ) over the 2464 positions.

    Softmax, not a histogram: a hard histogram has zero gradient almost everywhere, and a
    soft one adds a bandwidth and, like `wasserstein`, sees only the value distribution.
    The softmax distribution is exact, differentiable and positional (where the large
    weights are), which complements `wasserstein`. τ (option temperature, default 0.05,
    about half a typical weight's size) keeps it from being nearly uniform. Symmetric,
    bounded by sqrt(log 2)."""
    # float64: in float32, rounding leaves a JSD of ~1e-8 at equality, hence a distance of 1e-4.
    logp = torch.log_softmax(pred.double() / opt.temperature, dim=1)
    logq = torch.log_softmax(target.double() / opt.temperature, dim=1)
    logm = torch.logsumexp(torch.stack([logp, logq]), dim=0) - math.log(2.0)
    jsd = 0.5 * (logp.exp() * (logp - logm)).sum(dim=1) + 0.5 * (logq.exp() * (logq - logm)).sum(dim=1)
    return safe_sqrt(jsd).to(pred.dtype)
