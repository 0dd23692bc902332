"""Canonical unit order (wsmerge.align): permuted copies of a CNN align to one vector, exactly;
aligning changes no function and undoes bit for bit."""

import numpy as np
import pytest
import torch

from wsmerge.align import ALIGN, align, canonical_perms, nearest_to_mean, unalign
from wsmerge.cnn import HIDDEN_SIZES, N_PARAMS, batched_forward, init_weights, permute_units, unflatten

ACTS = ["relu"] * 3 + ["tanh"] * 3


@pytest.fixture(scope="module")
def images(mnist):
    return mnist.test.images[:64]


@pytest.fixture(scope="module")
def cnns(mnist):
    """Six CNNs a few Adam steps from their init: every weight and bias its own value."""
    w = torch.stack([init_weights(a, "kaiming_uniform", s) for a, s in zip(ACTS, range(6))]).requires_grad_()
    opt = torch.optim.Adam([w], lr=1e-2)
    gen = torch.Generator().manual_seed(0)
    x, y = mnist.train.images[:512], mnist.train.labels[:512]
    for _ in range(3):
        idx = torch.randint(len(x), (32,), generator=gen)
        loss = torch.nn.functional.cross_entropy(batched_forward(w, x[idx], ACTS).reshape(-1, 10), y[idx].repeat(6))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def _random_perms(b, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.stack([torch.randperm(n, generator=gen) for _ in range(b)]) for n in HIDDEN_SIZES]


def _incoming(w, k):
    """[B, n_k, fan_in + 1]: each unit of hidden layer k's incoming weights and bias, by hand."""
    p = unflatten(w)
    name = ("conv1", "conv2", "conv3", "fc1")[k]
    return torch.cat([p[f"{name}.weight"].reshape(len(w), HIDDEN_SIZES[k], -1), p[f"{name}.bias"][..., None]], 2)


@pytest.mark.parametrize("method", ["sort", "match"])
def test_permuted_copies_align_to_one_vector(cnns, images, method):
    a, b = permute_units(cnns, _random_perms(6, 1)), permute_units(cnns, _random_perms(6, 2))
    assert not torch.equal(a, b)
    reference = cnns[0] if method == "match" else None
    pa, pb = canonical_perms(a, method, reference), canonical_perms(b, method, reference)
    assert [p.shape for p in pa] == [(6, n) for n in HIDDEN_SIZES] and all(p.dtype == torch.long for p in pa)
    aligned = align(a, pa)
    assert torch.equal(aligned, align(b, pb))
    # The same functions, and back to the exact input.
    torch.testing.assert_close(batched_forward(aligned, images, ACTS), batched_forward(a, images, ACTS),
                               rtol=1e-5, atol=1e-5)
    assert torch.equal(unalign(aligned, pa), a) and torch.equal(unalign(align(b, pb), pb), b)
    # A CNN's order does not depend on the others in the call.
    alone = canonical_perms(a[2:3], method, reference)
    assert all(torch.equal(x[2:3], y) for x, y in zip(pa, alone))


def test_sort_orders_units_by_incoming_norm(cnns):
    aligned = align(cnns, canonical_perms(cnns, "sort"))
    for k in range(len(HIDDEN_SIZES)):
        norms = _incoming(aligned, k).double().norm(dim=2)
        assert (norms[:, :-1] >= norms[:, 1:]).all(), k


def test_sort_breaks_norm_ties_by_the_weights_not_the_position():
    # Units whose incoming weights are each other's negatives tie on the norm; a copy with
    # them swapped must still align to the same vector.
    w = init_weights("relu", "kaiming_uniform", 0).clone()
    p = unflatten(w)  # views into w
    p["fc1.weight"][1] = -p["fc1.weight"][0]
    p["fc1.bias"][:2] = 0.0
    swap = [torch.arange(n) for n in HIDDEN_SIZES]
    swap[3] = torch.tensor([1, 0, *range(2, 20)])
    both = torch.stack([w, permute_units(w[None], swap)[0]])
    assert torch.equal(*align(both, canonical_perms(both, "sort")))


def test_match_recovers_the_order_of_a_permuted_reference(cnns):
    # The reference is a permuted copy of each CNN: matching finds that very order.
    reference = permute_units(cnns, _random_perms(6, 3))
    copies = permute_units(cnns, _random_perms(6, 4))
    assert torch.equal(align(copies, canonical_perms(copies, "match", reference)), reference)


def test_none_is_the_identity_and_unalign_inverts_any_permutation(cnns):
    assert torch.equal(align(cnns, canonical_perms(cnns, "none")), cnns)
    perms = _random_perms(6, 5)
    moved = permute_units(cnns, perms)
    assert torch.equal(unalign(moved, perms), cnns)
    assert ALIGN == ("none", "sort", "match")


def test_nearest_to_mean_against_brute_force():
    w = torch.randn(7, N_PARAMS, generator=torch.Generator().manual_seed(0))
    x = w.numpy().astype(np.float64)
    assert nearest_to_mean(w) == int(np.argmin([np.linalg.norm(r - x.mean(0)) for r in x]))


def test_errors(cnns):
    with pytest.raises(ValueError, match=r"unknown alignment 'rank'; known: none, sort, match"):
        canonical_perms(cnns, "rank")
    with pytest.raises(ValueError, match="alignment 'match' needs reference CNN"):
        canonical_perms(cnns, "match")
    with pytest.raises(ValueError, match="alignment 'sort' takes no reference CNN"):
        canonical_perms(cnns, "sort", cnns[0])
    with pytest.raises(ValueError, match=r"weights must be \[B, 2464\]"):
        canonical_perms(cnns[0], "sort")


def test_permute_units_takes_a_permutation_per_row_or_one_for_all_in_any_integer_type():
    g = torch.Generator().manual_seed(8)
    w = torch.randn(5, N_PARAMS, generator=g)
    rows = _random_perms(5, 9)
    shared = [p[0] for p in rows]
    expected = permute_units(w, [p.expand(5, -1) for p in shared])
    assert torch.equal(permute_units(w, shared), expected)
    assert torch.equal(permute_units(w, [p.to(torch.uint8) for p in shared]), expected)
    mixed = [rows[0], shared[1].to(torch.uint8), rows[2], shared[3]]
    by_row = [permute_units(w[r:r + 1], [p[r] if p.dim() == 2 else p for p in mixed]) for r in range(5)]
    assert torch.equal(permute_units(w, mixed), torch.cat(by_row))
    with pytest.raises(ValueError, match=r"perms\[2\] must be \[4\] or \[5, 4\], got \(5, 3\)"):
        permute_units(w, [rows[0], rows[1], rows[2][:, :3], rows[3]])
