import math

import pytest
import torch

from wsmerge.cnn import (
    ACTIVATIONS,
    CNN,
    INITS,
    LAYER_SHAPES,
    N_PARAMS,
    batched_forward,
    conv1_im2col,
    flatten,
    init_weights,
    layer_slices,
    unflatten,
)


def test_parameter_count_and_shapes():
    model = CNN()
    assert N_PARAMS == 2464
    assert sum(p.numel() for p in model.parameters()) == 2464
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == list(LAYER_SHAPES)
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)


def test_layer_slices_tile_the_vector():
    slices = list(layer_slices().values())
    assert slices[0].start == 0 and slices[-1].stop == N_PARAMS
    for a, b in zip(slices, slices[1:]):
        assert a.stop == b.start
    for (_, shape), sl in zip(LAYER_SHAPES, slices):
        assert sl.stop - sl.start == math.prod(shape)


def test_flat_round_trip():
    model = CNN()
    flat = flatten(model.state_dict())
    assert flat.shape == (N_PARAMS,)
    back = unflatten(flat)
    for k, v in model.state_dict().items():
        assert torch.equal(back[k], v)
    batch = torch.randn(4, N_PARAMS)
    assert torch.equal(flatten({k: v[2] for k, v in unflatten(batch).items()}), batch[2])


def test_unflatten_rejects_wrong_length():
    with pytest.raises(ValueError, match="2464"):
        unflatten(torch.zeros(2463))
    with pytest.raises(KeyError, match="fc2.bias"):
        flatten({k: v for k, v in CNN().state_dict().items() if k != "fc2.bias"})


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_functional_forward_equals_module(activation):
    torch.manual_seed(0)
    models = [CNN(activation).double() for _ in range(3)]
    weights = torch.stack([flatten(m.state_dict()) for m in models])
    images = torch.rand(5, 1, 28, 28, dtype=torch.float64)
    ref = torch.stack([m(images) for m in models])
    assert torch.allclose(batched_forward(weights, images, activation), ref, atol=1e-10)
    # One batch of images per model.
    per_model = torch.rand(3, 4, 1, 28, 28, dtype=torch.float64)
    ref = torch.stack([m(x) for m, x in zip(models, per_model)])
    assert torch.allclose(batched_forward(weights, per_model, activation), ref, atol=1e-10)


def test_functional_forward_gradient_matches_module():
    torch.manual_seed(1)
    model = CNN("tanh").double()
    images = torch.rand(6, 1, 28, 28, dtype=torch.float64)
    model(images).square().sum().backward()
    ref = flatten({k: p.grad for k, p in model.named_parameters()})
    w = flatten(model.state_dict()).unsqueeze(0).clone().requires_grad_(True)
    batched_forward(w, images, "tanh").square().sum().backward()
    assert torch.allclose(w.grad[0], ref, atol=1e-10)


def test_forward_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"\[M, 2464\]"):
        batched_forward(torch.zeros(2, 10), torch.zeros(1, 1, 28, 28), "relu")
    with pytest.raises(ValueError, match="image batches"):
        batched_forward(torch.zeros(2, N_PARAMS), torch.zeros(3, 1, 1, 28, 28), "relu")
    with pytest.raises(ValueError, match="unknown activation"):
        batched_forward(torch.zeros(1, N_PARAMS), torch.zeros(1, 1, 28, 28), "swish")


@pytest.mark.parametrize("init", INITS)
def test_init_is_deterministic_and_shared(init):
    a = init_weights("relu", init, 0)
    assert a.shape == (N_PARAMS,) and torch.isfinite(a).all()
    assert torch.equal(a, init_weights("relu", init, 0))
    assert not torch.equal(a, init_weights("relu", init, 1))
    biases = [sl for name, sl in layer_slices().items() if name.endswith("bias")]
    assert all((a[sl] == 0).all() for sl in biases)


def test_unknown_init():
    with pytest.raises(ValueError, match="unknown init"):
        init_weights("relu", "orthogonal", 0)


def test_one_activation_per_model_equals_one_call_per_activation():
    torch.manual_seed(0)
    acts = ["relu", "relu", "tanh", "sigmoid", "sigmoid", "relu"]
    weights = torch.stack([init_weights(a, "kaiming_uniform", i) for i, a in enumerate(acts)]).double()
    images = torch.rand(6, 5, 1, 28, 28, dtype=torch.float64)
    mixed = batched_forward(weights, images, acts)
    for k, a in enumerate(acts):
        torch.testing.assert_close(mixed[k], batched_forward(weights[k : k + 1], images[k : k + 1], a)[0])
    with pytest.raises(ValueError, match="6 weight vectors but 2 activations"):
        batched_forward(weights, images, ["relu", "tanh"])


def test_activation_ids_equal_activation_names():
    # The compiled zoo step passes ids (one graph for any mix): values and weight gradients
    # must be those of the per-run path, on shared and on per-model images, with dropout.
    # (Not bit for bit: a CPU's vectorised tanh or gelu rounds a tensor's tail elements
    # otherwise than its body, so a slice and a whole tensor differ in the last bit.)
    torch.manual_seed(1)
    acts = ["relu", "gelu", "gelu", "tanh", "silu", "leakyrelu", "sigmoid", "relu"]
    ids = torch.tensor([ACTIVATIONS.index(a) for a in acts])
    seeds = torch.arange(len(acts)) * 7919
    shared, own = torch.rand(4, 1, 28, 28, dtype=torch.float64), torch.rand(len(acts), 4, 1, 28, 28, dtype=torch.float64)
    for images in (shared, own):
        outs = []
        for activation in (acts, ids):
            w = torch.stack([init_weights(a, "kaiming_uniform", i) for i, a in enumerate(acts)]).double()
            w.requires_grad_()
            out = batched_forward(w, images, activation, dropout=0.2, dropout_seeds=seeds)
            (grad,) = torch.autograd.grad((out**2).sum(), w)
            outs.append((out.detach(), grad))
        torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(outs[1][1], outs[0][1], rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="activation ids of shape"):
        batched_forward(torch.zeros(3, N_PARAMS), torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long))


def test_conv1_s_patch_products_have_16_byte_aligned_rows_in_bf16(monkeypatch):
    # cuBLAS falls back to an unaligned kernel when a bf16 row is not a multiple of 8 values
    # (25 was; on an H100 that kernel took two thirds of a zoo step).
    shapes = []
    baddbmm = torch.baddbmm
    monkeypatch.setattr(torch, "baddbmm", lambda b, x, w: shapes.append((x.shape, w.shape)) or baddbmm(b, x, w))
    conv1_im2col(torch.rand(3, 2, 28, 28), torch.randn(3, 8, 1, 5, 5), torch.randn(3, 8))
    assert shapes == [((3, 2 * 576, 32), (3, 32, 8))]


def test_conv1_as_patch_products_equals_the_convolution():
    # The GPU path of the first layer (per-model images): every model's own conv2d, in float64.
    torch.manual_seed(2)
    m, n = 5, 3
    w1, b1 = torch.randn(m, 8, 1, 5, 5, dtype=torch.float64), torch.randn(m, 8, dtype=torch.float64)
    images = torch.rand(m, n, 28, 28, dtype=torch.float64)
    out = conv1_im2col(images, w1, b1)
    assert out.shape == (n, m * 8, 24, 24)
    for k in range(m):
        ref = torch.nn.functional.conv2d(images[k].unsqueeze(1), w1[k], b1[k])  # [N, 8, 24, 24]
        torch.testing.assert_close(out[:, 8 * k : 8 * (k + 1)], ref, rtol=1e-12, atol=1e-12)
    # and its weight gradient, which is why it exists
    w = w1.clone().requires_grad_()
    (g,) = torch.autograd.grad(conv1_im2col(images, w, b1).sum(), w)
    for k in range(m):
        wk = w1[k].clone().requires_grad_()
        (gk,) = torch.autograd.grad(torch.nn.functional.conv2d(images[k].unsqueeze(1), wk, b1[k]).sum(), wk)
        torch.testing.assert_close(g[k], gk, rtol=1e-12, atol=1e-12)
