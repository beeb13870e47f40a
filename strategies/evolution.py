"""Regularized (aging) evolution, multi-objective (Real et al. 2019, selection by Pareto rank + crowding).

Population: the ``population_size`` most recent finished, feasible trials (oldest die first:
aging). Until that many exist, proposals are uniform random. Each child: a tournament of
``tournament_size`` members drawn from the population picks the parent with the best
(non-domination rank, crowding distance) within the population; with probability
``crossover_prob`` it is crossed with a second tournament winner; then mutated (one decision
changed, more with probability ``p_extra_mutation`` each). Everything is a function of the study's
history and a per-trial generator, so there is no state beyond the seed.
"""

from __future__ import annotations

import math
import random

import numpy as np

from search_space import ArchSpec, SearchSpace

from .base import Observation, SpecSampler


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


class RegularizedEvolution(SpecSampler):
    def __init__(self, space: SearchSpace, seed: int, *, population_size: int = 16, tournament_size: int = 4,
                 crossover_prob: float = 0.3, p_extra_mutation: float = 0.2, **kw):
        super().__init__(space, seed, **kw)
        if population_size < 2 or not 1 <= tournament_size <= population_size:
            raise TypeError("need population_size >= 2 and 1 <= tournament_size <= population_size")
        if not 0 <= crossover_prob <= 1 or not 0 <= p_extra_mutation < 1:
            raise TypeError("crossover_prob and p_extra_mutation must be probabilities")
        self.population_size = population_size
        self.tournament_size = tournament_size
        self.crossover_prob = crossover_prob
        self.p_extra_mutation = p_extra_mutation

    def propose(self, history: list[Observation], rng: random.Random) -> ArchSpec | None:
        alive = [o for o in history if o.values is not None and o.feasible][-self.population_size:]
        if len(alive) < self.population_size:
            return None  # warm-up: random
        pts = np.array([o.values for o in alive], dtype=float)
        # scale-free: rank-transform each objective before crowding so sizes (bytes) and nats weigh alike
        ranks = nondominated_ranks(pts)
        crowd = crowding_distance(np.argsort(np.argsort(pts, axis=0), axis=0).astype(float))

        def tournament() -> ArchSpec:
            idx = rng.sample(range(len(alive)), self.tournament_size)
            best = min(idx, key=lambda i: (ranks[i], -crowd[i], i))
            return alive[best].spec

        parent = tournament()
        if rng.random() < self.crossover_prob:
            parent = self.space.crossover(parent, tournament(), rng)
        child = self.space.mutate(parent, rng)
        while rng.random() < self.p_extra_mutation:
            child = self.space.mutate(child, rng)
        return child
