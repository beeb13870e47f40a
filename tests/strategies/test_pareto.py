import itertools

import numpy as np
import pytest

from strategies.pareto import Bound, hypervolume, knee_point, non_dominated_mask
from search_space import VaenasInputError


def brute_front(p):
    n = len(p)
    return np.array([not any(np.all(p[j] <= p[i]) and np.any(p[j] < p[i]) for j in range(n)) for i in range(n)])


def brute_hv(p, ref):
    """Exact: sum the volumes of the grid cells (from all coordinates) that some point dominates."""
    p = p[np.all(p < ref, axis=1)]
    if len(p) == 0:
        return 0.0
    axes = [np.unique(np.concatenate([p[:, d], [ref[d]]])) for d in range(p.shape[1])]
    total = 0.0
    for idx in itertools.product(*[range(len(a) - 1) for a in axes]):
        lo = np.array([axes[d][i] for d, i in enumerate(idx)])
        hi = np.array([axes[d][i + 1] for d, i in enumerate(idx)])
        if np.any(np.all(p <= lo, axis=1)):
            total += float(np.prod(hi - lo))
    return total


@pytest.mark.parametrize("m", [2, 3, 4])
@pytest.mark.parametrize("seed", range(6))
def test_front_and_hypervolume_match_brute_force(m, seed):
    rng = np.random.default_rng(seed)
    n = {2: 25, 3: 12, 4: 8}[m]
    pts = rng.random((n, m))
    if seed % 2:
        pts = np.round(pts * 4) / 4  # ties and duplicates
    assert np.array_equal(non_dominated_mask(pts), brute_front(pts))
    bounds = [Bound(0.0, 1.0)] * m
    assert hypervolume(pts, bounds) == pytest.approx(brute_hv(pts, np.ones(m)), abs=1e-9)


def test_normalisation_makes_studies_comparable():
    pts = np.array([[90.0, 1e4], [100.0, 1e3], [120.0, 5e2]])
    b = [Bound(80.0, 130.0), Bound(1e2, 1e6, log=True)]
    norm = np.array([[(90 - 80) / 50, 0.5], [20 / 50, 0.25], [40 / 50, np.log10(5)/4]])
    assert hypervolume(pts, b) == pytest.approx(brute_hv(norm, np.ones(2)))
    assert 0 < hypervolume(pts, b) <= 1
    assert hypervolume(pts * [1, 1], b) == hypervolume(pts, b)
    assert hypervolume(np.array([[200.0, 1e7]]), b) == 0.0  # outside the box: contributes nothing
    assert hypervolume(np.zeros((0, 2)), b) == 0.0


def test_knee_is_on_the_front():
    pts = np.array([[0.0, 1.0], [0.3, 0.3], [1.0, 0.0], [0.5, 0.5]])
    assert knee_point(pts, [Bound(0, 1)] * 2) == 1


@pytest.mark.parametrize("lo, hi, log", [(1, 1, False), (2, 1, False), (0, 1, True), (float("nan"), 1, False)])
def test_bad_bounds(lo, hi, log):
    with pytest.raises(VaenasInputError):
        Bound(lo, hi, log)
