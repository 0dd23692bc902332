"""The zoo's 2464-parameter MNIST CNN: module form, flat-vector form, and one batched
functional forward shared by zoo training, the losses and the evaluation.

Conv2d(1→8, 5×5) → MaxPool(2) → act → Conv2d(8→6, 5×5) → MaxPool(2) → act
→ Conv2d(6→4, 2×2) → act → Flatten → Linear(36→20) → act → Linear(20→10).

The head is 10-way for every class subset, so every zoo model has exactly 2464 parameters
and the flat vectors of all models line up position by position.
"""

from __future__ import annotations

import functools
import itertools
import math
import zlib
from typing import Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from wsmerge.devices import to_device

__all__ = [
    "ACTIVATIONS",
    "INITS",
    "LAYER_SHAPES",
    "LOOP_IMAGES",
    "N_PARAMS",
    "MAX_MODEL_IMAGES",
    "HIDDEN_SIZES",
    "HIDDEN_UNITS",
    "CNN",
    "activation_fn",
    "batched_forward",
    "check_activation",
    "check_init",
    "conv1_im2col",
    "default_chunk",
    "dropout_keep",
    "flatten",
    "forward_chunks",
    "init_weights",
    "layer_slices",
    "permute_units",
    "unflatten",
]

ACTIVATIONS: tuple[str, ...] = ("gelu", "relu", "silu", "leakyrelu", "sigmoid", "tanh")
INITS: tuple[str, ...] = (
    "xavier_uniform",
    "xavier_normal",
    "uniform",
    "normal",
    "kaiming_normal",
    "kaiming_uniform",
)

# (name, shape) in state_dict order: this order defines the flat vector.
LAYER_SHAPES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("conv1.weight", (8, 1, 5, 5)),
    ("conv1.bias", (8,)),
    ("conv2.weight", (6, 8, 5, 5)),
    ("conv2.bias", (6,)),
    ("conv3.weight", (4, 6, 2, 2)),
    ("conv3.bias", (4,)),
    ("fc1.weight", (20, 36)),
    ("fc1.bias", (20,)),
    ("fc2.weight", (10, 20)),
    ("fc2.bias", (10,)),
)
N_PARAMS: int = sum(math.prod(s) for _, s in LAYER_SHAPES)
assert N_PARAMS == 2464


def layer_slices() -> dict[str, slice]:
    """Where each tensor lives in the flat vector."""
    out, start = {}, 0
    for name, shape in LAYER_SHAPES:
        n = math.prod(shape)
        out[name] = slice(start, start + n)
        start += n
    return out


_SLICES = layer_slices()

# Hidden layers whose units can be permuted without changing the function (max-pooling and
# the activations act channel-wise): (producer tensors, consumer weight, unit size in the
# consumer's input dimension). conv3's 4 channels feed fc1 as 4 blocks of 3×3 = 9 columns.
HIDDEN_UNITS: tuple[tuple[tuple[str, ...], str, int], ...] = (
    (("conv1.weight", "conv1.bias"), "conv2.weight", 1),
    (("conv2.weight", "conv2.bias"), "conv3.weight", 1),
    (("conv3.weight", "conv3.bias"), "fc1.weight", 9),
    (("fc1.weight", "fc1.bias"), "fc2.weight", 1),
)
HIDDEN_SIZES: tuple[int, ...] = tuple(dict(LAYER_SHAPES)[producers[0]][0] for producers, _, _ in HIDDEN_UNITS)


def permute_units(weights: torch.Tensor, perms: Sequence[torch.Tensor]) -> torch.Tensor:
    """[B, 2464] CNNs with their hidden units reordered: perms[k] [B, HIDDEN_SIZES[k]] (or
    [HIDDEN_SIZES[k]] for every row) says, for hidden layer k, which old unit each new unit
    is. The function computed is unchanged.

    One gather on the weights' device, with an index made in a handful of operations from
    `_unit_tables`: a step's host work on a GPU is an operation's dispatch, and the
    contrastive loss permutes two batches every step (built layer by layer, the index took
    about 50 operations)."""
    if weights.dim() != 2 or weights.shape[1] != N_PARAMS:
        raise ValueError(f"weights must be [B, {N_PARAMS}], got {tuple(weights.shape)}")
    if len(perms) != len(HIDDEN_UNITS):
        raise ValueError(f"one permutation per hidden layer ({len(HIDDEN_UNITS)}), got {len(perms)}")
    b, device = weights.shape[0], weights.device
    for k, (p, n) in enumerate(zip(perms, HIDDEN_SIZES)):
        if p.shape not in ((n,), (b, n)):
            raise ValueError(f"perms[{k}] must be [{n}] or [{b}, {n}], got {tuple(p.shape)}")
    # Every layer's permutations side by side, and a column of zeros (which makes the table
    # int64) for the positions no permutation moves: made where the permutations are, copied
    # to the weights' device once. No operation that would leave a tensor as it is.
    where = perms[0].device if all(p.device == perms[0].device for p in perms) else device
    here = [p if p.device == where else to_device(p, where) for p in perms]
    units = torch.cat([p if p.dim() == 2 else p.expand(b, -1) for p in here]
                      + [torch.zeros(b, 1, dtype=torch.long, device=where)], dim=1)
    base, columns, strides = _unit_tables(device)
    moved = to_device(units, device).gather(1, columns.expand(b, -1)).view(b, 2, N_PARAMS)
    return weights.gather(1, base + (moved * strides).sum(dim=1))


@functools.cache
def _unit_tables(device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """For each position of the flat vector, where its value comes from under permutations
    `units` (`permute_units`'s table: the layers' permutations side by side, then a zero):
    base + units[c_out]·s_out + units[c_in]·s_in, with c_out the column of the hidden unit
    the position belongs to as an output (a producer's row) and c_in as an input (a
    consumer's columns), s their strides in the flat vector; the zero column with stride 0
    where a position is no hidden unit's. Returns (base [N], [c_out | c_in] [2N], [2, N] strides)."""
    shapes = dict(LAYER_SHAPES)
    base = torch.arange(N_PARAMS)
    columns = torch.full((2, N_PARAMS), sum(HIDDEN_SIZES))
    strides = torch.zeros(2, N_PARAMS, dtype=torch.long)
    offsets = itertools.accumulate(HIDDEN_SIZES, initial=0)
    for (producers, consumer, unit), offset in zip(HIDDEN_UNITS, offsets):
        for side, name, dim, size in [(0, n, 0, 1) for n in producers] + [(1, consumer, 1, unit)]:
            shape, where = shapes[name], _SLICES[name]
            step = size * math.prod(shape[dim + 1:])  # positions between one unit and the next
            which = torch.arange(math.prod(shape)).div(step, rounding_mode="floor") % (shape[dim] // size)
            columns[side, where] = offset + which
            strides[side, where] = step
            base[where] -= which * step
    return base.to(device), columns.reshape(-1).to(device), strides.to(device)


def check_activation(name: str) -> str:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {', '.join(ACTIVATIONS)}")
    return name


def check_init(name: str) -> str:
    if name not in INITS:
        raise ValueError(f"unknown init {name!r}; known: {', '.join(INITS)}")
    return name


def activation_fn(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    check_activation(name)
    return {
        "gelu": F.gelu,
        "relu": F.relu,
        "silu": F.silu,
        "leakyrelu": F.leaky_relu,
        "sigmoid": torch.sigmoid,
        "tanh": torch.tanh,
    }[name]


class CNN(nn.Module):
    """Module form, used as the reference the functional forward is tested against."""

    def __init__(self, activation: str = "relu", dropout: float = 0.0):
        super().__init__()
        self.act = activation_fn(activation)
        self.dropout = dropout
        self.conv1 = nn.Conv2d(1, 8, 5)
        self.conv2 = nn.Conv2d(8, 6, 5)
        self.conv3 = nn.Conv2d(6, 4, 2)
        self.fc1 = nn.Linear(36, 20)
        self.fc2 = nn.Linear(20, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        drop = lambda t: F.dropout(t, self.dropout, self.training)  # noqa: E731
        x = self.act(drop(F.max_pool2d(self.conv1(x), 2)))
        x = self.act(drop(F.max_pool2d(self.conv2(x), 2)))
        x = self.act(self.conv3(x)).flatten(1)
        x = drop(self.act(self.fc1(x)))
        return self.fc2(x)


def flatten(state: dict[str, torch.Tensor]) -> torch.Tensor:
    """state_dict (or any mapping with the CNN's tensor names) → flat [2464] vector."""
    missing = [n for n, _ in LAYER_SHAPES if n not in state]
    if missing:
        raise KeyError(f"state dict lacks {missing}")
    return torch.cat([state[n].reshape(-1) for n, _ in LAYER_SHAPES])


def unflatten(flat: torch.Tensor) -> dict[str, torch.Tensor]:
    """Flat [..., 2464] → tensors in state_dict order (views, leading dims kept)."""
    if flat.shape[-1] != N_PARAMS:
        raise ValueError(f"expected a last dimension of {N_PARAMS}, got shape {tuple(flat.shape)}")
    lead = flat.shape[:-1]
    # One split, not a slice each: its backward is one operation where the slices' were
    # twenty (a zero-filled gradient each, summed), kernels on a GPU in every eager step
    # of the losses that run the generated CNNs.
    parts = flat.split([math.prod(s) for _, s in LAYER_SHAPES], dim=-1)
    return {n: t.reshape(*lead, *s) for (n, s), t in zip(LAYER_SHAPES, parts)}


def _fan_in_out(shape: tuple[int, ...]) -> tuple[int, int]:
    receptive = math.prod(shape[2:]) if len(shape) > 2 else 1
    return shape[1] * receptive, shape[0] * receptive


def _init_tensor(shape: tuple[int, ...], init: str, gen: torch.Generator) -> torch.Tensor:
    fan_in, fan_out = _fan_in_out(shape)
    if init == "xavier_uniform":
        a = math.sqrt(6.0 / (fan_in + fan_out))
        return (torch.rand(shape, generator=gen) * 2 - 1) * a
    if init == "xavier_normal":
        return torch.randn(shape, generator=gen) * math.sqrt(2.0 / (fan_in + fan_out))
    # "uniform" and "normal" are scaled by fan-in (LeCun), because unit-scale draws make
    # a sigmoid/tanh CNN saturate before its first step and the zoo would hold dead models.
    if init == "uniform":
        a = 1.0 / math.sqrt(fan_in)
        return (torch.rand(shape, generator=gen) * 2 - 1) * a
    if init == "normal":
        return torch.randn(shape, generator=gen) / math.sqrt(fan_in)
    if init == "kaiming_normal":
        return torch.randn(shape, generator=gen) * math.sqrt(2.0 / fan_in)
    if init == "kaiming_uniform":
        a = math.sqrt(6.0 / fan_in)
        return (torch.rand(shape, generator=gen) * 2 - 1) * a
    raise AssertionError(init)


def init_weights(activation: str, init: str, seed: int) -> torch.Tensor:
    """The epoch-0 flat vector of (activation, init, seed); biases start at zero.

    Deterministic across machines and processes (its own generator, a stable hash of the
    key), so every model sharing the key starts from exactly the same point.
    """
    check_activation(activation)
    check_init(init)
    gen = torch.Generator().manual_seed(zlib.crc32(f"{activation}|{init}|{int(seed)}".encode()))
    parts = []
    for name, shape in LAYER_SHAPES:
        if name.endswith(".bias"):
            parts.append(torch.zeros(shape))
        else:
            parts.append(_init_tensor(shape, init, gen))
    return torch.cat([p.reshape(-1) for p in parts])


# On a CPU, models that see this many images or more run one by one (batched_forward).
LOOP_IMAGES = 16

# torch's convolution kernels index with 32-bit integers: on CUDA a call whose input or
# output passes 2**31 elements raises (`canUse32BitIndexMath`). The widest activation is the
# first convolution's output, 8 × 24 × 24 elements per model-image, so this many
# model-images fit in one forward call.
MAX_MODEL_IMAGES = (2**31 - 1) // (8 * 24 * 24)


def default_chunk(device: torch.device | str) -> int:
    """Model×image evaluations per forward call on `device`.

    The first convolution's output takes 18 KB per model×image in float32. A GPU wants large
    calls (32768: 600 MB); a CPU is bound by memory traffic, and calls whose activations stay
    near its caches (1024: 18 MB) ran faster than calls of 32768 (bench/merge_throughput.py;
    the zoo's evaluation of models on their validation and test sets, one thread: 2.0-2.3x
    the model-images a second in calls of 1024 as in one call a split, bench/zoo_throughput.py).
    """
    return 32768 if torch.device(device).type == "cuda" else 1024


def forward_chunks(n_models: int, n_images: int, model_images: int) -> Iterator[tuple[slice, slice]]:
    """(models, images) slices that cover n_models × n_images in forward calls of at most
    `model_images` model-images, never more than `MAX_MODEL_IMAGES`: as many images per call
    as fit, then as many models."""
    budget = max(1, min(model_images, MAX_MODEL_IMAGES))
    n_step = max(1, min(n_images, budget))
    m_step = max(1, budget // n_step)
    for m0 in range(0, n_models, m_step):
        for n0 in range(0, n_images, n_step):
            yield slice(m0, m0 + m_step), slice(n0, n0 + n_step)


_M32 = 0xFFFFFFFF


def _mul32(a: torch.Tensor, c: int) -> torch.Tensor:
    # a * c mod 2**32 for int64 `a` in [0, 2**32), in halves so that no product overflows int64.
    return ((a & 0xFFFF) * c + ((((a >> 16) * c) & 0xFFFF) << 16)) & _M32


def _hash32(h: torch.Tensor) -> torch.Tensor:
    # "lowbias32" (C. Wellons): a full-avalanche 32-bit mix, integer ops only, so every device
    # computes the same bits.
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def dropout_keep(seeds: torch.Tensor, layer: int, shape: tuple[int, ...], p: float) -> torch.Tensor:
    """Dropout masks [M, *shape] (True = kept, probability 1 - p): model m's mask is a hash
    of (seeds[m] (int64), layer, element index) alone, so it does not depend on the other
    models of the call, on the device, or on torch's global generator."""
    seeds = seeds.long()
    n = math.prod(shape)
    key = _hash32((_hash32(seeds & _M32) + (seeds >> 32)) & _M32)
    key = _hash32((key + layer * 0x9E3779B9) & _M32)
    h = _hash32((key.unsqueeze(1) + torch.arange(n, device=seeds.device)) & _M32)
    return (h >= round(p * 2**32)).view(len(seeds), *shape)


def _grouped_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    # x: [N, M*Cin, H, W]; w: [M, Cout, Cin, k, k]; one conv call for all M models.
    m, cout = w.shape[:2]
    if x.device.type != "cpu":
        return F.conv2d(x, w.reshape(m * cout, *w.shape[2:]), b.reshape(m * cout), groups=m)
    # oneDNN adds a bias with another kernel once a call has 64 output channels or more,
    # so a model's output would depend on how many models share the call; added apart, the
    # bias leaves every model's result its own, bit for bit.
    y = F.conv2d(x, w.reshape(m * cout, *w.shape[2:]), groups=m)
    return (y.view(len(y), m, cout, *y.shape[2:]) + b.view(1, m, cout, 1, 1)).view(y.shape)


# Values a 5×5 patch of `conv1_im2col` is padded to with zeros (see there).
_PATCH = 32


def conv1_im2col(images: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor) -> torch.Tensor:
    """The first convolution of M models on their own images [M, N, 28, 28], as one batched
    matrix product over the images' 5×5 patches: [N, M·8, 24, 24], as the grouped form gives.
    On a GPU the grouped form runs as a depthwise convolution (one input channel a group),
    whose weight gradient took 43% of a zoo training step on an H200; this form takes its
    weight gradient as one more batched product. A patch's 25 values are padded with zeros
    to 32: rows of 25 bf16 values are not 16-byte aligned, and cuBLAS ran both products with
    an unaligned kernel that took two thirds of a training step's GPU time on an H100
    (bench/gpu.py --profile). Padded, the zoo's bf16 step at 1024 models trained 1.12× the
    model-images an epoch there (bench/gpu.py --levers)."""
    m, n = images.shape[:2]
    patches = F.pad(images.unfold(2, 5, 1).unfold(3, 5, 1).reshape(m, n * 576, 25), (0, _PATCH - 25))
    w = F.pad(w1.reshape(m, 8, 25), (0, _PATCH - 25))
    y = torch.baddbmm(b1.unsqueeze(1), patches, w.transpose(1, 2))  # [M, N·576, 8]
    return y.view(m, n, 24, 24, 8).permute(1, 0, 4, 2, 3).reshape(n, m * 8, 24, 24)


def _activation_runs(activation: str | Sequence[str] | torch.Tensor, m: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The activation of M models side by side, on [N, M*C, H, W] or [M, N, F]."""
    if isinstance(activation, torch.Tensor):
        # Ids into ACTIVATIONS: every function is computed and each model's is picked, so one
        # traced graph serves any mix of activations (eagerly it is slower than runs; under
        # torch.compile the choice fuses into one kernel).
        if activation.shape != (m,):
            raise ValueError(f"{m} weight vectors but activation ids of shape {tuple(activation.shape)}")

        def select(t: torch.Tensor) -> torch.Tensor:
            shape = (1, m, -1) if t.dim() == 4 else (m, -1)
            flat = t.reshape(t.shape[0], m, -1) if t.dim() == 4 else t.reshape(m, -1)
            ids = activation.view(*shape[:-1], 1)
            out = activation_fn(ACTIVATIONS[0])(flat)
            for i, name in enumerate(ACTIVATIONS[1:], 1):
                out = torch.where(ids == i, activation_fn(name)(flat), out)
            return out.view(t.shape)

        return select
    if isinstance(activation, str):
        return activation_fn(activation)
    if len(activation) != m:
        raise ValueError(f"{m} weight vectors but {len(activation)} activations")
    runs, start = [], 0
    for name, group in itertools.groupby(activation):
        n_run = len(list(group))
        runs.append((activation_fn(name), start, start + n_run))
        start += n_run
    if len(runs) == 1:
        return runs[0][0]

    def act(t: torch.Tensor) -> torch.Tensor:
        dim = 1 if t.dim() == 4 else 0  # [N, M*C, H, W] or [M, N, F]
        per = t.shape[dim] // m
        return torch.cat([fn(t.narrow(dim, a * per, (b - a) * per)) for fn, a, b in runs], dim)

    return act


def batched_forward(
    weights: torch.Tensor,
    images: torch.Tensor,
    activation: str | Sequence[str] | torch.Tensor,
    dropout: float = 0.0,
    dropout_seeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """Logits of M CNNs: weights [M, 2464]; images [N, 1, 28, 28] shared by all models, or
    [M, N, 1, 28, 28] one batch per model; `activation` one for all models, one per model,
    or a LongTensor [M] of indices into ACTIVATIONS (for torch.compile: one graph for any
    mix). Returns [M, N, 10].

    Grouped convolutions run all M models in one kernel call per layer (on a GPU the first
    one, on per-model images, as `conv1_im2col`), each run of equal activations one call.
    On a CPU, models with `LOOP_IMAGES` images or more run one by one instead, as an
    nn.Module would: there oneDNN's grouped convolutions took 1.4-3× as long a model (one
    thread: 9.4 against 4.8 ms a training step of 64 images at 32 models; 52 against 18 s
    scoring 420 models on 1,000 shared images), while with a few images a model they were
    up to 7× faster than the loop (one image each: Fisher's per-image gradients). Either
    way a model's result is the same bits whatever shares its call. The result is
    differentiable with respect to both weights and images. Dropout (training) needs
    `dropout_seeds` [M], one per model and call: its masks come from `dropout_keep`.
    """
    if weights.dim() != 2 or weights.shape[1] != N_PARAMS:
        raise ValueError(f"weights must be [M, {N_PARAMS}], got {tuple(weights.shape)}")
    m = weights.shape[0]
    if dropout > 0 and (dropout_seeds is None or dropout_seeds.shape != (m,)):
        raise ValueError(f"dropout {dropout} needs dropout_seeds of shape [{m}]")
    if images.dim() == 5 and images.shape[0] != m:
        raise ValueError(f"{m} weight vectors but {images.shape[0]} image batches")
    if images.dim() not in (4, 5) or tuple(images.shape[-3:]) != (1, 28, 28):
        raise ValueError(f"images must be [N,1,28,28] or [M,N,1,28,28], got {tuple(images.shape)}")
    act = _activation_runs(activation, m)
    if weights.device.type == "cpu" and not isinstance(activation, torch.Tensor):
        names = [activation] * m if isinstance(activation, str) else list(activation)
        if images.shape[-4] >= LOOP_IMAGES:
            seeds = [None] * m if dropout == 0 else dropout_seeds.split(1)
            return torch.stack([
                _one_forward(w, images[k] if images.dim() == 5 else images, names[k], dropout, seeds[k])
                for k, w in enumerate(weights)
            ])
        if m == 1:
            # oneDNN computes a one-group convolution with another algorithm than a grouped
            # one: a lone model runs beside a frozen copy of itself, as it would in a group.
            pair = lambda t: None if t is None else torch.cat([t, t.detach()])  # noqa: E731
            both = pair(images) if images.dim() == 5 else images
            return batched_forward(pair(weights), both, names * 2, dropout, pair(dropout_seeds))[:1]

    p = unflatten(weights)
    if images.dim() == 4:
        n = images.shape[0]
        # Shared images: the first layer is one ordinary convolution with M·8 output channels.
        x = images.reshape(n, 1, 28, 28)
    else:
        n = images.shape[1]
        x = images.reshape(m, n, 28, 28).transpose(0, 1)
    x = x.to(weights.dtype)

    def drop(t: torch.Tensor, layer: int) -> torch.Tensor:
        if dropout == 0:
            return t
        if t.dim() == 4:  # [N, M*C, H, W]: each model's block is [N, C, H, W]
            shape = (n, t.shape[1] // m, *t.shape[2:])
            keep = dropout_keep(dropout_seeds, layer, shape, dropout).transpose(0, 1).reshape(t.shape)
        else:  # [M, N, F]
            keep = dropout_keep(dropout_seeds, layer, tuple(t.shape[1:]), dropout)
        return t * keep / (1 - dropout)

    w1, b1 = p["conv1.weight"], p["conv1.bias"]
    if images.dim() == 4:
        x = F.conv2d(x, w1.reshape(m * 8, 1, 5, 5), b1.reshape(m * 8))
    elif x.device.type != "cpu":
        x = conv1_im2col(x.transpose(0, 1), w1, b1)
    else:
        x = _grouped_conv(x, w1, b1)
    x = act(drop(F.max_pool2d(x, 2), 1))
    x = act(drop(F.max_pool2d(_grouped_conv(x, p["conv2.weight"], p["conv2.bias"]), 2), 2))
    x = act(_grouped_conv(x, p["conv3.weight"], p["conv3.bias"]))  # [N, M*4, 3, 3]
    x = x.reshape(n, m, 36).transpose(0, 1)  # [M, N, 36], channel-major as nn.Flatten
    x = drop(act(torch.baddbmm(p["fc1.bias"].unsqueeze(1), x, p["fc1.weight"].transpose(1, 2))), 3)
    return torch.baddbmm(p["fc2.bias"].unsqueeze(1), x, p["fc2.weight"].transpose(1, 2))


def _one_forward(
    weights: torch.Tensor, images: torch.Tensor, activation: str, dropout: float, seed: torch.Tensor | None
) -> torch.Tensor:
    """One model's logits [N, 10] on images [N, 1, 28, 28]: `batched_forward` for a single
    row, with the same dropout masks (`dropout_keep` of its seed [1])."""
    p = unflatten(weights)
    act = activation_fn(activation)

    def drop(t: torch.Tensor, layer: int) -> torch.Tensor:
        if dropout == 0:
            return t
        return t * dropout_keep(seed, layer, tuple(t.shape), dropout)[0] / (1 - dropout)

    x = images.to(weights.dtype)
    x = act(drop(F.max_pool2d(F.conv2d(x, p["conv1.weight"], p["conv1.bias"]), 2), 1))
    x = act(drop(F.max_pool2d(F.conv2d(x, p["conv2.weight"], p["conv2.bias"]), 2), 2))
    x = act(F.conv2d(x, p["conv3.weight"], p["conv3.bias"])).flatten(1)
    x = drop(act(F.linear(x, p["fc1.weight"], p["fc1.bias"])), 3)
    return F.linear(x, p["fc2.weight"], p["fc2.bias"])
