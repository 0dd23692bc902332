"""Merge-model throughput on this machine, measured side by side in one run.

1. TransformerAE training samples per second (forward, loss mix, backward, clip, AdamW)
   for the `tiny` preset on the CPU, with the structural loss alone and with the paper's mix
   (which runs the generated CNNs on query images). On a GPU, also the `seed` preset in
   bf16 autocast, with its peak memory.
2. Generated CNNs evaluated per second: the evaluation's batched prediction (the batched
   functional forward over chunks of models × images, `wsmerge.evaluate.default_chunk`)
   against a loop over single nn.Module CNNs, on the same weights and images, and the
   median ratio of rounds that alternate between the two.

    .venv/bin/python bench/merge_throughput.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wsmerge.cnn import CNN, N_PARAMS, unflatten
from wsmerge.evaluate import predict
from wsmerge.data import load_mnist
from wsmerge.losses import LossContext, mix_loss, paper_mix, permute_neurons
from wsmerge.model import TransformerAE, n_params, preset
from wsmerge.train import make_optimizer


def _timed(fn, repeats: int, warm: bool = True) -> float:
    if warm:
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def train_rate(preset_name: str, mix: dict[str, float], batch: int, device: str, repeats: int,
               query: int, images: torch.Tensor, *, plain: bool = False, compiled: bool = False) -> float:
    """Training samples per second of the TransformerAE on random pairs, as wsmerge.train
    steps: the contrastive term's permuted views in the pairs' own encoder pass, AdamW fused
    on a GPU, bf16 autocast there. `plain`: the step before those two (a second encoder pass
    for the views, AdamW's default multi-tensor path), for a side-by-side ratio.
    `compiled`: the model's forward through torch.compile (`RunConfig.compile`)."""
    torch.manual_seed(0)
    model = TransformerAE(preset(preset_name)).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4) if plain else make_optimizer(model, 1e-4, 0.01)
    if compiled:
        model.compile()
    w1, w2, w3 = (0.1 * torch.randn(batch, N_PARAMS, device=device) for _ in range(3))
    q = images[:query].to(device)
    gen = torch.Generator().manual_seed(0)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=device == "cuda")
    contrastive = "contrastive" in mix

    def step():
        with autocast:
            views = (permute_neurons(w1, gen), permute_neurons(w2, gen)) if contrastive else None
            out = model(w1, w2, views=None if plain else views)
            aug = out.neck_aug
            if plain and contrastive:
                aug = model.fuse(model.encode(views[0], 0), model.encode(views[1], 1))
        # Float32 for the losses, as wsmerge.train hands them over.
        ctx = LossContext(activation="relu", images=q, sources=(w1, w2), neck=out.neck.float(),
                          neck_aug=None if aug is None else aug.float(),
                          encode=model.encode, fuse=model.fuse, project=model.project, generator=gen)
        total, _ = mix_loss(out.weights.float(), w3, mix, ctx)
        opt.zero_grad(set_to_none=True)
        total.mean().backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if device == "cuda":
            torch.cuda.synchronize()

    return batch / _timed(step, repeats)


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
    structural = train_rate("tiny", {"mse": 1.0}, 32, "cpu", args.repeats, 8, images)
    paper = train_rate("tiny", paper_mix(), 32, "cpu", args.repeats, 8, images)
    print(f"  mse only                                  {structural:8.1f} samples/s")
    print(f"  paper mix (contrastive+mse+behavioral,    {paper:8.1f} samples/s  ({paper / structural:.2f}x of mse only)")
    print("             8 query images per pair)")

    print(f"\ngenerated CNNs evaluated on {len(images)} test images each:")
    for n in (64, 256):
        fast, slow, ratio = eval_rates(n, images, max(3, args.repeats // 2))
        print(f"  {n:4d} CNNs: batched forward {fast:8.1f} CNN/s, loop over modules {slow:8.1f} CNN/s, "
              f"ratio {ratio:.2f}")

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
        rate = train_rate("seed", {"mse": 1.0}, 64, "cuda", args.repeats, 8, images)
        peak = torch.cuda.max_memory_allocated() / 2**30
        print(f"\nseed preset ({n_params('seed'):,} parameters), bf16 autocast, batch 64, "
              f"{torch.cuda.get_device_name()}: {rate:.1f} samples/s, peak memory {peak:.1f} GiB")
    else:
        print("\nno GPU here: the seed preset's bf16 figures need one")


if __name__ == "__main__":
    main()
