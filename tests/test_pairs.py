"""Merge triples from synthetic zoo frames: the union rule, grouping, splits, errors."""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd
import pytest
import torch

from wsmerge.cnn import N_PARAMS
from wsmerge.pairs import COLUMNS, ROLES, SCENARIOS, SPLITS, PairConfig, make_pairs, scenario
from wsmerge.zoo import class_key, weights_matrix


def synthetic_zoo(digits=(0, 1, 2, 3), acts=("relu", "tanh"), bins=(1, 2, 3), inits=("kaiming_uniform",),
                  seeds=(0,), drop=()):
    """A zoo frame with the store's columns: every subset of >= 2 digits × act × init × seed
    × bin. Each weight vector starts with its own row number, to check the gathering."""
    rows = []
    for a, i, s in itertools.product(acts, inits, seeds):
        for k in range(2, len(digits) + 1):
            for c in itertools.combinations(digits, k):
                if c in drop:
                    continue
                for b in bins:
                    rows.append(
                        dict(
                            job_id=f"{a}_{i}_s{s}_c{class_key(c).replace('-', '')}",
                            classes=class_key(c), n_classes=len(c), activation=a, init=i, seed=s,
                            epoch_bin=b, epoch=b, stopped_epoch=max(bins), early_stopped=False,
                            train_loss=0.1, val_acc=0.9, test_acc_in=0.9, test_acc_out=0.0,
                            history_train_loss=[0.1], history_val_acc=[0.9],
                        )
                    )
    df = pd.DataFrame(rows)
    w = np.random.default_rng(0).standard_normal((len(df), N_PARAMS)).astype(np.float32)
    w[:, 0] = np.arange(len(df))
    df["weights"] = list(w)
    return df


@pytest.fixture(scope="module")
def zoo4():
    return synthetic_zoo((0, 1, 2, 3))


@pytest.fixture(scope="module")
def zoo6():
    return synthetic_zoo(tuple(range(6)), acts=("relu", "gelu"), bins=(1, 2))


def _all(p):
    return p.to_frame()


def _check_triples(df, frame):
    """Every row: union rule, parents not the union, one shared group, indices right."""
    for r in frame.itertuples():
        c1, c2, c3 = set(r.c1), set(r.c2), set(r.c3)
        assert c1 | c2 == c3 and c1 != c3 and c2 != c3 and c1 != c2
        assert r.overlap == len(c1 & c2)
        for row, cs in ((r.cnn1, r.c1), (r.cnn2, r.c2), (r.target, r.c3)):
            z = df.iloc[row]
            assert z["classes"] == class_key(cs)
            assert (z["activation"], z["init"], z["seed"], z["epoch_bin"]) == (
                r.activation, r.init, r.seed, r.epoch_bin)


# -- the triples ------------------------------------------------------------------------------
def test_tiny_zoo_overlap0_by_pair(zoo4):
    # Digits 0-3, overlap 0: {0,1}+{2,3}, {0,2}+{1,3}, {0,3}+{1,2}, all to {0,1,2,3}.
    p = make_pairs(zoo4, PairConfig(overlap=0, split_by="pair"))
    f = _all(p)
    assert list(p["train"].columns) == list(COLUMNS)
    assert len(f) == 3 * 2 * 3  # class pairs × activations × bins
    assert set(f["c3"]) == {(0, 1, 2, 3)}
    assert {(r.c1, r.c2) for r in f.itertuples()} == {((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))}
    assert all(r.c1 < r.c2 for r in f.itertuples())  # unordered pairs once, c1 first
    _check_triples(zoo4, f)
    # One class pair per split; each pair's 6 checkpoint groups stay together.
    assert [len(p.class_pairs[s]) for s in SPLITS] == [1, 1, 1]
    assert [len(p[s]) for s in SPLITS] == [6, 6, 6]


def test_tiny_zoo_overlap0_by_target_says_how_many_targets(zoo4):
    with pytest.raises(ValueError, match=r"only 1 distinct target class set for 3 non-empty splits.*split_by='pair'"):
        make_pairs(zoo4, PairConfig(overlap=0))
    # With only a training split, one target is enough.
    p = make_pairs(zoo4, PairConfig(overlap=0, split=(1.0, 0.0, 0.0)))
    assert len(p["train"]) == 18 and len(p["val"]) == len(p["test"]) == 0


def test_three_digit_zoo_has_no_disjoint_pairs():
    df = synthetic_zoo((0, 1, 2))
    with pytest.raises(ValueError, match=r"no valid triples: no two class sets with overlap 0 whose union.*4 class sets"):
        make_pairs(df, PairConfig(overlap=0, split_by="pair"))
    # Overlap 1: {0,1}+{0,2}, {0,1}+{1,2}, {0,2}+{1,2} -> {0,1,2}: 3 class pairs, one target.
    p = make_pairs(df, PairConfig(overlap=1, split_by="pair"))
    f = _all(p)
    assert set(f["c3"]) == {(0, 1, 2)} and len(f) == 3 * 2 * 3
    _check_triples(df, f)


def test_overlap_exact_and_range(zoo6):
    for m in (0, 1, 2):
        f = _all(make_pairs(zoo6, PairConfig(overlap=m)))
        assert set(f["overlap"]) == {m}
        _check_triples(zoo6, f.sample(200, random_state=0) if len(f) > 200 else f)
    f = _all(make_pairs(zoo6, PairConfig(overlap=(0, 2))))
    assert set(f["overlap"]) == {0, 1, 2}
    n = {m: len(_all(make_pairs(zoo6, PairConfig(overlap=m)))) for m in (0, 1, 2)}
    assert len(f) == sum(n.values())


def test_pair_count_matches_brute_force(zoo6):
    # Class level, digits 0-5, overlap 0: unordered disjoint pairs of >=2-subsets.
    sets = [frozenset(c) for k in range(2, 7) for c in itertools.combinations(range(6), k)]
    expect = sum(1 for a, b in itertools.combinations(sets, 2) if not (a & b))
    p = make_pairs(zoo6, PairConfig(overlap=0))
    f = _all(p)
    assert len({(r.c1, r.c2) for r in f.itertuples()}) == expect
    assert len(f) == expect * 2 * 2  # × activations × bins


def test_subset_parents_are_excluded():
    # With overlap 2, {0,1} and {0,1,2} overlap in 2 but the union is {0,1,2} itself.
    f = _all(make_pairs(synthetic_zoo((0, 1, 2, 3)), PairConfig(overlap=2, split_by="pair")))
    for r in f.itertuples():
        assert not set(r.c1) <= set(r.c2) and not set(r.c2) <= set(r.c1)


def test_groups_never_mix():
    df = synthetic_zoo((0, 1, 2, 3), acts=("relu", "tanh"), inits=("kaiming_uniform", "normal"),
                       seeds=(0, 1), bins=(1, 2))
    p = make_pairs(df, PairConfig(overlap=1))
    f = _all(p)
    _check_triples(df, f)
    assert len(f.groupby(["activation", "init", "seed", "epoch_bin"])) == 16


def test_missing_checkpoints_drop_only_their_triples():
    full = synthetic_zoo((0, 1, 2, 3))
    cut = synthetic_zoo((0, 1, 2, 3), drop=[(0, 1, 2, 3)])
    assert len(_all(make_pairs(full, PairConfig(overlap=1)))) > len(_all(make_pairs(cut, PairConfig(overlap=1))))
    _check_triples(cut, _all(make_pairs(cut, PairConfig(overlap=1))))
    # A target missing in one group only: that group loses its triples.
    df = full[~((full["classes"] == "0-1-2-3") & (full["activation"] == "tanh"))].reset_index(drop=True)
    f = _all(make_pairs(df, PairConfig(overlap=0, split_by="pair")))
    assert set(f["activation"]) == {"relu"}


def test_filters(zoo6):
    cfg = PairConfig(overlap=0, activations=("gelu",), epoch_bins=(2,), digits=(0, 1, 2, 3, 4))
    f = _all(make_pairs(zoo6, cfg))
    assert set(f["activation"]) == {"gelu"} and set(f["epoch_bin"]) == {2}
    assert all(set(c) <= {0, 1, 2, 3, 4} for c in f["c3"])
    _check_triples(zoo6, f)


def test_cap_per_target(zoo6):
    p = make_pairs(zoo6, PairConfig(overlap=(0, 2), max_pairs_per_target=2))
    f = _all(p)
    per_target = f.groupby("c3").apply(lambda g: len({(r.c1, r.c2) for r in g.itertuples()}), include_groups=False)
    assert per_target.max() <= 2
    # The same class pairs in every checkpoint group.
    sets = f.groupby(["activation", "epoch_bin"]).apply(lambda g: frozenset(zip(g.c1, g.c2)), include_groups=False)
    assert len(set(sets)) == 1


def test_both_orders(zoo4):
    one = _all(make_pairs(zoo4, PairConfig(overlap=1)))
    both = _all(make_pairs(zoo4, PairConfig(overlap=1, both_orders=True)))
    assert len(both) == 2 * len(one)
    fwd = set(zip(one.cnn1, one.cnn2, one.target))
    assert set(zip(both.cnn1, both.cnn2, both.target)) == fwd | {(b, a, t) for a, b, t in fwd}


# -- splits -------------------------------------------------------------------------------------
def test_splits_are_disjoint_by_target(zoo6):
    p = make_pairs(zoo6, PairConfig(overlap=(0, 2), seed=3))
    t = {s: set(p[s]["c3"]) for s in SPLITS}
    assert all(t[s] for s in SPLITS)
    assert not (t["train"] & t["val"]) and not (t["train"] & t["test"]) and not (t["val"] & t["test"])
    assert {s: sorted(t[s]) for s in SPLITS} == p.targets
    n = sum(len(t[s]) for s in SPLITS)
    assert abs(len(t["train"]) - 0.7 * n) <= 1
    assert "test:" in p.summary() and "targets" in p.summary()


def test_split_by_pair_is_disjoint_by_class_pair(zoo6):
    p = make_pairs(zoo6, PairConfig(overlap=1, split_by="pair"))
    k = {s: set(zip(p[s].c1, p[s].c2)) for s in SPLITS}
    assert not (k["train"] & k["val"]) and not (k["train"] & k["test"]) and not (k["val"] & k["test"])


def test_few_targets_still_split_when_possible(zoo4):
    # Overlap 1 on digits 0-3: 5 targets (four 3-sets and {0,1,2,3}) -> at least one each.
    p = make_pairs(zoo4, PairConfig(overlap=1))
    assert [len(p.targets[s]) for s in SPLITS] == [3, 1, 1]


def test_determinism(zoo6):
    cfg = PairConfig(overlap=(0, 2), max_pairs_per_target=3)
    a, b = make_pairs(zoo6, cfg), make_pairs(zoo6, cfg)
    for s in SPLITS:
        pd.testing.assert_frame_equal(a[s], b[s])
    c = make_pairs(zoo6, cfg.replace(seed=1))
    assert a.targets != c.targets


# -- CNNs shared between splits, and strict isolation ------------------------------------------
_ROLE_COLS = {"input": ("cnn1", "cnn2"), "target": ("target",), "any": ("cnn1", "cnn2", "target")}


def _in_role(frame, role):
    """Per triple, the set of its zoo rows in `role`."""
    return [{int(getattr(r, c)) for c in _ROLE_COLS[role]} for r in frame.itertuples()]


def _triples(frame):
    return [(int(a), int(b), int(t)) for a, b, t in zip(frame.cnn1, frame.cnn2, frame.target)]


def _brute_overlap(p):
    out = {}
    for a, b in (("val", "train"), ("test", "train"), ("test", "val")):
        for ra, rb in itertools.product(ROLES, ROLES):
            A, B = _in_role(p[a], ra), _in_role(p[b], rb)
            shared = set().union(*A) & set().union(*B)
            out[a, ra, b, rb] = (len(shared), sum(1 for x in A if x & shared), sum(1 for x in B if x & shared))
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        PairConfig(overlap=(0, 2)),
        PairConfig(overlap=1, split_by="pair", seed=2),
        PairConfig(overlap=0, both_orders=True, max_pairs_per_target=3),
    ],
)
def test_overlap_counts_shared_cnns_by_role(zoo6, cfg):
    p = make_pairs(zoo6, cfg)
    ov = p.overlap()
    assert list(ov.columns) == ["split_a", "role_a", "split_b", "role_b", "n_cnns", "n_triples_a", "n_triples_b"]
    brute = _brute_overlap(p)
    got = {(r.split_a, r.role_a, r.split_b, r.role_b): (r.n_cnns, r.n_triples_a, r.n_triples_b)
           for r in ov.itertuples()}
    assert len(got) == 15 and got.items() <= brute.items()
    assert ("test", "any", "train", "any") in got and ("val", "target", "train", "input") in got
    # Splitting by class set alone leaks: test CNNs serve in training.
    assert got["test", "any", "train", "any"][0] > 0
    n, n_test = got["test", "target", "train", "input"][:2]
    assert f"test target used as train input: {n} ({n_test})" in p.summary()
    assert p.dropped == dict.fromkeys(SPLITS, 0) and p.refilled == 0 and "isolation" not in p.summary()


def _check_isolated(none, strict):
    """strict is none with exactly the triples touching a held-out CNN removed (and, under a
    cap, training refilled), and no CNN of test in val or train, none of val in train."""
    cnns = {s: set().union(*_in_role(strict[s], "any")) for s in SPLITS}
    assert not cnns["test"] & cnns["train"] and not cnns["test"] & cnns["val"] and not cnns["val"] & cnns["train"]
    assert (strict.overlap()[["n_cnns", "n_triples_a", "n_triples_b"]] == 0).all().all()
    pd.testing.assert_frame_equal(strict["test"], none["test"])
    val = [t for t in _triples(none["val"]) if not set(t) & cnns["test"]]
    assert _triples(strict["val"]) == val
    train = [t for t in _triples(none["train"]) if not set(t) & (cnns["test"] | cnns["val"])]
    was_train = set(_triples(none["train"]))
    assert [t for t in _triples(strict["train"]) if t in was_train] == train
    assert strict.dropped == {"train": len(none["train"]) - len(train), "val": len(none["val"]) - len(val), "test": 0}
    assert strict.refilled == len(strict["train"]) - len(train)
    s = strict.summary()
    assert f"dropped {strict.dropped['train']} train and {strict.dropped['val']} val" in s
    assert "test target used as train input: 0 (0)" in s
    return cnns


@pytest.mark.parametrize(
    "cfg",
    [
        PairConfig(overlap=(0, 2)),
        PairConfig(overlap=2, seed=1, both_orders=True),
        PairConfig(overlap=0, split_by="pair", seed=1, split=(0.8, 0.1, 0.1)),
    ],
)
def test_strict_isolation_drops_exactly_the_leaking_triples(zoo6, cfg):
    none = make_pairs(zoo6, cfg)
    strict = make_pairs(zoo6, cfg.replace(isolation="strict"))
    _check_isolated(none, strict)
    assert strict.refilled == 0 and strict.dropped["train"] > 0 and len(strict["train"]) and len(strict["val"])
    assert strict.targets["train"] == sorted(set(strict["train"]["c3"]))


@pytest.mark.parametrize("zoo", ["full", "partial"])
def test_strict_isolation_caps_after_isolating(zoo6, zoo):
    df = zoo6 if zoo == "full" else zoo6[
        ~((zoo6["classes"].isin(["0-1", "2-3-4"])) & (zoo6["activation"] == "gelu"))].reset_index(drop=True)
    cfg = PairConfig(overlap=(0, 2), max_pairs_per_target=2)
    none = make_pairs(df, cfg)
    strict = make_pairs(df, cfg.replace(isolation="strict"))
    cnns = _check_isolated(none, strict)
    assert strict.refilled > 0
    # Every training target of the deal fills its cap from the class pairs with an allowed
    # triple, and keeps every allowed triple of the class pairs it holds.
    every = make_pairs(df, cfg.replace(max_pairs_per_target=None, split=(1.0, 0.0, 0.0)))["train"]
    allowed = every[[not set(t) & (cnns["test"] | cnns["val"]) for t in _triples(every)]]
    allowed = allowed[allowed["c3"].isin(none.targets["train"])]
    have = {t: {frozenset((a, b)) for a, b in zip(g.c1, g.c2)} for t, g in strict["train"].groupby("c3")}
    for t, g in allowed.groupby("c3"):
        assert len(have.get(t, ())) == min(2, len({frozenset((a, b)) for a, b in zip(g.c1, g.c2)}))
    picked = [frozenset((a, b)) in have.get(t, ()) for a, b, t in zip(allowed.c1, allowed.c2, allowed.c3)]
    assert sorted(_triples(strict["train"])) == sorted(_triples(allowed[picked]))
    if zoo == "full":
        sets = strict["train"].groupby(["activation", "epoch_bin"]).apply(
            lambda g: frozenset(zip(g.c1, g.c2)), include_groups=False)
        assert len(set(sets)) == 1


def test_strict_isolation_that_empties_a_split_says_so(zoo4, zoo6):
    # One seed: every class set of a held-out triple is blocked in training.
    with pytest.raises(ValueError, match=r"strict isolation leaves no train triples \(of 54 before\).*two seeds"):
        make_pairs(zoo4, PairConfig(overlap=1, isolation="strict"))
    with pytest.raises(ValueError, match=r"leaves no val triples \(of 92 before\): each shares a CNN with a test"):
        make_pairs(zoo6, PairConfig(overlap=0, isolation="strict"))
    # Without a validation split there is nothing to empty.
    p = make_pairs(zoo6, PairConfig(overlap=0, isolation="strict", split=(0.9, 0.0, 0.1)))
    assert len(p["train"]) and len(p["val"]) == 0 and p.dropped["val"] == 0


# -- tensors --------------------------------------------------------------------------------------
def test_tensors_gather_the_right_rows(zoo4):
    p = make_pairs(zoo4, PairConfig(overlap=1))
    W = weights_matrix(zoo4)
    w1, w2, w3 = p.tensors("train", W)
    assert w1.shape == (len(p["train"]), N_PARAMS) and w1.dtype == torch.float32
    assert torch.equal(w1[:, 0].long(), torch.tensor(p["train"]["cnn1"].to_numpy()))
    assert torch.equal(w3[:, 0].long(), torch.tensor(p["train"]["target"].to_numpy()))
    t1, t2, t3 = p.tensors("train", torch.from_numpy(W))
    assert torch.equal(t2, w2)
    f1, _, _ = p.tensors("val", zoo4)  # the frame itself
    assert torch.equal(f1[:, 0].long(), torch.tensor(p["val"]["cnn1"].to_numpy()))
    m = p.meta("test")
    assert len(m["c1"]) == len(p["test"]) and set(m) == {"c1", "c2", "c3", "activation"}
    with pytest.raises(ValueError, match="rows but the pairs index a zoo frame"):
        p.tensors("train", W[:-1])
    with pytest.raises(ValueError, match="shape"):
        p.tensors("train", W[:, :10])
    with pytest.raises(KeyError, match="unknown split 'dev'"):
        p.tensors("dev", W)


def test_init_weights(zoo4):
    p = make_pairs(zoo4, PairConfig(overlap=1))
    init_df = pd.DataFrame(
        {"activation": ["relu", "tanh"], "init": ["kaiming_uniform"] * 2, "seed": np.array([0, 0], np.int32),
         "weights": [np.full(N_PARAMS, 1.0, np.float32), np.full(N_PARAMS, 2.0, np.float32)]}
    )
    w0 = p.init_weights("train", init_df)
    assert w0.shape == (len(p["train"]), N_PARAMS) and w0.dtype == torch.float32
    expect = torch.tensor([1.0 if a == "relu" else 2.0 for a in p["train"]["activation"]])
    assert torch.equal(w0[:, 0], expect)
    with pytest.raises(ValueError, match="no epoch-0 weights"):
        p.init_weights("train", init_df.iloc[:1])
    with pytest.raises(ValueError, match="lacks columns"):
        p.init_weights("train", init_df.drop(columns=["seed"]))


# -- configs and errors ----------------------------------------------------------------------------
def test_scenarios():
    assert set(SCENARIOS) == {"type1", "type2"}
    t1, t2 = scenario("type1"), scenario("type2")
    assert (t1.min_overlap, t1.max_overlap, t1.digits) == (0, 2, tuple(range(10)))
    assert (t2.min_overlap, t2.max_overlap, t2.digits) == (0, 4, tuple(range(6)))
    with pytest.raises(ValueError, match="unknown pair scenario 'type3'; known: type1, type2"):
        scenario("type3")
    cfg = PairConfig.from_dict({"scenario": "type2", "overlap": 0, "seed": 4})
    assert cfg.digits == tuple(range(6)) and cfg.overlap == 0 and cfg.seed == 4


def test_type2_on_a_synthetic_zoo(zoo6):
    p = make_pairs(zoo6, scenario("type2"))
    f = _all(p)
    assert set(f["overlap"]) == {0, 1, 2, 3, 4}  # e.g. {0,1,2,3,4} + {0,1,2,3,5} -> {0,...,5}
    assert all(set(c) <= set(range(6)) for c in f["c3"])
    _check_triples(zoo6, f.sample(300, random_state=1))


def test_config_roundtrip():
    cfg = PairConfig(overlap=(1, 2), digits=(3, 1, 2), activations=["relu"], epoch_bins=[1, 2], split=[0.8, 0.1, 0.1],
                     max_pairs_per_target=5, isolation="strict")
    assert cfg.digits == (1, 2, 3) and cfg.activations == ("relu",) and cfg.split == (0.8, 0.1, 0.1)
    assert PairConfig.from_dict(cfg.to_dict()) == cfg
    assert PairConfig().isolation == "none"
    assert PairConfig.from_dict({"scenario": "type1", "isolation": "strict"}).isolation == "strict"
    assert PairConfig(overlap=[2, 2]).overlap == 2


@pytest.mark.parametrize(
    "d, match",
    [
        ({"overlap": -1}, "overlap must be >= 0"),
        ({"overlap": [2, 1]}, r"range \[2, 1\] is empty"),
        ({"overlap": [0, 1, 2]}, "an int or"),
        ({"overlap": 1.5}, "expected an integer"),
        ({"split": [0.5, 0.3, 0.3]}, "must sum to 1"),
        ({"split": [1.2, -0.1, -0.1]}, "must be >= 0"),
        ({"split": [0.0, 0.5, 0.5]}, "positive train fraction"),
        ({"split": [1.0, 0.0]}, "three fractions"),
        ({"split_by": "row"}, "split_by must be one of"),
        ({"activations": ["swish"]}, "pairs.activations: unknown activation 'swish'"),
        ({"inits": ["he"]}, "pairs.inits: unknown init"),
        ({"activations": []}, "activations is empty"),
        ({"digits": [3, 12]}, "not MNIST digits"),
        ({"max_pairs_per_target": 0}, "max_pairs_per_target must be >= 1"),
        ({"isolation": "full"}, r"pairs: pairs.isolation must be one of \['none', 'strict'\], got 'full'"),
        ({"isolation": None}, r"pairs.isolation must be one of .*got None"),
        ({"overlapp": 1}, r"pairs: unknown keys \['overlapp'\]"),
        ({"scenario": "x"}, "pairs: unknown pair scenario 'x'"),
    ],
)
def test_bad_configs(d, match):
    with pytest.raises(ValueError, match=match):
        PairConfig.from_dict(d)


def test_make_pairs_errors(zoo4):
    with pytest.raises(ValueError, match=r"pairs.activations filter: \['gelu'\] not in the zoo.*\['relu', 'tanh'\]"):
        make_pairs(zoo4, PairConfig(overlap=1, activations=("gelu",)))
    with pytest.raises(ValueError, match=r"epoch_bins filter: \[7\] not in the zoo"):
        make_pairs(zoo4, PairConfig(overlap=1, epoch_bins=(7,)))
    with pytest.raises(ValueError, match=r"no valid triples.*filters: activations=\['relu'\], digits=\[0, 1, 2\]"):
        make_pairs(zoo4, PairConfig(overlap=0, activations=("relu",), digits=(0, 1, 2)))
    with pytest.raises(ValueError, match="lacks columns"):
        make_pairs(zoo4.drop(columns=["epoch_bin"]), PairConfig())
    with pytest.raises(ValueError, match="empty"):
        make_pairs(zoo4.iloc[:0], PairConfig())
    dup = pd.concat([zoo4, zoo4.iloc[:1]], ignore_index=True)
    with pytest.raises(ValueError, match="several checkpoints of classes 0-1"):
        make_pairs(dup, PairConfig(overlap=1))
    # Class-level triples exist, but no group holds all three.
    scattered = zoo4[
        ((zoo4["classes"] == "0-1") & (zoo4["activation"] == "relu"))
        | ((zoo4["classes"] == "2-3") & (zoo4["activation"] == "tanh"))
        | ((zoo4["classes"] == "0-1-2-3") & (zoo4["activation"] == "tanh"))
    ].reset_index(drop=True)
    with pytest.raises(ValueError, match=r"no \(activation, init, seed, epoch bin\) group holds all three"):
        make_pairs(scattered, PairConfig(overlap=0, split_by="pair", split=(1, 0, 0)))


# -- held-out zoo seeds --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def zoo6s():
    return synthetic_zoo(tuple(range(6)), acts=("relu", "gelu"), bins=(1,), seeds=(0, 1))


def _row_seeds(df, frame):
    """The zoo seed of every CNN of `frame`, read from the zoo frame itself."""
    return {int(df.iloc[int(r)]["seed"]) for c in ("cnn1", "cnn2", "target") for r in frame[c]}


@pytest.mark.parametrize("cfg", [PairConfig(overlap=(0, 2)), PairConfig(overlap=1, max_pairs_per_target=3, seed=2)])
def test_seed_split_holds_the_largest_seed_out(zoo6s, cfg):
    p = make_pairs(zoo6s, cfg)  # split_by auto: two seeds
    assert p.split_by == "seed" and (p.train_seeds, p.test_seeds) == ((0,), (1,))
    assert _row_seeds(zoo6s, p["train"]) == _row_seeds(zoo6s, p["val"]) == {0}
    assert _row_seeds(zoo6s, p["test"]) == {1}
    cnns = {s: set().union(*_in_role(p[s], "any")) for s in SPLITS}
    assert cnns["test"] and not cnns["test"] & (cnns["train"] | cnns["val"])
    assert not set(p["test"]["c3"]) & set(p["train"]["c3"])
    # The targets are dealt as under "target", cap sample included; then each split keeps its seeds.
    by_target = make_pairs(zoo6s, cfg.replace(split_by="target"))
    assert p.targets == by_target.targets
    for s, seed in (("train", 0), ("val", 0), ("test", 1)):
        expect = by_target[s][by_target[s]["seed"] == seed].reset_index(drop=True)
        pd.testing.assert_frame_equal(p[s], expect)
    assert p.dropped == dict.fromkeys(SPLITS, 0)
    s = p.summary()
    assert "split by seed (auto)" in s and "zoo seeds: train [0], val [0], test [1]" in s
    assert "held-out test_seeds [1]" in s and "isolation" not in s


def test_auto_splits_by_target_on_one_seed(zoo6, zoo6s):
    cfg = PairConfig(overlap=(0, 2))
    auto, target = make_pairs(zoo6, cfg), make_pairs(zoo6, cfg.replace(split_by="target"))
    assert auto.split_by == "target" and (auto.train_seeds, auto.test_seeds) == ((), ())
    for s in SPLITS:
        pd.testing.assert_frame_equal(auto[s], target[s])
    assert "split by target (auto)" in auto.summary() and "zoo seeds: train [0], val [0], test [0]" in auto.summary()
    # One seed left by the filter is one seed.
    assert make_pairs(zoo6s, cfg.replace(seeds=(1,))).split_by == "target"


def test_training_on_the_test_seed_too_drops_what_touches_a_test_cnn(zoo6s):
    cfg = PairConfig(overlap=(0, 2), split_by="seed", train_seeds=(0, 1), test_seeds=(1,))
    p = make_pairs(zoo6s, cfg)
    assert _row_seeds(zoo6s, p["train"]) == _row_seeds(zoo6s, p["val"]) == {0, 1}
    assert _row_seeds(zoo6s, p["test"]) == {1}
    # Independently: the target split's triples, less those touching a CNN of a test triple.
    by_target = make_pairs(zoo6s, cfg.replace(split_by="target", train_seeds=None, test_seeds=None))
    test = by_target["test"][by_target["test"]["seed"] == 1]
    pd.testing.assert_frame_equal(p["test"], test.reset_index(drop=True))
    test_cnns = set().union(*_in_role(test, "any"))
    for s in ("train", "val"):
        keep = [t for t in _triples(by_target[s]) if not set(t) & test_cnns]
        assert _triples(p[s]) == keep and p.dropped[s] == len(by_target[s]) - len(keep) > 0
    assert any(seed == 1 for seed in p["train"]["seed"])
    # No test CNN in training or validation, in any role; val CNNs may still train (isolation none).
    ov = {(r.split_a, r.role_a, r.split_b, r.role_b): r.n_cnns for r in p.overlap().itertuples()}
    assert ov["test", "any", "train", "any"] == ov["test", "any", "val", "any"] == 0
    assert ov["val", "any", "train", "any"] > 0
    assert "test seeds [1] also train: dropped" in p.summary()
    strict = make_pairs(zoo6s, cfg.replace(isolation="strict"))
    assert (strict.overlap()[["n_cnns", "n_triples_a", "n_triples_b"]] == 0).all().all()
    assert set(_triples(strict["train"])) < set(_triples(p["train"])) and _triples(strict["val"]) == _triples(p["val"])
    assert "isolation strict, test seeds [1] also train: dropped" in strict.summary()


def test_seed_split_with_strict_isolation_isolates_val_too(zoo6s):
    p = make_pairs(zoo6s, PairConfig(overlap=(0, 2), isolation="strict"))
    cnns = {s: set().union(*_in_role(p[s], "any")) for s in SPLITS}
    assert not cnns["val"] & cnns["train"] and not cnns["test"] & (cnns["train"] | cnns["val"])
    assert p.dropped["train"] > 0 and p.dropped["val"] == 0


def test_seed_split_errors(zoo6, zoo6s):
    cfg = PairConfig(overlap=(0, 2))
    with pytest.raises(ValueError, match=r"pairs.test_seeds: seeds \[5\] not in the zoo; it has seeds \[0, 1\]"):
        make_pairs(zoo6s, cfg.replace(test_seeds=(5,)))
    with pytest.raises(ValueError, match=r"pairs.train_seeds: seeds \[2\] not in the zoo \(filters: seeds=\[0, 1\]\)"):
        make_pairs(zoo6s, cfg.replace(seeds=(0, 1), train_seeds=(2,)))
    with pytest.raises(ValueError, match=r"no seed left for training: the zoo has seeds \[0, 1\], all of them test"):
        make_pairs(zoo6s, cfg.replace(test_seeds=(0, 1)))
    with pytest.raises(ValueError, match=r"pairs.test_seeds is set, but the zoo has one seed, \[0\].*split_by: seed"):
        make_pairs(zoo6, cfg.replace(test_seeds=(0,)))
    with pytest.raises(ValueError, match=r"no seed left for training: the zoo has seeds \[0\]"):
        make_pairs(zoo6, cfg.replace(split_by="seed"))
    # A held-out seed whose CNNs hold no triple of a test target.
    sparse = pd.concat([zoo6s[zoo6s["seed"] == 0], zoo6s[(zoo6s["seed"] == 1) & (zoo6s["n_classes"] == 2)]],
                       ignore_index=True)
    with pytest.raises(ValueError, match=r"split_by seed leaves no test triples: no test target .* seeds \[1\]"):
        make_pairs(sparse, cfg)
    # Training on the test seed only: everything touching a test CNN goes.
    with pytest.raises(ValueError, match=r"isolation leaves no val triples \(of 180 before\): each shares a CNN with "
                                         r"a test triple\. Test seeds \[0\] are also train_seeds"):
        make_pairs(zoo6, cfg.replace(split_by="seed", train_seeds=(0,), test_seeds=(0,), overlap=1))


@pytest.mark.parametrize(
    "d, match",
    [
        ({"split_by": "seeds"}, r"split_by must be one of \['auto', 'target', 'pair', 'seed'\], got 'seeds'"),
        ({"split_by": "target", "test_seeds": [1]}, r"pairs.test_seeds is \[1\], but split_by 'target' does not hold"),
        ({"split_by": "pair", "train_seeds": [0]}, r"pairs.train_seeds is \[0\], but split_by 'pair'"),
        ({"test_seeds": []}, r"pairs.test_seeds is empty; use null for 'the largest seed'"),
        ({"train_seeds": [0, 0]}, r"pairs.train_seeds: repeated seeds in \[0, 0\]"),
        ({"test_seeds": ["1"]}, r"pairs.test_seeds: expected an integer, got '1'"),
    ],
)
def test_bad_seed_split_configs(d, match):
    with pytest.raises(ValueError, match=match):
        PairConfig.from_dict(d)
    assert PairConfig().split_by == "auto"
    assert PairConfig.from_dict({"test_seeds": 1, "train_seeds": [0, 2]}).test_seeds == (1,)
