"""Screen before training: propose many specs, train only the one with the highest predicted gain.

A trial's costs are exact before it trains (packed bytes, parameters, FLOPs, RAM, flash: the
studies layer hands them in as ``exact(spec) -> {cost: value}``); only its measured figures (−ELBO,
latency, AUROC) are unknown. :class:`Predictor` fits them, one ridge regression per unknown
objective, on the study's finished trials: features are the logs of the exact costs and the
spec's decisions (numbers as they are, words one-hot), standardised; the ridge strength is picked
by leave-one-out error. :func:`gains` scores each candidate's predicted point against the
study's feasible front: its hypervolume improvement within the study's bounds, or - when it
improves nothing - minus how far it is from the front (the additive epsilon indicator), so
candidates stay ranked. With one objective (budget mode) that is the predicted improvement on
the best feasible value so far.

A whole-spec strategy (:class:`strategies.base.SpecSampler`) given a :class:`Screen` draws ``pool``
novel, feasible proposals per trial once ``startup`` trials have finished, and proposes the one
with the highest gain; the others - below the cut - are not trained by that trial. Each screened
trial records its pool, the gains and the prediction made before it trained
(:meth:`Screen.record`); :func:`held_out_tau` turns those into the predictor's honest rank
correlation: every prediction in it was made before the trial it predicts was measured.

``strategy: {name: evolution, screen: {pool: 16, startup: 8}}`` in a study's YAML.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np

from search_space import ArchSpec, SearchSpace, VaenasInputError

from .pareto import Bound, hypervolume, kendall_tau, non_dominated_mask, normalise
from .trial_record import Observation

Exact = Callable[[ArchSpec], dict[str, float]]
ALPHAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # ridge strengths tried (leave-one-out picks one)


@dataclass(frozen=True)
class ScreenConfig:
    """``pool``: proposals per trained trial; ``startup``: finished trials before screening starts."""

    pool: int = 16
    startup: int = 8

    @classmethod
    def parse(cls, raw: Any) -> "ScreenConfig":
        if raw is True:
            return cls()
        if not isinstance(raw, dict) or set(raw) - {"pool", "startup"}:
            raise VaenasInputError("strategy.screen: expected {pool: N, startup: N} (or true for pool 16, startup 8), "
                                   f"got {raw!r}")
        out = cls(**raw)
        for k, lo in (("pool", 2), ("startup", 3)):
            v = getattr(out, k)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise VaenasInputError(f"strategy.screen.{k}: must be a whole number >= {lo}, got {v!r}")
        return out


class Features:
    """A spec as a fixed-length vector: log(1 + each exact cost), then each decision of the space,
    one-hot (so an effect need not be linear: 2-bit weights hurt far more than 8-bit ones), a number
    also as it is; a decision the spec does not make is left empty (NaN)."""

    def __init__(self, space: SearchSpace, exact: Exact):
        self.space, self.exact = space, exact
        self.dims = sorted(space.dimensions().items())

    def __call__(self, spec: ArchSpec) -> np.ndarray:
        costs = self.exact(spec)
        params = self.space.to_params(spec)
        out = [math.log1p(max(0.0, float(costs[k]))) for k in sorted(costs)]
        for name, choices in self.dims:
            v = params.get(name)
            if all(_number(c) for c in choices):
                out.append(float(v) if v is not None else math.nan)
            out.extend(float(v == c) if v is not None else math.nan for c in choices)
        return np.asarray(out, float)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


class Ridge:
    """Ridge regression on standardised features (NaN filled with the column mean), the strength
    picked from :data:`ALPHAS` by exact leave-one-out error (the hat-matrix shortcut)."""

    def fit(self, X: np.ndarray, y: np.ndarray) -> "Ridge":
        seen = ~np.isnan(X)
        self.mean = np.nansum(X, axis=0) / np.maximum(seen.sum(axis=0), 1)  # 0 for a column never seen
        F = self._fill(X)
        self.center, self.scale = F.mean(axis=0), F.std(axis=0)
        self.scale[self.scale == 0] = 1.0
        Z = np.hstack([(F - self.center) / self.scale, np.ones((len(F), 1))])
        best = None
        for a in ALPHAS:
            w, loo = _ridge_loo(Z, y, a)
            err = float(np.mean((loo - y) ** 2))
            if best is None or err < best[0]:
                best = (err, a, w, loo)
        _, self.alpha, self.w, self.loo = best
        return self

    def _fill(self, X: np.ndarray) -> np.ndarray:
        return np.where(np.isnan(X), self.mean, X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        Z = (self._fill(np.atleast_2d(X)) - self.center) / self.scale
        return np.hstack([Z, np.ones((len(Z), 1))]) @ self.w


def _ridge_loo(Z: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Weights and leave-one-out predictions of ridge (the intercept, last column, unpenalised; ``alpha`` > 0)."""
    pen = np.full(Z.shape[1], alpha)
    pen[-1] = 0.0
    A = Z.T @ Z + np.diag(pen)
    AinvZt = np.linalg.lstsq(A, Z.T, rcond=None)[0]
    w = AinvZt @ y
    h = np.einsum("ij,ji->i", Z, AinvZt)
    return w, y - (y - Z @ w) / np.maximum(1.0 - h, 1e-9)


class Predictor:
    """Predicted objective vectors (the minimised form) of unseen specs: exact costs where the
    objective is one, a :class:`Ridge` per other objective fitted to the finished feasible trials."""

    def __init__(self, objectives: Sequence[str], features: Features):
        self.objectives, self.features = list(objectives), features
        self.models: dict[int, Ridge] = {}

    def fit(self, history: Sequence[Observation]) -> "Predictor":
        done = [o for o in history if o.values is not None and all(math.isfinite(v) for v in o.values)]
        X = np.array([self.features(o.spec) for o in done])
        self.models = {j: Ridge().fit(X, np.array([o.values[j] for o in done])) for j, name in
                       enumerate(self.objectives) if name not in self._exact_names(done)}
        return self

    def _exact_names(self, done) -> set[str]:
        return set(self.features.exact(done[0].spec)) if done else set()

    def predict(self, specs: Sequence[ArchSpec]) -> np.ndarray:
        X = np.array([self.features(s) for s in specs])
        out = np.empty((len(specs), len(self.objectives)))
        for j, name in enumerate(self.objectives):
            if j in self.models:
                out[:, j] = self.models[j].predict(X)
            else:
                out[:, j] = [float(self.features.exact(s)[name]) for s in specs]
        return out


def gains(pred: np.ndarray, front: np.ndarray, bounds: Sequence[Bound]) -> np.ndarray:
    """Each predicted point's hypervolume improvement on ``front`` (normalised by ``bounds``), or,
    where that is zero, minus the smallest shift that would put it on the front (epsilon indicator)."""
    p = normalise(pred, bounds)
    if len(front) == 0:
        return -p.sum(axis=1)
    f = normalise(front, bounds)
    f = f[non_dominated_mask(f)]
    eps = np.array([np.min(np.max(q[None, :] - f, axis=1)) for q in p])
    if len(bounds) == 1:
        return -eps
    hv0 = hypervolume(front, bounds)
    hvi = np.array([hypervolume(np.vstack([front, pred[i:i + 1]]), bounds) - hv0 for i in range(len(pred))])
    return np.where(hvi > 1e-12, hvi, -np.maximum(eps, 0.0))


class Screen:
    """Chooses one spec of a pool by predicted gain (see the module docstring)."""

    def __init__(self, config: ScreenConfig, space: SearchSpace, objectives: Sequence[str], bounds: Sequence[Bound],
                 exact: Exact):
        self.config, self.objectives, self.bounds = config, list(objectives), list(bounds)
        self.features = Features(space, exact)

    def active(self, history: Sequence[Observation]) -> bool:
        return sum(o.values is not None for o in history) >= self.config.startup

    def choose(self, pool: Sequence[ArchSpec], history: Sequence[Observation]) -> tuple[ArchSpec, dict]:
        """The pool's spec of highest predicted gain and the record of the decision."""
        predictor = Predictor(self.objectives, self.features).fit(history)
        pred = predictor.predict(pool)
        modelled = [self.objectives[j] for j in sorted(predictor.models)]
        front = np.array([o.values for o in history if o.values is not None and o.feasible]).reshape(
            -1, len(self.objectives))
        g = gains(pred, front, self.bounds)
        order = sorted(range(len(pool)), key=lambda i: (-g[i], i))
        best = order[0]
        return pool[best], self.record(pool, pred, g, order, modelled)

    def record(self, pool, pred: np.ndarray, g: np.ndarray, order: list[int], modelled: list[str]) -> dict:
        """The decision: pool size, the chosen spec's gain and predicted (minimised) objectives - ``modelled``
        names those the ridge predicted, the rest are exact - and each spec below the cut with its gain."""
        best = order[0]
        return {"pool": len(pool), "gain": float(g[best]), "modelled": modelled,
                "predicted": {k: float(pred[best, j]) for j, k in enumerate(self.objectives)},
                "below_cut": [[pool[i].id, float(g[i])] for i in order[1:]]}


def screened_pairs(trials, objectives: Sequence[str], name: str) -> list[tuple[float, float]]:
    """(predicted before training, measured) values of objective ``name`` over the COMPLETE screened
    trials whose prediction of it came from the model (not an exact cost)."""
    from optuna.trial import TrialState

    from .trial_record import SCREEN, trial_attrs

    j = list(objectives).index(name)
    out = []
    for t in trials:
        rec = trial_attrs(t).get(SCREEN)
        if t.state == TrialState.COMPLETE and t.values is not None and rec and name in rec["modelled"]:
            out.append((rec["predicted"][name], t.values[j]))
    return out


def held_out_tau(records: Sequence[tuple[float, float]]) -> float:
    """Kendall τ of (predicted before training, measured) pairs: the predictor's held-out rank correlation."""
    if len(records) < 3:
        return math.nan
    pred, meas = zip(*records)
    return kendall_tau(pred, meas)
