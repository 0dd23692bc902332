import math

import numpy as np
import pytest
import torch

import wsmerge.cnn
from wsmerge.cnn import CNN, batched_forward, forward_chunks, init_weights, unflatten
from wsmerge.zoo import (
    EarlyStopping,
    Job,
    TrainConfig,
    ZooConfig,
    ZooStore,
    bin_sources,
    compile_seconds,
    cyclic_lr,
    load,
    plan_build,
    plan_groups,
    train_group,
    train_images,
)
from wsmerge.zoo._store import record_table
from wsmerge.zoo._train import _accuracy, _adam_step, _draw_batches, _padded, _Schedule, step_width


def _stops(seq, patience=3, margin=0.05):
    es = EarlyStopping(patience, margin)
    for epoch, acc in enumerate(seq, start=1):
        if es.update(acc):
            return epoch
    return None


def test_early_stopping_on_scripted_sequences():
    # Three consecutive epochs within 0.05 points of the previous one: stop at the third.
    assert _stops([90.0, 95.0, 95.02, 95.05, 95.01, 99.0]) == 5
    # A jump resets the count.
    assert _stops([90.0, 90.01, 90.02, 92.0, 92.03, 92.0, 92.04]) == 7
    # Exactly the margin counts as stagnating; just above it does not.
    assert _stops([50.0, 50.05, 50.10, 50.15]) == 4
    assert _stops([50.0, 50.06, 50.12, 50.18]) is None
    # Falling accuracy is a change too.
    assert _stops([80.0, 79.0, 78.0, 77.0]) is None
    assert _stops([80.0, 80.0, 80.0], patience=2) == 3


def test_bins_filled_after_early_stop():
    bins = (11, 16, 21, 26, 31, 36)
    assert bin_sources(bins, 40) == list(bins)
    assert bin_sources(bins, 18) == [11, 16, 18, 18, 18, 18]
    assert bin_sources(bins, 5) == [5] * 6


@pytest.mark.parametrize("half", [1, 3, 7])
def test_cyclic_lr_matches_torch(half):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=1e-4)
    sched = torch.optim.lr_scheduler.CyclicLR(opt, 1e-4, 3e-3, step_size_up=half, mode="triangular")
    for step in range(5 * half + 3):
        assert cyclic_lr(step, 1e-4, 3e-3, half) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-9)
        opt.step()
        sched.step()


def test_models_sharing_init_start_from_the_same_weights(mnist):
    cfg = TrainConfig(max_epochs=1, bins=(1,), train_per_class=1, eval_per_class=10, batch_size=1,
                      base_lr=1e-12, max_lr=1e-12)
    a, b = train_group([Job((0, 1), "tanh", "normal", 3), Job((5, 6, 7), "tanh", "normal", 3)], mnist, cfg)
    np.testing.assert_allclose(a.checkpoints[1][0], b.checkpoints[1][0], atol=1e-8)


def test_early_stopped_model_fills_later_bins(mnist):
    # margin 100 points: every epoch after the first "stagnates", so patience 1 stops at epoch 2.
    cfg = TrainConfig(max_epochs=4, bins=(1, 3, 4), patience=1, margin=100.0,
                      train_per_class=100, eval_per_class=50)
    job = Job((3, 8), "gelu", "kaiming_uniform", 0)
    (rec,) = train_group([job], mnist, cfg)
    assert rec.early_stopped and rec.stopped_epoch == 2
    assert len(rec.val_acc) == 2 and sorted(rec.checkpoints) == [1, 2]
    table = record_table(rec, cfg.bins).to_pydict()
    assert table["epoch_bin"] == [1, 3, 4]
    assert table["epoch"] == [1, 2, 2]
    assert table["weights"][1] == table["weights"][2]
    assert table["weights"][0] != table["weights"][1]


def test_training_learns(mnist):
    cfg = TrainConfig(max_epochs=2, bins=(2,), train_per_class=2000, eval_per_class=500)
    (rec,) = train_group([Job((0, 1), "relu", "kaiming_uniform", 0)], mnist, cfg)
    _, acc_in, acc_out = rec.checkpoints[2]
    assert acc_in > 97.0
    assert acc_out == 0.0  # a 2-class model only ever predicts its own classes
    assert rec.train_loss[1] < rec.train_loss[0]


def test_cudnn_times_its_algorithms_while_a_group_trains_and_the_flag_is_restored(mnist, monkeypatch):
    import wsmerge.zoo._train as train

    seen = []

    def step_loss(*args):
        seen.append(torch.backends.cudnn.benchmark)
        if len(seen) == 2:
            raise RuntimeError("killed mid-epoch")
        return step(*args)

    step = train._step_loss
    monkeypatch.setattr(train, "_step_loss", step_loss)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    cfg = TrainConfig(max_epochs=1, bins=(1,), train_per_class=64, eval_per_class=10)
    with pytest.raises(RuntimeError, match="killed mid-epoch"):
        train_group([Job((0, 1), "relu", "kaiming_uniform", 0)], mnist, cfg)
    assert seen == [True, True]
    assert torch.backends.cudnn.benchmark is False


def test_an_epoch_s_batches_are_each_model_s_own_permutation_cut_into_its_steps():
    # Models of three image counts (one under a batch), two sharing a class set, one past
    # its epoch after a step: each model's batches, built apart from its own permutation.
    rng = np.random.default_rng(0)
    sets = [torch.from_numpy(np.sort(rng.choice(60000, n, replace=False))) for n in (130, 64, 200, 7)]
    job_sets = [0, 1, 2, 3, 0, 2]
    lengths = [len(sets[s]) for s in job_sets]
    steps = np.array([math.ceil(n / 64) for n in lengths])
    steps[4] = 1
    gens = lambda: [torch.Generator().manual_seed(100 + i) for i in range(len(job_sets))]  # noqa: E731
    got = _draw_batches([sets[s] for s in job_sets], steps, 64, gens())
    assert got.shape == (6, 4, 64)
    for k, (s, gen) in enumerate(zip(job_sets, gens())):
        perm = sets[s][torch.randperm(len(sets[s]), generator=gen)].tolist()
        for step in range(4):
            last = min(step, steps[k] - 1)  # past its epoch: its last batch again
            assert got[k, step].tolist() == [perm[(last * 64 + b) % len(perm)] for b in range(64)], (k, step)


def test_adam_matches_torch_bit_for_bit():
    """The per-model Adam (own step count, own cyclic schedule, rows sitting out steps)
    against torch.optim.Adam + the cyclic schedule on each model alone."""
    torch.manual_seed(0)
    cfg = TrainConfig(max_epochs=3, bins=(3,), cycle_half_epochs=1.0)
    steps = np.array([7, 4, 5])
    sched = _Schedule(steps, cfg)
    w0 = torch.randn(3, 50)
    w, m, v = w0.clone(), torch.zeros_like(w0), torch.zeros_like(w0)
    params = [torch.nn.Parameter(w0[k].clone()) for k in range(3)]
    opts = [torch.optim.Adam([p], lr=cfg.base_lr) for p in params]
    own_steps = [0, 0, 0]
    for epoch in range(1, 4):
        neg_step, bc2, active, _ = sched.epoch(epoch, "cpu")
        for s in range(len(active)):
            grad = torch.randn(3, 50)
            _adam_step(w, m, v, grad, neg_step[s], bc2[s], active[s])
            for k in range(3):
                if s < steps[k]:
                    opts[k].param_groups[0]["lr"] = float(cyclic_lr(own_steps[k], cfg.base_lr, cfg.max_lr, sched.half[k]))
                    params[k].grad = grad[k].clone()
                    opts[k].step()
                    own_steps[k] += 1
                assert torch.equal(params[k].detach(), w[k])
    assert own_steps == [21, 12, 15]


def test_forward_chunks_cover_everything_within_the_budget(monkeypatch):
    monkeypatch.setattr(wsmerge.cnn, "MAX_MODEL_IMAGES", 10)
    for n_models, n_images, budget in [(5, 3, 100), (5, 23, 100), (7, 4, 9), (1, 50, 7), (3, 0, 5)]:
        seen = np.zeros((n_models, n_images), int)
        for ms, ns in forward_chunks(n_models, n_images, budget):
            block = seen[ms, ns]
            assert block.size <= min(budget, 10)
            seen[ms, ns] += 1
        assert (seen == 1).all()


def test_evaluation_in_chunks_equals_one_call(mnist, monkeypatch):
    """A forced small element limit splits the evaluation over models and images; the
    accuracies stay those of one call, and those of the module CNN model by model."""
    torch.manual_seed(0)
    acts = ["gelu", "relu", "relu", "tanh", "tanh"]
    weights = torch.stack([init_weights(a, "kaiming_uniform", s) for s, a in enumerate(acts)]).double()
    weights += 0.05 * torch.randn_like(weights)
    lists = [mnist.val.indices(c, 40) for c in [(0, 1), (2,), (3, 4, 5), (6, 7), (0, 9, 8, 1)]]
    idx, mask = _padded(lists, "cpu")
    whole = _accuracy(weights, mnist.val, idx, mask, acts)
    # On a CPU, calls of default_chunk model-images (1024), which keep the activations near
    # the caches: a test set of 10,000 images runs in 10 calls a model, not one.
    from wsmerge.zoo import _train
    sizes = []
    monkeypatch.setattr(_train, "batched_forward", lambda w, x, a: sizes.append(x.shape[:2]) or batched_forward(w, x, a))
    test = _padded([mnist.test.indices(range(10))], "cpu")
    _accuracy(weights[:1], mnist.test, *test, acts[:1])
    assert sizes == [(1, 1024)] * 9 + [(1, 10000 - 9 * 1024)]
    monkeypatch.setattr(wsmerge.cnn, "MAX_MODEL_IMAGES", 37)
    assert _accuracy(weights, mnist.val, idx, mask, acts) == whole
    for k, i in enumerate(lists):
        model = CNN(acts[k]).double()
        model.load_state_dict(unflatten(weights[k]))
        with torch.no_grad():
            pred = model(mnist.val.images[i].double()).argmax(1)
        assert whole[k] == 100.0 * (pred == mnist.val.labels[i]).sum().item() / len(i)


# Jobs of two activations and three image counts (100, 150 and 200 images: 7, 10 and 13
# steps of 16), dropout, and a margin that stops some models early and not others.
GROUPING = ZooConfig(
    name="grouping", digits=(0, 1, 2, 3), activations=("relu", "tanh"),
    subsets=((0, 1), (1, 2), (2, 3), (0, 1, 2), (1, 2, 3), (0, 1, 2, 3)),
    train=TrainConfig(max_epochs=4, bins=(2, 4), batch_size=16, train_per_class=50, eval_per_class=30,
                      patience=1, margin=3.0, dropout=0.1, cycle_half_epochs=1.0),
)


def _train_all(mnist, jobs, models_per_step):
    groups = plan_groups(jobs, models_per_step, train_images(jobs, GROUPING.train, mnist))
    assert max(len(g) for g in groups) == min(models_per_step, len(jobs))
    return {r.job: r for g in groups for r in train_group(g, mnist, GROUPING.train)}


def _assert_same(a, b):
    assert a.job == b.job
    assert (a.stopped_epoch, a.early_stopped) == (b.stopped_epoch, b.early_stopped)
    assert a.train_loss == b.train_loss and a.val_acc == b.val_acc
    assert sorted(a.checkpoints) == sorted(b.checkpoints)
    for e, (w, acc_in, acc_out) in a.checkpoints.items():
        assert torch.equal(torch.from_numpy(w), torch.from_numpy(b.checkpoints[e][0]))
        assert (acc_in, acc_out) == b.checkpoints[e][1:] or math.isnan(acc_out)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # A group's ops split across threads, and on 2 cores shared with another job every split
    # waits for the busier core: the grouping tests took 60 s on 2 threads, 3 s on 1.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def alone(mnist):
    """Each job trained by itself, touching no global random state."""
    rng = torch.get_rng_state()
    records = _train_all(mnist, GROUPING.jobs(), 1)
    assert torch.equal(torch.get_rng_state(), rng)
    return records


def test_grouping_never_changes_a_model(mnist, alone):
    jobs = GROUPING.jobs()
    assert {r.early_stopped for r in alone.values()} == {True, False}
    assert len({len(r.train_loss) for r in alone.values()}) == 2
    for models_per_step in (3, 12):
        grouped = _train_all(mnist, jobs, models_per_step)
        for job in jobs:
            _assert_same(grouped[job], alone[job])


def test_a_step_narrowed_and_refilled_as_on_a_gpu_changes_no_model(mnist, alone, monkeypatch):
    # A GPU's eager step (--no-compile): narrowed to the group's widths, 12 then 6 then 3
    # here, and refilled with copies of its first row up to the width, activation names
    # included. On a CPU each model with a batch of 16 runs its own forward, so the copies
    # leave every model's bits its own.
    from wsmerge.zoo import _train
    monkeypatch.setattr(_train, "_NARROWEST", 2)
    narrow = _train.step_width
    widths = set()

    def as_on_a_gpu(live, width, exact):
        widths.add((live, narrow(live, width, False)))
        return narrow(live, width, False)

    monkeypatch.setattr(_train, "step_width", as_on_a_gpu)
    grouped = _train_all(mnist, GROUPING.jobs(), 12)
    assert {w for _, w in widths} == {12, 6, 3} and any(live < w for live, w in widths), widths
    for job in GROUPING.jobs():
        _assert_same(grouped[job], alone[job])


def test_killed_build_resumed_with_another_grouping(tmp_path, mnist, alone):
    """Shards written by a build of 4 models a step, killed after two groups; the rest
    trained by a resumed build of 3 a step: the zoo of models trained alone."""
    store = ZooStore(tmp_path / "z", GROUPING).open()
    jobs = GROUPING.jobs()
    for group in plan_groups(jobs, 4, train_images(jobs, GROUPING.train, mnist))[:2]:
        for record in train_group(group, mnist, GROUPING.train):
            store.write(record)
    pending = ZooStore(tmp_path / "z", GROUPING).open().pending()
    assert 0 < len(pending) < len(jobs)
    for group in plan_groups(pending, 3, train_images(pending, GROUPING.train, mnist)):
        for record in train_group(group, mnist, GROUPING.train):
            store.write(record)
    resumed = load(tmp_path / "z")
    expected = ZooStore(tmp_path / "alone", GROUPING).open()
    for record in alone.values():
        expected.write(record)
    reference = load(tmp_path / "alone")
    assert np.array_equal(np.stack(resumed.weights), np.stack(reference.weights))
    assert resumed.drop(columns="weights").equals(reference.drop(columns="weights"))


def _lowbias32(x: int) -> int:
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


def test_dropout_masks_are_the_job_s_own(mnist):
    seeds = torch.tensor([5, 6, 2**40 + 5])
    keep = wsmerge.cnn.dropout_keep(seeds, 1, (64, 8, 12, 12), 0.25)
    # Element i of model m, computed in Python integers.
    for m, i in [(0, 0), (1, 77), (2, 73727)]:
        s = int(seeds[m])
        key = _lowbias32((_lowbias32(s & 0xFFFFFFFF) + (s >> 32)) & 0xFFFFFFFF)
        key = _lowbias32((key + 0x9E3779B9) & 0xFFFFFFFF)
        assert keep[m].flatten()[i].item() == (_lowbias32((key + i) & 0xFFFFFFFF) >= 2**30)
    assert keep.shape == (3, 64, 8, 12, 12)
    assert abs(keep.float().mean().item() - 0.75) < 0.01
    assert torch.equal(keep[1], wsmerge.cnn.dropout_keep(seeds[1:2], 1, (64, 8, 12, 12), 0.25)[0])
    assert (keep[0] != keep[1]).float().mean() > 0.3 and (keep[0] != keep[2]).float().mean() > 0.3
    assert (keep[0] != wsmerge.cnn.dropout_keep(seeds[:1], 2, (64, 8, 12, 12), 0.25)[0]).float().mean() > 0.3


@pytest.mark.parametrize("n, per_step", [(5, 4), (22, 4), (12, 3), (12, 12), (1, 4), (13, 4), (4097, 1024), (7, 1)])
def test_groups_cover_every_job_in_close_image_counts(n, per_step):
    rng = np.random.default_rng(n)
    jobs = [Job((0, 1), ("relu", "tanh")[i % 2], "kaiming_uniform", i) for i in range(n)]
    images = {j: int(rng.integers(100, 1000)) for j in jobs}
    groups = plan_groups(jobs, per_step, images)
    assert sorted(j for g in groups for j in g) == sorted(jobs)
    assert len(groups) == math.ceil(n / per_step)
    sizes = [len(g) for g in groups]
    assert max(sizes) <= per_step and max(sizes) - min(sizes) <= 1
    counts = [images[j] for g in groups for j in g]
    assert counts == sorted(counts)


def _widths(n: int, narrowest: int) -> list[int]:
    """A group's step widths written out: n, then n halved (rounded down) while at least
    min(n, narrowest)."""
    out = [n]
    while out[-1] // 2 >= min(n, narrowest):
        out.append(out[-1] // 2)
    return out


def test_a_step_narrows_to_the_narrowest_of_its_group_s_widths():
    for n in (1, 5, 256, 1013, 1024, 3039, 4096):
        widths = _widths(n, 256)
        for live in range(1, n + 1):
            assert step_width(live, n, exact=False) == min(w for w in widths if w >= live)
            assert step_width(live, n, exact=True) == live
    assert _widths(1013, 256) == [1013, 506] and _widths(3039, 256) == [3039, 1519, 759, 379]
    assert _widths(256, 256) == [256]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_a_plan_counts_each_step_s_slots_at_its_width(mnist, monkeypatch, device):
    # Two groups of 6 jobs: six of 7 steps of 16 images; four of 10 and two of 13. A CPU's step
    # holds the models still in their epoch, a GPU's narrows to the group's widths (6, 3 here).
    from wsmerge.zoo import _train
    monkeypatch.setattr(_train, "_NARROWEST", 2)
    jobs = GROUPING.jobs()
    images = train_images(jobs, GROUPING.train, mnist)
    plan = plan_build(GROUPING, jobs, 6, mnist, device)
    expected: dict[int, int] = {}
    for group in plan_groups(jobs, 6, images):
        steps = [math.ceil(images[j] / 16) for j in group]
        for s in range(max(steps)):
            live = sum(n > s for n in steps)
            width = live if device == "cpu" else min(w for w in _widths(len(group), 2) if w >= live)
            expected[width] = expected.get(width, 0) + width
    narrowed = {2: 2 * 3} if device == "cpu" else {3: 3 * 3}
    assert plan.slots_by_width == expected == {6: 6 * 7 + 6 * 10, **narrowed}
    # A GPU compiles a step graph a width and one evaluation graph (both groups are 6 wide); a
    # CPU, or a GPU build with compile off (which narrows the same), compiles nothing.
    assert (plan.step_graphs, plan.eval_graphs) == ((0, 0) if device == "cpu" else (2, 1))
    eager = plan_build(GROUPING, jobs, 6, mnist, device, compile=False)
    assert (eager.step_graphs, eager.eval_graphs, eager.slots_by_width) == (0, 0, plan.slots_by_width)
    used = sum(math.ceil(n / 16) for n in images.values())
    assert plan.idle_share == pytest.approx(1 - used / sum(expected.values()))
    assert (plan.idle_share == 0) == (device == "cpu") and plan.groups == 2
    assert plan.model_images == sum(images.values()) * GROUPING.train.last_epoch
    # 30 validation images a class of its own each epoch; at each bin 30 test images of each
    # of the ten digits (its own classes', and the others').
    cfg = GROUPING.train
    assert plan.eval_images == sum(30 * len(j.classes) * cfg.last_epoch + 10 * 30 * len(cfg.bins) for j in jobs)


def test_a_plan_counts_an_evaluation_graph_for_each_call_width(mnist, monkeypatch):
    # 11 jobs, 6 a step: groups of 6 and 5. Evaluation calls hold at most 4 models here, so
    # both groups' calls are 4 wide: one graph; with room for 8, two (6 and 5 wide).
    from wsmerge.zoo import _train
    jobs = GROUPING.jobs()[:11]
    assert sorted(len(g) for g in plan_groups(jobs, 6, train_images(jobs, GROUPING.train, mnist))) == [5, 6]
    monkeypatch.setattr(_train, "_EVAL_IMAGE_STEP", 8)
    for budget, graphs in ((32, 1), (64, 2)):
        monkeypatch.setattr(_train, "_EVAL_MODEL_IMAGES", budget)
        assert plan_build(GROUPING, jobs, 6, mnist, "cuda").eval_graphs == graphs


@pytest.mark.slow
@pytest.mark.parametrize("narrowest", [256, 2])
def test_compiled_step_equals_the_eager_one_as_models_stop(mnist, monkeypatch, narrowest):
    # What a GPU build runs: the step and the evaluation forward through torch.compile,
    # activations as ids, and the rows of stopped models refilled so the compiled shapes
    # hold. Compiled here on the CPU (the CPU build itself stays eager); models stop at
    # epoch 2 while others train on, and wait for bin 3 to be tested with them.
    from torch._dynamo.utils import counters

    from wsmerge.zoo import _train
    jobs = [Job(c, a, "kaiming_uniform", 0) for c, a in (((0, 1), "relu"), ((2, 3, 4), "tanh"), ((5, 6), "gelu"),
                                                        ((1, 7, 8, 9), "relu"), ((3, 4), "silu"), ((0, 9), "sigmoid"))]
    # One step of the group's full width (at most 64 images a model).
    short = TrainConfig(max_epochs=1, bins=(1,), train_per_class=16, eval_per_class=4)
    assert compile_seconds(jobs, mnist, short, compile=True) == (0.0, 0.0)  # a CPU build runs eagerly
    monkeypatch.setattr(_train, "_COMPILE_DEVICES", ("cuda", "cpu"))
    assert compile_seconds(jobs, mnist, short, compile=False) == (0.0, 0.0)
    # A group of 6 models of 2, 3 and 4 steps an epoch: at 2 its step narrows to 3 rows once
    # only the two longer ones step (step_width), a second compiled graph.
    monkeypatch.setattr(_train, "_NARROWEST", narrowest)
    # Evaluation calls of 4 models × 8 images: the group's 6 rows (fewer as models stop)
    # padded to 8, and splits of 8 to 32 images (12 for three classes) cut into calls and
    # padded, at a size a CPU runs in moments.
    monkeypatch.setattr(_train, "_EVAL_IMAGE_STEP", 8)
    monkeypatch.setattr(_train, "_EVAL_MODEL_IMAGES", 32)
    cfg = TrainConfig(max_epochs=5, bins=(3, 5), train_per_class=64, eval_per_class=4, patience=1, margin=0.0)
    eager = train_group(jobs, mnist, cfg)
    torch._dynamo.reset()
    counters.clear()
    # The full-width step's graph and the evaluation's, which the run below reuses: compiling
    # takes seconds, where a step of 6 models and their evaluation take moments; a graph
    # compiled already counts nothing.
    step, evaluate = compile_seconds(jobs, mnist, short, compile=True)
    assert step > 0.2 and evaluate > 0.2, (step, evaluate)
    compiled = train_group(jobs, mnist, cfg, compile=True)
    again = compile_seconds(jobs, mnist, short, compile=True)
    assert max(again) < min(step, evaluate) / 2, (again, step, evaluate)
    # One graph for each step width, one for every evaluation call: three splits of
    # different lengths and a group that shrinks compile nothing more. The plan counts them.
    assert counters["stats"]["unique_graphs"] == (2 if narrowest > 6 else 3), dict(counters["stats"])
    plan = plan_build(ZooConfig(name="six", digits=tuple(range(10)), train=cfg), jobs, 6, mnist, "cpu")
    assert plan.step_graphs + plan.eval_graphs == counters["stats"]["unique_graphs"]
    stopped = [r.stopped_epoch for r in eager]
    assert 2 in stopped and 5 in stopped, stopped  # the refilled rows and the wait were exercised
    for a, b in zip(eager, compiled):
        assert (a.stopped_epoch, a.val_acc, sorted(a.checkpoints)) == (b.stopped_epoch, b.val_acc, sorted(b.checkpoints))
        for epoch, (w, acc_in, acc_out) in a.checkpoints.items():
            np.testing.assert_allclose(b.checkpoints[epoch][0], w, atol=1e-6)
            assert (b.checkpoints[epoch][1], b.checkpoints[epoch][2]) == (acc_in, acc_out)
