"""The double-encoder TransformerAE: tokens, shapes, the report's parameter count, configs."""

from __future__ import annotations

import pytest
import torch

from wsmerge.cnn import N_PARAMS
from wsmerge.model import (
    PRESETS,
    MergeOutput,
    ModelConfig,
    TransformerAE,
    detokenize,
    n_params,
    preset,
    token_slices,
    tokenize,
)

TINY = PRESETS["tiny"]
SMALL = ModelConfig(d_model=16, n_layers=1, n_heads=2, d_ff=32, neck=8, dropout=0.0)


def _w(b, seed=0):
    return torch.randn(b, N_PARAMS, generator=torch.Generator().manual_seed(seed)) * 0.1


# -- tokens ---------------------------------------------------------------------------------
def test_tokens_cover_every_weight_exactly_once():
    w = torch.arange(N_PARAMS).unsqueeze(0)
    big, small = tokenize(w.float())
    assert big.shape == (1, 26, 80) and small.shape == (1, 24, 16)
    seen = torch.cat([big.reshape(-1), small.reshape(-1)]).long()
    assert torch.equal(seen, torch.arange(N_PARAMS))  # in order, each once
    assert torch.equal(detokenize(big, small), w.float())
    # The slice table agrees with tokenize, token by token.
    slices = token_slices()
    assert len(slices) == 50
    covered = torch.zeros(N_PARAMS, dtype=torch.long)
    for t, sl in enumerate(slices):
        covered[sl] += 1
        tok = big[0, t] if t < 26 else small[0, t - 26]
        assert torch.equal(tok.long(), torch.arange(sl.start, sl.stop))
    assert bool((covered == 1).all())


def test_tokenize_rejects_wrong_shape():
    with pytest.raises(ValueError, match="2464"):
        tokenize(torch.zeros(2, 2463))
    with pytest.raises(ValueError, match="big tokens"):
        detokenize(torch.zeros(1, 25, 80), torch.zeros(1, 24, 16))


# -- parameter count --------------------------------------------------------------------------
def test_seed_preset_has_the_reports_parameter_count():
    # Figure 5 of the report: Total params 210,546,336. The report has no projection head;
    # ours (on by default, for the contrastive term) adds neck² + neck + neck·32 + 32.
    head = 512 * 512 + 512 + 512 * 32 + 32
    assert n_params(preset("seed").replace(projection=0)) == 210_546_336
    assert n_params("seed") == 210_546_336 + head
    with torch.device("meta"):
        model = TransformerAE(preset("seed"))
    parts = model.parameter_breakdown()
    assert parts == {
        "encoder1": 16_320 + 77_760 + 4 * 5_539_200 + 1_920,
        "encoder2": 16_320 + 77_760 + 4 * 5_539_200 + 1_920,
        "to_neck": 983_552,
        "decoder.expand": 24_624_000,
        "decoder.layers+norm": 4 * 5_539_200 + 1_920,
        "decoder.head": 118_274_464,
        "projection": head,
    }
    assert sum(parts.values()) == model.num_parameters() == 210_546_336 + head
    # One encoder layer as in figure 5.
    assert sum(p.numel() for p in model.encoders[0].layers[0].parameters()) == 5_539_200


def test_token_head_is_much_smaller():
    cfg = preset("seed").replace(head="token", projection=0)
    assert n_params(cfg) == 210_546_336 - 118_274_464 + 960 * 96 + 96


def test_seed_preset_shapes_on_meta():
    with torch.device("meta"):
        model = TransformerAE(preset("seed"))
        w1, w2 = torch.empty(3, N_PARAMS), torch.empty(3, N_PARAMS)
    out = model(w1, w2)
    assert isinstance(out, MergeOutput)
    assert out.weights.shape == (3, N_PARAMS)
    assert out.neck.shape == (3, 512)
    assert out.latents[0].shape == out.latents[1].shape == (3, 960)


# -- forward / backward -----------------------------------------------------------------------
@pytest.mark.parametrize("head", ["flat", "token"])
def test_tiny_forward_backward_gives_finite_grads_everywhere(head):
    torch.manual_seed(0)
    model = TransformerAE(TINY.replace(head=head, dropout=0.1))
    model.train()
    w1, w2, w3 = _w(4, 1), _w(4, 2), _w(4, 3)
    out = model(w1, w2)
    assert out.weights.shape == (4, N_PARAMS) and out.neck.shape == (4, TINY.neck)
    assert out.latents[0].shape == (4, TINY.d_model)
    assert bool((out.neck.abs() <= 1).all())  # tanh
    loss = torch.nn.functional.mse_loss(out.weights, w3) + model.project(out.neck).pow(2).mean()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_parts_compose_to_forward():
    model = TransformerAE(SMALL).eval()
    w1, w2 = _w(2, 1), _w(2, 2)
    out = model(w1, w2)
    h1, h2 = model.encode(w1, 0), model.encode(w2, 1)
    torch.testing.assert_close(h1, out.latents[0])
    torch.testing.assert_close(h2, out.latents[1])
    neck = model.fuse(h1, h2)
    torch.testing.assert_close(neck, out.neck)
    torch.testing.assert_close(model.decode(neck), out.weights)


def test_views_share_the_encoder_pass_and_change_nothing_else():
    # The contrastive term's second view rides along in the pairs' encoder calls: the pairs'
    # outputs are those of a forward without views, and neck_aug is the views' own neck.
    model = TransformerAE(SMALL).eval()
    w1, w2, v1, v2 = _w(3, 1), _w(3, 2), _w(3, 3), _w(3, 4)
    with torch.no_grad():
        joint, alone = model(w1, w2, views=(v1, v2)), model(w1, w2)
        assert alone.neck_aug is None
        for a, b in ((joint.weights, alone.weights), (joint.neck, alone.neck), (joint.latents[0], alone.latents[0]),
                     (joint.latents[1], alone.latents[1])):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(joint.neck_aug, model.fuse(model.encode(v1, 0), model.encode(v2, 1)),
                                   rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match=r"views\[1\] has 2 rows, the pairs 3"):
        model(w1, w2, views=(v1, v2[:2]))


def test_eval_mode_is_deterministic_and_train_mode_uses_dropout():
    torch.manual_seed(0)
    model = TransformerAE(SMALL.replace(dropout=0.5))
    w1, w2 = _w(3, 1), _w(3, 2)
    model.eval()
    with torch.no_grad():
        a, b = model(w1, w2).weights, model(w1, w2).weights
    assert torch.equal(a, b)
    model.train()
    with torch.no_grad():
        c, d = model(w1, w2).weights, model(w1, w2).weights
    assert not torch.equal(c, d)


def test_batch_items_are_independent():
    model = TransformerAE(SMALL).eval()
    w1, w2 = _w(3, 1), _w(3, 2)
    with torch.no_grad():
        full = model(w1, w2).weights
        one = model(w1[1:2], w2[1:2]).weights
    torch.testing.assert_close(full[1:2], one, rtol=1e-4, atol=1e-5)


def test_swapping_inputs_changes_the_output():
    # Two encoders with their own weights: the model is not symmetric in its inputs, so
    # which parent goes first matters (wsmerge.pairs fixes an order, or adds both).
    model = TransformerAE(SMALL).eval()
    w1, w2 = _w(2, 1), _w(2, 2)
    with torch.no_grad():
        assert not torch.allclose(model(w1, w2).weights, model(w2, w1).weights)


def test_forward_validates_inputs():
    model = TransformerAE(SMALL)
    with pytest.raises(ValueError, match=r"w1: expected shape \[B, 2464\]"):
        model(torch.zeros(2, 100), torch.zeros(2, N_PARAMS))
    with pytest.raises(ValueError, match="w2"):
        model(torch.zeros(2, N_PARAMS), torch.zeros(N_PARAMS))
    with pytest.raises(ValueError, match="batch sizes differ: 2 vs 3"):
        model(torch.zeros(2, N_PARAMS), torch.zeros(3, N_PARAMS))
    with pytest.raises(TypeError, match="torch.Tensor"):
        model([0.0] * N_PARAMS, torch.zeros(1, N_PARAMS))
    with pytest.raises(ValueError, match="floating-point"):
        model(torch.zeros(1, N_PARAMS, dtype=torch.long), torch.zeros(1, N_PARAMS))
    with pytest.raises(ValueError, match="which must be 0 or 1"):
        model.encode(torch.zeros(1, N_PARAMS), 2)
    with pytest.raises(ValueError, match=r"neck of shape \[B, 8\]"):
        model.decode(torch.zeros(1, 9))


# -- configs ------------------------------------------------------------------------------------
def test_presets():
    assert preset("seed") == ModelConfig(d_model=960, n_layers=4, n_heads=4, d_ff=960, neck=512, dropout=0.07)
    assert preset("tiny") == TINY
    with pytest.raises(ValueError, match="unknown model preset 'huge'; known: seed, tiny"):
        preset("huge")


def test_from_dict_roundtrip_and_preset_overrides():
    cfg = preset("seed")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    c = ModelConfig.from_dict({"preset": "tiny", "d_model": 32})
    assert c == TINY.replace(d_model=32)
    assert ModelConfig.from_dict({"preset": "seed", "head": "token"}).head == "token"


@pytest.mark.parametrize(
    "d, match",
    [
        ({"d_model": 30, "n_heads": 4}, r"n_heads \(4\) must divide model.d_model \(30\)"),
        ({"d_model": -8}, "d_model must be a positive integer, got -8"),
        ({"n_layers": 0}, "n_layers must be a positive integer"),
        ({"neck": 2.5}, "neck must be an integer"),
        ({"d_ff": True}, "d_ff must be an integer"),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"dropout must be in \[0, 1\)"),
        ({"dropout": "0.1"}, "dropout must be a number"),
        ({"head": "conv"}, "head must be one of"),
        ({"d_modle": 8}, r"model: unknown keys \['d_modle'\]"),
        ({"preset": "nope"}, "model: unknown model preset 'nope'"),
    ],
)
def test_bad_configs_raise_clear_errors(d, match):
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_dict(d)


def test_bad_configs_direct():
    with pytest.raises(ValueError, match="must divide"):
        ModelConfig(d_model=10, n_heads=3)
    with pytest.raises(TypeError, match="ModelConfig"):
        TransformerAE({"d_model": 8})
