"""Downstream evaluation: every metric on cases with a known answer."""

from __future__ import annotations

import dataclasses
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

import wsmerge.evaluate as evaluate
from wsmerge.cnn import CNN, N_PARAMS, flatten, init_weights, layer_slices, unflatten
from wsmerge.data import load_mnist
from wsmerge.evaluate import (
    EvalConfig,
    catchup_steps,
    evaluate_merges,
    loss_accuracy_correlation,
    stability,
)

C1, C2, C3 = (0, 1), (2, 3), (0, 1, 2, 3)
PER_CLASS = 50


def _classic(**kw):
    """The classic baselines only: the merges of wsmerge.merges have tests of their own
    (below and tests/test_merges_*.py), and their seconds per pair are timings."""
    return EvalConfig(**{"merges": (), **kw})


NO_FT = _classic(images_per_class=PER_CLASS, finetune_steps=0, bootstrap=50)


def _train(mnist, classes, start, act="relu"):
    """About one epoch of Adam on 2000 images: enough for >90% on a few digits."""
    torch.manual_seed(0)
    net = CNN(act)
    net.load_state_dict(unflatten(start.clone()))
    idx = mnist.train.indices(classes, 2000 // len(classes))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for batch in idx[torch.randperm(len(idx))].split(16):
        loss = torch.nn.functional.cross_entropy(
            net(mnist.train.images[batch]), mnist.train.labels[batch]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return flatten(net.state_dict()).detach()


@pytest.fixture(scope="module")
def zoo():
    mnist = load_mnist()
    init = init_weights("relu", "kaiming_uniform", 0)
    return {
        "mnist": mnist,
        "init": init,
        "w1": _train(mnist, C1, init),
        "w2": _train(mnist, C2, init),
        "w3": _train(mnist, C3, init),
    }


def _run(zoo, generated, cfg=NO_FT, c1=C1, c2=C2, acts=None, **kw):
    """Evaluate the zoo's pair (repeated once per generated CNN) with the given generated CNNs."""
    generated = torch.stack(list(generated))
    n = len(generated)
    rep = lambda w: w.expand(n, -1)  # noqa: E731
    m = zoo["mnist"]
    kw.setdefault("init", rep(zoo["init"]))
    return evaluate_merges(
        generated,
        rep(zoo["w1"]),
        rep(zoo["w2"]),
        rep(zoo["w3"]),
        [c1] * n,
        [c2] * n,
        acts or ["relu"] * n,
        m.val,
        m.train,
        cfg,
        **kw,
    )


def _row(result, pair, method):
    rows = result.per_pair
    return rows[(rows["pair"] == pair) & (rows["method"] == method)].iloc[0]


def _module_acc(weights, classes, split, act="relu"):
    """Percent accuracy of the nn.Module CNN on the first PER_CLASS images of each class."""
    net = CNN(act)
    net.load_state_dict(unflatten(weights.clone()))
    net.eval()
    idx = split.indices(classes, PER_CLASS)
    correct = 0
    with torch.no_grad():
        for batch in idx.split(64):
            correct += int((net(split.images[batch]).argmax(1) == split.labels[batch]).sum())
    return 100.0 * correct / len(idx)


def _forcing(digit):
    """A CNN whose head ignores its input and always answers `digit`."""
    w = torch.zeros(N_PARAMS)
    w[layer_slices()["fc2.bias"].start + digit] = 10.0
    return w


# ---------------------------------------------------------------------------- config


@pytest.mark.parametrize(
    "field, value",
    [
        ("images_per_class", 0),
        ("finetune_steps", -1),
        ("finetune_steps", 2.5),
        ("finetune_lr", 0.0),
        ("finetune_lr", float("nan")),
        ("finetune_batch", 0),
        ("finetune_eval_every", 0),
        ("stability_tolerance", -0.1),
        ("bootstrap", True),
        ("ci", 1.0),
        ("ci", 0.0),
        ("seed", "0"),
        ("forward_chunk", 0),
        ("collapse_tol", -0.1),
        ("collapse_tol", float("nan")),
    ],
)
def test_config_rejects_bad_values_naming_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        EvalConfig(**{field: value})


def test_config_from_dict():
    cfg = EvalConfig.from_dict({"finetune_steps": 5, "images_per_class": None, "ci": 0.9})
    assert (cfg.finetune_steps, cfg.images_per_class, cfg.ci) == (5, None, 0.9)
    assert EvalConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="finetune_step'.*bootstraps|bootstraps.*finetune_step'"):
        EvalConfig.from_dict({"finetune_step": 5, "bootstraps": 10})


# ---------------------------------------------------------------------------- accuracy


def test_fixture_models_are_trained(zoo):
    m = zoo["mnist"]
    for w, classes in ((zoo["w1"], C1), (zoo["w2"], C2), (zoo["w3"], C3)):
        assert _module_acc(w, classes, m.val) > 90


def test_generated_equal_to_target_scores_the_target(zoo):
    res = _run(zoo, [zoo["w3"]])
    gen, target = _row(res, 0, "generated"), _row(res, 0, "target")
    for col in ("acc_in", "acc_out", "acc_c1", "acc_c2", "forget_c1", "forget_c2"):
        assert gen[col] == target[col]
    assert gen["agreement"] == 1.0 == target["agreement"]


def test_accuracy_matches_a_loop_over_the_module_cnn(zoo):
    m = zoo["mnist"]
    res = _run(zoo, [zoo["init"]])
    others = tuple(c for c in range(10) if c not in C3)
    weights = {
        "generated": zoo["init"],
        "copy1": zoo["w1"],
        "copy2": zoo["w2"],
        "average": (zoo["w1"] + zoo["w2"]) / 2,
        "task_arithmetic": zoo["w1"] + zoo["w2"] - zoo["init"],
        "target": zoo["w3"],
    }
    for method, w in weights.items():
        row = _row(res, 0, method)
        expected = {"acc_in": C3, "acc_out": others, "acc_c1": C1, "acc_c2": C2}
        for col, classes in expected.items():
            assert row[col] == pytest.approx(_module_acc(w, classes, m.val), abs=1e-9), (
                method,
                col,
            )


def test_out_of_distribution_masks_on_a_head_that_forces_one_class(zoo):
    res = _run(zoo, [_forcing(1), _forcing(5)])
    one, five = _row(res, 0, "generated"), _row(res, 1, "generated")
    # Equal image counts per class: forcing digit 1 is right on 1 of C3's 4 digits, 1 of C1's 2.
    assert (one["acc_in"], one["acc_c1"], one["acc_c2"], one["acc_out"]) == (25.0, 50.0, 0.0, 0.0)
    assert (five["acc_in"], five["acc_c1"], five["acc_c2"]) == (0.0, 0.0, 0.0)
    assert five["acc_out"] == pytest.approx(100 / 6)
    # Agreement: the forced answer matches the target only where the target also says 1.
    target_says_1 = 100 * one["agreement"]
    assert 0 < target_says_1 <= 50


def test_out_of_distribution_is_nan_when_c3_has_every_digit(zoo):
    res = _run(zoo, [_forcing(7)], c1=tuple(range(5)), c2=tuple(range(5, 10)))
    row = _row(res, 0, "generated")
    assert math.isnan(row["acc_out"])
    assert row["acc_in"] == pytest.approx(10.0)


def test_diverged_weights_count_as_wrong(zoo):
    res = _run(zoo, [torch.full((N_PARAMS,), float("nan"))])
    row = _row(res, 0, "generated")
    assert row["acc_in"] == 0.0 and row["agreement"] == 0.0
    assert row["collapsed"] and math.isnan(row["logit_spread"])


def test_forgetting_is_zero_for_the_parents_on_their_own_classes(zoo):
    res = _run(zoo, [zoo["init"]])
    copy1, copy2, target = (_row(res, 0, m) for m in ("copy1", "copy2", "target"))
    assert copy1["forget_c1"] == 0.0 and copy2["forget_c2"] == 0.0
    assert target["forget_c1"] == pytest.approx(copy1["acc_c1"] - target["acc_c1"])
    assert copy1["parents_acc"] == pytest.approx((copy1["acc_c1"] + copy2["acc_c2"]) / 2)


def test_baselines_equal_their_weights_computed_independently(zoo):
    w1, w2, init = zoo["w1"], zoo["w2"], zoo["init"]
    cfg = _classic(
        images_per_class=PER_CLASS, finetune_steps=10, finetune_eval_every=5, bootstrap=0
    )
    res = _run(zoo, [(w1 + w2) / 2, w1 + w2 - init], cfg=cfg)
    cols = [
        "acc_in",
        "acc_out",
        "acc_c1",
        "acc_c2",
        "agreement",
        "ft_acc_in",
        "ft_acc_out",
        "ft_drop",
    ]
    # The methods of a pair see the same fine-tuning batches, so equal weights stay equal.
    for pair, method in ((0, "average"), (1, "task_arithmetic")):
        gen, base = _row(res, pair, "generated"), _row(res, pair, method)
        np.testing.assert_allclose(gen[cols].astype(float), base[cols].astype(float), atol=1e-9)
    assert _row(res, 0, "average")["acc_in"] == pytest.approx(
        _module_acc((w1 + w2) / 2, C3, zoo["mnist"].val)
    )


def test_task_arithmetic_needs_init(zoo):
    res = _run(zoo, [zoo["w3"]], init=None)
    assert "task_arithmetic" not in set(res.per_pair["method"])
    assert not any(k.startswith("task_arithmetic/") for k in res.summary())


# ---------------------------------------------------------------------------- collapse


def _c3_logits(w, split, act="relu"):
    """Logits [n, 10] of the module CNN on the first PER_CLASS images of each C3 class."""
    net = CNN(act).eval()
    net.load_state_dict(unflatten(w.clone()))
    with torch.no_grad():
        return net(split.images[split.indices(C3, PER_CLASS)]).double().numpy()


def _flat_head(w):
    """w with its last layer shrunk 1e5-fold and no bias: its answers still vary from image to
    image, but its logits barely move."""
    w = w.clone()
    s = layer_slices()
    w[s["fc2.weight"]] *= 1e-5
    w[s["fc2.bias"]] = 0.0
    return w


def test_collapse_flags_one_answer_and_flat_logits_as_numpy_counts_them(zoo):
    w1, w2, w3, init = (zoo[k] for k in ("w1", "w2", "w3", "init"))
    generated = [_forcing(1), _flat_head(w3), w3, init, (w1 + w2) / 2]
    res = _run(zoo, generated)
    gen = res.per_pair.query("method == 'generated'")
    logits = [_c3_logits(w, zoo["mnist"].val) for w in generated]
    spread = [x.std(axis=0).mean() for x in logits]
    answers = [len(np.unique(x.argmax(1))) for x in logits]
    np.testing.assert_allclose(gen["logit_spread"], spread, rtol=1e-4, atol=1e-12)
    assert answers[0] == 1 and answers[1] > 1 and spread[1] < NO_FT.collapse_tol  # two ways to collapse
    collapsed = [a == 1 or s < NO_FT.collapse_tol for a, s in zip(answers, spread, strict=True)]
    assert gen["collapsed"].tolist() == collapsed == [True, True, False, False, False]
    summary = res.summary()
    assert summary["generated/collapsed_share"] == pytest.approx(np.mean(collapsed))
    assert summary["generated/logit_spread"] == pytest.approx(np.mean(spread), rel=1e-4)
    baselines = {
        "copy1": w1, "copy2": w2, "average": (w1 + w2) / 2, "task_arithmetic": w1 + w2 - init, "target": w3
    }
    for method, w in baselines.items():
        x = _c3_logits(w, zoo["mnist"].val)
        flagged = len(np.unique(x.argmax(1))) == 1 or x.std(axis=0).mean() < NO_FT.collapse_tol
        assert summary[f"{method}/collapsed_share"] == float(flagged), method
    # collapse_tol 0 turns off the spread test only.
    exact = _run(zoo, generated, cfg=EvalConfig(**{**NO_FT.to_dict(), "collapse_tol": 0.0}))
    collapsed = exact.per_pair.query("method == 'generated'")["collapsed"].tolist()
    assert collapsed == [True, False, False, False, False]


# ---------------------------------------------------------------------------- fine-tuning


def test_finetuning_raises_an_untrained_cnn(zoo):
    cfg = _classic(
        images_per_class=PER_CLASS,
        finetune_steps=60,
        finetune_lr=1e-2,
        finetune_eval_every=20,
        bootstrap=0,
    )
    res = _run(zoo, [zoo["init"]], cfg=cfg)
    row = _row(res, 0, "generated")
    assert row["ft_acc_in"] > 80 and row["ft_acc_in"] > row["acc_in"] + 30
    np.testing.assert_array_equal(res.curve_steps, [0, 20, 40, 60])
    curve = res.curves["generated"][0]
    assert curve[0] == row["acc_in"] and curve[-1] == row["ft_acc_in"]
    assert row["ft_drop"] == pytest.approx(curve.max() - curve[-1])
    assert set(res.curves) == {"generated", "copy1", "copy2", "average", "task_arithmetic"}
    target = _row(res, 0, "target")
    assert math.isnan(target["ft_acc_in"]) and pd.isna(target["ft_stable"])


def test_catchup_of_the_target_is_step_zero(zoo):
    # Parents equal to the target on its own classes set the bar at the target's accuracy.
    w3 = zoo["w3"]
    m = zoo["mnist"]
    cfg = _classic(
        images_per_class=PER_CLASS, finetune_steps=4, finetune_eval_every=2, bootstrap=0
    )
    res = evaluate_merges(
        w3[None], w3[None], w3[None], w3[None], [C3], [C3], ["relu"], m.val, m.train, cfg
    )
    assert _row(res, 0, "target")["catchup_steps"] == 0
    assert _row(res, 0, "generated")["catchup_steps"] == 0
    assert res.summary()["generated/catchup_rate"] == 1.0


def test_catchup_and_stability_on_scripted_curves():
    steps = [0, 20, 40, 60]
    curves = np.array([[50, 80, 90, 88.5], [95, 96, 97, 97], [50, 60, 70, 60]])
    np.testing.assert_array_equal(
        catchup_steps(curves, steps, np.array([85, 90, 80])), [40, 0, np.nan]
    )
    drop, stable = stability(curves, tolerance=1.5)
    np.testing.assert_allclose(drop, [1.5, 0, 10])
    np.testing.assert_array_equal(stable, [True, True, False])


# ---------------------------------------------------------------------------- correlation


def test_correlation_of_a_monotone_relation_is_one():
    loss = np.linspace(0.1, 3, 20)
    out = loss_accuracy_correlation(loss, loss**3, n_boot=200, ci=0.9, seed=1)
    for name in ("spearman", "kendall"):
        assert out[name] == pytest.approx(1.0)
        assert out[f"{name}_lo"] == pytest.approx(1.0) and out[f"{name}_hi"] == pytest.approx(1.0)
    assert loss_accuracy_correlation(loss, -np.exp(loss), n_boot=0)["spearman"] == pytest.approx(
        -1.0
    )


def test_correlation_matches_scipy_and_numpy_with_cis_around_it():
    rng = np.random.default_rng(0)
    loss = rng.normal(size=40)
    acc = -0.5 * loss + rng.normal(size=40)
    out = loss_accuracy_correlation(torch.tensor(loss), acc, n_boot=300, seed=2)
    assert out["pearson"] == pytest.approx(np.corrcoef(loss, acc)[0, 1])
    assert out["pearson"] == pytest.approx(stats.pearsonr(loss, acc)[0])
    assert out["spearman"] == pytest.approx(stats.spearmanr(loss, acc)[0])
    assert out["kendall"] == pytest.approx(stats.kendalltau(loss, acc)[0])
    for name in ("spearman", "pearson", "kendall"):
        assert out[f"{name}_lo"] <= out[name] <= out[f"{name}_hi"]
    assert out == loss_accuracy_correlation(loss, acc, n_boot=300, seed=2)


def test_correlation_is_nan_safe():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        few = loss_accuracy_correlation([1.0, 2.0], [3.0, 4.0])
        constant = loss_accuracy_correlation([1.0, 2.0, 3.0, 4.0], [5.0] * 4, n_boot=50)
        # Three distinct points: many resamples repeat one point and are left out of the CI.
        small = loss_accuracy_correlation([1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 3.0, 0.0], n_boot=50)
    corr = lambda d: [v for k, v in d.items() if not k.startswith("n_")]  # noqa: E731
    assert all(math.isnan(v) for v in corr(few)) and (few["n_pairs"], few["n_units"]) == (2, 2)
    assert all(math.isnan(v) for v in corr(constant))
    assert small["spearman"] == pytest.approx(1.0) and small["spearman_lo"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="one length"):
        loss_accuracy_correlation([1.0, 2.0, 3.0], [1.0, 2.0])


def test_pair_loss_correlates_with_generated_accuracy(zoo):
    w1, w2 = zoo["w1"], zoo["w2"]
    generated = [zoo["init"], (w1 + w2) / 2, zoo["w3"], _forcing(1)]
    loss = torch.tensor([4.0, 2.0, 1.0, 3.0])
    res = _run(zoo, generated, pair_loss=loss)
    gen = res.per_pair.query("method == 'generated'")
    # Resampled by target class set, the default unit.
    expected = loss_accuracy_correlation(loss, gen["acc_in"], NO_FT.bootstrap, NO_FT.ci, NO_FT.seed, gen["c3"])
    summary = res.summary()
    assert {f"corr/{k}": v for k, v in expected.items()} == {
        k: v for k, v in summary.items() if k.startswith("corr/")
    }
    assert res.per_pair["pair_loss"].tolist() == np.repeat(loss.numpy(), 6).tolist()


# ---------------------------------------------------------------------------- batching and summary


def test_mixed_activations_match_each_pair_alone(zoo):
    w = [zoo["w3"], zoo["init"], (zoo["w1"] + zoo["w2"]) / 2]
    acts = ["relu", "tanh", "relu"]
    together = _run(zoo, w, acts=acts).per_pair
    for pair, (g, act) in enumerate(zip(w, acts, strict=True)):
        alone = _run(zoo, [g], acts=[act]).per_pair
        got = together[together["pair"] == pair].drop(columns="pair").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, alone.drop(columns="pair"))
    assert together.loc[together["pair"] == 1, "activation"].eq("tanh").all()
    assert together["c3"].eq("0-1-2-3").all() and together["c1"].eq("0-1").all()


def test_deterministic_and_leaves_inputs_alone(zoo):
    m = zoo["mnist"]
    cfg = _classic(
        images_per_class=20, finetune_steps=6, finetune_eval_every=3, bootstrap=20, seed=3
    )
    weights = [torch.stack([zoo[k], zoo["init"]]) for k in ("w3", "w1", "w2", "w3")] + [
        zoo["init"].expand(2, -1)
    ]
    before = [w.clone() for w in weights]
    loss = torch.tensor([1.0, 2.0])
    runs = [
        evaluate_merges(
            *weights[:4],
            [C1] * 2,
            [C2] * 2,
            ["relu", "gelu"],
            m.val,
            m.train,
            cfg,
            pair_loss=loss,
            init=weights[4],
        )
        for _ in range(2)
    ]
    pd.testing.assert_frame_equal(runs[0].per_pair, runs[1].per_pair)
    assert runs[0].summary() == pytest.approx(runs[1].summary(), nan_ok=True)
    for w, b in zip(weights, before, strict=True):
        assert torch.equal(w, b)


@pytest.mark.parametrize("chunk", [1, 7, 300, 10**6])
def test_predict_matches_the_module_whatever_the_chunk(zoo, chunk):
    images = zoo["mnist"].val.images[:150]
    weights = torch.stack([zoo["w1"], zoo["w2"], zoo["w3"], zoo["init"]])
    expected = []
    for w in weights:
        net = CNN("relu").eval()
        net.load_state_dict(unflatten(w))
        with torch.no_grad():
            expected.append(net(images).argmax(-1))
    torch.testing.assert_close(evaluate.predict(weights, images, "relu", chunk), torch.stack(expected))
    own = images.view(3, 50, 1, 28, 28)  # model i sees images 50·i … 50·i + 49
    torch.testing.assert_close(
        evaluate.predict(weights[:3], own, "relu", chunk),
        torch.stack([expected[i][50 * i : 50 * (i + 1)] for i in range(3)]),
    )


def test_results_do_not_depend_on_the_forward_chunk(zoo):
    cfg = _classic(images_per_class=20, finetune_steps=6, finetune_eval_every=3, bootstrap=0)
    weights = [torch.stack([zoo[k], zoo["init"], zoo["w1"]]) for k in ("w3", "w1", "w2", "w3")]
    frames = [
        evaluate_merges(
            *weights, [C1] * 3, [C2] * 3, ["relu"] * 3, zoo["mnist"].val, zoo["mnist"].train,
            EvalConfig(**{**cfg.to_dict(), "forward_chunk": chunk}),
        ).per_pair
        for chunk in (None, 50, 10**6)
    ]
    for f in frames[1:]:
        pd.testing.assert_frame_equal(frames[0], f, atol=1e-3, rtol=0)


def test_accepts_generated_weights_that_require_grad(zoo):
    generated = zoo["w3"][None].clone().requires_grad_(True)
    cfg = _classic(images_per_class=20, finetune_steps=2, finetune_eval_every=1, bootstrap=0)
    res = _run(zoo, generated, cfg=cfg)
    assert _row(res, 0, "generated")["agreement"] == 1.0
    assert generated.grad is None and generated.requires_grad


def test_summary_keys(zoo):
    cfg = _classic(images_per_class=20, finetune_steps=4, finetune_eval_every=2, bootstrap=10)
    summary = _run(
        zoo, [zoo["w3"], zoo["init"], zoo["w1"]], cfg=cfg, pair_loss=torch.tensor([1.0, 3.0, 2.0])
    ).summary()
    assert summary["n_pairs"] == 3
    for key in (
        "generated/acc_in",
        "generated/acc_out",
        "generated/agreement",
        "generated/forget_c1",
        "generated/ft_acc_in",
        "generated/ft_acc_out",
        "generated/catchup_steps",
        "generated/catchup_rate",
        "generated/ft_stable_rate",
        "generated/collapsed_share",
        "generated/logit_spread",
        "target/collapsed_share",
        "average/ft_acc_in",
        "task_arithmetic/acc_in",
        "target/acc_in",
        "corr/spearman",
        "corr/pearson_lo",
        "corr/kendall_hi",
    ):
        assert key in summary, key
    assert not any(k.startswith("target/ft_") for k in summary)
    assert all(isinstance(v, float) for v in summary.values())
    no_ft = _run(zoo, [zoo["w3"]]).summary()
    assert not any("/ft_" in k for k in no_ft) and not any(k.startswith("corr/") for k in no_ft)


# ---------------------------------------------------------------------------- bad input


def _good(zoo, n=2):
    rep = lambda w: w.expand(n, -1).clone()  # noqa: E731
    m = zoo["mnist"]
    return dict(
        generated=rep(zoo["w3"]),
        w1=rep(zoo["w1"]),
        w2=rep(zoo["w2"]),
        w3=rep(zoo["w3"]),
        c1=[C1] * n,
        c2=[C2] * n,
        activations=["relu"] * n,
        split=m.val,
        train=m.train,
        cfg=NO_FT,
    )


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda k: k.update(generated=k["generated"][:, :-1]), "generated"),
        (lambda k: k.update(w2=k["w2"][:1]), "w2"),
        (lambda k: k.update(w3=k["w3"].long()), "w3"),
        (lambda k: k.update(init=torch.zeros(3, N_PARAMS)), "init"),
        (
            lambda k: k.update(generated=torch.zeros(0, N_PARAMS), w1=torch.zeros(0, N_PARAMS)),
            "no pairs",
        ),
        (lambda k: k.update(activations=["relu", "swish"]), "swish"),
        (lambda k: k.update(activations=["relu"]), "activations"),
        (lambda k: k.update(c1=[C1]), "c1"),
        (lambda k: k.update(c2=[C2, (3, 12)]), r"c2\[1\]"),
        (lambda k: k.update(c1=[C1, ()]), r"c1\[1\]"),
        (lambda k: k.update(pair_loss=torch.ones(3)), "pair_loss"),
        (lambda k: k.update(cfg={"finetune_steps": 0}), "cfg"),
        (lambda k: k.update(split=k["split"].images), "split"),
    ],
)
def test_bad_inputs_raise_before_any_work(zoo, monkeypatch, change, match):
    def no_work(*a, **kw):
        raise AssertionError("evaluation started on bad input")

    monkeypatch.setattr(evaluate, "batched_forward", no_work)
    kwargs = _good(zoo)
    change(kwargs)
    with pytest.raises(ValueError, match=match):
        evaluate_merges(**kwargs)


def test_curve_points_match_a_shorter_run(zoo):
    # A shorter run replays the first steps of a longer one, so the longer run's curve point
    # (each pair on its own C3 images) must equal the shorter run's final accuracy (all images).
    m, w1, w2, w3, init = (zoo[k] for k in ("mnist", "w1", "w2", "w3", "init"))
    pairs = dict(c1=[C1, (0,), (4,)], c2=[C2, (1,), (5, 6, 7, 8, 9)], activations=["relu"] * 3)
    weights = [
        torch.stack([a, b, c])
        for a, b, c in ((init, w3, w1), (w1, w1, w1), (w2, w2, w2), (w3, w3, w3))
    ]

    def run(steps):
        cfg = _classic(
            images_per_class=PER_CLASS,
            finetune_steps=steps,
            finetune_eval_every=4,
            bootstrap=0,
            seed=5,
        )
        return evaluate_merges(*weights, **pairs, split=m.val, train=m.train, cfg=cfg)

    long, short = run(8), run(4)
    np.testing.assert_array_equal(long.curve_steps, [0, 4, 8])
    for method, curve in long.curves.items():
        final = short.per_pair.query("method == @method")["ft_acc_in"].to_numpy()
        np.testing.assert_allclose(curve[:, 1], final, atol=1e-9, err_msg=method)


def test_a_cache_runs_the_baselines_once_and_changes_nothing(zoo, monkeypatch):
    import wsmerge.evaluate as E

    models_run = []
    real = E._predict_with_spread

    def counting(weights, *a, **k):
        models_run.append(weights.shape[0])
        return real(weights, *a, **k)

    monkeypatch.setattr(E, "_predict_with_spread", counting)
    acts = ["relu", "tanh", "relu"]
    cache: dict = {}
    # Models per forward, relu group then tanh group: all six methods of each pair the first
    # time, the generated CNN alone after that.
    expected = ([2 * 6, 1 * 6], [2, 1])
    for generated, runs in zip(([zoo["w3"], zoo["init"], zoo["w1"]], [zoo["w2"], zoo["w3"], zoo["init"]]), expected):
        plain = _run(zoo, generated, acts=acts).per_pair
        models_run.clear()
        cached = _run(zoo, generated, acts=acts, cache=cache).per_pair
        pd.testing.assert_frame_equal(cached, plain)
        assert models_run == runs
    assert set(cache) == {"relu", "tanh"}


# ---------------------------------------------------------------------------- the merges


ALL_METHODS = ["generated", "copy1", "copy2", "average", "task_arithmetic", "rebasin", "ties", "dare", "rebasin_act",
               "fisher", "regmean", "zipit", "distill", "ensemble", "target"]


def test_every_merge_is_a_method_scored_on_the_same_pairs(zoo):
    from wsmerge.merges import dare, rebasin, ties

    cfg = EvalConfig(images_per_class=PER_CLASS, finetune_steps=4, finetune_eval_every=2, bootstrap=0,
                     merge_images=16)
    res = _run(zoo, [zoo["w3"], zoo["init"]], cfg=cfg)
    assert res.per_pair[res.per_pair["pair"] == 0]["method"].tolist() == ALL_METHODS
    w1, w2, init = (zoo[k].expand(2, -1) for k in ("w1", "w2", "init"))
    # The data-free merges, computed here from the weights alone, score what the frame says.
    for name, w in (("rebasin", rebasin(w1, w2)), ("ties", ties(w1, w2, init)),
                    ("dare", dare(w1, w2, init, generator=torch.Generator().manual_seed(cfg.seed)))):
        for pair in (0, 1):
            assert _row(res, pair, name)["acc_in"] == pytest.approx(_module_acc(w[pair], C3, zoo["mnist"].val)), name
    for name in ALL_METHODS[5:13]:
        row = _row(res, 0, name)
        assert np.isfinite(row[["acc_in", "acc_out", "agreement", "ft_acc_in", "logit_spread"]].astype(float)).all()
        assert row["merge_seconds"] > 0, name
        assert name in res.curves
    # A timing is not a result: summaries (and so resumed runs) compare equal without it.
    assert not any("seconds" in k for k in res.summary())
    # Every weight method but the target is fine-tuned; the ensemble is two CNNs, never tuned.
    ensemble = _row(res, 0, "ensemble")
    assert np.isnan(ensemble["ft_acc_in"]) and np.isnan(ensemble["logit_spread"]) and "ensemble" not in res.curves
    assert np.isnan(_row(res, 0, "copy1")["merge_seconds"])


def test_the_ensemble_is_the_more_confident_parent_on_its_own_classes(zoo):
    res = _run(zoo, [zoo["w3"]], cfg=_classic(images_per_class=PER_CLASS, finetune_steps=0, bootstrap=0,
                                                merges=("ensemble",)))
    m = zoo["mnist"]
    idx = m.val.indices(range(10), PER_CLASS)
    images, labels = m.val.images[idx], m.val.labels[idx].numpy()
    probs = []
    for w, own in ((zoo["w1"], C1), (zoo["w2"], C2)):
        net = CNN("relu")
        net.load_state_dict(unflatten(w.clone()))
        with torch.no_grad():
            z = net(images).double().numpy()
        p = np.zeros_like(z)
        e = np.exp(z[:, own] - z[:, own].max(1, keepdims=True))
        p[:, own] = e / e.sum(1, keepdims=True)
        probs.append(p)
    pred = np.maximum(*probs).argmax(1)
    in3 = np.isin(labels, C3)
    assert _row(res, 0, "ensemble")["acc_in"] == pytest.approx(100 * (pred == labels)[in3].mean())
    assert _row(res, 0, "ensemble")["acc_out"] == pytest.approx(100 * (pred == labels)[~in3].mean())


def test_a_cache_computes_the_merges_once(zoo, monkeypatch):
    import wsmerge.evaluate as E
    from wsmerge.merges import MERGES, Merge

    calls = []
    for name, merge in list(MERGES.items()):
        monkeypatch.setitem(MERGES, name, Merge(lambda m, run=merge.run, name=name: calls.append(name) or run(m),
                                                merge.needs_init, merge.needs_steps, merge.data_free))
    cfg = EvalConfig(images_per_class=20, finetune_steps=0, bootstrap=0, merge_images=8)
    cache: dict = {}
    first = _run(zoo, [zoo["w3"], zoo["init"]], cfg=cfg, cache=cache).per_pair
    assert sorted(calls) == sorted(set(MERGES) - {"distill"})  # no fine-tuning budget, no distillation
    calls.clear()
    again = _run(zoo, [zoo["w1"], zoo["init"]], cfg=cfg, cache=cache).per_pair
    assert calls == []
    baselines = first["method"] != "generated"
    cols = ["acc_in", "acc_out", "agreement", "collapsed"]
    pd.testing.assert_frame_equal(again.loc[baselines, cols], first.loc[baselines, cols])
    assert E.METHODS[-2:] == ("ensemble", "target")


def test_a_cache_with_fine_tuning_tunes_the_generated_alone_and_changes_nothing(zoo, monkeypatch, tmp_path):
    # A sweep's trials share one stored cache: the second trial's results, with its own
    # generated CNNs, must be what it would get evaluating everything itself.
    tuned = []
    real = evaluate._finetune_group
    monkeypatch.setattr(evaluate, "_finetune_group", lambda t, *a: tuned.append(t.shape[0]) or real(t, *a))
    cfg = EvalConfig(images_per_class=PER_CLASS, finetune_steps=4, finetune_eval_every=2, bootstrap=0,
                     merges=("ties", "fisher", "ensemble"), merge_images=8)
    acts = ["relu", "tanh", "relu"]
    first, second = [zoo["w3"], zoo["init"], zoo["w1"]], [zoo["w2"], zoo["w3"], zoo["init"]]
    cache: dict = {}
    _run(zoo, first, cfg=cfg, acts=acts, cache=cache)
    # Generated, copy1, copy2, average, task arithmetic, TIES, Fisher: 7 tuned per activation.
    assert tuned == [7, 7]
    torch.save(cache, tmp_path / "cache.pt")
    stored = torch.load(tmp_path / "cache.pt", weights_only=True)
    tuned.clear()
    cached = _run(zoo, second, cfg=cfg, acts=acts, cache=stored)
    assert tuned == [1, 1]
    plain = _run(zoo, second, cfg=cfg, acts=acts)
    timings = ["merge_seconds"]  # the cache's are the first run's
    pd.testing.assert_frame_equal(cached.per_pair.drop(columns=timings), plain.per_pair.drop(columns=timings),
                                  check_exact=True)
    assert cached.curves.keys() == plain.curves.keys()
    for method in plain.curves:
        np.testing.assert_array_equal(cached.curves[method], plain.curves[method], err_msg=method)
    assert cached.per_pair.query("method == 'fisher'")["merge_seconds"].gt(0).all()
    with pytest.raises(ValueError, match="made without fine-tuning"):
        no_ft: dict = {}
        _run(zoo, first, cfg=dataclasses.replace(cfg, finetune_steps=0), acts=acts, cache=no_ft)
        _run(zoo, first, cfg=cfg, acts=acts, cache=no_ft)


def test_the_baselines_key_follows_every_input_but_the_interval_settings(zoo):
    m = zoo["mnist"]
    n = 2
    w1, w2, w3, init = (zoo[k].expand(n, -1) for k in ("w1", "w2", "w3", "init"))
    base = dict(w1=w1, w2=w2, w3=w3, c1=[C1] * n, c2=[C2] * n, activations=["relu"] * n, split=m.val,
                train=m.train, cfg=NO_FT, init=init)
    key = evaluate.baselines_key(**base)
    assert evaluate.baselines_key(**base) == key
    same = [{"cfg": dataclasses.replace(NO_FT, bootstrap=7, ci=0.5, interval_unit="pair")}]
    changed = [
        {"w1": w1 + 1e-7}, {"w3": torch.stack([w3[0], w1[0]])}, {"init": None}, {"c2": [C2, (2, 4)]}, {"activations": ["relu", "tanh"]},
        {"split": m.test}, {"cfg": dataclasses.replace(NO_FT, finetune_steps=1)}, {"cfg": dataclasses.replace(NO_FT, seed=1)},
    ]
    for change in same:
        assert evaluate.baselines_key(**{**base, **change}) == key
    for change in changed:
        assert evaluate.baselines_key(**{**base, **change}) != key, change


def test_unknown_or_repeated_merges_are_rejected():
    with pytest.raises(ValueError, match="EvalConfig.merges: unknown \\['zipit2'\\]"):
        EvalConfig(merges=("zipit2",))
    with pytest.raises(ValueError, match="named twice"):
        EvalConfig(merges=("ties", "ties"))
    with pytest.raises(ValueError, match="merge_images"):
        EvalConfig(merge_images=0)
    assert EvalConfig.from_dict({"merges": ["ties", "ensemble"]}).merges == ("ties", "ensemble")


def test_merges_see_unlabeled_training_images_of_their_parents_classes_only(zoo, monkeypatch):
    from wsmerge.merges import MERGES, Merge

    seen = []
    real = MERGES["fisher"]
    monkeypatch.setitem(MERGES, "fisher", Merge(lambda m: seen.append(m) or real.run(m), real.needs_init,
                                               real.needs_steps, real.data_free))
    cfg = EvalConfig(images_per_class=20, finetune_steps=3, finetune_eval_every=3, bootstrap=0, merge_images=12,
                     merges=("fisher",))
    _run(zoo, [zoo["w3"], zoo["init"]], cfg=cfg)
    (m,) = seen
    m_train, m_val = zoo["mnist"].train, zoo["mnist"].val
    label_of = {bytes(x.numpy()): int(y) for x, y in zip(m_train.images, m_train.labels)}
    held_out = {bytes(x.numpy()) for x in m_val.images} | {bytes(x.numpy()) for x in zoo["mnist"].test.images}
    for images, classes in ((m.images1, C1), (m.images2, C2), (m.images3, C3)):
        assert images.shape[:2] == (2, 12)
        keys = [bytes(x.numpy()) for x in images.flatten(0, 1)]
        assert all(label_of.get(k) in classes for k in keys)  # training images of these classes
        assert not held_out.intersection(keys)
    assert torch.equal(m.pool, m_train.images)
