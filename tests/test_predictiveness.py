"""wsmerge.predictiveness: every loss at its exact setting, pair by pair, and its correlation
with accuracy, each against an independent computation (scipy, gudhi, the CNN module)."""

from __future__ import annotations

import math

import gudhi
import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats

from wsmerge.cnn import CNN, N_PARAMS, unflatten
from wsmerge.losses import LOSSES, LossContext, loss_fn
from wsmerge.predictiveness import (
    BATCH_COUPLED,
    EXACT_OPTIONS,
    PairLosses,
    exact_options,
    pair_losses,
    predictiveness,
    write_predictiveness_csv,
)

P, N_IMAGES, D_LATENT, NECK, ACT = 5, 6, 8, 4, "tanh"

# fisher's forward-mode AD loads torch's decompositions through torch.jit.script, deprecated in
# torch 2.13.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
CONTEXT_LOSSES = ("behavioral", "jacobian", "fisher", "latent", "contractive")


def _rand(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to OpenMP spinning on a busy CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class _Model(torch.nn.Module):
    """A stand-in for the TransformerAE's two encoders and fusion layer."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.encoders = torch.nn.ModuleList(torch.nn.Linear(N_PARAMS, D_LATENT) for _ in range(2))
        self.to_neck = torch.nn.Linear(2 * D_LATENT, NECK)

    def encode(self, w, k):
        return torch.tanh(self.encoders[k](w))

    def fuse(self, h1, h2):
        return torch.tanh(self.to_neck(torch.cat([h1, h2], dim=1)))


@pytest.fixture(scope="module")
def data():
    target = _rand(P, N_PARAMS, seed=1) * 0.1
    generated = target + _rand(P, N_PARAMS, seed=2) * 0.05
    w1, w2 = _rand(P, N_PARAMS, seed=3) * 0.1, _rand(P, N_PARAMS, seed=4) * 0.1
    images = torch.rand(P, N_IMAGES, 1, 28, 28, generator=torch.Generator().manual_seed(5))
    model = _Model()
    with torch.no_grad():
        neck = model.fuse(model.encode(w1, 0), model.encode(w2, 1))
    calls = []

    def context(rows):
        calls.append(rows.tolist())
        return LossContext(
            activation=ACT,
            images=images[rows],
            sources=(w1[rows], w2[rows]),
            neck=neck[rows],
            neck_aug=neck[rows],
            encode=model.encode,
            fuse=model.fuse,
            options={"behavioral": {"queries": 1}},  # replaced by the exact options
        )

    return {"generated": generated, "target": target, "images": images, "context": context, "calls": calls}


# ---------------------------------------------------------------------------- options


def test_every_exact_option_parses():
    # A renamed or removed option fails here rather than in a long evaluation run.
    for name, raw in EXACT_OPTIONS.items():
        assert name in LOSSES, name
        parsed = LOSSES[name].parse_options(raw)
        assert {k: getattr(parsed, k) for k in raw} == raw, name


def test_exact_options_cover_every_loss_and_take_overrides():
    options = exact_options({"gromov_wasserstein": {"n_points": 0}, "bottleneck": {"top_k": 5}})
    assert set(options) == set(LOSSES)
    assert options["gromov_wasserstein"] == {"n_points": 0}
    assert options["bottleneck"] == {"top_k": 5}
    assert options["jacobian"] == {"queries": 0, "probes": 0}
    assert EXACT_OPTIONS["bottleneck"] == {"top_k": 0}  # left untouched
    with pytest.raises(ValueError, match="unknown losses.*'nope'"):
        exact_options({"nope": {}})
    with pytest.raises(ValueError, match="bottleneck"):
        exact_options({"bottleneck": {"top_kk": 0}})


# ---------------------------------------------------------------------------- pair_losses


def _direct(name, data, options=None):
    """The loss on all pairs at once, called directly at its exact options."""
    ctx = data["context"](torch.arange(P))
    ctx.options = {name: EXACT_OPTIONS.get(name, {}) if options is None else options}
    with torch.no_grad():
        return loss_fn(name)(data["generated"], data["target"], ctx).double().numpy()


def test_values_match_the_loss_called_directly_in_any_batching(data):
    data["calls"].clear()
    out = pair_losses(data["generated"], data["target"], data["context"], batch_size=2)
    assert data["calls"] == [[0, 1], [2, 3], [4]]
    assert list(out.values.columns) == list(LOSSES) and len(out.values) == P
    for name in ("mse", "wasserstein", "behavioral", "jacobian", "fisher", "latent", "contractive"):
        np.testing.assert_allclose(out.values[name], _direct(name, data), rtol=1e-5, atol=1e-7, err_msg=name)
    # Exact, not the training default: behavioral on every image, not on the first 8 (or 1).
    assert not np.allclose(out.values["behavioral"], _direct("behavioral", data, {"queries": 1}))
    assert out.settings["jacobian"].split() == ["queries=0", "probes=0", "seed=None"]
    assert out.settings["mse"] == ""
    assert set(out.seconds) == set(LOSSES) - set(out.skipped)
    # A pair's value is its own: the same in one batch of all pairs as in batches of two.
    together = pair_losses(data["generated"], data["target"], data["context"], batch_size=P)
    pd.testing.assert_frame_equal(out.values, together.values, rtol=1e-5, atol=1e-7)


def test_batch_coupled_losses_are_each_pairs_own_value(data):
    g, t = data["generated"], data["target"]
    out = pair_losses(g, t, batch_size=P)
    for name in BATCH_COUPLED:
        assert not LOSSES[name].needs, name
        ctx = LossContext(options=exact_options())
        alone = [loss_fn(name)(g[i : i + 1], t[i : i + 1], ctx).item() for i in range(P)]
        np.testing.assert_allclose(out.values[name], alone, rtol=1e-6, err_msg=name)
        assert not np.allclose(alone, _direct(name, data)), f"{name} is no longer batch-coupled"


def test_behavioral_uses_every_query_image(data):
    out = pair_losses(data["generated"], data["target"], data["context"])
    output = LOSSES["behavioral"].parse_options(EXACT_OPTIONS["behavioral"]).output

    def f(w, x):
        net = CNN(ACT).eval()
        net.load_state_dict(unflatten(w.clone()))
        with torch.no_grad():
            logits = net(x).double()
        return logits.softmax(-1) if output == "probs" else logits

    ref = [
        ((f(g, x) - f(t, x)) ** 2).mean().item()
        for g, t, x in zip(data["generated"], data["target"], data["images"], strict=True)
    ]
    np.testing.assert_allclose(out.values["behavioral"], ref, rtol=1e-4)


def _gudhi_diagram(x):
    """H0 sublevel diagram of a vector on its line; the essential class closes at the max."""
    cc = gudhi.CubicalComplex(top_dimensional_cells=x)
    cc.compute_persistence()
    d = cc.persistence_intervals_in_dimension(0)
    d[np.isinf(d[:, 1]), 1] = x.max()
    return d


def test_bottleneck_is_gudhis_distance_on_the_full_diagrams(data):
    g, t = data["generated"][:3], data["target"][:3]
    out = pair_losses(g, t)
    ref = [
        gudhi.bottleneck_distance(_gudhi_diagram(a), _gudhi_diagram(b), 0.0)
        for a, b in zip(g.double().numpy(), t.double().numpy(), strict=True)
    ]
    np.testing.assert_allclose(out.values["bottleneck"], ref, rtol=1e-5, atol=1e-7)
    assert out.settings["bottleneck"] == "top_k=0"


def test_without_a_context_only_weight_losses_run_and_the_rest_say_why(data):
    out = pair_losses(data["generated"], data["target"])
    assert set(out.skipped) == set(CONTEXT_LOSSES) | {"contrastive"}
    assert "depends_on_pred" in out.skipped["contrastive"]
    for name in CONTEXT_LOSSES:
        for field in LOSSES[name].needs:
            assert field in out.skipped[name], (name, field)
    assert out.values[list(out.skipped)].isna().all().all()
    assert np.isfinite(out.values.drop(columns=list(out.skipped))).all().all()


def test_a_context_without_the_model_skips_only_the_model_losses(data):
    def images_only(rows):
        return LossContext(activation=ACT, images=data["images"][rows])

    out = pair_losses(data["generated"], data["target"], images_only)
    assert set(out.skipped) == {"latent", "contractive", "contrastive"}
    assert "encode" in out.skipped["contractive"]
    assert np.isfinite(out.values["behavioral"]).all()


def test_pairs_with_non_finite_weights_are_nan_and_do_not_disturb_the_others(data):
    generated = data["generated"].clone()
    generated[1, 7] = math.nan
    data["calls"].clear()
    out = pair_losses(generated, data["target"], data["context"], batch_size=3)
    assert data["calls"] == [[0, 2, 3], [4]]
    full = pair_losses(data["generated"], data["target"], data["context"]).values
    assert out.values.iloc[1].isna().all()
    keep = [0, 2, 3, 4]
    pd.testing.assert_frame_equal(out.values.iloc[keep], full.iloc[keep], rtol=1e-5, atol=1e-7)
    none = pair_losses(torch.full((2, N_PARAMS), math.nan), data["target"][:2])
    assert none.values.isna().all().all()
    assert all(none.skipped[n] for n in LOSSES)


@pytest.mark.parametrize(
    "generated, target, match",
    [
        (torch.zeros(3, N_PARAMS - 1), torch.zeros(3, N_PARAMS - 1), "generated"),
        (torch.zeros(3, N_PARAMS), torch.zeros(2, N_PARAMS), "target"),
        (torch.zeros(0, N_PARAMS), torch.zeros(0, N_PARAMS), "generated"),
        (torch.zeros(3, N_PARAMS), torch.zeros(3, N_PARAMS, dtype=torch.long), "target"),
    ],
)
def test_bad_weights_raise(generated, target, match):
    with pytest.raises(ValueError, match=match):
        pair_losses(generated, target)


# ---------------------------------------------------------------------------- predictiveness


def _synthetic(n=30):
    rng = np.random.default_rng(0)
    good = rng.normal(size=n)
    values = pd.DataFrame({"good": good, "noise": rng.normal(size=n), "skipped": np.full(n, np.nan)})
    values.loc[3, "good"] = np.nan  # a pair whose weights were not finite
    acc = 90 - 5 * good + rng.normal(size=n)
    ft = 95 - 2 * good + rng.normal(size=n)
    losses = PairLosses(
        values=values,
        settings={"good": "top_k=0", "noise": "", "skipped": ""},
        skipped={"skipped": "needs LossContext field(s) ['encode'], which the context leaves unset"},
        seconds={"good": 1.5, "noise": 0.5},
    )
    return losses, acc, ft


def test_correlations_match_scipy_for_each_loss_and_accuracy():
    losses, acc, ft = _synthetic()
    table = predictiveness(losses, acc, torch.tensor(ft), bootstrap=200, ci=0.9, seed=1)
    assert list(table["loss"]) == ["good", "noise", "skipped"]
    rows = table.set_index("loss")
    for name in ("good", "noise"):
        x = losses.values[name].to_numpy()
        keep = np.isfinite(x)
        for what, y in (("acc_in", acc), ("ft_acc_in", ft)):
            row = rows.loc[name]
            assert row[f"{what}/spearman"] == pytest.approx(stats.spearmanr(x[keep], y[keep])[0])
            assert row[f"{what}/pearson"] == pytest.approx(stats.pearsonr(x[keep], y[keep])[0])
            assert row[f"{what}/kendall"] == pytest.approx(stats.kendalltau(x[keep], y[keep])[0])
            for c in ("spearman", "pearson", "kendall"):
                assert row[f"{what}/{c}_lo"] <= row[f"{what}/{c}"] <= row[f"{what}/{c}_hi"]
    assert rows.loc["good", "acc_in/spearman_hi"] < -0.8
    assert rows["n_pairs"].tolist() == [29, 30, 0]
    assert rows.loc["good", "setting"] == "top_k=0" and rows.loc["good", "seconds"] == 1.5
    assert rows.loc["good", "skipped"] == "" and "encode" in rows.loc["skipped", "skipped"]
    assert math.isnan(rows.loc["skipped", "seconds"])
    corr = [c for c in table.columns if "/" in c]
    assert rows.loc["skipped", corr].isna().all()
    assert len(corr) == 18


def test_without_ft_acc_only_acc_in_columns():
    losses, acc, _ = _synthetic()
    table = predictiveness(losses, acc, bootstrap=0)
    assert not any(c.startswith("ft_acc_in/") for c in table.columns)
    assert table["acc_in/spearman_lo"].isna().all()  # no bootstrap, no CI
    with pytest.raises(ValueError, match=r"acc_in must be \[30\]"):
        predictiveness(losses, acc[:-1])


def test_an_added_column_gets_its_row(data):
    out = pair_losses(data["generated"], data["target"])
    out.values["mix"] = out.values["mse"] * 2
    table = predictiveness(out, np.arange(P, dtype=float), bootstrap=0).set_index("loss")
    assert table.loc["mix", "acc_in/spearman"] == pytest.approx(table.loc["mse", "acc_in/spearman"])
    assert table.loc["mix", "setting"] == "" and table.loc["mix", "skipped"] == ""


def test_csv_round_trip(tmp_path):
    losses, acc, ft = _synthetic()
    table = predictiveness(losses, acc, ft, bootstrap=20)
    path = write_predictiveness_csv(table, tmp_path / "out" / "predictiveness.csv")
    back = pd.read_csv(path, keep_default_na=False, na_values=[""])
    back["skipped"] = back["skipped"].fillna("")
    back["setting"] = back["setting"].fillna("")
    pd.testing.assert_frame_equal(back, table, check_dtype=False)
    assert [p.name for p in path.parent.iterdir()] == ["predictiveness.csv"]
