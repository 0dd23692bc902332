"""The merge-model recipe end to end on a tiny zoo: it learns, reports every metric next to
the baselines, and a run killed part-way resumes bit-for-bit."""

import dataclasses
import json
import os
import sys
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from sweeps.train_one import main as train_one
from runs import Crash, crash_after, same, strip_time, tiny_run
from wsmerge.train import BEST, CHECKPOINT, disk_bytes, read_zoo, train

pytestmark = pytest.mark.slow


def test_training_lowers_the_loss_and_reports_every_metric(tiny_zoo, tmp_path):
    seen = []
    every_merge = {"images_per_class": 40, "finetune_steps": 10, "finetune_eval_every": 5, "bootstrap": 50,
                   "merge_images": 16}
    cfg = tiny_run(tiny_zoo, tmp_path / "run", evaluation=every_merge)
    result = train(cfg, report=seen.append)
    assert [m["epoch"] for m in seen] == [1, 2, 3]
    # The structural term: the behavioral one is a 16-image estimate a pair, which moves by
    # a third between epochs of two steps.
    assert seen[-1]["train/mse"] < seen[1]["train/mse"] < seen[0]["train/mse"]
    assert {"train/mse", "train/behavioral"} <= set(seen[0])  # every term, unweighted
    m = seen[-1]
    # Validation scores every merge but distillation, which needs a fine-tuning budget.
    from wsmerge.evaluate import METHODS

    for method in METHODS:
        for metric in ("acc_in", "acc_out", "agreement", "forget_c1", "forget_c2"):
            assert (f"val/{method}/{metric}" in m) == (method != "distill"), (method, metric)
    for k in ("val/loss/loss", "val/loss/mse", "val/loss/behavioral", "val/corr/spearman", "val/corr/kendall_lo"):
        assert k in m
    assert m["val/target/agreement"] == pytest.approx(1.0)  # the target agrees with itself
    t = result.test
    for k in ("generated/ft_acc_in", "generated/catchup_steps", "generated/ft_stable_rate",
              "average/ft_acc_in", "corr/pearson_hi"):
        assert k in t
    saved = json.loads((tmp_path / "run" / "result.json").read_text())
    assert saved["test"]["generated/acc_in"] == pytest.approx(t["generated/acc_in"])
    tested = pd.read_csv(tmp_path / "run" / "test_pairs.csv")
    assert tested["method"].unique().tolist() == list(METHODS)
    assert (tested.loc[tested["method"].isin(["ties", "zipit", "distill"]), "merge_seconds"] > 0).all()
    # Every registered loss at its exact setting, and the trained mix, against accuracy.
    from wsmerge.losses import LOSSES
    from wsmerge.train import PREDICTIVENESS

    table = pd.read_csv(tmp_path / "run" / PREDICTIVENESS)
    assert set(table["loss"]) == set(LOSSES) | {"mix"}
    computed = table[table["skipped"].isna()]
    assert set(LOSSES) - set(computed["loss"]) == {"contrastive"}  # it never reads pred
    assert (computed["n_pairs"] == t["n_pairs"]).all() and "ft_acc_in/spearman" in table
    pairs = pd.read_csv(tmp_path / "run" / "test_pairs.csv")
    assert pairs.loc[pairs["method"] == "generated", "exact/bottleneck"].notna().all()
    # What a sweep plans its disk by is what the run wrote, to within a percent.
    written = sum((tmp_path / "run" / name).stat().st_size for name in (CHECKPOINT, BEST))
    assert written == pytest.approx(disk_bytes(cfg), rel=0.01)


def _resumes_bit_for_bit(cfg, crash_after_epoch: int):
    """Run cfg("a") whole and cfg("b") cut after an epoch, then resumed: the same model,
    history and test. Returns the whole run's result."""
    full = train(cfg("a"))
    with pytest.raises(Crash):
        train(cfg("b"), report=crash_after(crash_after_epoch))
    assert torch.load(os.path.join(cfg("b").out, CHECKPOINT), weights_only=True)["epoch"] == crash_after_epoch
    resumed = train(cfg("b"), resume=True)
    a, b = (torch.load(os.path.join(cfg(x).out, CHECKPOINT), weights_only=True) for x in "ab")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert same(strip_time(full.history), strip_time(resumed.history))
    assert same(full.test, resumed.test)
    return full


def test_resume_continues_bit_for_bit(tiny_zoo, tmp_path):
    # 2 steps an epoch (6 relu and 6 tanh triples, batches of 8 of one activation): the
    # warm-up still runs in epoch 3, after the resume.
    full = _resumes_bit_for_bit(lambda out: tiny_run(tiny_zoo, tmp_path / out, warmup_steps=6), 2)
    assert [h["train/lr"] for h in full.history] == pytest.approx([1e-3 * 3 / 6, 1e-3 * 5 / 6, 1e-3])


def test_an_epoch_reads_its_losses_off_the_device_once_and_reports_each_step_s_mean(tiny_zoo, tmp_path, monkeypatch):
    # Each reading of a value on the device waits for a GPU's queue: the epoch's means and
    # the generated CNNs' finiteness are read once at its end, whatever its steps (no
    # step reads, not even mix_loss's check), and the means equal the sums of each step's
    # value read apart (Python floats), weighted by its pairs.
    import wsmerge.train as train_mod

    steps, reads, in_epoch = [], [], []
    step, epoch, item = train_mod._train_step, train_mod._train_epoch, torch.Tensor.item

    def recorded_step(*args):
        loss, terms, finite = step(*args)
        steps.append((len(args[3][0]), item(loss), {k: item(v.mean()) for k, v in terms.items()}))
        assert item(finite) is True
        return loss, terms, finite

    def counted_epoch(*args):
        in_epoch.append(True)
        try:
            return epoch(*args)
        finally:
            in_epoch.pop()

    def counted(reading):
        def read(t, *args):
            # wsmerge's own readings: torch's (an optimizer's step counts, say) may read the host's values.
            caller = sys._getframe(1).f_code.co_filename
            if in_epoch and os.sep + "wsmerge" + os.sep in caller:
                reads.append((sys._getframe(1).f_code.co_name, reading.__name__))
            return reading(t, *args)

        return read

    monkeypatch.setattr(train_mod, "_train_step", recorded_step)
    monkeypatch.setattr(train_mod, "_train_epoch", counted_epoch)
    monkeypatch.setattr(train_mod, "_POSTFIX_SECONDS", float("inf"))
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, counted(getattr(torch.Tensor, name)))
    seen = []
    # Batches of 4 of one activation: 4 steps an epoch (6 relu and 6 tanh triples), the
    # last of each activation 2 pairs.
    train(tiny_run(tiny_zoo, tmp_path / "run", epochs=1, batch_size=4, predictiveness_images=0), report=seen.append)
    assert sorted(n for n, _, _ in steps) == [2, 2, 4, 4]
    scales = json.loads((tmp_path / "run" / "history.json").read_text())["loss_scales"]
    n_pairs = sum(n for n, _, _ in steps)
    expected = {"train/loss": sum(loss * n for n, loss, _ in steps) / n_pairs}
    for k in ("mse", "behavioral"):
        expected[f"train/{k}"] = sum(terms[k] * n for n, _, terms in steps) / n_pairs
        expected[f"train/scaled/{k}"] = sum(terms[k] / scales[k] * n for n, _, terms in steps) / n_pairs
    assert {k: seen[0][k] for k in expected} == expected
    # One reading an epoch, none a step; the batches' rows are drawn on the host, and read there.
    assert [r for r in reads if r[0] not in ("_batches", "_train_batches")] == [("read", "tolist")]


def test_query_images_are_uniform_draws_from_each_pair_s_own_target_classes():
    from scipy import stats

    from wsmerge.data import load_mnist
    from wsmerge.train import _QueryPools, _query_images

    mnist = load_mnist()
    targets = [(0, 1), (2,), (3, 4, 5)]
    pools = _QueryPools({t: mnist.train.indices(t) for t in targets})
    # A pool of three, to count each member's draws against a uniform distribution.
    small = _QueryPools({(2,): mnist.train.indices([2])[:3], (0, 1): mnist.train.indices([0, 1])})
    batch = [targets[i % 3] for i in range(500)]
    data = SimpleNamespace(mnist=mnist, pools=pools)
    images = _query_images(data, batch, 8, torch.Generator().manual_seed(0))
    assert images.shape == (500, 8, 1, 28, 28)
    # Each image is one of its pair's target classes: find it in the training set.
    flat = mnist.train.images.reshape(len(mnist.train.images), -1)
    for pair in (0, 1, 2, 499):
        for image in images[pair]:
            found = (flat == image.reshape(-1)).all(dim=1).nonzero().reshape(-1)
            assert set(mnist.train.labels[found].tolist()) <= set(batch[pair])
    drawn = small.draw([(2,), (0, 1)] * 600, 5, torch.Generator().manual_seed(1))
    assert torch.equal(drawn, small.draw([(2,), (0, 1)] * 600, 5, torch.Generator().manual_seed(1)))
    counts = [(drawn[0::2] == i).sum().item() for i in mnist.train.indices([2])[:3].tolist()]
    assert sum(counts) == 3000 and stats.chisquare(counts).pvalue > 1e-3
    assert set(drawn[1::2].reshape(-1).tolist()) <= set(mnist.train.indices([0, 1]).tolist())


def test_cudnn_times_its_algorithms_while_a_run_trains_and_the_flag_is_restored(tiny_zoo, tmp_path, monkeypatch):
    import wsmerge.train as train_mod

    seen = []

    def killed_step(*args):
        seen.append(torch.backends.cudnn.benchmark)
        raise Crash

    monkeypatch.setattr(train_mod, "_train_step", killed_step)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    with pytest.raises(Crash):
        train(tiny_run(tiny_zoo, tmp_path / "run", epochs=1))
    assert seen == [True] and torch.backends.cudnn.benchmark is False


def test_bad_runs_fail_before_training(tiny_zoo, tmp_path):
    with pytest.raises(ValueError, match="1 distinct target"):
        train(tiny_run(tiny_zoo, tmp_path / "y", pairs={"overlap": 0, "epoch_bins": [2]}))
    assert not (tmp_path / "y").exists()
    with pytest.raises(Exception, match="manifest"):
        train(tiny_run(tmp_path / "nozoo", tmp_path / "z"))

    with pytest.raises(Crash):
        train(tiny_run(tiny_zoo, tmp_path / "run", epochs=1), report=crash_after(1))
    with pytest.raises(FileExistsError, match="--resume"):
        train(tiny_run(tiny_zoo, tmp_path / "run", epochs=1))
    with pytest.raises(ValueError, match=r"another config \(lr: 0.001 there, 0.01 now\)"):
        train(tiny_run(tiny_zoo, tmp_path / "run", lr=0.01), resume=True)
    ck = tmp_path / "run" / CHECKPOINT
    ck.write_bytes(ck.read_bytes()[:1000])
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        train(tiny_run(tiny_zoo, tmp_path / "run"), resume=True)
    torch.save({"model": {}}, ck)
    with pytest.raises(ValueError, match="not a wsmerge training checkpoint"):
        train(tiny_run(tiny_zoo, tmp_path / "run"), resume=True)


def test_a_zoo_checkpoint_with_non_finite_weights_fails_before_training_naming_it(tiny_zoo, tmp_path):
    tables = read_zoo(tiny_zoo)
    cfg = tiny_run(tiny_zoo, tmp_path / "run")
    used = tables.checkpoints.index[tables.checkpoints["epoch_bin"] == 2][0]  # the pairs' epoch bin
    checkpoints = tables.checkpoints.copy()
    bad = checkpoints.at[used, "weights"].copy()
    bad[5] = float("nan")
    checkpoints.at[used, "weights"] = bad
    named = f"{checkpoints.at[used, 'job_id']} at epoch {checkpoints.at[used, 'epoch']}"
    with pytest.raises(ValueError, match=rf"1 checkpoint\(s\) the pairs use hold non-finite weights \({named}\)"):
        train(cfg, zoo=dataclasses.replace(tables, checkpoints=checkpoints))
    assert not (tmp_path / "run").exists()


def test_a_diverging_run_stops_before_its_epoch_is_saved(tiny_zoo, tmp_path, monkeypatch):
    # No step reads whether the generated CNNs are finite; the epoch counts the steps that
    # were not, read with its sums (the progress bar's and the end's), and says so before
    # anything of the epoch is saved.
    import wsmerge.train as train_mod

    merge, calls = train_mod._merge, []

    def diverging(*args, **kw):
        pred, total, terms = merge(*args, **kw)
        if kw.get("check_finite") is False:  # a training step
            calls.append(None)
            if len(calls) in (3, 4):  # both steps of the second epoch
                pred = pred * float("nan")
        return pred, total, terms

    monkeypatch.setattr(train_mod, "_merge", diverging)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"epoch 2: the model generated non-finite weights \(NaN or inf\) in 2 step"):
        train(tiny_run(tiny_zoo, out, batch_size=8))
    assert len(calls) == 4  # batches of one activation: 6 relu and 6 tanh triples, two steps an epoch
    assert torch.load(out / CHECKPOINT, weights_only=True)["epoch"] == 1


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(losses={"mse": 1.0, "msee": 1.0}), "unknown loss 'msee'"),
        (dict(losses={"mse": -1.0}), "finite and >= 0"),
        (dict(model={"preset": "tiny", "d_model": 30, "n_heads": 4}), "n_heads"),
        (dict(epochs=0), "epochs must be"),
        (dict(lr=float("nan")), "lr must be"),
        (dict(warmup_steps=-1), "warmup_steps must be"),
        (dict(pairs={"split": [0.5, 0.5, 0.5]}), "split"),
        (dict(evaluation={"finetune_step": 3}), "finetune_step"),
        (dict(batchsize=3), "unknown keys ['batchsize']"),
        (dict(permutations=-1), "permutations must be an integer >= 0, got -1"),
        (dict(permutations=2.5), "permutations must be an integer, got 2.5"),
        (dict(align="rank"), "align must be one of ['none', 'sort', 'match'], got 'rank'"),
        (dict(pairs={"split_by": "seeds"}), "pairs.split_by must be one of ['auto', 'target', 'pair', 'seed']"),
        (dict(pairs={"split_by": "target", "test_seeds": [1]}), "pairs.test_seeds is [1], but split_by 'target'"),
    ],
)
def test_bad_configs(tmp_path, change, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("(", r"\(")):
        tiny_run(tmp_path, tmp_path / "o", **change)


def test_cli_runs_resumes_and_extends(tiny_zoo, tmp_path, capsys):
    cfg = tiny_run(tiny_zoo, tmp_path / "cli", epochs=1).to_dict()
    path = tmp_path / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump(cfg))
    assert train_one(["--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert "epoch   1" in out and "| generated |" in out and "| average |" in out and "spearman" in out
    assert train_one(["--config", str(path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert train_one(["--config", str(path), "--resume", "--epochs", "2"]) == 0
    assert "epoch   2" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text("zoo: [unclosed\n")
    assert train_one(["--config", str(bad)]) == 2
    assert "malformed YAML" in capsys.readouterr().err


def test_one_resume_rule_and_finished_runs(tiny_zoo, tmp_path, monkeypatch, capsys):
    import stat

    import wsmerge.train as T

    # --resume with no checkpoint starts the run.
    old = os.umask(0o027)
    try:
        first = train(tiny_run(tiny_zoo, tmp_path / "run", epochs=1), resume=True)
    finally:
        os.umask(old)
    assert not first.already_complete and len(first.history) == 1
    # Files get the umask's mode, not mkstemp's 0600; JSON is strict (no bare NaN).
    for name in (CHECKPOINT, "result.json", "history.json", "test_pairs.csv"):
        assert stat.S_IMODE((tmp_path / "run" / name).stat().st_mode) == 0o640, name
    for name in ("result.json", "history.json"):
        json.loads((tmp_path / "run" / name).read_text(), parse_constant=lambda c: pytest.fail(f"{name}: {c}"))

    # A finished run is complete: nothing is trained or evaluated again.
    def no_evaluation(*a, **k):
        raise AssertionError("a finished run was evaluated again")

    monkeypatch.setattr(T, "_evaluate", no_evaluation)
    again = train(tiny_run(tiny_zoo, tmp_path / "run", epochs=1), resume=True)
    assert again.already_complete and same(again.test, first.test) and again.best_epoch == first.best_epoch
    path = tmp_path / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump(tiny_run(tiny_zoo, tmp_path / "run", epochs=1).to_dict()))
    assert train_one(["--config", str(path), "--resume"]) == 0
    assert "is complete (1 epochs, tested epoch 1); nothing to do" in capsys.readouterr().out


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch, capsys):
    import sweeps.train_one as cli

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    path = tmp_path / "run.yaml"
    import yaml

    path.write_text(yaml.safe_dump(tiny_run(tmp_path, tmp_path / "o").to_dict()))
    assert cli.main(["--config", str(path)]) == 130
    err = capsys.readouterr().err
    assert f"python -m sweeps.train_one --config {path} --resume" in err and "Traceback" not in err


def test_runs_share_their_baselines_and_get_their_own_results(tiny_zoo, tmp_path, monkeypatch):
    # A sweep's trials: the first run scores the baselines of each split and stores them; a
    # run with another mix and seed reads them, and gets what it gets evaluating them itself.
    import wsmerge.evaluate as E
    from wsmerge.train import _read_baselines

    evaluation = {"images_per_class": 20, "finetune_steps": 4, "finetune_eval_every": 2, "bootstrap": 0,
                  "merges": ["ties", "ensemble"]}
    cache = tmp_path / "baselines"
    first = dict(evaluation=evaluation, epochs=1, predictiveness_images=0, baseline_cache=str(cache))
    train(tiny_run(tiny_zoo, tmp_path / "a", **first))
    assert sorted(p.name.split("-")[0] for p in cache.iterdir()) == ["test", "val"]
    merged = []
    real = E._merge_group
    monkeypatch.setattr(E, "_merge_group", lambda *a: merged.append(a[0]) or real(*a))
    other = dict(first, losses={"mse": 1.0}, seed=1)
    shared = train(tiny_run(tiny_zoo, tmp_path / "b", **other))
    assert merged == []  # both splits read from the cache
    alone = train(tiny_run(tiny_zoo, tmp_path / "c", **{**other, "baseline_cache": None}))
    assert merged
    assert same(strip_time(shared.history), strip_time(alone.history)) and same(shared.test, alone.test)
    timing = ["merge_seconds"]  # the cache's are the first run's
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "b" / "test_pairs.csv").drop(columns=timing),
                                  pd.read_csv(tmp_path / "c" / "test_pairs.csv").drop(columns=timing))
    # A truncated cache costs the evaluation again (read as empty, then written anew), not the run.
    stored = next(cache.glob("test-*.pt"))
    assert set(_read_baselines(stored, "cpu")) == {"relu", "tanh"}
    stored.write_bytes(stored.read_bytes()[:100])
    with pytest.warns(UserWarning, match="unreadable baselines' cache"):
        assert _read_baselines(stored, "cpu") == {}


# -- permutation augmentation and canonical alignment -------------------------------------------


def _lever_run(zoo, out, **kw):
    """tiny_run with just enough evaluation to run: the levers' tests are about training."""
    cheap = dict(evaluation={"images_per_class": 10, "finetune_steps": 0, "bootstrap": 0, "merges": []},
                 predictiveness_images=0)
    return tiny_run(zoo, out, **{**cheap, **kw})


def test_augmented_and_aligned_run_feeds_copies_of_the_same_functions(tiny_zoo, tmp_path, mnist, monkeypatch):
    import wsmerge.train as T
    from wsmerge.align import align, canonical_perms
    from wsmerge.cnn import batched_forward, permute_units
    from wsmerge.zoo import load, weights_matrix

    fed, generated, evaluated = [], [], []

    def augment(weights, perms):
        fed.append((weights, permute_units(weights, perms)))
        return fed[-1][1]

    def generate(*a, **k):
        out, losses = T_generate(*a, **k)
        generated.append(out)
        return out, losses

    def evaluate(gen, w1, w2, w3, *a, **k):
        evaluated.append((gen, w1, w2, w3))
        return T_evaluate(gen, w1, w2, w3, *a, **k)

    T_generate, T_evaluate = T._generate, T.evaluate_merges
    monkeypatch.setattr(T, "permute_units", augment)
    monkeypatch.setattr(T, "_generate", generate)
    monkeypatch.setattr(T, "evaluate_merges", evaluate)
    train(_lever_run(tiny_zoo, tmp_path / "run", epochs=1, permutations=3, align="sort"))

    zoo = load(tiny_zoo)
    W = torch.from_numpy(weights_matrix(zoo))
    aligned = align(W, canonical_perms(W, "sort"))  # each zoo CNN in canonical order, computed apart
    images = mnist.test.images[:32]
    # w1 and w2 of the 2 scaling and the 2 training batches; validation and test inputs never.
    assert len(fed) == 8
    copies: dict[int, set] = {}
    for inputs, copy in fed:
        rows = [int(torch.nonzero((aligned == w).all(1))[0]) for w in inputs]  # the aligned zoo CNNs
        (act,) = set(zoo["activation"].iloc[rows])
        torch.testing.assert_close(batched_forward(copy, images, act), batched_forward(inputs, images, act),
                                   rtol=1e-5, atol=1e-5)
        for r, c in zip(rows, copy):
            copies.setdefault(r, set()).add(tuple(c.tolist()))
    assert any(len(c) > 1 for c in copies.values()) and all(len(c) <= 4 for c in copies.values())
    # The baselines see the zoo's own CNNs; the model's CNNs come out in their target's order.
    assert len(evaluated) == len(generated) == 2  # validation, test
    for (out, w1, w2, w3), model_order in zip(evaluated, generated):
        rows = [int(torch.nonzero((W == w).all(1))[0]) for w in w3]
        assert all(any((W == w).all(1)) for w in torch.cat([w1, w2]))
        assert torch.equal(align(out, canonical_perms(W[rows], "sort")), model_order)


@pytest.mark.parametrize("method", ["sort", "match"])
def test_alignment_is_a_copy_of_the_zoo_in_canonical_order(tiny_zoo, tmp_path, mnist, method):
    import wsmerge.train as T
    from wsmerge.cnn import batched_forward
    from wsmerge.pairs import SPLITS
    from wsmerge.zoo import load, weights_matrix

    cfg = _lever_run(tiny_zoo, tmp_path / "run", align=method)
    data = T._load_data(cfg, torch.device("cpu"), None)
    zoo = load(tiny_zoo)
    W = torch.from_numpy(weights_matrix(zoo))
    assert torch.equal(data.weights, W)
    used = torch.from_numpy(np.unique(np.concatenate([i for s in SPLITS for i in data.pairs.indices(s)])))
    assert (data.inputs[used] != W[used]).any(1).all()
    images = mnist.test.images[:32]
    for act in ("relu", "tanh"):
        rows = used[torch.from_numpy(zoo["activation"].iloc[used.numpy()].to_numpy() == act)]
        torch.testing.assert_close(batched_forward(data.inputs[rows], images, act),
                                   batched_forward(W[rows], images, act), rtol=1e-5, atol=1e-5)
    for s in SPLITS:
        model_order = data.pairs.tensors(s, data.inputs)[2]
        assert torch.equal(data.target_order(s, model_order), data.pairs.tensors(s, data.weights)[2])


def test_augmented_aligned_run_resumes_bit_for_bit(tiny_zoo, tmp_path):
    _resumes_bit_for_bit(lambda out: _lever_run(tiny_zoo, tmp_path / out, epochs=2, permutations=3, align="sort"), 1)
