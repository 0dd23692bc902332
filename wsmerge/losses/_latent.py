"""Losses in the TransformerAE's latent space, from what the context carries (report 4.5.4,
4.5.16; the paper's contrastive term)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from ..cnn import HIDDEN_SIZES, N_PARAMS, permute_units
from ..devices import to_device
from ._common import probe_generator, rademacher
from ._registry import register

__all__ = ["permute_neurons"]


@dataclass(frozen=True)
class LatentOptions:
    eps: float = 1e-8
    detach_baseline: bool = True

    def __post_init__(self):
        if not self.eps > 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")


def _mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a - b) ** 2).mean(dim=1)


@register("latent", options=LatentOptions, needs=("encode", "fuse", "sources", "neck"))
def latent(pred, target, ctx, opt):
    """Latent consistency [4.5.16]: Σ_{k=0,1} L_Z^(k) + 2·L_pred^(k) / (L_x1^(k) + L_x2^(k) + ε).

    For each encoder E_k = ctx.encode(·, k), with z_w = E_k(w) for w in the inputs
    (x1, x2) = ctx.sources, pred and target:
      L_pred = MSE(ẑ_pred, ẑ_target), L_xi = MSE(ẑ_xi, ẑ_target), ẑ = z / ‖z‖ (so each is
        (2 − 2·cos)/d): the ratio is below 1 when the prediction is closer to the target in
        latent space than the inputs are, 0 at pred = target;
      L_Z = MSE(fuse(z_target, z_target), ctx.neck): the target's latent, duplicated
        through the fusion layer ctx.fuse, against the model's neck (the report's output[1]).

    Unit latents in the ratio, because the raw ratio invites collapse: with its denominator
    detached, its gradient shrinks every latent (the numerator falls with their scale, the
    detached denominator does not), and ε then rewards latents near 0. The unit ratio does
    not change with the latents' scale, and L_Z, on the raw latents as the model fuses them,
    does not change when the fusion weights undo that scale: no term pushes it.
    The denominator is detached by default (option detach_baseline): otherwise the cheapest
    way to lower the ratio is to move the inputs' latents away from the target's.
    Not 0 at pred = target (L_Z does not read pred). With dropout in the encoders, pred
    and target see different masks, so the ratio is then only near 0 there."""
    b = pred.shape[0]
    x1, x2 = ctx.sources
    total = pred.new_zeros(b)
    for k in (0, 1):
        z = ctx.encode(torch.cat([pred, target, x1, x2]), k)
        zp, zt, z1, z2 = F.normalize(z, dim=1).split(b)
        base = _mse(z1, zt) + _mse(z2, zt)
        if opt.detach_baseline:
            base = base.detach()
        target_z = z[b : 2 * b]
        total = total + _mse(ctx.fuse(target_z, target_z), ctx.neck) + 2 * _mse(zp, zt) / (base + opt.eps)
    return total


@dataclass(frozen=True)
class ContractiveOptions:
    probes: int = 4
    seed: int | None = None

    def __post_init__(self):
        if self.probes < 0:
            raise ValueError(f"probes must be >= 0 (0 = exact), got {self.probes}")


@register("contractive", options=ContractiveOptions, needs=("encode",))
def contractive(pred, target, ctx, opt):
    """Contractive loss [4.5.4] used, as the report says, to compare two CNNs:
    |C(pred) − C(target)|, C(w) = Σ_{k=0,1} ‖∂E_k(w)/∂w‖_F², the contractive penalties of
    both encoders E_k = ctx.encode(·, k) at each CNN, summed (the report's
    Σ_i (h_i(1−h_i))² ‖W_i‖² is its closed form for one sigmoid layer; here E_k is any
    differentiable encoder).

    Each ‖J‖_F² = E_v ‖Jᵀ v‖² is estimated with `probes` Rademacher vectors v (default 4;
    0 = exact, one VJP per latent dimension), the same v for pred and target (so it is
    exactly 0 at pred = target), drawn from `seed` if set, else ctx.generator, else torch's
    global generator (fresh each call: a fixed v would only ever constrain those directions).
    Its gradient needs double backward through the encoders, which also trains them to be
    equally smooth around the prediction and the target. Torch has no second derivative for
    the fused attention kernels, so the encoders run on the math attention backend here."""
    b = pred.shape[0]
    create_graph = torch.is_grad_enabled()
    gen = probe_generator(opt.seed, ctx.generator)
    c = pred.new_zeros(2 * b)
    with torch.enable_grad():
        w = torch.cat([pred, target.detach()])
        if not w.requires_grad:
            w = w.detach().requires_grad_()
        for k in (0, 1):
            with sdpa_kernel(SDPBackend.MATH):
                z = ctx.encode(w, k)
            d = z.shape[1]
            if opt.probes == 0:
                probes, scale = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, b, d), 1.0
            else:
                probes, scale = to_device(rademacher((opt.probes, b, d), gen), z.device).to(z.dtype), 1.0 / opt.probes
            for v in probes:
                (g,) = torch.autograd.grad(
                    z, w, grad_outputs=torch.cat([v, v]), retain_graph=True, create_graph=create_graph
                )
                c = c + scale * (g**2).sum(dim=1)
    return (c[:b] - c[b:]).abs()


@dataclass(frozen=True)
class ContrastiveOptions:
    temperature: float = 0.1

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


@register("contrastive", options=ContrastiveOptions, needs=("neck", "neck_aug"), depends_on_pred=False)
def contrastive(pred, target, ctx, opt):
    """The paper's contrastive term L_C (SANE's NT-Xent): the two views of sample b are its
    neck and the neck of the same input pair after behaviour-preserving neuron permutations
    of both inputs (ctx.neck_aug; `permute_neurons` makes them); the other 2B−2 of the
    batch are the negatives. Cosine similarity, temperature τ (option, default 0.1). Per
    sample: the mean of its two views' NT-Xent terms.

    SANE and the paper's code apply NT-Xent to a projection head's output, not to the code
    the decoder reads: so does this term when the caller passes the head (ctx.project,
    applied to both views), which lets the head, rather than the neck, drop what the
    permutation invariance asks to forget. Without a head it compares the necks themselves.
    It does not read pred or target: it trains the model through the neck
    (LossSpec.depends_on_pred is False). Its minimum is not 0 (it is log-sum-exp based)."""
    b = ctx.neck.shape[0]
    views = torch.cat([ctx.neck, ctx.neck_aug])
    if ctx.project is not None:
        views = ctx.project(views)
    z = F.normalize(views, dim=1)
    sim = z @ z.T / opt.temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.arange(2 * b, device=z.device).roll(b)
    per_view = torch.logsumexp(sim, dim=1) - sim[torch.arange(2 * b, device=z.device), pos]
    return (per_view[:b] + per_view[b:]) / 2


def permute_neurons(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, 2464] -> [B, 2464]: each CNN with its hidden units (conv channels, fc1 neurons)
    randomly permuted, a different permutation per row. The function computed is unchanged
    (max-pooling and the activations act channel-wise), which makes these the
    behaviour-preserving augmentations of SANE's contrastive loss.

    The permutations are drawn on the CPU, a layer at a time for every row at once (the
    order of uniform draws: a randperm a row cost 28 ms a batch of 1024), and applied as one
    gather on the weights' device (`permute_units`)."""
    if weights.dim() != 2 or weights.shape[1] != N_PARAMS:
        raise ValueError(f"weights must be [B, {N_PARAMS}], got {tuple(weights.shape)}")
    b = weights.shape[0]
    return permute_units(weights, [torch.rand(b, n, generator=generator).argsort(dim=1) for n in HIDDEN_SIZES])
