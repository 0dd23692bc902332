"""Merge triples from the zoo (seed report, sections 3.3 and 4.2).

A triple is (CNN1 on C1, CNN2 on C2, target CNN3 on C3 = C1 ∪ C2), all three checkpoints
sharing activation, init, seed and epoch bin. The overlap m = |C1 ∩ C2| is allowed to lie
in `PairConfig.overlap` (an int, or an inclusive [lo, hi] range). Pairs where one parent
already covers the union (C1 ⊆ C2 or C2 ⊆ C1) are excluded: that merge is trivial.

Pairs are unordered: {C1, C2} appears once, with C1 < C2 as sorted tuples (so C1 holds
the lowest digit where they differ), unless `both_orders` adds the swapped copy too (the
TransformerAE's two encoders are not symmetric).

Splits are by target class set C3 (`split_by="target"`): the distinct targets are
shuffled with `seed` and dealt to train/val/test by `split`, so validation and test targets
are class unions the model never saw in training. Tiny zoos may have fewer targets than
splits (digits 0–3 with overlap 0 have a single target, {0,1,2,3}); `split_by="pair"` is
the fallback for them: the unordered class pairs {C1, C2} are dealt instead, so test pairs
are unseen parent combinations (though their target may be seen). Either way every
checkpoint group (activation, init, seed, bin) of one class-level triple lands in the same
split.

A CNN is one zoo row (class set, activation, init, seed, epoch bin), named by its row
position. Splitting by class set still lets one checkpoint serve several splits: a test
target can be a training parent. `Pairs.overlap()` counts such sharing by role, and
`isolation="strict"` removes it: training keeps no triple that touches a CNN of a
validation or test triple, validation none that touches a test CNN; test keeps all of its
triples, so it is the same test set as with `isolation="none"` (the default).

CNNs trained from different zoo seeds differ mostly by a permutation of their hidden units,
so a model can look like it merges while it recalls the CNNs it trained on. `split_by="seed"`
holds whole seeds out: targets are dealt as under "target", then train and val keep only
the triples of `train_seeds` and test only those of `test_seeds` (by default: test the
zoo's largest seed, train and val every other seed), so no test CNN takes part in training
or validation in any role. Training on a test seed too (train_seeds sharing a seed with test_seeds) forces
the test half of strict isolation: train and val drop every triple touching a test CNN.
`split_by="auto"`, the default, is "seed" when the filtered zoo has two or more seeds and
"target" otherwise.

    pairs = make_pairs(df, PairConfig(overlap=0))
    w1, w2, w3 = pairs.tensors("train", weights_matrix(df))
    init = pairs.init_weights("train", wsmerge.zoo.load_init(path))   # for task arithmetic
    pairs["test"]           # DataFrame: cnn1, cnn2, target (row positions in df), c1, c2, c3, ...
    print(pairs.summary())
    pairs.overlap()         # DataFrame: CNNs shared between splits, by role
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd
import torch

from wsmerge.cnn import N_PARAMS, check_activation, check_init
from wsmerge.config import from_dict_with_base
from wsmerge.data import check_classes
from wsmerge.zoo import class_key, parse_class_key, weights_matrix

__all__ = [
    "COLUMNS",
    "ISOLATION",
    "ROLES",
    "SCENARIOS",
    "SPLITS",
    "PairConfig",
    "Pairs",
    "make_pairs",
    "scenario",
]

SPLITS = ("train", "val", "test")
SPLIT_BY = ("auto", "target", "pair", "seed")
ISOLATION = ("none", "strict")
# The roles a CNN plays in a triple, and the columns holding it: parent, target, or either.
_ROLE_COLUMNS = {"input": ("cnn1", "cnn2"), "target": ("target",), "any": ("cnn1", "cnn2", "target")}
ROLES = tuple(_ROLE_COLUMNS)
# (role in the held-out split, role in the split it is compared with) that overlap() reports.
_ROLE_PAIRS = (("any", "any"), ("target", "input"), ("input", "target"), ("input", "input"), ("target", "target"))
# (held-out split, split it must not leak into), in overlap() order.
_SPLIT_PAIRS = (("val", "train"), ("test", "train"), ("test", "val"))
# Columns of each split's DataFrame. cnn1/cnn2/target are row positions (iloc) in the zoo
# frame given to make_pairs, i.e. rows of weights_matrix(df).
COLUMNS = ("cnn1", "cnn2", "target", "c1", "c2", "c3", "overlap", "activation", "init", "seed", "epoch_bin")
_ZOO_COLUMNS = ("classes", "activation", "init", "seed", "epoch_bin")


def _opt_tuple(v: Any, name: str, conv, null: str = "all in the zoo") -> tuple | None:
    if v is None:
        return None
    if isinstance(v, (str, int)):
        v = [v]
    try:
        out = tuple(conv(x) for x in v)
    except (TypeError, ValueError) as e:
        raise ValueError(f"pairs.{name}: {e}") from None
    if not out:
        raise ValueError(f"pairs.{name} is empty; use null for '{null}'")
    return out


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)):
        raise ValueError(f"expected an integer, got {x!r}")
    return int(x)


@dataclass(frozen=True)
class PairConfig:
    """Which merge triples to build and how to split them."""

    overlap: int | tuple[int, int] = 0  # |C1 ∩ C2|: an int, or an inclusive [lo, hi] range
    digits: tuple[int, ...] | None = None  # C1, C2, C3 must lie within these; None = all
    activations: tuple[str, ...] | None = None  # None = every activation in the zoo
    inits: tuple[str, ...] | None = None  # None = every init in the zoo
    seeds: tuple[int, ...] | None = None  # None = every seed in the zoo
    epoch_bins: tuple[int, ...] | None = None  # None = every bin in the zoo
    split: tuple[float, float, float] = (0.7, 0.15, 0.15)  # train, val, test fractions
    # "target": by C3; "pair": by {C1, C2} (tiny zoos); "seed": by C3, and test CNNs from
    # zoo seeds that train and val never see; "auto": "seed" with two or more seeds, else "target".
    split_by: str = "auto"
    test_seeds: tuple[int, ...] | None = None  # split_by seed: test's zoo seeds; None = the largest
    train_seeds: tuple[int, ...] | None = None  # split_by seed: train's and val's; None = every other
    seed: int = 0  # shuffles the split and the max_pairs_per_target sample
    max_pairs_per_target: int | None = None  # cap on class pairs {C1, C2} per C3; None = all
    both_orders: bool = False  # also add (C2, C1) for every (C1, C2)
    isolation: str = "none"  # "strict": no val/test CNN in training, no test CNN in val

    def __post_init__(self):
        ov = self.overlap
        if isinstance(ov, (list, tuple)):
            if len(ov) != 2:
                raise ValueError(f"pairs.overlap must be an int or [min, max], got {list(ov)}")
            try:
                lo, hi = _int(ov[0]), _int(ov[1])
            except ValueError as e:
                raise ValueError(f"pairs.overlap: {e}") from None
        else:
            try:
                lo = hi = _int(ov)
            except ValueError as e:
                raise ValueError(f"pairs.overlap: {e}") from None
        if lo < 0:
            raise ValueError(f"pairs.overlap must be >= 0 (shared classes), got {lo}")
        if hi < lo:
            raise ValueError(f"pairs.overlap range [{lo}, {hi}] is empty: max < min")
        object.__setattr__(self, "overlap", lo if lo == hi else (lo, hi))

        if self.digits is not None:
            try:
                digits = check_classes(_opt_tuple(self.digits, "digits", _int))
            except ValueError as e:
                raise ValueError(f"pairs.digits: {e}") from None
            object.__setattr__(self, "digits", digits)
        for name, check in (("activations", check_activation), ("inits", check_init)):
            values = _opt_tuple(getattr(self, name), name, str)
            try:
                for v in values or ():
                    check(v)
            except ValueError as e:
                raise ValueError(f"pairs.{name}: {e}") from None
            object.__setattr__(self, name, values)
        object.__setattr__(self, "seeds", _opt_tuple(self.seeds, "seeds", _int))
        object.__setattr__(self, "epoch_bins", _opt_tuple(self.epoch_bins, "epoch_bins", _int))

        sp = self.split
        if not isinstance(sp, (list, tuple)) or len(sp) != 3:
            raise ValueError(f"pairs.split must be three fractions (train, val, test), got {sp!r}")
        try:
            sp = tuple(float(x) for x in sp)
        except (TypeError, ValueError):
            raise ValueError(f"pairs.split must be three numbers, got {self.split!r}") from None
        if any(not math.isfinite(x) or x < 0 for x in sp):
            raise ValueError(f"pairs.split fractions must be >= 0, got {sp}")
        if abs(sum(sp) - 1.0) > 1e-6:
            raise ValueError(f"pairs.split fractions must sum to 1, got {sp} (sum {sum(sp):g})")
        if sp[0] <= 0:
            raise ValueError(f"pairs.split needs a positive train fraction, got {sp}")
        object.__setattr__(self, "split", sp)
        if self.split_by not in SPLIT_BY:
            raise ValueError(f"pairs.split_by must be one of {list(SPLIT_BY)}, got {self.split_by!r}")
        for name, null in (("test_seeds", "the largest seed"), ("train_seeds", "every seed but the test seeds")):
            seeds = _opt_tuple(getattr(self, name), name, _int, null)
            if seeds is not None and len(set(seeds)) != len(seeds):
                raise ValueError(f"pairs.{name}: repeated seeds in {list(seeds)}")
            if seeds is not None and self.split_by in ("target", "pair"):
                raise ValueError(
                    f"pairs.{name} is {list(seeds)}, but split_by {self.split_by!r} does not hold seeds out; "
                    f"use split_by seed (or auto), or {name}: null"
                )
            object.__setattr__(self, name, seeds)
        try:
            object.__setattr__(self, "seed", _int(self.seed))
        except ValueError as e:
            raise ValueError(f"pairs.seed: {e}") from None
        if self.max_pairs_per_target is not None:
            try:
                m = _int(self.max_pairs_per_target)
            except ValueError as e:
                raise ValueError(f"pairs.max_pairs_per_target: {e}") from None
            if m < 1:
                raise ValueError(f"pairs.max_pairs_per_target must be >= 1 or null, got {m}")
            object.__setattr__(self, "max_pairs_per_target", m)
        if not isinstance(self.both_orders, bool):
            raise ValueError(f"pairs.both_orders must be true or false, got {self.both_orders!r}")
        if self.isolation not in ISOLATION:
            raise ValueError(f"pairs.isolation must be one of {list(ISOLATION)}, got {self.isolation!r}")

    @property
    def min_overlap(self) -> int:
        return self.overlap[0] if isinstance(self.overlap, tuple) else self.overlap

    @property
    def max_overlap(self) -> int:
        return self.overlap[1] if isinstance(self.overlap, tuple) else self.overlap

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: Any, where: str = "pairs") -> "PairConfig":
        """From a mapping; `{"scenario": "type1", "seed": 3}` starts from a scenario preset
        and overrides the keys given. Unknown keys are an error."""
        return from_dict_with_base(cls, d, where, "scenario", scenario)

    def replace(self, **changes) -> "PairConfig":
        return dataclasses.replace(self, **changes)


# The report's two scenario types (section 3.3). Its experiments so far all use overlap 0:
# narrow with .replace(overlap=0).
SCENARIOS: dict[str, PairConfig] = {
    "type1": PairConfig(overlap=(0, 2), digits=tuple(range(10))),
    "type2": PairConfig(overlap=(0, 4), digits=tuple(range(6))),
}


def scenario(name: str) -> PairConfig:
    if name not in SCENARIOS:
        raise ValueError(f"unknown pair scenario {name!r}; known: {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


# -- the triples --------------------------------------------------------------------------
@dataclass(frozen=True)
class Pairs:
    """Merge triples per split. `frames[split]` has the columns in COLUMNS; `targets[split]`
    the target class sets dealt to it; `class_pairs[split]` its unordered class pairs.
    `dropped[split]` counts the triples that isolation (asked for, or forced by test seeds that
    also train) removed from what the split has without it, `refilled` the training triples
    it added back under the max_pairs_per_target cap (both 0 without isolation). `split_by`
    is the split made ("auto" resolved); under "seed", `train_seeds` are the zoo seeds of
    train and val, `test_seeds` those of test (both empty otherwise)."""

    config: PairConfig
    n_rows: int  # rows of the zoo frame the indices point into
    frames: dict[str, pd.DataFrame]
    targets: dict[str, list[tuple[int, ...]]]
    class_pairs: dict[str, list[tuple[tuple[int, ...], tuple[int, ...]]]]
    dropped: dict[str, int]
    refilled: int
    split_by: str
    train_seeds: tuple[int, ...]
    test_seeds: tuple[int, ...]

    @property
    def shared_seeds(self) -> list[int]:
        """Test seeds that train and val use too: there, train and val drop every triple
        touching a CNN of a test triple."""
        return sorted(set(self.train_seeds) & set(self.test_seeds))

    def __getitem__(self, split: str) -> pd.DataFrame:
        return self.frames[_check_split(split)]

    def __len__(self) -> int:
        return sum(len(f) for f in self.frames.values())

    def to_frame(self) -> pd.DataFrame:
        """All splits in one frame, with a `split` column."""
        return pd.concat([f.assign(split=s) for s, f in self.frames.items()], ignore_index=True)

    def indices(self, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f = self[split]
        return tuple(np.array(f[c], dtype=np.int64) for c in ("cnn1", "cnn2", "target"))  # type: ignore[return-value]

    def tensors(
        self, split: str, weights: np.ndarray | torch.Tensor | pd.DataFrame
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(w1, w2, w3), each [n, 2464] float32, gathered from `weights` = weights_matrix(df)
        (or the zoo frame itself), on the device `weights` lives on."""
        if isinstance(weights, pd.DataFrame):
            weights = weights_matrix(weights)
        if not isinstance(weights, (np.ndarray, torch.Tensor)):
            raise TypeError(f"weights: expected a numpy array or tensor, got {type(weights).__name__}")
        if weights.ndim != 2 or weights.shape[1] != N_PARAMS:
            raise ValueError(f"weights: expected shape [rows, {N_PARAMS}], got {list(weights.shape)}")
        if weights.shape[0] != self.n_rows:
            raise ValueError(
                f"weights has {weights.shape[0]} rows but the pairs index a zoo frame of {self.n_rows}: "
                "pass weights_matrix() of the same frame given to make_pairs"
            )
        idx = self.indices(split)
        if isinstance(weights, np.ndarray):
            # Gather in numpy (a copy), so a read-only zoo block is never wrapped.
            return tuple(torch.from_numpy(np.asarray(weights[i], dtype=np.float32)) for i in idx)  # type: ignore[return-value]
        return tuple(  # type: ignore[return-value]
            weights[torch.from_numpy(i).to(weights.device)].to(torch.float32) for i in idx
        )

    def init_weights(self, split: str, init_df: pd.DataFrame) -> torch.Tensor:
        """Each triple's shared epoch-0 weights [n, 2464] float32, looked up by (activation,
        init, seed) in `init_df` = wsmerge.zoo.load_init(path): the `init` that evaluation's
        task-arithmetic baseline needs."""
        missing = [c for c in ("activation", "init", "seed", "weights") if c not in init_df.columns]
        if missing:
            raise ValueError(f"init_weights: init frame lacks columns {missing}")
        keys = list(zip(init_df["activation"], init_df["init"], (int(s) for s in init_df["seed"])))
        if len(set(keys)) != len(keys):
            raise ValueError("init_weights: the init frame has several rows for one (activation, init, seed)")
        where = {k: i for i, k in enumerate(keys)}
        f = self[split]
        want = list(zip(f["activation"], f["init"], (int(s) for s in f["seed"])))
        absent = sorted(set(want) - set(where))
        if absent:
            raise ValueError(f"init_weights: no epoch-0 weights for (activation, init, seed) {absent[:3]}")
        W = weights_matrix(init_df)
        return torch.from_numpy(np.asarray(W[np.array([where[k] for k in want], np.int64)], np.float32).reshape(-1, N_PARAMS))

    def meta(self, split: str) -> dict[str, list]:
        """What evaluation needs beside the weights: c1, c2, c3 and activations, per row."""
        f = self[split]
        return {k: f[k].tolist() for k in ("c1", "c2", "c3", "activation")}

    def _cnns(self, split: str, role: str) -> list[np.ndarray]:
        """The row columns of `split` holding its CNNs in `role`."""
        return [self.frames[split][c].to_numpy(np.int64) for c in _ROLE_COLUMNS[role]]

    def overlap(self) -> pd.DataFrame:
        """CNNs (zoo rows) shared between splits, by role. One row per held-out split
        `split_a` (val, test), split `split_b` it must not leak into (train, val), and roles
        `role_a`, `role_b` (see ROLES): `n_cnns` CNNs are a role_a CNN of a split_a triple and
        a role_b CNN of a split_b triple; `n_triples_a` split_a triples hold one of them in
        role_a, `n_triples_b` split_b triples in role_b."""
        rows = []
        for a, b in _SPLIT_PAIRS:
            for ra, rb in _ROLE_PAIRS:
                ca, cb = self._cnns(a, ra), self._cnns(b, rb)
                shared = np.intersect1d(np.concatenate(ca), np.concatenate(cb))
                hits = lambda cols: int(np.logical_or.reduce([np.isin(c, shared) for c in cols]).sum())  # noqa: E731
                rows.append((a, ra, b, rb, len(shared), hits(ca), hits(cb)))
        columns = ["split_a", "role_a", "split_b", "role_b", "n_cnns", "n_triples_a", "n_triples_b"]
        return pd.DataFrame(rows, columns=columns)

    def summary(self, show: int = 8) -> str:
        """Counts per split, which targets and zoo seeds landed where (the first `show`
        targets of each), what isolation dropped, and the CNNs the splits share."""
        cfg = self.config
        how = self.split_by + (" (auto)" if cfg.split_by == "auto" else "")
        lines = [f"merge pairs: overlap {cfg.overlap}, split by {how}, seed {cfg.seed}, {len(self)} triples"]
        seeds = ", ".join(f"{s} {sorted(set(self.frames[s]['seed'].tolist()))}" for s in SPLITS)
        if self.split_by == "seed":
            seeds += f" (train_seeds {list(self.train_seeds)}, held-out test_seeds {list(self.test_seeds)})"
        lines.append(f"  zoo seeds: {seeds}")
        for s in SPLITS:
            ts = self.targets[s]
            keys = ", ".join("{" + class_key(t) + "}" for t in ts[:show])
            if len(ts) > show:
                keys += f", ... {len(ts) - show} more"
            lines.append(
                f"  {s}: {len(self.frames[s])} triples, {len(self.class_pairs[s])} class pairs, "
                f"{len(ts)} targets: {keys or '-'}"
            )
        if cfg.isolation != "none" or self.shared_seeds:
            refill = f"; refilled {self.refilled} train triples under the cap" if cfg.max_pairs_per_target else ""
            why = [f"isolation {cfg.isolation}"] if cfg.isolation != "none" else []
            why += [f"test seeds {self.shared_seeds} also train"] if self.shared_seeds else []
            held = "a held-out CNN" if cfg.isolation != "none" else "a test CNN"
            lines.append(
                f"  {', '.join(why)}: dropped {self.dropped['train']} train and {self.dropped['val']} val "
                f"triples touching {held}{refill}"
            )
        lines.append("  CNNs shared between splits (and the held-out split's triples holding one in that role):")
        ov = self.overlap()
        for (a, b), g in ov.groupby(["split_a", "split_b"], sort=False):
            parts = [
                f"{r.n_cnns} in any role ({r.n_triples_a})" if r.role_a == "any"
                else f"{a} {r.role_a} used as {b} {r.role_b}: {r.n_cnns} ({r.n_triples_a})"
                for r in g.itertuples()
            ]
            lines.append(f"    {a} & {b}: " + "; ".join(parts))
        return "\n".join(lines)


def _check_split(split: str) -> str:
    if split not in SPLITS:
        raise KeyError(f"unknown split {split!r}; known: {', '.join(SPLITS)}")
    return split


# Lookup tables over the 1024 digit-set bitmasks: as tuples, their rank in tuple order,
# and their size.
_TUPLES = np.empty(1 << 10, dtype=object)
_TUPLES[:] = [tuple(c for c in range(10) if m >> c & 1) for m in range(1 << 10)]
_RANK = np.empty(1 << 10, np.int64)
_RANK[sorted(range(1 << 10), key=lambda m: _TUPLES[m])] = np.arange(1 << 10)
_POPCOUNT = np.array([bin(m).count("1") for m in range(1 << 10)], np.int64)


def _mask(cs: Sequence[int]) -> int:
    m = 0
    for c in cs:
        m |= 1 << c
    return m


def _unmask(m: int) -> tuple[int, ...]:
    return tuple(c for c in range(10) if m >> c & 1)


def _filter(df: pd.DataFrame, cfg: PairConfig) -> tuple[pd.DataFrame, list[str]]:
    """Rows passing the filters (keeping df's positions in `_row`), and the filters named."""
    named = []
    keep = np.ones(len(df), bool)
    for col, want in (
        ("activation", cfg.activations),
        ("init", cfg.inits),
        ("seed", cfg.seeds),
        ("epoch_bin", cfg.epoch_bins),
    ):
        if want is None:
            continue
        have = sorted(df[col].unique().tolist())
        missing = [w for w in want if w not in have]
        if missing:
            raise ValueError(f"pairs.{col}s filter: {missing} not in the zoo; it has {col}s {have}")
        keep &= df[col].isin(want).to_numpy()
        named.append(f"{col}s={list(want)}")
    if cfg.digits is not None:
        allowed = _mask(cfg.digits)
        keep &= np.array([(_mask(c) & ~allowed) == 0 for c in df["_classes"]], bool)
        named.append(f"digits={list(cfg.digits)}")
    return df[keep], named


def _deal(items: list, fractions: tuple[float, float, float], rng: np.random.Generator, what: str) -> dict[str, list]:
    """Shuffle `items` and deal them to the splits by fractions; every split with a positive
    fraction gets at least one item."""
    n = len(items)
    wanted = [s for s, f in zip(SPLITS, fractions) if f > 0]
    if n < len(wanted):
        raise ValueError(
            f"only {n} distinct {what}{'s' if n != 1 else ''} for {len(wanted)} non-empty splits "
            f"({', '.join(wanted)}); a split needs at least one. Use split_by='pair' for tiny zoos, "
            f"allow more overlap, or give the unused splits fraction 0"
        )
    order = rng.permutation(n)
    raw = [f * n for f in fractions]
    counts = [int(math.floor(r)) for r in raw]
    # Largest remainder, then make sure each wanted split has one.
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):
        if fractions[i] > 0 and counts[i] == 0:
            donor = max(range(3), key=lambda j: counts[j])
            counts[donor] -= 1
            counts[i] += 1
    out, start = {}, 0
    for s, c in zip(SPLITS, counts):
        out[s] = [items[j] for j in sorted(order[start : start + c])]
        start += c
    return out


def _sample_per_target(targets: np.ndarray, room: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A mask over `targets` (equal values adjacent) keeping at most room[t] entries of each
    target t, drawn at random where it has more."""
    keep = np.zeros(len(targets), bool)
    starts = np.flatnonzero(np.diff(targets, prepend=-1) != 0)
    for s0, e0 in zip(starts, np.r_[starts[1:], len(targets)]):
        k = room[targets[s0]]
        if e0 - s0 > k:
            keep[s0 + rng.choice(e0 - s0, k, replace=False)] = True
        else:
            keep[s0:e0] = True
    return keep


def _isolate(
    rows: np.ndarray,
    member: np.ndarray,
    pool: np.ndarray,
    ct: np.ndarray,
    target_of: np.ndarray,
    cap: int | None,
    rng: np.random.Generator,
    strict: bool,
) -> np.ndarray:
    """`member` [3 splits, n triples] narrowed so that no CNN (zoo row) of a test triple is in
    a val or train triple, and, if `strict`, none of a val triple in a train triple. `rows`
    [3, n] holds each triple's cnn1, cnn2, target; `pool` marks the triples training may
    take, beyond the cap too; `ct` is each triple's class triple and `target_of` each class
    triple's target mask."""
    touches = lambda sel: np.isin(rows, rows[:, sel]).any(0)  # noqa: E731
    train, val, test = member
    # Val is narrowed first, so only the val CNNs that remain block training triples.
    val = val & ~touches(test)
    ok = ~touches(test | val) if strict else ~touches(test)
    train = train & ok
    if cap is not None:
        # Capping after isolating keeps the most training triples: a target whose sampled
        # pairs touched a held-out CNN fills its cap from its other pairs that do not,
        # instead of keeping what survives of a sample drawn blind to isolation. Test and
        # val keep the cap's sample, isolated after: test stays the set isolation "none"
        # measures, and a refilled val would block yet more training CNNs.
        spare = pool & ok & ~train
        spare_ct = np.unique(ct[spare])
        room = cap - np.bincount(target_of[np.unique(ct[train])], minlength=1 << 10)
        pick = np.zeros(len(target_of), bool)
        pick[spare_ct[_sample_per_target(target_of[spare_ct], room, rng)]] = True
        train = train | (spare & pick[ct])
    return np.stack([train, val, test])


def make_pairs(df: pd.DataFrame, cfg: PairConfig | None = None) -> Pairs:
    """Every merge triple of zoo frame `df` (as from wsmerge.zoo.load) allowed by `cfg`,
    split deterministically by `cfg.seed`."""
    cfg = PairConfig() if cfg is None else cfg
    missing = [c for c in _ZOO_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"make_pairs: zoo frame lacks columns {missing}; it has {list(df.columns)}")
    if len(df) == 0:
        raise ValueError("make_pairs: the zoo frame is empty")
    work = pd.DataFrame(
        {
            "_row": np.arange(len(df)),
            "_classes": [parse_class_key(k) if isinstance(k, str) else check_classes(k) for k in df["classes"]],
            "activation": df["activation"].to_numpy(),
            "init": df["init"].to_numpy(),
            "seed": df["seed"].to_numpy().astype(np.int64),
            "epoch_bin": df["epoch_bin"].to_numpy().astype(np.int64),
        }
    )
    work, named = _filter(work, cfg)
    where = f" (filters: {', '.join(named)})" if named else ""
    if len(work) == 0:
        raise ValueError(f"make_pairs: no zoo rows left after the filters{where}")
    work = work.assign(_mask=[_mask(c) for c in work["_classes"]])
    split_by, train_seeds, test_seeds = _resolve_split(cfg, sorted(set(work["seed"].tolist())), where)
    # Isolation the config asks for, or the test half of it that a test seed used in training forces.
    isolate = cfg.isolation == "strict" or bool(set(train_seeds) & set(test_seeds))

    # Class-level triples, vectorised over every pair of class sets present.
    masks = np.array(sorted(set(work["_mask"])), dtype=np.int64)
    present = np.zeros(1 << 10, bool)
    present[masks] = True
    i, j = np.triu_indices(len(masks), k=1)
    a, b = masks[i], masks[j]
    union, ov = a | b, _POPCOUNT[a & b]
    ok = (ov >= cfg.min_overlap) & (ov <= cfg.max_overlap) & present[union] & (union != a) & (union != b)
    a, b, union = a[ok], b[ok], union[ok]
    if len(a) == 0:
        raise ValueError(
            f"make_pairs: no valid triples: no two class sets with overlap {cfg.overlap} whose union "
            f"is also a class set in the zoo{where} (and neither parent already the union); "
            f"the zoo has {len(masks)} class sets of sizes "
            f"{sorted(set(_POPCOUNT[masks].tolist()))} over digits "
            f"{list(_unmask(int(np.bitwise_or.reduce(masks))))}"
        )
    # Order as sorted tuples: c1 < c2 within a pair, triples sorted by (c3, c1, c2).
    swap = _RANK[a] > _RANK[b]
    a, b = np.where(swap, b, a), np.where(swap, a, b)
    order = np.lexsort((_RANK[b], _RANK[a], _RANK[union]))
    m1, m2, m3 = a[order], b[order], union[order]
    rng = np.random.default_rng(cfg.seed)
    capped = np.ones(len(m3), bool)
    if cfg.max_pairs_per_target is not None:
        capped = _sample_per_target(m3, np.full(1 << 10, cfg.max_pairs_per_target), rng)
    # Isolation refills training from the class triples beyond the cap (see _isolate).
    if not isolate:
        m1, m2, m3, capped = m1[capped], m2[capped], m3[capped], capped[capped]
    n_class_triples = int(capped.sum())

    # Checkpoint-level triples: all three class sets present in one group.
    parts = []
    for (act, init, seed, ebin), g in work.groupby(["activation", "init", "seed", "epoch_bin"], sort=True):
        gm = g["_mask"].to_numpy()
        if len(np.unique(gm)) < len(gm):
            vals, counts = np.unique(gm, return_counts=True)
            k = _TUPLES[int(vals[counts > 1][0])]
            raise ValueError(
                f"make_pairs: the zoo has several checkpoints of classes {class_key(k)} for "
                f"activation {act}, init {init}, seed {seed}, epoch bin {ebin}"
            )
        pos = np.full(1 << 10, -1, np.int64)
        pos[gm] = g["_row"].to_numpy()
        r1, r2, r3 = pos[m1], pos[m2], pos[m3]
        ok = (r1 >= 0) & (r2 >= 0) & (r3 >= 0)
        if ok.any():
            parts.append(
                (r1[ok], r2[ok], r3[ok], m1[ok], m2[ok], m3[ok], np.flatnonzero(ok), (act, init, int(seed), int(ebin)))
            )
    if not any(capped[p[6]].any() for p in parts):
        raise ValueError(
            f"make_pairs: no valid triples: {n_class_triples} class-level triples with overlap "
            f"{cfg.overlap} exist{where}, but no (activation, init, seed, epoch bin) group holds "
            f"all three checkpoints of any of them"
        )
    cat = lambda k: np.concatenate([p[k] for p in parts])  # noqa: E731
    r1, r2, r3, k1, k2, k3, ct = (cat(k) for k in range(7))
    group = np.concatenate([np.full(len(p[0]), i) for i, p in enumerate(parts)])
    gtab = [p[7] for p in parts]
    if cfg.both_orders:
        # Each (C1, C2) followed by its (C2, C1).
        inter = lambda x, y: np.stack([x, y], 1).reshape(-1)  # noqa: E731
        r1, r2, r3 = inter(r1, r2), inter(r2, r1), np.repeat(r3, 2)
        k1, k2, k3 = inter(k1, k2), inter(k2, k1), np.repeat(k3, 2)
        group, ct = np.repeat(group, 2), np.repeat(ct, 2)

    # Split: deal targets (or canonical class pairs) to the splits, those within the cap;
    # a key dealt nowhere gets split -1.
    in_cap = capped[ct]
    if split_by in ("target", "seed"):
        keys = k3
        items = [int(m) for m in sorted(set(k3[in_cap].tolist()), key=lambda m: _TUPLES[m])]
        dealt = _deal(items, cfg.split, rng, "target class set")
    else:
        lo = np.where(_RANK[k1] < _RANK[k2], k1, k2)
        hi = np.where(_RANK[k1] < _RANK[k2], k2, k1)
        keys = lo * (1 << 10) + hi
        items = sorted(set(keys[in_cap].tolist()), key=lambda k: (_TUPLES[k >> 10], _TUPLES[k & 1023]))
        dealt = _deal(items, cfg.split, rng, "class pair")
    split_of = {item: i for i, s in enumerate(SPLITS) for item in dealt[s]}
    assigned = np.array([split_of.get(k, -1) for k in keys.tolist()], np.int64)
    member = np.stack([(assigned == si) & in_cap for si in range(len(SPLITS))])
    pool = assigned == 0  # the triples training may refill its cap from under isolation
    if split_by == "seed":
        # Train and val keep the triples of their seeds, test those of its seeds.
        seed_of = np.array([g[2] for g in gtab], np.int64)[group]
        split_seeds = (train_seeds, train_seeds, test_seeds)
        in_seeds = np.stack([np.isin(seed_of, seeds) for seeds in split_seeds])
        for si, (s, seeds) in enumerate(zip(SPLITS, split_seeds)):
            if member[si].any() and not (member[si] & in_seeds[si]).any():
                raise ValueError(
                    f"make_pairs: split_by seed leaves no {s} triples: no {s} target has all three "
                    f"checkpoints of a triple in seeds {list(seeds)}{where}"
                )
        member &= in_seeds
        pool &= in_seeds[0]

    dropped, refilled = dict.fromkeys(SPLITS, 0), 0
    if isolate:
        strict = cfg.isolation == "strict"
        isolated = _isolate(
            np.stack([r1, r2, r3]), member, pool, ct, m3, cfg.max_pairs_per_target, rng, strict
        )
        dropped = {s: int((member[si] & ~isolated[si]).sum()) for si, s in enumerate(SPLITS)}
        refilled = int((isolated[0] & ~member[0]).sum())
        for si, held in ((0, "validation or test" if strict else "test"), (1, "test")):
            if member[si].any() and not isolated[si].any():
                raise ValueError(
                    f"make_pairs: {'strict ' if strict else ''}isolation leaves no {SPLITS[si]} triples "
                    f"(of {int(member[si].sum())} before): each shares a CNN with a {held} triple{where}. "
                    + _isolation_hint(split_by, sorted(set(train_seeds) & set(test_seeds)), strict)
                )
        member = isolated

    frames, targets, class_pairs = {}, {}, {}
    for si, s in enumerate(SPLITS):
        sel = member[si]
        g = group[sel]
        frames[s] = pd.DataFrame(
            {
                "cnn1": r1[sel],
                "cnn2": r2[sel],
                "target": r3[sel],
                "c1": _TUPLES[k1[sel]],
                "c2": _TUPLES[k2[sel]],
                "c3": _TUPLES[k3[sel]],
                "overlap": _POPCOUNT[k1[sel] & k2[sel]].astype(np.int64),
                "activation": np.array([gtab[i][0] for i in g], dtype=object),
                "init": np.array([gtab[i][1] for i in g], dtype=object),
                "seed": np.array([gtab[i][2] for i in g], dtype=np.int64),
                "epoch_bin": np.array([gtab[i][3] for i in g], dtype=np.int64),
            },
            columns=list(COLUMNS),
        )
        targets[s] = sorted(set(frames[s]["c3"]))
        pk = {tuple(sorted((x, y))) for x, y in zip(frames[s]["c1"], frames[s]["c2"])}
        class_pairs[s] = sorted(pk)
    return Pairs(cfg, len(df), frames, targets, class_pairs, dropped, refilled, split_by, train_seeds, test_seeds)


def _isolation_hint(split_by: str, shared: list[int], strict: bool) -> str:
    """What to change when isolation empties a split."""
    if split_by != "seed":
        return (
            "Splits are dealt by class set across all seeds, so a held-out triple blocks its class "
            "sets in training in every seed; a zoo with two seeds, one held out (split_by 'seed' or "
            "'auto'), avoids that. Else try a max_pairs_per_target cap, smaller val/test fractions "
            "in split, or isolation 'none' (split_by='pair' shares more CNNs, not fewer)"
        )
    hints = [f"Test seeds {shared} are also train_seeds: hold out a seed that training does not use."] if shared else []
    if strict:
        hints.append("Isolation 'none' lets validation CNNs serve in training (test CNNs never do).")
    return " ".join(hints)


def _resolve_split(cfg: PairConfig, have: list[int], where: str) -> tuple[str, tuple[int, ...], tuple[int, ...]]:
    """The split `cfg` makes of a zoo whose (filtered) rows have seeds `have`: split_by with
    "auto" resolved and, under "seed", the train/val seeds and the test seeds."""
    split_by = cfg.split_by
    if split_by == "auto":
        split_by = "seed" if len(have) > 1 else "target"
    given = [n for n in ("test_seeds", "train_seeds") if getattr(cfg, n) is not None]
    if split_by != "seed":
        if given:
            raise ValueError(
                f"pairs.{given[0]} is set, but the zoo{where} has one seed, {have}, so split_by 'auto' "
                f"splits by target; set split_by: seed to split by seed anyway"
            )
        return split_by, (), ()
    for name in given:
        missing = [s for s in getattr(cfg, name) if s not in have]
        if missing:
            raise ValueError(f"pairs.{name}: seeds {missing} not in the zoo{where}; it has seeds {have}")
    test = cfg.test_seeds or (have[-1],)
    train = cfg.train_seeds or tuple(s for s in have if s not in test)
    if not train:
        raise ValueError(
            f"pairs.train_seeds: no seed left for training: the zoo{where} has seeds {have}, all of them "
            f"test_seeds {list(test)}. Give train_seeds (they may include a test seed), or use a zoo with more seeds"
        )
    return "seed", tuple(train), tuple(test)
