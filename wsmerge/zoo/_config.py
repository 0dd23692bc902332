"""What a zoo is made of: the training recipe, the grid of jobs, and the named profiles."""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from wsmerge.config import check_int, check_number, from_dict
from wsmerge.cnn import ACTIVATIONS, check_activation, check_init
from wsmerge.data import check_classes

__all__ = ["Job", "TrainConfig", "ZooConfig", "PROFILES", "profile", "class_key", "parse_class_key"]


def class_key(classes: tuple[int, ...]) -> str:
    """'0-1-3': the one spelling of a class set used in ids, tables and file names."""
    return "-".join(str(c) for c in classes)


def parse_class_key(key: str) -> tuple[int, ...]:
    try:
        return check_classes(int(c) for c in key.split("-"))
    except ValueError as e:
        raise ValueError(f"bad class key {key!r}: {e}") from None


@dataclass(frozen=True)
class TrainConfig:
    """The seed report's recipe (section 3.2): Adam + cyclic LR, cross-entropy, no
    augmentation, up to 40 epochs, early stopping on stagnating validation accuracy."""

    max_epochs: int = 40
    bins: tuple[int, ...] = (11, 16, 21, 26, 31, 36)
    batch_size: int = 64
    base_lr: float = 1e-4
    max_lr: float = 3e-3
    # Half a triangle of the cyclic schedule, in epochs.
    cycle_half_epochs: float = 2.0
    patience: int = 3
    margin: float = 0.05  # percentage points of validation accuracy
    dropout: float = 0.0
    train_per_class: int | None = None  # image budget; None = every image of the class
    eval_per_class: int | None = None  # validation/test budget per class
    # "bf16": forward and loss under bfloat16 autocast on a GPU (weights and Adam stay
    # float32); a CPU always trains in float32, as wsmerge.train does.
    precision: str = "fp32"

    def __post_init__(self):
        for name in ("max_epochs", "batch_size", "patience"):
            check_int(getattr(self, name), f"train.{name}", 1)
        for name in ("train_per_class", "eval_per_class"):
            if getattr(self, name) is not None:
                check_int(getattr(self, name), f"train.{name}", 1)
        for name in ("base_lr", "max_lr", "cycle_half_epochs"):
            check_number(getattr(self, name), f"train.{name}", 0, open_low=True)
        check_number(self.margin, "train.margin", 0)
        check_number(self.dropout, "train.dropout", 0, 1)
        if isinstance(self.bins, (str, bytes)) or not isinstance(self.bins, (list, tuple)):
            raise ValueError(f"train.bins must be a list of epochs, got {self.bins!r}")
        object.__setattr__(self, "bins", tuple(check_int(b, "train.bins[]", 1) for b in self.bins))
        if not self.bins or list(self.bins) != sorted(set(self.bins)):
            raise ValueError(f"train.bins must be increasing positive epochs, got {self.bins}")
        if self.bins[-1] > self.max_epochs:
            raise ValueError(f"train.bins {self.bins} go past max_epochs {self.max_epochs}")
        if self.base_lr > self.max_lr:
            raise ValueError(f"train needs base_lr <= max_lr, got {self.base_lr}, {self.max_lr}")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"train.precision must be fp32 or bf16, got {self.precision!r}")

    @property
    def last_epoch(self) -> int:
        # Epochs after the last bin change nothing that is stored.
        return self.bins[-1]


@dataclass(frozen=True, order=True)
class Job:
    """One training run: a class subset × activation × init × seed."""

    classes: tuple[int, ...]
    activation: str
    init: str
    seed: int

    @property
    def id(self) -> str:
        return f"{self.activation}_{self.init}_s{self.seed}_c{class_key(self.classes).replace('-', '')}"


@dataclass(frozen=True)
class ZooConfig:
    name: str = "tiny"
    digits: tuple[int, ...] = (0, 1, 2)
    min_classes: int = 2
    activations: tuple[str, ...] = ("relu", "tanh")
    inits: tuple[str, ...] = ("kaiming_uniform",)
    seeds: tuple[int, ...] = (0,)
    train: TrainConfig = field(default_factory=TrainConfig)
    # Explicit class sets instead of every subset of `digits` with >= min_classes members.
    subsets: tuple[tuple[int, ...], ...] | None = None

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"zoo.name must be a non-empty string, got {self.name!r}")
        for key in ("digits", "activations", "inits", "seeds"):
            if isinstance(getattr(self, key), (str, bytes)) or not isinstance(getattr(self, key), (list, tuple)):
                raise ValueError(f"zoo.{key} must be a list, got {getattr(self, key)!r}")
        object.__setattr__(self, "digits", check_classes(check_int(d, "zoo.digits[]", 0) for d in self.digits))
        check_int(self.min_classes, "zoo.min_classes", 1)
        acts = tuple(self.activations)
        inits = tuple(self.inits)
        if not acts:
            raise ValueError("zoo.activations is empty")
        if not inits:
            raise ValueError("zoo.inits is empty")
        for a in acts:
            check_activation(a)
        for i in inits:
            check_init(i)
        object.__setattr__(self, "activations", acts)
        object.__setattr__(self, "inits", inits)
        object.__setattr__(self, "seeds", tuple(check_int(s, "zoo.seeds[]", 0) for s in self.seeds))
        if not self.seeds:
            raise ValueError("zoo.seeds is empty")
        if not 1 <= self.min_classes <= len(self.digits):
            raise ValueError(
                f"zoo.min_classes must be between 1 and the {len(self.digits)} digits, got {self.min_classes}"
            )
        if self.subsets is not None:
            subsets = tuple(sorted({check_classes(c) for c in self.subsets}))
            if not subsets:
                raise ValueError("zoo.subsets is empty; leave it out to take every subset of digits")
            for c in subsets:
                if not set(c) <= set(self.digits) or len(c) < self.min_classes:
                    raise ValueError(
                        f"zoo.subsets: {list(c)} is not a subset of digits {list(self.digits)} "
                        f"with >= {self.min_classes} classes"
                    )
            object.__setattr__(self, "subsets", subsets)
        if isinstance(self.train, dict):
            object.__setattr__(self, "train", from_dict(TrainConfig, self.train, "zoo.train"))

    def class_sets(self) -> list[tuple[int, ...]]:
        if self.subsets is not None:
            return sorted(self.subsets, key=lambda c: (len(c), c))
        return [
            c
            for k in range(self.min_classes, len(self.digits) + 1)
            for c in itertools.combinations(self.digits, k)
        ]

    def jobs(self) -> list[Job]:
        return [
            Job(c, a, i, s)
            for a in self.activations
            for i in self.inits
            for s in self.seeds
            for c in self.class_sets()
        ]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return _lists(d)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "zoo config") -> "ZooConfig":
        return from_dict(cls, d, where)

    def replace(self, **changes) -> "ZooConfig":
        return dataclasses.replace(self, **changes)


def _lists(x):
    # Tuples become lists so the manifest's JSON compares equal to a fresh config's.
    if isinstance(x, dict):
        return {k: _lists(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_lists(v) for v in x]
    return x


PROFILES: dict[str, ZooConfig] = {
    # CI and laptops: the 11 class sets of {0,1,2,3} × 2 activations, 3 epochs on 400 images
    # a class. Four digits, not three, so that disjoint parents (overlap 0) exist for merging.
    "tiny": ZooConfig(
        name="tiny",
        digits=(0, 1, 2, 3),
        activations=("relu", "tanh"),
        train=TrainConfig(max_epochs=3, bins=(1, 2, 3), train_per_class=400, eval_per_class=200,
                          cycle_half_epochs=1.0),
    ),
    # A real experiment on a laptop: the 57 class sets of {0,...,5} × relu × two seeds (so a
    # seed can be held out), every image, 8 epochs: two-class models reach >= 98% test
    # accuracy. 114 models, about 6 minutes a seed on 2 cores.
    "small": ZooConfig(
        name="small",
        digits=(0, 1, 2, 3, 4, 5),
        activations=("relu",),
        seeds=(0, 1),
        train=TrainConfig(max_epochs=8, bins=(4, 8)),
    ),
    # The seed report's zoo: every subset of >= 2 digits × 6 activations × kaiming_uniform.
    "full": ZooConfig(
        name="full",
        digits=tuple(range(10)),
        activations=ACTIVATIONS,
        inits=("kaiming_uniform",),
        train=TrainConfig(),
    ),
}


def profile(name: str) -> ZooConfig:
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILES)}")
    return PROFILES[name]


