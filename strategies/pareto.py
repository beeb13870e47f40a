"""Pareto maths over objective vectors that are all minimised.

Non-dominated sorting and hypervolume come from Optuna (``_is_pareto_front``,
``compute_hypervolume``, private: reached through ``strategies.optuna_private``; tested against brute force in ``tests/strategies/test_pareto.py``). Hypervolume is
computed on objectives normalised with fixed, declared bounds: each objective is mapped by
``(v - lo) / (hi - lo)`` (or on a log10 scale when declared, for costs spanning decades), clipped
to [0, 1], and measured against the reference point (1, ..., 1); so a study's hypervolume lies in
[0, 1] and two studies with the same bounds are comparable.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from search_space import VaenasInputError

from . import optuna_private


def non_dominated_mask(points: Sequence[Sequence[float]]) -> np.ndarray:
    """True for points no other point dominates (duplicates of a front point are all kept)."""
    pts = np.asarray(points, dtype=float)
    if pts.size == 0:
        return np.zeros(0, dtype=bool)
    return optuna_private.pareto_front_mask(pts)


@dataclass(frozen=True)
class Bound:
    lo: float
    hi: float
    log: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.lo) and math.isfinite(self.hi)) or self.lo >= self.hi:
            raise VaenasInputError(f"bounds: need finite lo < hi, got [{self.lo}, {self.hi}]")
        if self.log and self.lo <= 0:
            raise VaenasInputError(f"bounds: a log-scale bound needs lo > 0, got {self.lo}")

    def normalise(self, v: np.ndarray) -> np.ndarray:
        if self.log:
            v = np.log10(np.maximum(v, self.lo))
            lo, hi = math.log10(self.lo), math.log10(self.hi)
        else:
            lo, hi = self.lo, self.hi
        return np.clip((v - lo) / (hi - lo), 0.0, 1.0)


def normalise(points: Sequence[Sequence[float]], bounds: Sequence[Bound]) -> np.ndarray:
    pts = np.asarray(points, dtype=float).reshape(-1, len(bounds))
    return np.stack([b.normalise(pts[:, i]) for i, b in enumerate(bounds)], axis=1) if len(pts) else pts


def hypervolume(points: Sequence[Sequence[float]], bounds: Sequence[Bound]) -> float:
    """Hypervolume dominated by ``points`` within the normalised box, reference point all ones."""
    norm = normalise(points, bounds)
    if len(norm) == 0:
        return 0.0
    norm = norm[np.all(norm < 1.0, axis=1)]  # points on or past the reference add nothing
    if len(norm) == 0:
        return 0.0
    front = norm[non_dominated_mask(norm)]
    return optuna_private.hypervolume(front, np.ones(len(bounds)), assume_pareto=False)


def knee_point(points: Sequence[Sequence[float]], bounds: Sequence[Bound]) -> int:
    """Index of the front point closest (Euclidean, normalised space) to the ideal point (0, ..., 0)."""
    pts = np.asarray(points, dtype=float)
    if len(pts) == 0:
        raise ValueError("knee_point: no points")
    mask = non_dominated_mask(pts)
    norm = normalise(pts, bounds)
    dist = np.where(mask, np.linalg.norm(norm, axis=1), np.inf)
    return int(np.argmin(dist))


def exclusive_contributions(points: Sequence, hv) -> np.ndarray:
    """Each point's exclusive contribution to ``hv`` (a hypervolume of a list of points): that of all
    minus that of all but it - the one leave-one-out every contribution is computed by."""
    total = hv(list(points))
    pts = list(points)
    return np.array([total - hv(pts[:i] + pts[i + 1:]) for i in range(len(pts))])


def hv_contributions(points: Sequence[Sequence[float]], bounds: Sequence[Bound]) -> np.ndarray:
    """Each point's exclusive hypervolume contribution within ``bounds`` (reference point all ones)."""
    return exclusive_contributions(points, lambda pts: hypervolume(pts, bounds))


def _fronts(pts: np.ndarray):
    """Indices of ``pts`` front by front (non-dominated sorting: front 1, then front 2, ...)."""
    rest = np.arange(len(pts))
    while len(rest):
        mask = non_dominated_mask(pts[rest])
        yield rest[mask]
        rest = rest[~mask]


def _front_order(front: np.ndarray, pts: np.ndarray, bounds: Sequence[Bound]) -> list[int]:
    """One front's indices by hypervolume contribution to that front (largest first), then index."""
    contrib = hv_contributions(pts[front].tolist(), bounds) if len(front) > 1 else np.zeros(1)
    return [int(front[j]) for j in sorted(range(len(front)), key=lambda j: (-contrib[j], front[j]))]


def promotion_order(points: Sequence[Sequence[float]], bounds: Sequence[Bound]) -> list[int]:
    """Indices of ``points``, best first: by non-dominated sorting (front 1, then front 2, ...), within
    a front by hypervolume contribution to that front (largest first; normalised by ``bounds``), then
    by index (the earlier point first)."""
    pts = np.asarray(points, dtype=float).reshape(len(points), -1)
    return [j for front in _fronts(pts) for j in _front_order(front, pts, bounds)]


def promoted(i: int, points: Sequence[Sequence[float]], bounds: Sequence[Bound], keep: float) -> bool:
    """Successive halving's rule for many objectives: does point ``i`` rank within the best
    ``ceil(keep * n)`` of the ``n`` points (:func:`promotion_order`)? Only the front the line cuts
    is ordered by hypervolume contribution; fronts wholly above or below it need none."""
    pts = np.asarray(points, dtype=float).reshape(len(points), -1)
    k = math.ceil(keep * len(pts) - 1e-9)
    ahead = 0
    for front in _fronts(pts):
        if i in front:
            return ahead + len(front) <= k or ahead + _front_order(front, pts, bounds).index(i) < k
        ahead += len(front)
        if ahead >= k:
            return False
    raise IndexError(f"promoted: no point {i} among {len(pts)}")


def kendall_tau(a: Sequence[float], b: Sequence[float]) -> float:
    """Kendall's tau-b of two equally long sequences (ties counted as SciPy's ``kendalltau`` does);
    nan with fewer than two pairs or a constant sequence."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    n = len(a)
    if n < 2:
        return float("nan")
    iu = np.triu_indices(n, 1)
    sa, sb = np.sign(a[:, None] - a[None, :])[iu], np.sign(b[:, None] - b[None, :])[iu]
    denom = math.sqrt(float(np.count_nonzero(sa)) * float(np.count_nonzero(sb)))
    return float((sa * sb).sum() / denom) if denom > 0 else float("nan")
