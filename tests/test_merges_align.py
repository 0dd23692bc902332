"""Git Re-Basin and ZipIt! against independent computations: permuted copies recovered
exactly, the weight-matching objective by hand, one layer's assignment by brute force, and
ZipIt!'s merge of a model with its permuted copy computing the model's own function."""

import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment

from wsmerge.cnn import HIDDEN_SIZES, LAYER_SHAPES, N_PARAMS, batched_forward, init_weights, permute_units, unflatten
from wsmerge.merges._align import _numpy_layers, _unit_gain, activation_matching, rebasin, weight_matching
from wsmerge.merges._features import LAYERS, layer_inputs
from wsmerge.merges._zipit import _greedy_zip, zipit


def _cnns(activation: str, seed: int, n: int = 2) -> torch.Tensor:
    """n unrelated CNNs [n, 2464]: initial weights plus noise, so that biases are not zero."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.stack([init_weights(activation, "kaiming_uniform", seed * 100 + i) for i in range(n)])
    return base + 0.05 * torch.randn(base.shape, generator=gen)


def _centred(w: torch.Tensor, images: torch.Tensor, activation: str) -> torch.Tensor:
    """w with each hidden unit's bias shifted so that its pre-activation has median 0 on the
    images: no unit is constant (dead), so units are told apart by their activations alone."""
    w = w.clone()
    for k, layer in enumerate(LAYERS[:4]):
        params = unflatten(w)  # views: writing the bias writes w
        weight, bias = params[f"{layer}.weight"], params[f"{layer}.bias"]
        inputs = layer_inputs(w, images, activation)[k]
        for p in range(len(w)):
            if weight.dim() == 5:
                pre = F.conv2d(inputs[p], weight[p], bias[p])
                pre = (F.max_pool2d(pre, 2) if k < 2 else pre).transpose(0, 1).flatten(1)
            else:
                pre = F.linear(inputs[p].flatten(1), weight[p], bias[p]).T
            bias[p] -= pre.median(1).values
    return w


def _random_perms(n_pairs: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.stack([torch.randperm(n, generator=gen) for _ in range(n_pairs)]) for n in HIDDEN_SIZES]


def _images(n_pairs: int, n: int = 32, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 28, 28, generator=gen).expand(n_pairs, n, 1, 28, 28)


@pytest.mark.parametrize("activation", ["relu", "tanh", "gelu"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matching_recovers_permuted_copy(activation, seed):
    images = _images(2)
    w = _centred(_cnns(activation, seed), images, activation)
    for h, n in zip(layer_inputs(w, images, activation)[1:5], HIDDEN_SIZES):
        assert (h.transpose(1, 2).reshape(len(w), n, -1).std(2) > 0).all()  # no ties between dead units
    permuted = permute_units(w, _random_perms(len(w), seed))
    assert not torch.equal(permuted, w)
    by_weights = weight_matching(w, permuted, seed=seed)
    assert torch.equal(permute_units(permuted, by_weights), w)
    by_activations = activation_matching(w, permuted, images, activation)
    assert torch.equal(permute_units(permuted, by_activations), w)
    for perms in (by_weights, by_activations):
        assert [tuple(p.shape) for p in perms] == [(len(w), n) for n in HIDDEN_SIZES]
        assert all(p.dtype == torch.long for p in perms)
    assert torch.equal(rebasin(w, permuted), w)
    assert torch.equal(rebasin(w, permuted, method="activations", images=images, activation=activation), w)


def _objective_by_hand(ref: torch.Tensor, other: torch.Tensor, perms: list[np.ndarray]) -> float:
    """Σ over all parameters of ref · (other with its hidden units permuted by perms), the
    permutation applied with numpy indexing on the unflattened tensors."""
    a = {k: v.double().numpy() for k, v in unflatten(ref).items()}
    b = {k: v.double().numpy().copy() for k, v in unflatten(other).items()}
    layers = [name.split(".")[0] for name, _ in LAYER_SHAPES[::2]]
    for k, perm in enumerate(perms):
        producer, consumer = layers[k], layers[k + 1]
        b[f"{producer}.weight"] = b[f"{producer}.weight"][perm]
        b[f"{producer}.bias"] = b[f"{producer}.bias"][perm]
        if consumer == "fc1":  # conv3's channel c is fc1's columns 9c .. 9c + 8
            b["fc1.weight"] = b["fc1.weight"].reshape(20, 4, 9)[:, perm].reshape(20, 36)
        else:
            b[f"{consumer}.weight"] = b[f"{consumer}.weight"][:, perm]
    return float(sum((a[k] * b[k]).sum() for k in a))


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_weight_matching_never_lowers_objective(seed):
    w_ref, w = _cnns("relu", seed, n=2).split(1)
    perms = weight_matching(w_ref, w, seed=seed)
    matched = _objective_by_hand(w_ref[0], w[0], [p[0].numpy() for p in perms])
    identity = _objective_by_hand(w_ref[0], w[0], [np.arange(n) for n in HIDDEN_SIZES])
    assert matched >= identity - 1e-9
    # The objective is the inner product of the flat vectors after permutation.
    assert matched == pytest.approx(float((w_ref.double() * permute_units(w, perms).double()).sum()), rel=1e-9)


@pytest.mark.parametrize("layer", [1, 2])  # conv2 (6! assignments) and conv3 (4!)
def test_weight_matching_each_layer_brute_force_optimal(layer):
    """At convergence no single layer's assignment can improve: checked over every
    permutation of one layer, the others kept as returned."""
    w_ref, w = _cnns("tanh", 7, n=2).split(1)
    perms = weight_matching(w_ref, w, seed=3)
    candidates = torch.tensor(list(itertools.permutations(range(HIDDEN_SIZES[layer]))))
    trial = [p.expand(len(candidates), -1) for p in perms]
    trial[layer] = candidates
    objective = (w_ref.double() * permute_units(w.expand(len(candidates), -1), trial).double()).sum(1)
    best = int(objective.argmax())
    assert torch.equal(candidates[best], perms[layer][0])


@pytest.mark.parametrize("layer", range(4))
def test_one_layer_gain_is_the_objective(layer):
    """A coordinate step's [n, n] gain matrix, summed along an assignment, is the whole
    objective up to a constant, for every assignment of that layer (all of them for conv2
    and conv3, 200 random ones for conv1 and fc1) with the other layers randomly permuted;
    so its linear assignment is the brute-force best."""
    w_ref, w = _cnns("tanh", 9, n=2).split(1)
    perms = [p[0] for p in _random_perms(1, 4)]
    n = HIDDEN_SIZES[layer]
    if n <= 6:
        candidates = torch.tensor(list(itertools.permutations(range(n))))
    else:
        gen = torch.Generator().manual_seed(layer)
        candidates = torch.stack([torch.randperm(n, generator=gen) for _ in range(200)])
    trial = [p.expand(len(candidates), -1) for p in perms]
    trial[layer] = candidates
    objective = (w_ref.double() * permute_units(w.expand(len(candidates), -1), trial).double()).sum(1).numpy()
    gain = _unit_gain(_numpy_layers(w_ref[0]), _numpy_layers(w[0]), [p.numpy() for p in perms], layer)
    along = gain[np.arange(n), candidates.numpy()].sum(1)
    assert np.allclose(objective - along, (objective - along)[0], rtol=0, atol=1e-9)
    if n <= 6:
        assert candidates[objective.argmax()].tolist() == linear_sum_assignment(gain, maximize=True)[1].tolist()


def test_weight_matching_batched_pairs_independent():
    w_ref, w = _cnns("relu", 11, n=3), _cnns("relu", 12, n=3)
    together = weight_matching(w_ref, w, seed=5)
    for p in range(3):
        alone = weight_matching(w_ref[p : p + 1], w[p : p + 1], seed=5)
        assert all(torch.equal(a[0], t[p]) for a, t in zip(alone, together))


def test_rebasin_averages_aligned_parents():
    w1, w2 = _cnns("relu", 4, n=2).split(1)
    perms = weight_matching(w1, w2)
    assert torch.allclose(rebasin(w1, w2), (w1 + permute_units(w2, perms)) / 2)


@pytest.mark.parametrize("activation", ["relu", "tanh"])
@pytest.mark.parametrize("seed", [0, 1])
def test_zipit_of_permuted_copy_keeps_function(activation, seed):
    w = _cnns(activation, seed)
    permuted = permute_units(w, _random_perms(len(w), seed + 10))
    images = _images(len(w))
    every = torch.ones(len(w), 10, dtype=torch.bool)
    merged = zipit(w, permuted, every, every, images, activation)
    assert merged.shape == (len(w), N_PARAMS) and merged.dtype == w.dtype
    logits = batched_forward(merged, images, activation)
    assert torch.allclose(logits, batched_forward(w, images, activation), atol=1e-5)


def test_zipit_head_takes_each_class_from_its_owner():
    """Two models with the same hidden layers (the second permuted) and hand-made heads:
    each merged class logit is its owner's, the mean for a class both or neither own."""
    activation = "tanh"
    w = _cnns(activation, 3, n=1)
    heads = torch.randn(2, 210, generator=torch.Generator().manual_seed(0))
    w1, w2 = w.clone(), w.clone()
    w1[:, -210:], w2[:, -210:] = heads[0], heads[1]
    w2 = permute_units(w2, _random_perms(1, 5))
    in1 = torch.tensor([[1, 1, 1, 0, 0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    in2 = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 0, 0]], dtype=torch.bool)
    images = _images(1)
    merged = zipit(w1, w2, in1, in2, images, activation)
    logits1, logits2 = batched_forward(w1, images, activation), batched_forward(w2, images, activation)
    expected = torch.where(in1 & ~in2, logits1, torch.where(in2 & ~in1, logits2, (logits1 + logits2) / 2))
    assert torch.allclose(batched_forward(merged, images, activation), expected, atol=1e-5)


def test_greedy_zip_pairs_within_a_model():
    """Hand-made correlations of 2 + 2 features (model 1: 0, 1; model 2: 2, 3): the most
    correlated pair is within model 1, so it is zipped although a cross-model pair exists;
    at alpha 0 a zipped pair is never zipped again, above it the min linkage may."""
    corr = np.array(
        [
            [1.0, 0.9, 0.5, 0.1],
            [0.9, 1.0, 0.6, 0.2],
            [0.5, 0.6, 1.0, 0.3],
            [0.1, 0.2, 0.3, 1.0],
        ]
    )
    assert _greedy_zip(corr, 2, alpha=0.0) == [[0, 1], [2, 3]]
    # Linked, {0, 1} correlates 0.5 · min(0.5, 0.6) = 0.25 with 2: below 2 with 3 (0.3).
    assert _greedy_zip(corr, 2, alpha=0.5) == [[0, 1], [2, 3]]
    # At 0.9 it is 0.45: feature 2 joins the group, and 3 stays alone.
    assert _greedy_zip(corr, 2, alpha=0.9) == [[0, 1, 2], [3]]


@pytest.mark.parametrize("alpha", [0.0, 0.5])
def test_zipit_of_unrelated_models_is_finite(alpha):
    w1, w2 = _cnns("relu", 20, n=2), _cnns("relu", 21, n=2)
    in1 = torch.arange(10).expand(2, 10) < 5
    merged = zipit(w1, w2, in1, ~in1, _images(2), "relu", alpha=alpha)
    assert merged.shape == (2, N_PARAMS) and torch.isfinite(merged).all()
    assert not torch.allclose(merged, (w1 + w2) / 2)


def test_bad_arguments_raise():
    w = _cnns("relu", 0)
    images, every = _images(2), torch.ones(2, 10, dtype=torch.bool)
    with pytest.raises(ValueError, match="w_ref"):
        weight_matching(w[:, :100], w)
    with pytest.raises(ValueError, match="w_ref and w"):
        weight_matching(w, w[:1])
    with pytest.raises(ValueError, match="images"):
        activation_matching(w, w, images[0], "relu")
    with pytest.raises(ValueError, match="activation"):
        activation_matching(w, w, images, "nope")
    with pytest.raises(ValueError, match="needs images"):
        rebasin(w, w, method="activations")
    with pytest.raises(ValueError, match="unknown method"):
        rebasin(w, w, method="nope")
    with pytest.raises(ValueError, match="w2"):
        zipit(w, w[0], every, every, images, "relu")
    with pytest.raises(ValueError, match="in2"):
        zipit(w, w, every, every[:, :5], images, "relu")
    with pytest.raises(ValueError, match="images"):
        zipit(w, w, every, every, images[:1], "relu")
    with pytest.raises(ValueError, match="alpha"):
        zipit(w, w, every, every, images, "relu", alpha=1.0)
