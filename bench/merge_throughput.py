"""Merge-model throughput on this machine, measured side by side in one run.

1. TransformerAE training samples per second (wsmerge.train's step: forward, loss mix,
   backward, clip, AdamW) for the `tiny` preset on the CPU, with the structural loss alone
   and with the paper's mix (which runs the generated CNNs on query images), in rounds that
   alternate between the two, and the median of the rounds' cost ratios; the operations
   each step dispatches; each mix's step with AdamW fused (as wsmerge.train runs it)
   against AdamW's default, side by side. On a GPU, also the `seed` preset in bf16
   autocast, with its peak memory.
2. Generated CNNs evaluated per second: the evaluation's batched prediction (the batched
   functional forward over chunks of models × images, `wsmerge.evaluate.default_chunk`)
   against a loop over single nn.Module CNNs, on the same weights and images, and the
   median ratio of rounds that alternate between the two.

    .venv/bin/python bench/merge_throughput.py
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
import warnings
from types import SimpleNamespace

import torch

from wsmerge.cnn import CNN, N_PARAMS, unflatten
from wsmerge.evaluate import predict
from wsmerge.data import load_mnist
from wsmerge.losses import paper_mix
from wsmerge.model import TransformerAE, n_params, preset
from wsmerge.train import RunConfig, _QueryPools, _train_step, make_optimizer


def _timed(fn, repeats: int, warm: bool = True) -> float:
    if warm:
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


class MergeStep:
    """wsmerge.train's training step (`_train_step`: forward in bf16 autocast on a GPU, the
    loss mix in float32, backward, clip, AdamW fused) on `batch` random pairs of relu CNNs,
    each pair with its own query images drawn from `images` every step, as a run draws them
    from its target's classes. `plain`: AdamW's default path instead of the fused one
    (multi-tensor on a GPU, a loop over the parameters on a CPU). `compiled`: the model's
    forward through torch.compile (`RunConfig.compile`)."""

    def __init__(self, preset_name: str, batch: int, device: str, images: torch.Tensor, *,
                 plain: bool = False, compiled: bool = False):
        torch.manual_seed(0)
        self.preset, self.device = preset(preset_name), device
        self.model = TransformerAE(self.preset).to(device)
        params = self.model.parameters()
        self.opt = torch.optim.AdamW(params, lr=1e-4) if plain else make_optimizer(self.model, 1e-4, 0.01)
        if compiled:
            self.model.compile()
        w1, w2, w3 = (0.1 * torch.randn(batch, N_PARAMS, device=device) for _ in range(3))
        self.batch = (torch.arange(batch), w1, w2, w3, "relu", [(0, 1)] * batch)
        # What the step reads of a run's data: the query images and each target's pool of them.
        self.data = SimpleNamespace(mnist=SimpleNamespace(train=SimpleNamespace(images=images.to(device))),
                                    pools=_QueryPools({(0, 1): torch.arange(len(images))}))
        self.gen = torch.Generator().manual_seed(0)
        self.configs: dict[tuple, RunConfig] = {}

    def __call__(self, mix: dict[str, float], steps: int = 1, wait: bool = True) -> None:
        """`steps` training steps with `mix` (unscaled: a term's weight changes no cost),
        then a wait for the device unless `wait` is false."""
        key = tuple(mix.items())
        if key not in self.configs:  # validated once, outside the timed steps
            self.configs[key] = RunConfig(zoo="-", out="-", model=self.preset, losses=mix, loss_scaling="none",
                                          query_images=8)
        cfg = self.configs[key]
        for _ in range(steps):
            _train_step(cfg, self.model, self.opt, self.batch, self.data, self.gen, torch.device(self.device),
                        {k: 1.0 for k in cfg.losses})
        if wait:
            sync(self.device)


def host_waits(step: MergeStep, mix: dict[str, float]) -> int | None:
    """How many times one training step makes the host wait for the GPU (torch's sync debug
    mode: reading a value, a plain copy from the host), None on a CPU. Each wait drains
    the GPU's queue, which then idles while the host prepares the next kernels."""
    if step.device != "cuda":
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step(mix, wait=False)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    sync(step.device)
    return sum("synchronizing" in str(w.message) for w in caught)


def host_ops(step: MergeStep, mix: dict[str, float]) -> int:
    """The operations one training step dispatches (torch's profiler: the operators called
    from Python and by autograd, not those they call in turn), on any device. Where a GPU
    runs a small step faster than the host can queue it, the step's time is about these
    operations' dispatch, so their count against mse alone's is the least its cost can be."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        step(mix)
    return sum(e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))
               for e in prof.events())


@dataclasses.dataclass(frozen=True)
class MixRate:
    rate: float  # training samples per second, median of the rounds
    cost: float  # seconds a step against the first mix's, median of the rounds' ratios
    peak_gib: float  # peak device memory of a step (0 on a CPU)


def mix_rates(step: MergeStep, mixes: dict[str, dict[str, float]], rounds: int, steps: int) -> dict[str, MixRate]:
    """Each mix's rate on the same model, measured side by side (`step_rates`)."""
    return step_rates({label: (step, mix) for label, mix in mixes.items()}, rounds, steps)


def step_rates(runs: dict[str, tuple[MergeStep, dict[str, float]]], rounds: int, steps: int) -> dict[str, MixRate]:
    """Each run's rate (a step and the mix it trains), measured side by side: after a
    warm-up step of each (compiling, allocating), `rounds` rounds of `steps` steps of every
    run in turn, so that a busy spell on a shared machine or a clock change hits all of
    them; each run's cost is the median over rounds of its time against the first run's in
    that round."""
    peaks = {}
    for label, (step, mix) in runs.items():
        cuda = step.device == "cuda"
        step(mix)
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        step(mix)
        peaks[label] = torch.cuda.max_memory_allocated() / 2**30 if cuda else 0.0
    seconds = {label: [] for label in runs}
    for _ in range(rounds):
        for label, (step, mix) in runs.items():
            start = time.perf_counter()
            step(mix, steps)
            seconds[label].append((time.perf_counter() - start) / steps)
    first = seconds[next(iter(runs))]
    return {label: MixRate(len(runs[label][0].batch[0]) / statistics.median(s),
                           statistics.median(a / b for a, b in zip(s, first)), peaks[label])
            for label, s in seconds.items()}


@torch.no_grad()
def eval_rates(n_models: int, images: torch.Tensor, repeats: int) -> tuple[float, float, float]:
    """CNN/s of the batched prediction and of the module loop, and the median of their
    per-round ratios: the two alternate round by round, so a busy spell on this shared
    machine hits both."""
    weights = 0.1 * torch.randn(n_models, N_PARAMS)
    modules = []
    for w in weights:
        m = CNN("relu").eval()
        m.load_state_dict(unflatten(w))
        modules.append(m)

    def batched():
        predict(weights, images, "relu")

    def loop():
        for m in modules:
            m(images).argmax(-1)

    batched(), loop()  # warm-up
    fast, slow = [], []
    for _ in range(repeats):
        fast.append(_timed(batched, 1, warm=False))
        slow.append(_timed(loop, 1, warm=False))
    ratio = statistics.median(s / f for f, s in zip(fast, slow))
    return n_models / statistics.median(fast), n_models / statistics.median(slow), ratio


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeats", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(2)
    mnist = load_mnist()
    images = mnist.test.images[:2000]

    print(f"TransformerAE tiny preset ({n_params('tiny'):,} parameters), batch 32, CPU:")
    step = MergeStep("tiny", 32, "cpu", images)
    mixes = {"mse only": {"mse": 1.0}, "paper mix": paper_mix()}
    rates = mix_rates(step, mixes, args.repeats, 1)
    ops = {label: host_ops(step, mix) for label, mix in mixes.items()}
    print(f"  mse only                                  {rates['mse only'].rate:8.1f} samples/s")
    print(f"  paper mix (contrastive+mse+behavioral,    {rates['paper mix'].rate:8.1f} samples/s  "
          f"(a step costs {rates['paper mix'].cost:.2f}x mse only's,")
    print(f"             8 query images per pair)       median of {args.repeats} alternating rounds)")
    print(f"  operations dispatched a step: mse only {ops['mse only']}, paper mix {ops['paper mix']} "
          f"({ops['paper mix'] / ops['mse only']:.2f}x)")
    plain = MergeStep("tiny", 32, "cpu", images, plain=True)
    for label, mix in mixes.items():
        adamw = step_rates({"fused": (step, mix), "default": (plain, mix)}, args.repeats, 1)
        print(f"  {label}: AdamW fused {adamw['fused'].rate:8.1f} samples/s, its default (a loop over the parameters "
              f"here) {adamw['default'].rate:8.1f}; a step fused costs {1 / adamw['default'].cost:.2f}x the default's")

    print(f"\ngenerated CNNs evaluated on {len(images)} test images each:")
    for n in (64, 256):
        fast, slow, ratio = eval_rates(n, images, max(3, args.repeats // 2))
        print(f"  {n:4d} CNNs: batched forward {fast:8.1f} CNN/s, loop over modules {slow:8.1f} CNN/s, "
              f"ratio {ratio:.2f}")

    if torch.cuda.is_available():
        seed = mix_rates(MergeStep("seed", 64, "cuda", images), {"mse only": {"mse": 1.0}}, args.repeats, 1)["mse only"]
        print(f"\nseed preset ({n_params('seed'):,} parameters), bf16 autocast, batch 64, "
              f"{torch.cuda.get_device_name()}: {seed.rate:.1f} samples/s, peak memory {seed.peak_gib:.1f} GiB")
    else:
        print("\nno GPU here: the seed preset's bf16 figures need one")


if __name__ == "__main__":
    main()
