"""The one strategy interface: an Optuna ``BaseSampler`` that also has ``seed`` and a JSON state.

Two kinds implement it:

* Optuna's own samplers (``random`` via our :class:`SpecSampler`, ``nsga2``, ``tpe``) drive the
  space's named decisions through ``trial.suggest_categorical``.
* Whole-spec strategies (:class:`SpecSampler` subclasses: random, evolution, rl) propose one
  complete :class:`ArchSpec` per trial in ``before_trial``; the space's define-by-run program then
  reads its decisions back through ``sample_independent``. They see the study's finished trials
  as a list of :class:`Observation` and draw from a generator seeded by ``(seed, trial.number)``,
  so the same history gives the same proposal on any worker and after any resume.

``state_dict()`` is JSON-able and ``load_state_dict()`` restores it exactly; the run loop keeps it
in the study's storage so a resumed study continues the strategy where it was.

Static constraints: a strategy may be given ``feasible(spec) -> bool`` for limits the space can
prove from the spec alone (packed size, params, FLOPs); whole-spec strategies never propose a
spec it rejects (rejection sampling). Optuna's own samplers cannot be steered that way; the run
loop rejects such proposals before training (see ``studies.run``).
"""

from __future__ import annotations

import random
from typing import Any, Callable

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution
from optuna.trial import FrozenTrial, TrialState

from search_space import ArchSpec, SearchSpace

from .trial_record import SPEC_ID, Observation, observations, trial_attrs  # noqa: F401 - re-exported

Feasible = Callable[[ArchSpec], bool]
# How many fresh proposals a whole-spec strategy draws before it gives up on novelty/feasibility.
MAX_TRIES = 200


def earlier_feasible_points(o: Observation, history: list[Observation]) -> np.ndarray:
    """Objective vectors of the feasible finished trials numbered up to ``o``'s (``o`` included)."""
    return np.array([h.values for h in history if h.values is not None and h.feasible and h.number <= o.number])


def domination_reward(o: Observation, history: list[Observation]) -> float:
    """Minus the fraction of earlier feasible trials that dominate ``o`` (0 on the front); -1 if failed/infeasible."""
    if o.values is None or not o.feasible:
        return -1.0
    pts, v = earlier_feasible_points(o, history), np.asarray(o.values)
    dom = np.all(pts <= v, axis=1) & np.any(pts < v, axis=1)
    return -float(dom.sum()) / max(1, len(pts) - 1)


def trial_rng(seed: int, number: int) -> random.Random:
    """The generator for trial ``number``: independent of session, worker and call order."""
    return random.Random(f"vaenas:{seed}:{number}")


# ------------------------------------------------------------------ state of Optuna's samplers
def _rng_state(r: np.random.RandomState) -> list:
    name, keys, pos, has_gauss, cached = r.get_state()
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_rng_state(r: np.random.RandomState, s: list) -> None:
    r.set_state((s[0], np.asarray(s[1], dtype=np.uint32), s[2], s[3], s[4]))


def _lazy_rngs(sampler: Any) -> dict[str, Any]:
    """Every ``LazyRandomState`` inside an Optuna sampler (its own and its fallback random sampler's)."""
    from strategies.optuna_private import lazy_random_states

    return lazy_random_states(sampler)


class StatefulMixin:
    """``seed`` + ``state_dict``/``load_state_dict`` for an Optuna sampler (its random states)."""

    seed: int

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "rng": {k: _rng_state(v.rng) for k, v in sorted(_lazy_rngs(self).items())}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])
        rngs = _lazy_rngs(self)
        for k, s in state.get("rng", {}).items():
            if k in rngs:
                _set_rng_state(rngs[k].rng, s)


class NSGAII(StatefulMixin, optuna.samplers.NSGAIISampler):
    """Optuna's NSGA-II over the space's named decisions (its population lives in the storage)."""

    def __init__(self, space: SearchSpace, seed: int, **kw: Any):
        super().__init__(seed=seed, **kw)
        self.seed = seed


class TPE(StatefulMixin, optuna.samplers.TPESampler):
    """Optuna's multi-objective TPE (MOTPE) over the space's named decisions."""

    def __init__(self, space: SearchSpace, seed: int, **kw: Any):
        super().__init__(seed=seed, **kw)
        self.seed = seed


class GP(StatefulMixin, optuna.samplers.GPSampler):
    """Optuna's Gaussian-process sampler (log expected improvement; expected hypervolume improvement with
    several objectives) over the space's named decisions: a model of the objectives fitted to every trial,
    worth its fitting time when each trial trains for long."""

    def __init__(self, space: SearchSpace, seed: int, **kw: Any):
        super().__init__(seed=seed, **kw)
        self.seed = seed


# ------------------------------------------------------------------ whole-spec strategies
class SpecSampler(StatefulMixin, optuna.samplers.BaseSampler):
    """Base of strategies that propose whole specs. Subclasses implement :meth:`propose`.

    ``propose(history, rng)`` returns a spec of the space (or None for "sample at random").
    The base class adds rejection of statically infeasible specs and of specs already proposed
    in the study (while novel ones can still be found).
    """

    def __init__(self, space: SearchSpace, seed: int, *, feasible: Feasible | None = None):
        self.space = space
        self.seed = int(seed)
        self.feasible = feasible
        self._proposals: dict[int, dict[str, Any]] = {}
        self._seen_trials: dict = {}  # observations() cache: finished trials, read once
        self.screen = None  # a strategies.screening.Screen: propose a pool, keep the best predicted
        self.screen_records: dict[int, dict] = {}

    # -- to implement
    def propose(self, history: list[Observation], rng: random.Random) -> ArchSpec | None:
        raise NotImplementedError

    # -- JSON state beyond the seed (override in stateful strategies)
    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.seed = int(state["seed"])

    # -- helpers for subclasses
    def ok(self, spec: ArchSpec) -> bool:
        return self.feasible is None or bool(self.feasible(spec))

    def random_spec(self, rng: random.Random, avoid: set[str] = frozenset()) -> ArchSpec:
        """A uniformly sampled feasible spec, novel if one is found within MAX_TRIES draws."""
        fallback = None
        for _ in range(MAX_TRIES):
            s = self.space.sample(rng)
            if not self.ok(s):
                continue
            if s.id not in avoid:
                return s
            fallback = fallback or s
        if fallback is None:
            raise RuntimeError("no feasible spec found in the search space within "
                               f"{MAX_TRIES} random draws; loosen the study's constraints")
        return fallback

    # -- Optuna's BaseSampler
    def infer_relative_search_space(self, study, trial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study, trial, search_space) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = observations(study, self._seen_trials)
        self.observe(history)
        rng = trial_rng(self.seed, trial.number)
        seen = {o.spec.id for o in history} | {trial_attrs(t).get(SPEC_ID) for t in study.get_trials(
            deepcopy=False, states=(TrialState.RUNNING, TrialState.WAITING)) if t.number != trial.number}
        screening = self.screen is not None and self.screen.active(history)
        pool = self.candidates(history, rng, seen, self.screen.config.pool if screening else 1)
        spec = pool[0]
        if screening and len(pool) > 1:
            spec, self.screen_records[trial.number] = self.screen.choose(pool, history)
        self._proposals[trial.number] = self.space.to_params(spec)
        self.on_proposed(study, trial, spec, rng)

    def candidates(self, history: list[Observation], rng: random.Random, seen: set, n: int) -> list[ArchSpec]:
        """Up to ``n`` distinct feasible proposals not in ``seen`` (at least one: a random spec, novel if
        possible, when the strategy proposes none)."""
        out: list[ArchSpec] = []
        for _ in range(MAX_TRIES * n):
            cand = self.propose(history, rng)
            if cand is None:
                break
            if self.ok(cand) and cand.id not in seen and cand.id not in {c.id for c in out}:
                out.append(cand)
                if len(out) == n:
                    return out
        while len(out) < n:
            ids = {c.id for c in out}
            s = self.random_spec(rng, seen | ids)
            if s.id in ids or (s.id in seen and out):
                break
            out.append(s)
            if s.id in seen:  # only a repeat was found
                break
        return out

    def screen_record(self, number: int) -> dict | None:
        """What screening decided for trial ``number`` (None if it was not screened), taken once."""
        return self.screen_records.pop(number, None)

    def observe(self, history: list[Observation]) -> None:
        """Hook: learn from the finished trials (called before every proposal)."""

    def on_proposed(self, study: optuna.Study, trial: FrozenTrial, spec: ArchSpec, rng: random.Random) -> None:
        """Hook: e.g. store per-trial bookkeeping as system attrs."""

    def sample_independent(self, study, trial, param_name: str, param_distribution: BaseDistribution) -> Any:
        params = self._proposals.get(trial.number, {})
        if param_name in params and isinstance(param_distribution, CategoricalDistribution) \
                and params[param_name] in param_distribution.choices:
            return params[param_name]
        # not a decision of the proposal (cannot happen for specs of this space): draw it uniformly
        choices = getattr(param_distribution, "choices", None)
        if choices is None:
            raise RuntimeError(f"{type(self).__name__} only drives categorical decisions, got {param_name!r}")
        return trial_rng(self.seed, trial.number).choice(list(choices))

    def after_trial(self, study, trial, state, values) -> None:
        self._proposals.pop(trial.number, None)


class RandomSearch(SpecSampler):
    """Uniform over the space's program (every decision uniform given the earlier ones), feasible, novel."""

    def propose(self, history: list[Observation], rng: random.Random) -> ArchSpec | None:
        return self.space.sample(rng)
