"""Losses in the TransformerAE's latent space, from what the context carries (report 4.5.4,
4.5.16; the paper's contrastive term)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..cnn import N_PARAMS, unflatten
from ._common import rademacher
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


@register("latent", options=LatentOptions, needs=("encode", "latents"))
def latent(pred, target, ctx, opt):
    """Latent consistency [4.5.16], the relative term: 2·L_pred / (L_x1 + L_x2 + ε), with
    L_pred = MSE(E(pred), E(target)) and L_xi = MSE(h_i, E(target)), E = ctx.encode and
    (h1, h2) = ctx.latents, the latents of the two inputs.

    Below 1 when the prediction is closer to the target in latent space than the inputs
    are; its value is scale-free, so comparable across encoders and epochs. The denominator
    is detached by default (option detach_baseline): otherwise the cheapest way to lower it
    is to push the inputs' latents away from the target's. (Detached, the gradient can also
    shrink the latents, so mix it with a term that anchors them, e.g. `mse` or `behavioral`.)
    For a double encoder, E and h are whatever the caller pairs (e.g. both encoders' latents concatenated). The report's
    post-merge term L_Z (neck vs. a fusion of the target's own latent) does not involve the
    predicted weights and needs the fusion layer: it belongs to the model's training step."""
    z = ctx.encode(torch.cat([pred, target]))
    zp, zt = z[: pred.shape[0]], z[pred.shape[0] :]
    h1, h2 = ctx.latents
    base = _mse(h1, zt) + _mse(h2, zt)
    if opt.detach_baseline:
        base = base.detach()
    return 2 * _mse(zp, zt) / (base + opt.eps)


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
    |C(pred) − C(target)|, C(w) = ‖∂E(w)/∂w‖_F², the contractive penalty of the encoder
    E = ctx.encode at each CNN (the report's Σ_i (h_i(1−h_i))² ‖W_i‖² is its closed form
    for one sigmoid layer; here E is any differentiable encoder).

    C(w) = E_v ‖J_Eᵀ v‖² is estimated with `probes` Rademacher vectors v (default 4; 0 =
    exact, one VJP per latent dimension), the same v for pred and target (so it is exactly
    0 at pred = target), fresh each call from torch's global generator (a fixed v would
    only ever constrain those directions), or from `seed` if set. Its
    gradient needs double backward through the encoder, which also trains the encoder to be
    equally smooth around the prediction and the target."""
    b = pred.shape[0]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        w = torch.cat([pred, target.detach()])
        if not w.requires_grad:
            w = w.detach().requires_grad_()
        z = ctx.encode(w)
        d = z.shape[1]
        if opt.probes == 0:
            probes = torch.eye(d, dtype=z.dtype, device=z.device)[:, None, :].expand(d, b, d)
        else:
            probes = rademacher((opt.probes, b, d), opt.seed).to(z)
        scale = 1.0 if opt.probes == 0 else 1.0 / opt.probes
        c = z.new_zeros(2 * b)
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
    """The paper's contrastive term L_C (SANE's NT-Xent) on the model's neck: the two views of
    sample b are its neck and the neck of the same input pair after behaviour-preserving
    neuron permutations of both inputs (ctx.neck_aug; `permute_neurons` makes them); the
    other 2B−2 necks of the batch are the negatives. Cosine similarity, temperature τ
    (option, default 0.1). Per sample: the mean of its two views' NT-Xent terms.

    It does not read pred or target: it trains the model through the neck
    (LossSpec.depends_on_pred is False). Its minimum is not 0 (it is log-sum-exp based)."""
    b = ctx.neck.shape[0]
    z = F.normalize(torch.cat([ctx.neck, ctx.neck_aug]), dim=1)
    sim = z @ z.T / opt.temperature
    sim = sim.masked_fill(torch.eye(2 * b, dtype=torch.bool, device=z.device), float("-inf"))
    pos = torch.cat([torch.arange(b, 2 * b), torch.arange(b)]).to(z.device)
    per_view = torch.logsumexp(sim, dim=1) - sim[torch.arange(2 * b, device=z.device), pos]
    return (per_view[:b] + per_view[b:]) / 2


# Hidden layers whose units can be permuted: (producer tensors, consumer weight, unit size in
# the consumer's input dimension). conv3's 4 channels feed fc1 as 4 blocks of 3×3 = 9 columns.
_HIDDEN = (
    (("conv1.weight", "conv1.bias"), "conv2.weight", 1),
    (("conv2.weight", "conv2.bias"), "conv3.weight", 1),
    (("conv3.weight", "conv3.bias"), "fc1.weight", 9),
    (("fc1.weight", "fc1.bias"), "fc2.weight", 1),
)


def permute_neurons(weights: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """[B, 2464] -> [B, 2464]: each CNN with its hidden units (conv channels, fc1 neurons)
    randomly permuted, a different permutation per row. The function computed is unchanged
    (max-pooling and the activations act channel-wise), which makes these the
    behaviour-preserving augmentations of SANE's contrastive loss."""
    if weights.dim() != 2 or weights.shape[1] != N_PARAMS:
        raise ValueError(f"weights must be [B, {N_PARAMS}], got {tuple(weights.shape)}")
    out = []
    for row in weights:
        p = {k: v.clone() for k, v in unflatten(row).items()}
        for producers, consumer, unit in _HIDDEN:
            units = p[producers[0]].shape[0]
            perm = torch.randperm(units, generator=generator)
            for name in producers:
                p[name] = p[name][perm]
            cols = (perm[:, None] * unit + torch.arange(unit)).reshape(-1)
            p[consumer] = p[consumer][:, cols]
        out.append(torch.cat([t.reshape(-1) for t in p.values()]))
    return torch.stack(out)
