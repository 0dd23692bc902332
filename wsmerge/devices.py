"""Host tensors onto the device without the host waiting for it.

torch's plain copy of a host tensor onto a GPU synchronizes the stream: the host waits until
every kernel queued so far has run, and the GPU then idles while the host prepares the
next ones. Training draws its random choices on the host (from CPU generators, so a run
draws the same on any device), so every such draw moved per step would cost one of these
waits: a paper-mix step made 9 such copies of draws (the batch's rows, and four layers'
permutations for each of the two views), and one more a pair for its query images.
"""

from __future__ import annotations

import torch

__all__ = ["to_device"]


def to_device(t: torch.Tensor, device: torch.device | str) -> torch.Tensor:
    """`t` on `device`. From the host to a GPU through pinned memory, copied asynchronously:
    torch's caching host allocator keeps the pinned block until the copy has run, so the
    host may drop `t` at once. Anywhere else, `t.to(device)`."""
    device = torch.device(device)
    if device.type != "cuda" or t.device.type != "cpu":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)
