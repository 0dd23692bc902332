"""wsmerge.losses: the registry's public API, mixes, and bad input."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from wsmerge.cnn import N_PARAMS, batched_forward, unflatten
from wsmerge.losses import (
    LOSSES,
    LossContext,
    LossSpec,
    loss_fn,
    mix_loss,
    paper_mix,
    permute_neurons,
    required_context,
    validate_mix,
)

B = 3


@pytest.fixture
def pair():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(B, N_PARAMS, generator=g) * 0.1
    return t + torch.randn(B, N_PARAMS, generator=g) * 0.05, t


def test_public_api():
    import wsmerge.losses as L

    assert set(L.__all__) == {
        "LOSSES", "LossContext", "LossSpec", "loss_fn", "mix_loss", "paper_mix",
        "permute_neurons", "required_context", "validate_mix",
    }
    ctx = LossContext()
    assert ctx.options == {}
    unset = ("activation", "images", "sources", "neck", "neck_aug", "encode", "fuse", "project", "generator")
    assert all(getattr(ctx, f) is None for f in unset)
    assert LossContext().options is not ctx.options


def test_optional_context_fields_cannot_be_needed():
    from wsmerge.losses._registry import register

    for field in ("project", "generator"):
        with pytest.raises(AssertionError, match="unknown context fields"):
            register("never_registered", needs=(field,))
    assert "never_registered" not in LOSSES


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_spec_is_complete(name):
    spec = LOSSES[name]
    assert isinstance(spec, LossSpec) and spec.name == name
    assert isinstance(spec.needs, frozenset) and spec.doc.strip()
    assert dataclasses.is_dataclass(spec.options)
    spec.options()  # every option has a default
    assert spec.differentiable  # none is evaluation-only today; the flag exists for those that would be
    if not spec.differentiable:
        assert "evaluation" in spec.doc.lower()


def test_validate_mix_accepts_and_copies():
    mix = {"mse": 1, "wasserstein": 0.5, "fft": 0}
    out = validate_mix(mix)
    assert out == {"mse": 1.0, "wasserstein": 0.5, "fft": 0.0} and out is not mix
    assert all(type(v) is float for v in out.values())


def test_unknown_name_lists_known_ones():
    with pytest.raises(ValueError) as e:
        validate_mix({"mse": 1.0, "msee": 1.0})
    msg = str(e.value)
    assert "'msee'" in msg and all(n in msg for n in LOSSES)


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf"), -float("inf"), "1", None, True, [1.0]])
def test_bad_weights_name_the_term(bad):
    with pytest.raises(ValueError, match="'fft'"):
        validate_mix({"mse": 1.0, "fft": bad})


@pytest.mark.parametrize("mix", [{}, {"mse": 0.0}, {"mse": 0, "fft": 0.0}])
def test_empty_or_all_zero_mix(mix):
    with pytest.raises(ValueError, match="empty|zero"):
        validate_mix(mix)


def test_not_a_mapping():
    with pytest.raises(ValueError, match="mapping"):
        validate_mix([("mse", 1.0)])


@pytest.mark.parametrize(
    "options, match",
    [
        ({"quantile": {"qq": 0.9}}, r"options\['quantile'\].*unknown keys \['qq'\]"),
        ({"quantile": {"q": 1.5}}, r"options\['quantile'\].*q must be in"),
        ({"nope": {}}, "unknown loss 'nope'"),
        ({"mse": {"x": 1}}, r"options\['mse'\].*unknown keys"),
        ({"wasserstein": {"method": "exact"}}, "method must be"),
        ({"quantile": 0.9}, r"options\['quantile'\]: expected a mapping"),
        ({"mel": {"n_mels": 64}}, "cover no FFT bin"),
        ({"ms_fid": {"n_fft": 2464}}, "at least 2 STFT frames"),
        ([("quantile", {})], "options must map loss names"),
        ({"behavioral": {"output": "softmax"}}, r"output must be one of \['probs', 'logits'\]"),
        ({"ar_mse": {"floor": -0.1}}, "floor >= 0"),
    ],
)
def test_bad_options(options, match, pair):
    with pytest.raises(ValueError, match=match):
        validate_mix({"mse": 1.0}, options)
    with pytest.raises(ValueError, match=match):
        mix_loss(*pair, {"mse": 1.0}, LossContext(options=options))


@pytest.mark.parametrize(
    "pred_shape, target_shape, match",
    [
        ((B, N_PARAMS), (B + 1, N_PARAMS), "differ in shape"),
        ((B, 100), (B, 100), r"\[B, 2464\]"),
        ((N_PARAMS,), (N_PARAMS,), r"\[B, 2464\]"),
        ((0, N_PARAMS), (0, N_PARAMS), "B > 0"),
    ],
)
def test_shape_errors(pred_shape, target_shape, match):
    with pytest.raises(ValueError, match=match):
        mix_loss(torch.zeros(pred_shape), torch.zeros(target_shape), {"mse": 1.0})


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("which", [0, 1])
def test_non_finite_weights_rejected(bad, which, pair):
    pair = [t.clone() for t in pair]
    pair[which][1, 7] = bad
    with pytest.raises(ValueError, match=f"{('pred', 'target')[which]} holds non-finite"):
        mix_loss(*pair, {"mse": 1.0})


def test_missing_context_names_loss_and_field(pair):
    with pytest.raises(ValueError, match=r"'behavioral' needs LossContext field\(s\) \['activation', 'images'\]"):
        mix_loss(*pair, {"mse": 1.0, "behavioral": 1.0}, LossContext())
    with pytest.raises(ValueError, match=r"'behavioral' needs .*\['images'\]"):
        mix_loss(*pair, {"behavioral": 1.0}, LossContext(activation="relu"))


def _latent_ctx(**changes):
    ok = dict(
        encode=lambda w, k: w[:, :4],
        fuse=lambda a, b: a + b,
        sources=(torch.zeros(B, N_PARAMS), torch.zeros(B, N_PARAMS)),
        neck=torch.zeros(B, 4),
    )
    return LossContext(**{**ok, **changes})


@pytest.mark.parametrize(
    "ctx, loss, match",
    [
        (LossContext(activation="swish", images=torch.zeros(2, 1, 28, 28)), "behavioral", "unknown activation"),
        (LossContext(activation="relu", images=torch.zeros(2, 28, 28)), "behavioral", "images must be"),
        (LossContext(activation="relu", images=torch.zeros(B + 1, 2, 1, 28, 28)), "behavioral", "images must be"),
        (LossContext(activation="relu", images=torch.zeros(0, 1, 28, 28)), "behavioral", "N>0"),
        (_latent_ctx(encode=3), "latent", "encode must be callable"),
        (_latent_ctx(fuse="tanh"), "latent", "fuse must be callable"),
        (_latent_ctx(sources=(torch.zeros(B, N_PARAMS), torch.zeros(B, 5))), "latent", r"two \[3, 2464\]"),
        (_latent_ctx(sources=torch.zeros(B, N_PARAMS)), "latent", "sources must be two"),
        (LossContext(neck=torch.zeros(B, 4), neck_aug=torch.zeros(B + 1, 4)), "contrastive", "neck_aug"),
        (LossContext(neck=torch.zeros(B, 4), neck_aug=torch.zeros(B, 4), project=3), "contrastive", "project must"),
        (LossContext(generator=0), "mse", "generator must be a torch.Generator"),
    ],
)
def test_malformed_context(ctx, loss, match, pair):
    with pytest.raises(ValueError, match=f"'{loss}'.*{match}"):
        mix_loss(*pair, {loss: 1.0}, ctx)


def test_zero_weight_terms_skip_their_checks(pair):
    total, terms = mix_loss(*pair, {"mse": 1.0, "behavioral": 0.0})
    assert set(terms) == {"mse"}
    torch.testing.assert_close(total, terms["mse"])


def test_total_is_weighted_sum_of_unweighted_terms(pair):
    pred, target = pair
    total, terms = mix_loss(pred, target, {"mse": 2.0, "fft": 0.25, "quantile": 1.0})
    assert set(terms) == {"mse", "fft", "quantile"} and total.shape == (B,)
    torch.testing.assert_close(total, 2.0 * terms["mse"] + 0.25 * terms["fft"] + terms["quantile"])
    torch.testing.assert_close(terms["fft"], LOSSES["fft"].fn(pred, target, LossContext()))


def test_required_context():
    assert required_context({"mse": 1.0}) == set()
    assert required_context({"behavioral": 1.0, "latent": 1.0, "fft": 2.0}) == {
        "activation", "images", "encode", "fuse", "sources", "neck"
    }
    assert required_context({"contractive": 1.0}) == {"encode"}
    assert required_context({"mse": 1.0, "behavioral": 0.0}) == set()
    assert required_context(paper_mix()) == {"activation", "images", "neck", "neck_aug"}
    with pytest.raises(ValueError, match="unknown loss"):
        required_context({"bogus": 1.0})


def test_loss_fn_by_name(pair):
    f = loss_fn("quantile")
    torch.testing.assert_close(f(*pair), mix_loss(*pair, {"quantile": 1.0})[1]["quantile"])
    assert "4.5.1" in f.__doc__
    with pytest.raises(ValueError, match="unknown loss"):
        loss_fn("nope")
    with pytest.raises(ValueError, match="needs LossContext"):
        loss_fn("behavioral")(*pair)


def test_paper_mix_weights():
    mix = paper_mix()
    assert mix == pytest.approx({"contrastive": 0.05, "mse": 0.95 * 0.1, "behavioral": 0.95 * 0.9})
    assert math.isclose(sum(mix.values()), 1.0)
    assert paper_mix(0.05, 1.0)["behavioral"] == 0.0  # the paper's SANE baseline
    assert validate_mix(paper_mix(0.3, 0.5)) == paper_mix(0.3, 0.5)
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError):
            paper_mix(gamma=bad)


def test_paper_mix_computes_and_trains(pair):
    pred, target = pair
    pred = pred.clone().requires_grad_()
    g = torch.Generator().manual_seed(1)
    neck = torch.randn(B, 16, generator=g).requires_grad_()
    ctx = LossContext(
        activation="tanh",
        images=torch.rand(B, 4, 1, 28, 28, generator=g),
        neck=neck,
        neck_aug=neck.detach() + 0.1 * torch.randn(B, 16, generator=g),
    )
    total, terms = mix_loss(pred, target, paper_mix(), ctx)
    assert set(terms) == {"contrastive", "mse", "behavioral"}
    expected = 0.05 * terms["contrastive"] + 0.095 * terms["mse"] + 0.855 * terms["behavioral"]
    torch.testing.assert_close(total, expected)
    total.sum().backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    assert torch.isfinite(neck.grad).all() and neck.grad.abs().sum() > 0


def test_permute_neurons_keeps_function():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(4, N_PARAMS, generator=g) * 0.2
    wp = permute_neurons(w, torch.Generator().manual_seed(4))
    assert wp.shape == w.shape and not torch.allclose(wp, w)
    torch.testing.assert_close(wp.sort(dim=1).values, w.sort(dim=1).values)  # a permutation
    x = torch.rand(5, 1, 28, 28, generator=g)
    for act in ("relu", "tanh"):
        torch.testing.assert_close(batched_forward(wp, x, act), batched_forward(w, x, act), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError):
        permute_neurons(torch.zeros(3, 10))


def _permuted_row_by_row(w, generator):
    """The permutation spelt out on each CNN's named tensors, one row at a time, with the
    draws permute_neurons makes: per layer, the order of B rows of uniform numbers."""
    hidden = ((("conv1.weight", "conv1.bias"), "conv2.weight", 1), (("conv2.weight", "conv2.bias"), "conv3.weight", 1),
              (("conv3.weight", "conv3.bias"), "fc1.weight", 9), (("fc1.weight", "fc1.bias"), "fc2.weight", 1))
    draws = [torch.rand(len(w), n, generator=generator).argsort(dim=1) for n in (8, 6, 4, 20)]
    out = []
    for r, row in enumerate(w):
        p = {k: v.clone() for k, v in unflatten(row).items()}
        for (producers, consumer, unit), layer in zip(hidden, draws):
            perm = layer[r]
            for name in producers:
                p[name] = p[name][perm]
            p[consumer] = p[consumer][:, (perm[:, None] * unit + torch.arange(unit)).reshape(-1)]
        out.append(torch.cat([t.reshape(-1) for t in p.values()]))
    return torch.stack(out)


def test_permute_neurons_is_the_row_by_row_permutation_with_the_same_draws():
    w = torch.randn(7, N_PARAMS, generator=torch.Generator().manual_seed(5))
    expected = _permuted_row_by_row(w, torch.Generator().manual_seed(6))
    assert torch.equal(permute_neurons(w, torch.Generator().manual_seed(6)), expected)
