"""TIES, DARE, Fisher and RegMean merges against independent computations: hand-worked
answers, plain numpy, a per-image autograd loop, and numpy.linalg.lstsq."""

import numpy as np
import pytest
import torch

from wsmerge.cnn import CNN, LAYER_SHAPES, N_PARAMS, init_weights, layer_slices, unflatten
from wsmerge.merges import dare, diagonal_fisher, fisher, fisher_merge, regmean, ties

LAYERS = ("conv1", "conv2", "conv3", "fc1", "fc2")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # These tensors are tiny: a second intra-op thread only adds synchronisation, and on a
    # busy machine its waits made the file ~100× slower. Restored for the other test files.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _pairs(p, seed=0, dtype=torch.float32):
    """w1, w2, init [p, 2464]: parents fine-tuned away from a shared start."""
    g = torch.Generator().manual_seed(seed)
    init = torch.randn(p, N_PARAMS, generator=g, dtype=torch.float64) * 0.1
    w1 = init + torch.randn(p, N_PARAMS, generator=g, dtype=torch.float64) * 0.05
    w2 = init + torch.randn(p, N_PARAMS, generator=g, dtype=torch.float64) * 0.05
    return w1.to(dtype), w2.to(dtype), init.to(dtype)


def _cnns(activation, seeds, dtype=torch.float64):
    """[len(seeds), 2464] CNNs: an init plus small noise on every parameter (biases nonzero)."""
    g = torch.Generator().manual_seed(sum(seeds))
    w = torch.stack([init_weights(activation, "xavier_normal", s) for s in seeds]).to(dtype)
    return w + 0.05 * torch.randn(w.shape, generator=g, dtype=dtype)


def _images(p, n, seed=0, dtype=torch.float64):
    return torch.rand(p, n, 1, 28, 28, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------- TIES


def _padded(values, fill=0.0):
    out = torch.full((1, N_PARAMS), fill, dtype=torch.float64)
    out[0, : len(values)] = torch.tensor(values, dtype=torch.float64)
    return out


def test_ties_hand_worked_example():
    # k = 4 entries survive per task vector. tau1's magnitudes 6, 4, then a three-way tie at
    # 3 (positions 1, 2, 4): the lower indices 1 and 2 are kept, 4 is trimmed.
    # tau2 keeps 5, 4, 3, 2 (positions 1, 6, 4, 0).
    tau1 = [4.0, -3.0, 3.0, 0.5, -3.0, 0.0, -6.0, 0.0]
    tau2 = [2.0, 5.0, -1.0, -0.2, 3.0, 0.0, 4.0, 1.0]
    # trimmed1 = [4, -3, 3, 0, 0, 0, -6, 0], trimmed2 = [2, 5, 0, 0, 3, 0, 4, 0]
    # elected  = sign([6, 2, 3, 0, 3, 0, -2, 0]) = [+, +, +, 0, +, 0, -, 0]
    # pos 0 agree: mean(4, 2); pos 1 conflict, + wins: 5; pos 2: 3 alone; pos 3 both trimmed:
    # 0; pos 4: tau1's -3 trimmed: 3; pos 5 zero everywhere; pos 6 conflict, - wins: -6;
    # pos 7 trimmed.
    expected_tau = [3.0, 5.0, 3.0, 0.0, 3.0, 0.0, -6.0, 0.0]
    init = _padded([0.0] * 8, fill=0.25)
    w1, w2 = init + _padded(tau1), init + _padded(tau2)
    out = ties(w1, w2, init, density=4 / N_PARAMS)
    torch.testing.assert_close(out, init + _padded(expected_tau), rtol=0, atol=0)
    out_scaled = ties(w1, w2, init, density=4 / N_PARAMS, scale=0.5)
    torch.testing.assert_close(out_scaled, init + 0.5 * _padded(expected_tau), rtol=0, atol=0)


def test_ties_density_one_keeps_everything():
    # Nothing trimmed: agreeing signs average, a conflict keeps the side of the larger sum,
    # and equal and opposite entries elect no sign and give 0.
    init = _padded([1.0, 1.0, 1.0, 1.0])
    w1 = init + _padded([1.0, -2.0, 3.0, 0.0])
    w2 = init + _padded([3.0, 1.0, -3.0, -4.0])
    out = ties(w1, w2, init, density=1.0, scale=2.0)
    torch.testing.assert_close(out, init + 2.0 * _padded([2.0, -2.0, 0.0, -4.0]), rtol=0, atol=0)


def test_ties_density_zero_returns_init():
    w1, w2, init = _pairs(2)
    assert torch.equal(ties(w1, w2, init, density=0.0), init)


def _ties_numpy(w1, w2, init, density, scale):
    k = int(round(density * w1.shape[1]))
    out = np.empty_like(init)
    for p in range(len(init)):
        trimmed = []
        for w in (w1[p], w2[p]):
            tau = w - init[p]
            keep = np.zeros(tau.shape, bool)
            keep[np.argsort(-np.abs(tau), kind="stable")[:k]] = True
            trimmed.append(np.where(keep, tau, 0.0))
        t = np.stack(trimmed)
        elected = np.sign(t.sum(0))
        agree = (np.sign(t) == elected) & (t != 0)
        count = agree.sum(0)
        merged = np.where(count > 0, (t * agree).sum(0) / np.maximum(count, 1), 0.0)
        out[p] = init[p] + scale * merged
    return out


@pytest.mark.parametrize("density,scale", [(0.2, 1.0), (0.05, 0.7), (0.9, 1.3)])
def test_ties_matches_numpy_on_full_vectors(density, scale):
    w1, w2, init = _pairs(3, seed=1, dtype=torch.float64)
    out = ties(w1, w2, init, density=density, scale=scale)
    ref = _ties_numpy(w1.numpy(), w2.numpy(), init.numpy(), density, scale)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-14)
    # Each pair on its own gives the same rows: pairs do not interact.
    torch.testing.assert_close(ties(w1[1:2], w2[1:2], init[1:2], density=density, scale=scale), out[1:2])


# ---------------------------------------------------------------- DARE


def test_dare_drop_zero_is_task_arithmetic():
    w1, w2, init = _pairs(3)
    out = dare(w1, w2, init, drop=0.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, init + ((w1 - init) + (w2 - init)))


def test_dare_mask_and_rescale_match_numpy():
    w1, w2, init = _pairs(2, seed=2, dtype=torch.float64)
    drop = 0.7
    out = dare(w1, w2, init, drop=drop, generator=torch.Generator().manual_seed(5))
    # The documented draw: u = rand((2, P, 2464)) from the generator; kept where u >= drop.
    u = torch.rand((2, 2, N_PARAMS), generator=torch.Generator().manual_seed(5)).numpy()
    a1, a2, a0 = w1.numpy(), w2.numpy(), init.numpy()
    ref = a0 + (np.where(u[0] >= drop, a1 - a0, 0.0) + np.where(u[1] >= drop, a2 - a0, 0.0)) / (1 - drop)
    np.testing.assert_allclose(out.numpy(), ref, rtol=1e-12, atol=1e-14)
    kept = (u >= drop).mean()
    assert abs(kept - (1 - drop)) < 0.02
    # Same seed, same merge; another seed, another one.
    assert torch.equal(out, dare(w1, w2, init, drop=drop, generator=torch.Generator().manual_seed(5)))
    assert not torch.equal(out, dare(w1, w2, init, drop=drop, generator=torch.Generator().manual_seed(6)))


@pytest.mark.parametrize("drop", [0.5, 0.9])
def test_dare_mean_over_draws_is_task_arithmetic(drop):
    w1, w2, init = _pairs(1, seed=3, dtype=torch.float64)
    draws = 2000
    out = dare(w1.expand(draws, -1), w2.expand(draws, -1), init.expand(draws, -1), drop=drop,
               generator=torch.Generator().manual_seed(0))
    ta = (init + (w1 - init) + (w2 - init))[0]
    # Per entry the draw's variance is (τ1² + τ2²) · drop / (1 − drop); the mean of `draws`
    # draws is off by that over `draws` in norm², about 0.07 (drop 0.9) of ||τ||.
    tau_norm = torch.cat([w1 - init, w2 - init]).norm()
    assert (out.mean(0) - ta).norm() / tau_norm < 0.15
    assert (out[0] - ta).norm() / tau_norm > 0.5  # one draw alone is far off


# ---------------------------------------------------------------- Fisher


def test_fisher_merge_weights():
    w1, w2, _ = _pairs(2, dtype=torch.float64)
    f = torch.rand(w1.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) + 0.1
    torch.testing.assert_close(fisher_merge(w1, w2, f, f), (w1 + w2) / 2)
    torch.testing.assert_close(fisher_merge(w1, w2, f, 3 * f), (w1 + 3 * w2) / 4)
    # A parent with zero Fisher contributes only through the eps floor: the other parent's
    # weight, off by eps / (eps + f) of the parents' difference.
    zero = torch.zeros_like(f)
    bound = 1e-8 / f * (w1 - w2).abs() + 1e-15
    assert bool(((fisher_merge(w1, w2, zero, f) - w2).abs() <= bound).all())
    assert bool(((fisher_merge(w1, w2, f, zero) - w1).abs() <= bound).all())
    # Both below eps: the plain average.
    torch.testing.assert_close(fisher_merge(w1, w2, zero, 1e-12 * f), (w1 + w2) / 2)
    mixed = f.clone()
    mixed[:, ::2] = 0
    out = fisher_merge(w1, w2, mixed, f)
    assert bool(((out - w2).abs()[:, ::2] <= bound[:, ::2]).all())
    torch.testing.assert_close(out[:, 1::2], (w1[:, 1::2] + w2[:, 1::2]) / 2)


def _fisher_loop(w, images, activation):
    """The plain definition: one autograd call per image and class on the nn.Module CNN."""
    out = []
    for theta, imgs in zip(w, images):
        model = CNN(activation).double()
        model.load_state_dict(unflatten(theta))
        params = list(model.parameters())
        total = torch.zeros(N_PARAMS, dtype=torch.float64)
        for x in imgs:
            log_p = model(x[None])[0].log_softmax(-1)
            for y in range(10):
                grads = torch.autograd.grad(log_p[y], params, retain_graph=True)
                flat = torch.cat([g.reshape(-1) for g in grads])
                total += log_p[y].exp().detach() * flat.square()
        out.append(total / len(imgs))
    return torch.stack(out)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_diagonal_fisher_matches_autograd_loop(activation):
    w = _cnns(activation, (0, 1))
    images = _images(2, 3, seed=1)
    out = diagonal_fisher(w, images, activation)
    assert out.shape == (2, N_PARAMS) and bool((out >= 0).all())
    torch.testing.assert_close(out, _fisher_loop(w, images, activation), rtol=1e-9, atol=1e-14)
    # float32 weights give the same Fisher to float32 precision.
    out32 = diagonal_fisher(w.float(), images.float(), activation)
    assert out32.dtype == torch.float32
    torch.testing.assert_close(out32.double(), out, rtol=1e-3, atol=1e-6)


def test_fisher_is_fisher_merge_of_each_parents_fisher():
    w1, w2 = _cnns("tanh", (2,)), _cnns("tanh", (3,))
    images1, images2 = _images(1, 4, seed=2), _images(1, 3, seed=3)
    f1 = diagonal_fisher(w1, images1, "tanh")
    f2 = diagonal_fisher(w2, images2, "tanh")
    torch.testing.assert_close(fisher(w1, w2, images1, images2, "tanh"), fisher_merge(w1, w2, f1, f2))


# ---------------------------------------------------------------- RegMean


def _numpy_layer_data(w, images, activation):
    """Per layer, (X [rows, in + 1], W [in + 1, out]) of one CNN, built in numpy from the
    nn.Module's layer inputs (forward pre-hooks) with a hand-written unfold."""
    model = CNN(activation).double()
    model.load_state_dict(unflatten(w))
    seen = {}
    hooks = [getattr(model, name).register_forward_pre_hook(lambda m, a, name=name: seen.setdefault(name, a[0]))
             for name in LAYERS]
    with torch.no_grad():
        model(images)
    for h in hooks:
        h.remove()
    shapes = dict(LAYER_SHAPES)
    out = {}
    for name in LAYERS:
        x = seen[name].numpy()
        weight = getattr(model, name).weight.detach().numpy()
        bias = getattr(model, name).bias.detach().numpy()
        if weight.ndim == 4:
            k = shapes[f"{name}.weight"][2]
            patches = np.lib.stride_tricks.sliding_window_view(x, (k, k), axis=(2, 3))  # [N, C, Ho, Wo, k, k]
            x = patches.transpose(0, 2, 3, 1, 4, 5).reshape(-1, weight[0].size)
        x = np.hstack([x, np.ones((len(x), 1))])
        out[name] = (x, np.vstack([weight.reshape(len(weight), -1).T, bias[None]]))
    return out


def _merged_layer(flat, name):
    p = unflatten(flat)
    weight, bias = p[f"{name}.weight"].numpy(), p[f"{name}.bias"].numpy()
    return np.vstack([weight.reshape(len(weight), -1).T, bias[None]])


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_regmean_matches_numpy(alpha):
    # tanh has no dead units, and 32 images a parent make every layer's stacked inputs full
    # rank, so the merge is unique.
    w = _cnns("tanh", (4, 5))
    images = _images(2, 32, seed=4)
    out = regmean(w[:1], w[1:], images[:1], images[1:], "tanh", alpha=alpha)[0]
    data1, data2 = _numpy_layer_data(w[0], images[0], "tanh"), _numpy_layer_data(w[1], images[1], "tanh")
    for name in LAYERS:
        (x1, m1), (x2, m2) = data1[name], data2[name]
        if alpha == 1.0:
            ref = np.linalg.lstsq(np.vstack([x1, x2]), np.vstack([x1 @ m1, x2 @ m2]), rcond=None)[0]
        else:
            g1, g2 = x1.T @ x1, x2.T @ x2
            r1 = alpha * g1 + (1 - alpha) * np.diag(np.diag(g1))
            r2 = alpha * g2 + (1 - alpha) * np.diag(np.diag(g2))
            ref = np.linalg.solve(r1 + r2, r1 @ m1 + r2 @ m2)
        np.testing.assert_allclose(_merged_layer(out, name), ref, rtol=1e-6, atol=1e-8, err_msg=name)


def test_regmean_alpha_zero_is_columnwise_weighted_average():
    w = _cnns("tanh", (6, 7))
    images = _images(2, 4, seed=5)
    out = regmean(w[:1], w[1:], images[:1], images[1:], "tanh", alpha=0.0)[0]
    x1, m1 = _numpy_layer_data(w[0], images[0], "tanh")["fc2"]
    x2, m2 = _numpy_layer_data(w[1], images[1], "tanh")["fc2"]
    d1, d2 = (x1**2).sum(0)[:, None], (x2**2).sum(0)[:, None]
    np.testing.assert_allclose(_merged_layer(out, "fc2"), (d1 * m1 + d2 * m2) / (d1 + d2), rtol=1e-9)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_regmean_of_a_cnn_with_itself_is_the_cnn(activation):
    w = _cnns(activation, (8, 9), dtype=torch.float32)
    images = _images(2, 6, seed=6, dtype=torch.float32)
    out = regmean(w, w, images, images.flip(1), activation)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, w, rtol=1e-5, atol=1e-5)


def test_regmean_singular_grams_keep_the_average():
    # Blank images: conv1 sees only its bias column, so the sum of Grams has rank 1 there,
    # and with conv1's channel 0 dead in both relu parents, conv2's columns of that channel
    # are all zero. No crash, and the undetermined weights are the parents' average.
    w = _cnns("relu", (10, 11))
    slices = layer_slices()
    w[:, slices["conv1.weight"].start:][:, :25] = 0.0  # conv1 output channel 0's 1×5×5 kernel
    w[:, slices["conv1.bias"].start] = -1.0
    images = torch.zeros(2, 3, 1, 28, 28, dtype=torch.float64)
    out = regmean(w[:1], w[1:], images[:1], images[1:], "relu", alpha=1.0)[0]
    assert bool(out.isfinite().all())
    mean = unflatten((w[0] + w[1]) / 2)
    merged = unflatten(out)
    torch.testing.assert_close(merged["conv1.weight"], mean["conv1.weight"])
    torch.testing.assert_close(merged["conv1.bias"], mean["conv1.bias"])
    torch.testing.assert_close(merged["conv2.weight"][:, 0], mean["conv2.weight"][:, 0])
    # Random images, the same dead channel: conv2's weights of that channel are the average.
    images = _images(2, 3, seed=7)
    merged = unflatten(regmean(w[:1], w[1:], images[:1], images[1:], "relu", alpha=0.9)[0])
    assert bool(torch.cat([t.reshape(-1) for t in merged.values()]).isfinite().all())
    torch.testing.assert_close(merged["conv2.weight"][:, 0], mean["conv2.weight"][:, 0])


# ---------------------------------------------------------------- arguments


def test_inputs_are_not_modified():
    w1, w2, init = _pairs(1)
    f = torch.rand(w1.shape)
    images = _images(1, 2, dtype=torch.float32)
    before = [t.clone() for t in (w1, w2, init, f, images)]
    ties(w1, w2, init)
    dare(w1, w2, init, generator=torch.Generator().manual_seed(0))
    fisher_merge(w1, w2, f, f)
    fisher(w1, w2, images, images, "relu")
    regmean(w1, w2, images, images, "relu")
    for a, b in zip(before, (w1, w2, init, f, images)):
        assert torch.equal(a, b)


def test_bad_arguments_raise():
    w1, w2, init = _pairs(2)
    images = _images(2, 2, dtype=torch.float32)
    f = torch.ones_like(w1)
    cases = [
        ("w1", lambda: ties(w1[:, :-1], w2, init)),
        ("init", lambda: ties(w1, w2, init[:1])),
        ("w2", lambda: dare(w1, w2[0], init)),
        ("w1", lambda: ties(w1.long(), w2, init)),
        ("density", lambda: ties(w1, w2, init, density=1.5)),
        ("drop", lambda: dare(w1, w2, init, drop=1.0)),
        ("f2", lambda: fisher_merge(w1, w2, f, -f)),
        ("f1", lambda: fisher_merge(w1, w2, f[:1], f)),
        ("eps", lambda: fisher_merge(w1, w2, f, f, eps=0.0)),
        ("images", lambda: diagonal_fisher(w1, images[:, :, 0], "relu")),
        ("images2", lambda: fisher(w1, w2, images, images[:1], "relu")),
        ("images1", lambda: regmean(w1, w2, images[:, :0], images, "relu")),
        ("alpha", lambda: regmean(w1, w2, images, images, "relu", alpha=1.5)),
        ("activation", lambda: regmean(w1, w2, images, images, "swish")),
    ]
    for name, call in cases:
        with pytest.raises(ValueError, match=name):
            call()
