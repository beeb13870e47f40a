"""Regularized (aging) evolution, multi-objective (Real et al. 2019, selection by Pareto rank + crowding or hypervolume contribution).

Population: the ``population_size`` most recent finished, feasible trials (oldest die first:
aging). Until that many exist, proposals are uniform random. Each child: a tournament of
``tournament_size`` members drawn from the population picks the parent with the best
(non-domination rank, crowding distance) within the population - or, with ``selection: hv``,
(rank, exclusive hypervolume contribution), on per-objective ranks scaled to [0, 1]; with probability
``crossover_prob`` it is crossed with a second tournament winner; then mutated (one decision
changed, more with probability ``p_extra_mutation`` each). Everything is a function of the study's
history and a per-trial generator, so there is no state beyond the seed.
"""

from __future__ import annotations

import math
import random

import numpy as np

from search_space import ArchSpec, SearchSpace

from . import optuna_private
from .base import Observation, SpecSampler
from .pareto import exclusive_contributions


def nondominated_ranks(points: np.ndarray) -> np.ndarray:
    """Rank 0 = Pareto front, 1 = front of the rest, ... (minimisation; O(n^2) per front, fine for populations)."""
    n = len(points)
    ranks = np.full(n, -1)
    remaining = np.arange(n)
    r = 0
    while len(remaining):
        p = points[remaining]
        dominated = np.array([
            bool(np.any(np.all(p <= p[i], axis=1) & np.any(p < p[i], axis=1))) for i in range(len(p))
        ])
        ranks[remaining[~dominated]] = r
        remaining = remaining[dominated]
        r += 1
    return ranks


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each point within the set (inf at the extremes)."""
    n, m = points.shape
    d = np.zeros(n)
    if n <= 2:
        return np.full(n, math.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        lo, hi = points[order[0], j], points[order[-1], j]
        d[order[0]] = d[order[-1]] = math.inf
        if hi > lo:
            d[order[1:-1]] += (points[order[2:], j] - points[order[:-2], j]) / (hi - lo)
    return d


def hv_contributions(norm: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """Exclusive hypervolume contribution of each rank-0 point (0 for the others) of a population already
    scaled to [0, 1]. The reference is 1.1 per axis, not the study's 1.0: the population's own extremes
    sit at 1.0 and must still count, or selection would never keep them."""
    ref = np.full(norm.shape[1], 1.1)
    front = np.flatnonzero(ranks == 0)
    out = np.zeros(len(norm))
    hv = lambda pts: optuna_private.hypervolume(np.array(pts), ref, assume_pareto=True) if len(pts) else 0.0  # noqa: E731
    out[front] = exclusive_contributions(norm[front].tolist(), hv)
    return out


class RegularizedEvolution(SpecSampler):
    def __init__(self, space: SearchSpace, seed: int, *, population_size: int = 16, tournament_size: int = 4,
                 crossover_prob: float = 0.3, p_extra_mutation: float = 0.2, selection: str = "hv", **kw):
        super().__init__(space, seed, **kw)
        if selection not in ("crowding", "hv"):
            raise TypeError(f"selection must be 'crowding' or 'hv', got {selection!r}")
        self.selection = selection
        if population_size < 2 or not 1 <= tournament_size <= population_size:
            raise TypeError("need population_size >= 2 and 1 <= tournament_size <= population_size")
        if not 0 <= crossover_prob <= 1 or not 0 <= p_extra_mutation < 1:
            raise TypeError("crossover_prob and p_extra_mutation must be probabilities")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover_prob = crossover_prob
        self.p_extra_mutation = p_extra_mutation

    def population_stats(self, alive: list[Observation]) -> dict[str, np.ndarray]:
        """Pareto ranks and crowding distances of the population (crowding on per-objective ranks)."""
        pts = np.array([o.values for o in alive], dtype=float)
        # scale-free: rank-transform each objective so sizes (bytes) and nats weigh alike
        r = np.argsort(np.argsort(pts, axis=0, kind="stable"), axis=0).astype(float)
        ranks = nondominated_ranks(pts)
        crowd = hv_contributions(r / max(1, len(r) - 1), ranks) if self.selection == "hv" else crowding_distance(r)
        return {"ranks": ranks, "crowd": crowd}

    def select(self, alive: list[Observation], rng: random.Random) -> list[Observation]:
        """The parents of one child: a tournament winner, and a second one with ``crossover_prob``."""
        stats = self.population_stats(alive)
        ranks, crowd = stats["ranks"], stats["crowd"]

        def tournament() -> Observation:
            idx = rng.sample(range(len(alive)), self.tournament_size)
            return alive[min(idx, key=lambda i: (ranks[i], -crowd[i], i))]

        parents = [tournament()]
        if rng.random() < self.crossover_prob:
            parents.append(tournament())
        return parents

    def propose(self, history: list[Observation], rng: random.Random) -> ArchSpec | None:
        alive = [o for o in history if o.values is not None and o.feasible][-self.population_size:]
        if len(alive) < self.population_size:
            return None  # warm-up: random
        parents = self.select(alive, rng)
        child = parents[0].spec
        if len(parents) > 1:
            child = self.space.crossover(child, parents[1].spec, rng)
        child = self.space.mutate(child, rng)
        while rng.random() < self.p_extra_mutation:
            child = self.space.mutate(child, rng)
        return child
