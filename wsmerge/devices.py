"""How training uses a GPU: host tensors onto it without the host waiting, and cuDNN's
algorithms timed for the CNNs' grouped convolutions.

torch's plain copy of a host tensor onto a GPU synchronizes the stream: the host waits until
every kernel queued so far has run, and the GPU then idles while the host prepares the
next ones. Training draws its random choices on the host (from CPU generators, so a run
draws the same on any device), so every such draw moved per step would cost one of these
waits: a paper-mix step made 9 such copies of draws (the batch's rows, and four layers'
permutations for each of the two views), and one more a pair for its query images.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch

__all__ = ["cudnn_autotuned", "to_device"]


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`. From the host to a GPU through pinned memory, copied asynchronously:
    torch's caching host allocator keeps the pinned block until the copy has run, so the
    host may drop `t` at once. Anywhere else, `t.to(device)`."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def cudnn_autotuned(fn: Callable) -> Callable:
    """`fn` with cuDNN timing its algorithms once per convolution shape, the flag restored
    after: for the zoo's training and the merge model's, whose losses run `batched_forward`.
    On an H200 cuDNN's defaults ran the float32 grouped convolutions of a group (every
    evaluation forward) as one kernel per pair of models, 256 a convolution at 512 models;
    autotuned, bf16 at 1024 models a step trained 1.13× the model-images per epoch (4.84M
    against 4.29M a second), 1.08× at 256 (bench/gpu.py). A GPU run is then not bitwise
    reproducible run to run (the chosen algorithms may differ), which it was not promised
    to be; a CPU has no cuDNN."""

    @functools.wraps(fn)
    def run(*args, **kwargs):
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = True
        try:
            return fn(*args, **kwargs)
        finally:
            torch.backends.cudnn.benchmark = before

    return run
