"""Zoo training throughput: the builder (Ray actors + store) against a plain PyTorch loop.

Both train the same models on the same images for the same epochs with the seed recipe
(Adam, triangular cyclic LR, per-epoch validation, test at the end), on the same cores, in
one run. Throughput is model-images per second: training images seen, summed over models,
divided by wall time. Also prints the accuracy the models reach after 7 epochs, the
accuracy spread of the tiny zoo, and, first, the zoo's evaluation forward in calls of
`wsmerge.cnn.default_chunk` model-images against whole splits a call, side by side.

    .venv/bin/python bench/zoo_throughput.py            # about 5 minutes on 2 cores
    .venv/bin/python bench/zoo_throughput.py --quick    # fewer models, for a smoke run
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import tempfile
import time

import ray
import torch
import torch.nn.functional as F

from wsmerge.cnn import CNN, default_chunk, init_weights, unflatten
from wsmerge.data import load_mnist
from wsmerge.zoo import BuildOptions, Job, TrainConfig, ZooConfig, build_zoo, load, profile
from wsmerge.zoo._train import _accuracy, _padded


def plain_loop(jobs: list[Job], cfg: TrainConfig, threads: int) -> tuple[float, dict[str, float]]:
    """What a researcher would write: one nn.Module at a time, torch's own CyclicLR."""
    torch.set_num_threads(threads)
    data = load_mnist()
    acc = {}
    start = time.perf_counter()
    for job in jobs:
        model = CNN(job.activation)
        model.load_state_dict(unflatten(init_weights(job.activation, job.init, job.seed)))
        idx = data.train.indices(job.classes, cfg.train_per_class)
        steps = math.ceil(len(idx) / cfg.batch_size)
        opt = torch.optim.Adam(model.parameters(), lr=cfg.base_lr)
        sched = torch.optim.lr_scheduler.CyclicLR(
            opt, cfg.base_lr, cfg.max_lr, step_size_up=round(cfg.cycle_half_epochs * steps), cycle_momentum=False
        )
        val = data.val.indices(job.classes, cfg.eval_per_class)
        for _ in range(cfg.last_epoch):
            model.train()
            for b in idx[torch.randperm(len(idx))].split(cfg.batch_size):
                loss = F.cross_entropy(model(data.train.images[b]), data.train.labels[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            with torch.no_grad():
                (model(data.val.images[val]).argmax(1) == data.val.labels[val]).float().mean()
        test = data.test.indices(job.classes, cfg.eval_per_class)
        with torch.no_grad():
            acc[job.id] = 100 * (model(data.test.images[test]).argmax(1) == data.test.labels[test]).float().mean().item()
    return time.perf_counter() - start, acc


def eval_chunks(jobs: list[Job], rounds: int) -> None:
    """The zoo's evaluation of each model (its validation set, its own classes' test images
    and the others', float32, one thread as an actor runs it) in forward calls of
    `default_chunk` model-images against calls of 2**16, the budget it used before (a whole
    split a model a call), side by side; both give the same accuracies."""
    torch.set_num_threads(1)
    data = load_mnist()
    weights = torch.stack([init_weights(j.activation, j.init, j.seed) for j in jobs])
    acts = [j.activation for j in jobs]
    sets = [(split, _padded([get(j.classes) for j in jobs], "cpu"))
            for split, get in ((data.val, data.val.indices), (data.test, data.test.indices),
                               (data.test, data.test.others))]

    def evaluate(chunk: int | None) -> tuple[float, list]:
        start = time.perf_counter()
        acc = [_accuracy(weights, split, idx, mask, acts, chunk=chunk) for split, (idx, mask) in sets]
        return time.perf_counter() - start, acc

    evaluate(None)
    chunked, whole = [], []
    for _ in range(rounds):
        (t, a), (u, b) = evaluate(None), evaluate(2**16)
        assert a == b
        chunked.append(t)
        whole.append(u)
    images = sum(int(mask.sum()) for _, (_, mask) in sets)
    print(f"\nthe zoo's evaluation, {len(jobs)} models on their validation and test sets ({images:,} model-images), "
          f"one thread: calls of {default_chunk('cpu')} model-images {images / statistics.median(chunked):,.0f}/s, "
          f"of 2**16 {images / statistics.median(whole):,.0f}/s; "
          f"ratio {statistics.median(u / t for t, u in zip(chunked, whole)):.2f} (median of {rounds} alternating rounds)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--quick", action="store_true")
    p.add_argument("--epochs", type=int, default=7)
    p.add_argument("--rounds", type=int, default=2,
                   help="alternate (b) and (a) this many times: a busy spell on a shared machine hits both")
    args = p.parse_args()
    cores = len(os.sched_getaffinity(0))
    cfg = TrainConfig(max_epochs=args.epochs, bins=(args.epochs,), patience=args.epochs)
    pairs = ((0, 1), (2, 3), (4, 5), (6, 7)) if not args.quick else ((0, 1), (2, 3))
    jobs = [Job(c, "relu", "kaiming_uniform", 0) for c in pairs] + [Job(tuple(range(10)), "relu", "kaiming_uniform", 0)]
    data = load_mnist()
    images = sum(len(data.train.indices(j.classes)) for j in jobs) * cfg.last_epoch
    print(f"{len(jobs)} models ({len(pairs)} two-class, 1 ten-class), {cfg.last_epoch} epochs, "
          f"{images:,} model-images, {cores} cores")
    eval_chunks(jobs, 5)
    torch.set_num_threads(cores)

    tmp = tempfile.mkdtemp(prefix="zb", dir="/tmp")
    try:
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # a private local instance
        ray.init(num_cpus=cores, include_dashboard=False, _temp_dir=f"{tmp}/r", log_to_driver=False)
        zoo = ZooConfig(name="bench", digits=tuple(range(10)), activations=("relu",), train=cfg,
                        subsets=tuple(j.classes for j in jobs))
        assert sorted(zoo.jobs()) == sorted(jobs)
        # Ray is up before the clock starts (a cluster is long-lived); actor start-up and
        # their MNIST loading are inside the timed build.
        t_a, t_b = [], []
        for r in range(args.rounds):
            t0 = time.perf_counter()
            build_zoo(zoo, f"{tmp}/bench{r}", BuildOptions(actors=cores, cpus_per_actor=1, progress=False))
            t_b.append(time.perf_counter() - t0)
            t, plain_acc = plain_loop(jobs, cfg, cores)
            t_a.append(t)
        built = dict(zip(*[load(f"{tmp}/bench0")[k] for k in ("job_id", "test_acc_in")]))

        print("\n| path | wall s per round | model-images/s (median) |\n|---|---|---|")
        for name, times in ((f"(a) plain one-model loop, {cores} threads", t_a),
                            (f"(b) zoo builder, {cores} Ray actors × 1 CPU + store", t_b)):
            print(f"| {name} | {', '.join(f'{t:.1f}' for t in times)} | {images / statistics.median(times):,.0f} |")
        ratio = statistics.median(a / b for a, b in zip(t_a, t_b))
        print(f"\nratio (b)/(a) = {ratio:.2f}, median over {args.rounds} rounds  (requirement: >= 0.90)")

        print(f"\ntest accuracy on own classes after {cfg.last_epoch} epochs (builder | plain loop):")
        for j in jobs:
            print(f"  {j.id:40s} {built[j.id]:6.2f}% | {plain_acc[j.id]:6.2f}%")
        two = min(built[j.id] for j in jobs if len(j.classes) == 2)
        ten = built[jobs[-1].id]
        print(f"  worst 2-class {two:.2f}% (>= 98.5 required), 10-class {ten:.2f}% (>= 96 required)")

        tiny = profile("tiny")
        t0 = time.perf_counter()
        build_zoo(tiny, f"{tmp}/tiny", BuildOptions(actors=cores, progress=False))
        df = load(f"{tmp}/tiny")
        last = df[df.epoch_bin == df.epoch_bin.max()]
        print(f"\ntiny zoo: {len(df)} rows in {time.perf_counter() - t0:.1f} s; test accuracy on own classes "
              f"at epoch {tiny.train.last_epoch} by class count (min / median / max):")
        for n, g in last.groupby("n_classes"):
            print(f"  {n} classes: {g.test_acc_in.min():.1f} / {g.test_acc_in.median():.1f} / {g.test_acc_in.max():.1f}%")
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
