"""Topological losses: 0-dimensional persistence of the flat vector as a function on a line
(report 4.5.15, 4.5.17).

A local minimum of the vector is born at its value and dies (elder rule) when its
component first reaches a lower value: at the lower of the two passes, the highest value
between it and the nearest lower value on each side. That closed form is computed for the
batch with scipy's compiled peak search (`sublevel_pairs`, about 0.25 ms a vector), because
gudhi's CubicalComplex costs about 2.7 ms per vector here, 170 ms for the 64 vectors of a
batch; the diagrams are checked against gudhi's in the tests. Births and deaths are
indices into the vector, so diagrams are gathered from pred with a gradient (the gradient of a persistence
loss flows through the values at the critical indices, which are locally constant).
The one essential class (the global minimum) is closed at the vector's maximum, as if the
filtration ended there, so every diagram is finite. Neither loss's gradient is defined
where two values tie (a measure-zero set); there it is one of the one-sided gradients.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from scipy.signal import peak_prominences

from ._common import safe_sqrt
from ._registry import register


def ranks(x: np.ndarray) -> np.ndarray:
    """Per row, the rank of each value (a strict order; ties broken by the sort). The ranks
    of −x are n − 1 − ranks(x), which saves a sort for the superlevel filtration."""
    b, n = x.shape
    r = np.empty((b, n), dtype=np.int64)
    np.put_along_axis(r, np.argsort(x, axis=1), np.arange(n)[None, :], axis=1)
    return r


def sublevel_pairs(x: np.ndarray, r: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """H0 persistence pairs of the sublevel filtration of each row of x [B, N] on a path:
    (row, birth index, death index), one per local minimum, sorted by row; r = ranks(x)
    if already known.

    Works on ranks, so every comparison is strict. The
    minima of x are the peaks of q = −rank, and a minimum's two passes are the peak's
    "bases" that scipy.signal.peak_prominences finds (compiled code, about 0.1 ms a row):
    the extreme value between the peak and the nearest higher point on each side. A side
    with no higher point has no pass (scipy would give the border); a minimum with neither
    is the essential class."""
    b, n = x.shape
    q = n - 1 - (ranks(x) if r is None else r)
    none = np.full((b, 1), -1)
    higher_left = np.concatenate([none, np.maximum.accumulate(q, axis=1)[:, :-1]], axis=1) > q
    higher_right = np.concatenate([np.maximum.accumulate(q[:, ::-1], axis=1)[:, -2::-1], none], axis=1) > q
    yes = np.ones((b, 1), dtype=bool)
    is_peak = np.concatenate([yes, q[:, 1:] > q[:, :-1]], axis=1) & np.concatenate([q[:, :-1] > q[:, 1:], yes], axis=1)
    rows, births = np.nonzero(is_peak)
    left, right = np.empty_like(births), np.empty_like(births)
    starts = np.searchsorted(rows, np.arange(b + 1))
    with warnings.catch_warnings():
        # Border peaks get prominence 0 (their own border is a base): unused here.
        warnings.filterwarnings("ignore", message="some peaks have a prominence of 0")
        for s in range(b):
            sl = slice(starts[s], starts[s + 1])
            _, left[sl], right[sl] = peak_prominences(q[s], births[sl])
    # The higher of the two valid bases of q (the lower pass of x) is crossed first.
    ql = np.where(higher_left[rows, births], q[rows, left], -1)
    qr = np.where(higher_right[rows, births], q[rows, right], -1)
    deaths = np.where(ql >= qr, left, right)
    essential = (ql < 0) & (qr < 0)
    deaths[essential] = np.argmax(x, axis=1)[rows[essential]]
    return rows, births, deaths


def _slots(rows: np.ndarray, b: int) -> tuple[np.ndarray, np.ndarray]:
    """For pairs sorted by row: each row's count, and each pair's position within its row."""
    counts = np.bincount(rows, minlength=b)
    return counts, np.arange(len(rows)) - np.repeat(np.cumsum(counts) - counts, counts)


def _top_pairs(x: np.ndarray, pairs, k: int):
    """`pairs` of the rows of x cut to each row's k most persistent (all if k == 0), still
    sorted by row. By stability, dropping points of persistence at most p moves the
    bottleneck distance, and every landscape in sup norm, by at most p/2."""
    rows, births, deaths = pairs
    counts, slot = _slots(rows, x.shape[0])
    if k == 0 or k >= counts.max():
        return pairs
    pers = np.full((x.shape[0], counts.max()), -np.inf)
    pers[rows, slot] = x[rows, deaths] - x[rows, births]
    top = np.argpartition(-pers, k - 1, axis=1)[:, :k]
    keep = np.zeros(pers.shape, dtype=bool)
    np.put_along_axis(keep, top, True, axis=1)
    keep = keep[rows, slot]
    return rows[keep], births[keep], deaths[keep]


def _diagrams(w: torch.Tensor, k: int, r: np.ndarray | None = None):
    """(row, birth values, death values) of the k most persistent pairs of each row of w
    (r = its ranks, if known), values gathered from w with a gradient."""
    x = w.detach().cpu().numpy()
    rows, bi, di = _top_pairs(x, sublevel_pairs(x, r), k)
    rt = torch.as_tensor(rows, device=w.device)
    return rows, w[rt, torch.as_tensor(bi, device=w.device)], w[rt, torch.as_tensor(di, device=w.device)]


def _padded(rows: np.ndarray, births: torch.Tensor, deaths: torch.Tensor, b: int):
    """Flat pair lists (sorted by row) -> [b, P] births and deaths, padded with (0, 0) bars."""
    counts, slot = _slots(rows, b)
    width = max(int(counts.max()), 1)
    idx = (torch.as_tensor(rows, device=births.device), torch.as_tensor(slot, device=births.device))
    return births.new_zeros(b, width).index_put(idx, births), deaths.new_zeros(b, width).index_put(idx, deaths)


@dataclass(frozen=True)
class BottleneckOptions:
    top_k: int = 32

    def __post_init__(self):
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = all points), got {self.top_k}")


def _critical_edge(vals: np.ndarray, idx_p: np.ndarray, idx_t: np.ndarray) -> tuple[int, int, float]:
    """(u, v, f) such that f·|vals[u] − vals[v]| is the bottleneck distance between the
    diagrams vals[idx_p] and vals[idx_t]: the candidate edge whose length equals gudhi's."""
    # Imported here: only this loss needs gudhi, and the others run where it is missing
    # (a bare GPU machine running bench/gpu.py).
    import gudhi

    dg_p, dg_t = vals[idx_p], vals[idx_t]
    dist = gudhi.bottleneck_distance(dg_p, dg_t)  # default e: exact up to one ulp, 4x faster than e=0
    gap = np.abs(dg_p[:, None, :] - dg_t[None, :, :])  # point-to-point, [P, T, birth|death]
    side = gap.argmax(axis=2)
    pi, ti = np.meshgrid(np.arange(len(dg_p)), np.arange(len(dg_t)), indexing="ij")
    lengths = np.concatenate([gap.max(axis=2).ravel(), (dg_p[:, 1] - dg_p[:, 0]) / 2, (dg_t[:, 1] - dg_t[:, 0]) / 2])
    u = np.concatenate([idx_p[pi.ravel(), side.ravel()], idx_p[:, 1], idx_t[:, 1]])
    v = np.concatenate([idx_t[ti.ravel(), side.ravel()], idx_p[:, 0], idx_t[:, 0]])
    f = np.concatenate([np.ones(pi.size), np.full(len(dg_p) + len(dg_t), 0.5)])
    best = int(np.argmin(np.abs(lengths - dist)))
    return int(u[best]), int(v[best]), float(f[best])


@register("bottleneck", options=BottleneckOptions)
def bottleneck(pred, target, ctx, opt):
    """Bottleneck distance [4.5.15] between the H0 sublevel persistence diagrams of pred and
    target (module docstring), computed by gudhi.bottleneck_distance.

    Gradient: the distance is the length of one edge of an optimal matching, between two
    points (L∞: a birth or a death difference) or a point and the diagonal (half its
    persistence). That critical edge is the candidate edge whose length equals gudhi's value;
    the loss is its length written in the values of pred and target, so the gradient reaches
    the (at most two) critical weights of pred.

    Bounded cost: each diagram is cut to its top_k most persistent points (option, default
    32; a random vector has about 800; 0 = all). gudhi takes 50–90 ms per full-size pair
    here, about 2.8 s per batch. By stability, the cut moves the distance by at most half the
    largest persistence it drops from either diagram: the loss sees the prominent features."""
    b, n = pred.shape
    both = torch.cat([pred, target], dim=1)  # one gather source for the critical edges
    vals = both.detach().cpu().numpy().astype(np.float64)
    diagrams = []  # per vector: [P, 2] (birth, death) indices into `both`, per row
    for v, offset in ((vals[:, :n], 0), (vals[:, n:], n)):
        rows, bi, di = _top_pairs(v, sublevel_pairs(v), opt.top_k)
        idx = np.stack([bi, di], axis=1) + offset
        diagrams.append(np.split(idx, np.searchsorted(rows, np.arange(1, b))))
    edges = np.zeros((b, 2), dtype=np.int64)
    factor = np.zeros(b)
    for s in range(b):
        *edges[s], factor[s] = _critical_edge(vals[s], diagrams[0][s], diagrams[1][s])
    rows = torch.arange(b, device=pred.device)
    e = torch.as_tensor(edges, device=pred.device)
    gap = (both[rows, e[:, 0]] - both[rows, e[:, 1]]).abs()
    return torch.as_tensor(factor, dtype=pred.dtype, device=pred.device) * gap


@dataclass(frozen=True)
class PersistenceL2Options:
    n_landscapes: int = 5
    resolution: int = 64
    top_k: int = 64

    def __post_init__(self):
        if self.n_landscapes < 1 or self.resolution < 2 or self.top_k < 0:
            raise ValueError("need n_landscapes >= 1, resolution >= 2 and top_k >= 0 (0 = all)")


def _landscapes(rows, births, deaths, b: int, grid: torch.Tensor, k: int) -> torch.Tensor:
    """[b, G, k]: the first k persistence landscapes λ_j(t) = j-th largest
    max(0, min(t − birth, death − t)) over the diagram's points, on grid [b, G]."""
    pb, pd = _padded(rows, births, deaths, b)
    tents = torch.minimum(grid[:, :, None] - pb[:, None, :], pd[:, None, :] - grid[:, :, None]).clamp_min(0)
    if tents.shape[2] < k:
        tents = torch.nn.functional.pad(tents, (0, k - tents.shape[2]))
    return tents.topk(k, dim=2).values


@register("persistence_l2", options=PersistenceL2Options)
def persistence_l2(pred, target, ctx, opt):
    """Persistence L2 (the report's 4.5.17 "multipersistence L2", left blank there), defined
    here as Σ_f ‖Λ_f(pred) − Λ_f(target)‖_L2 over two filtrations f of the vector on its
    line, sublevel (valleys) and superlevel (peaks; the sublevel filtration of −w); the
    "multi" is these two. Λ_f is the H0 persistence landscape (Bubenik 2015): the first K
    landscape functions (option n_landscapes, default 5), a stable vectorisation of the
    diagram that lives in L2, so an L2 distance is meaningful (unlike on raw diagrams).
    The squared L2 norm is the Riemann sum Δt·Σ_grid Σ_k (λ_p − λ_t)² on a grid of
    `resolution` points (default 64) spanning both vectors' range. Differentiable through
    the gathered births and deaths like `bottleneck`. Bounded cost: the diagrams keep their
    top_k most persistent points (default 64; 0 = all), which moves each landscape by at
    most half the largest persistence dropped (sup norm)."""
    b, n = pred.shape
    rank_p, rank_t = ranks(pred.detach().cpu().numpy()), ranks(target.detach().cpu().numpy())
    total = pred.new_zeros(b)
    for sign in (1.0, -1.0):
        p, t = sign * pred, sign * target
        if sign < 0:
            rank_p, rank_t = n - 1 - rank_p, n - 1 - rank_t
        rows_p, bp, dp = _diagrams(p, opt.top_k, rank_p)
        rows_t, bt, dt = _diagrams(t, opt.top_k, rank_t)
        lo = torch.minimum(p.min(dim=1).values, t.min(dim=1).values).detach()
        hi = torch.maximum(p.max(dim=1).values, t.max(dim=1).values).detach()
        steps = torch.linspace(0.0, 1.0, opt.resolution, dtype=pred.dtype, device=pred.device)
        grid = lo[:, None] + (hi - lo)[:, None] * steps
        diff = _landscapes(rows_p, bp, dp, b, grid, opt.n_landscapes) - _landscapes(
            rows_t, bt, dt, b, grid, opt.n_landscapes
        )
        dx = (hi - lo) / (opt.resolution - 1)
        total = total + safe_sqrt(dx * (diff**2).sum(dim=(1, 2)))
    return total
