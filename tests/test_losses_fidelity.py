"""wsmerge.losses on the real TransformerAE: the losses that reach into the model (its
encoders, fusion layer) must train it, attention included, not only the stand-ins of
test_losses_values."""

from __future__ import annotations

import pytest
import torch

from wsmerge.cnn import N_PARAMS
from wsmerge.losses import LossContext, mix_loss
from wsmerge.model import ModelConfig, TransformerAE

SMALL = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, neck=8, dropout=0.0)


def _w(b, seed):
    return torch.randn(b, N_PARAMS, generator=torch.Generator().manual_seed(seed)) * 0.1


@pytest.fixture
def model():
    torch.manual_seed(0)
    return TransformerAE(SMALL)


def _assert_trained(module, what, skip=()):
    grads = {n: p.grad for n, p in module.named_parameters() if n not in skip}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values()), (what, grads.keys())
    assert sum(g.abs().sum() for g in grads.values()) > 0, what


def test_contractive_trains_the_transformer_by_double_backward(model):
    # The second derivative runs through attention, which torch's fused SDPA kernels lack.
    target = _w(2, 1)
    pred = (target + 0.05 * _w(2, 2)).requires_grad_()
    ctx = LossContext(encode=model.encode, options={"contractive": {"probes": 1, "seed": 0}})
    loss = mix_loss(pred, target, {"contractive": 1.0}, ctx)[1]["contractive"]
    loss.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    for k in (0, 1):
        # The last norm's bias shifts the latent without changing its Jacobian.
        _assert_trained(model.encoders[k], f"encoder {k}", skip=("norm.bias",))
        assert model.encoders[k].layers[0].attn.qkv.weight.grad.abs().sum() > 0


def test_contractive_exact_value_on_the_transformer(model):
    target, pred = _w(2, 3), _w(2, 4)

    def c(w):
        return sum(
            (torch.autograd.functional.jacobian(lambda v: model.encode(v[None], k)[0], w, vectorize=True) ** 2).sum()
            for k in (0, 1)
        )

    expected = torch.stack([(c(pred[i]) - c(target[i])).abs() for i in range(2)])
    ctx = LossContext(encode=model.encode, options={"contractive": {"probes": 0}})
    with torch.no_grad():
        got = mix_loss(pred, target, {"contractive": 1.0}, ctx)[1]["contractive"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_latent_trains_every_part_of_the_transformer(model):
    w1, w2, w3 = _w(3, 5), _w(3, 6), _w(3, 7)
    out = model(w1, w2)
    ctx = LossContext(encode=model.encode, fuse=model.fuse, sources=(w1, w2), neck=out.neck)
    loss = mix_loss(out.weights, w3, {"latent": 1.0}, ctx)[1]["latent"]
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    loss.sum().backward()
    for part in ("encoders", "to_neck", "decoder"):
        _assert_trained(getattr(model, part), part)
