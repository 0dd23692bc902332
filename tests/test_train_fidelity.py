"""The experiment as the papers compute it: a mix of scaled terms, the best validation
epoch's model tested, early stopping, and every registered loss training the real model
and resuming bit for bit."""

import json

import pytest
import torch

from wsmerge.losses import LOSSES, mix_loss
from wsmerge.model import TransformerAE
from runs import Crash, crash_after, same, strip_time, tiny_run
from wsmerge.train import BEST, CHECKPOINT, RunConfig, train

pytestmark = pytest.mark.slow


def _cfg(zoo, out, **kw):
    # Fewer query and evaluation images than the training tests: many runs here.
    small = dict(query_images=4, evaluation={"images_per_class": 20, "finetune_steps": 4,
                                             "finetune_eval_every": 2, "bootstrap": 20})
    return tiny_run(zoo, out, **{**small, **kw})


# -- scaling ---------------------------------------------------------------------------------


def test_mix_weighs_scaled_terms():
    torch.manual_seed(0)
    pred, target = torch.randn(3, 2464), torch.randn(3, 2464)
    total, terms = mix_loss(pred, target, {"mse": 2.0, "norm_diff": 0.5}, scales={"mse": 4.0, "norm_diff": 0.1})
    by_hand = 2.0 * ((pred - target) ** 2).mean(1) / 4.0 + 0.5 * terms["norm_diff"] / 0.1
    torch.testing.assert_close(total, by_hand)
    torch.testing.assert_close(terms["mse"], ((pred - target) ** 2).mean(1))  # raw
    with pytest.raises(ValueError, match="missing for"):
        mix_loss(pred, target, {"mse": 1.0, "norm_diff": 1.0}, scales={"mse": 1.0})
    with pytest.raises(ValueError, match="scale must be"):
        mix_loss(pred, target, {"mse": 1.0}, scales={"mse": 0.0})


def test_scaling_defaults_to_first_for_a_mix(tmp_path):
    assert _cfg(tmp_path, tmp_path).loss_scaling == "first"
    assert _cfg(tmp_path, tmp_path, losses={"mse": 1.0}).loss_scaling == "none"
    assert _cfg(tmp_path, tmp_path, losses={"mse": 1.0, "fft": 0.0}).loss_scaling == "none"
    with pytest.raises(ValueError, match="loss_scaling must be one of"):
        _cfg(tmp_path, tmp_path, loss_scaling="last")
    with pytest.raises(ValueError, match="scale_batches"):
        _cfg(tmp_path, tmp_path, scale_batches=0)


def test_first_batches_scale_the_mix_and_are_kept(tiny_zoo, tmp_path):
    # Logits make the two raw terms differ by orders of magnitude, as in the tiny run.
    cfg = _cfg(tiny_zoo, tmp_path / "run", scale_batches=1, epochs=1, losses={"mse": 0.1, "behavioral": 0.9},
               loss_options={"behavioral": {"output": "logits"}})
    result = train(cfg)
    scales = result.scales
    assert set(scales) == {"mse", "behavioral"}
    # Raw, behavioral dwarfs mse; scaled, both terms of the first epoch sit near 1.
    h = result.history[0]
    assert h["train/behavioral"] / h["train/mse"] > 20
    for k in ("mse", "behavioral"):
        assert 0.05 < h[f"train/scaled/{k}"] < 3, (k, h)
        assert h[f"train/scaled/{k}"] == pytest.approx(h[f"train/{k}"] / scales[k], rel=1e-5)
    assert h["train/loss"] == pytest.approx(0.1 * h["train/scaled/mse"] + 0.9 * h["train/scaled/behavioral"], rel=1e-5)
    # Kept: checkpoint, history.json and result.json carry the same scales.
    ck = torch.load(tmp_path / "run" / CHECKPOINT, weights_only=True)
    assert json.loads(ck["scales"]) == scales
    assert json.loads((tmp_path / "run" / "history.json").read_text())["loss_scales"] == scales
    assert json.loads((tmp_path / "run" / "result.json").read_text())["loss_scales"] == scales

    # Unscaled, the total is the raw weighted sum.
    raw = train(_cfg(tiny_zoo, tmp_path / "raw", epochs=1, loss_scaling="none"))
    assert raw.scales == {"mse": 1.0, "behavioral": 1.0}
    h = raw.history[0]
    assert h["train/loss"] == pytest.approx(h["train/mse"] + 0.5 * h["train/behavioral"], rel=1e-5)


def test_scales_are_the_mean_of_the_first_batches(tiny_zoo, tmp_path, monkeypatch):
    # Record every term the run computes before its first optimizer step: the scales must be
    # the per-pair mean over exactly the first `scale_batches` batches.
    import wsmerge.train as T

    seen = []
    real = T.mix_loss

    def spy(pred, target, mix, ctx=None, scales=None, **kw):
        total, terms = real(pred, target, mix, ctx, scales, **kw)
        if scales is None:
            seen.append({k: v.detach().clone() for k, v in terms.items()})
        return total, terms

    monkeypatch.setattr(T, "mix_loss", spy)
    result = train(_cfg(tiny_zoo, tmp_path / "run", epochs=1, scale_batches=2))
    assert len(seen) == 2
    for k in ("mse", "behavioral"):
        by_hand = torch.cat([s[k] for s in seen]).double().mean().item()
        assert result.scales[k] == pytest.approx(by_hand, rel=1e-6)


# -- best epoch, early stopping ----------------------------------------------------------------


def test_best_validation_epoch_is_tested(tiny_zoo, tmp_path):
    result = train(_cfg(tiny_zoo, tmp_path / "a", epochs=4, lr=3e-3))
    acc = [h["val/generated/acc_in"] for h in result.history]
    assert result.best_epoch == 1 + acc.index(max(acc))
    assert [h["best_epoch"] for h in result.history][-1] == result.best_epoch
    best = torch.load(tmp_path / "a" / BEST, weights_only=True)
    assert best["epoch"] == result.best_epoch
    saved = json.loads((tmp_path / "a" / "result.json").read_text())
    assert saved["best_epoch"] == result.best_epoch and saved["epochs"] == 4
    # A run that ends at the best epoch trains the same model and tests it the same way.
    short = train(_cfg(tiny_zoo, tmp_path / "b", epochs=result.best_epoch, lr=3e-3))
    assert same(short.test, result.test)


def test_early_stopping_tests_the_best_epoch(tiny_zoo, tmp_path, monkeypatch):
    import wsmerge.train as T

    # Select on the validation loss *maximum*: the first epochs win, so the run must stop
    # `patience` epochs after the best one and test that epoch's model.
    monkeypatch.setattr(T, "SELECT", "val/loss/loss")
    cfg = _cfg(tiny_zoo, tmp_path / "a", epochs=6, early_stopping=2)
    result = train(cfg)
    loss = [h["val/loss/loss"] for h in result.history]
    best = 1 + loss.index(max(loss))
    assert result.best_epoch == best
    assert len(result.history) == min(6, best + 2)
    saved = json.loads((tmp_path / "a" / "result.json").read_text())
    assert saved["stopped_early"] == (len(result.history) < 6)
    # Resuming a stopped run trains nothing more.
    again = train(cfg.replace(epochs=8), resume=True)
    assert len(again.history) == len(result.history)
    assert same(again.test, result.test)
    short = train(_cfg(tiny_zoo, tmp_path / "b", epochs=best))
    assert same(short.test, result.test)


# -- every loss trains the real model and resumes exactly --------------------------------------


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_every_loss_trains_the_tiny_preset_and_resumes_bit_for_bit(name, tiny_zoo, tmp_path):
    cfg = lambda out: _cfg(  # noqa: E731
        tiny_zoo, tmp_path / out, model={"preset": "tiny"}, losses={name: 1.0}, epochs=2,
        evaluation={"images_per_class": 10, "finetune_steps": 0, "bootstrap": 0}, predictiveness_images=0,
    )
    full = train(cfg("a"))
    torch.manual_seed(0)
    init = TransformerAE(cfg("a").model).state_dict()
    trained = torch.load(tmp_path / "a" / CHECKPOINT, weights_only=True)["model"]
    moved = {k for k, v in init.items() if not torch.equal(v, trained[k])}
    assert all(torch.isfinite(v).all() for v in trained.values())
    # A term of the predicted weights reaches the decoder; contrastive trains the encoders,
    # the fusion and its projection head, never the decoder.
    if LOSSES[name].depends_on_pred:
        assert "decoder.head.weight" in moved, sorted(moved)
    else:
        assert {"encoders.0.embed_big.weight", "to_neck.weight", "projection.0.weight"} <= moved
        assert "decoder.head.weight" not in moved
    assert {"w_mean", "w_std"} <= moved  # set from the zoo, not trained
    with pytest.raises(Crash):
        train(cfg("b"), report=crash_after(1))
    resumed = train(cfg("b"), resume=True)
    b = torch.load(tmp_path / "b" / CHECKPOINT, weights_only=True)["model"]
    for k in trained:
        assert torch.equal(trained[k], b[k]), k
    assert same(strip_time(full.history), strip_time(resumed.history))
    assert same(full.test, resumed.test)


# -- the seeds' own recipes --------------------------------------------------------------------


def test_paper_configs_load_and_say_what_the_papers_say():
    from wsmerge.losses import paper_mix
    from wsmerge.model import n_params

    report = RunConfig.from_yaml("sweeps/configs/paper_report.yaml")
    assert (report.batch_size, report.epochs, report.precision, report.model.dropout) == (36, 800, "bf16", 0.07)
    assert n_params(report.model.replace(projection=0)) == 210_546_336

    behavioral = RunConfig.from_yaml("sweeps/configs/paper_behavioral.yaml")
    assert (behavioral.lr, behavioral.weight_decay, behavioral.batch_size) == (1e-5, 3e-9, 64)
    assert behavioral.losses == pytest.approx(paper_mix(0.05, 0.1))
    assert behavioral.loss_scaling == "first"
    assert behavioral.query_images == 256
    assert behavioral.loss_options["behavioral"] == {"output": "probs", "queries": 256}
