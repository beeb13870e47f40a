"""How the next candidate is chosen. One interface: an Optuna ``BaseSampler`` with ``seed`` and
``state_dict()/load_state_dict()`` (see :mod:`strategies.base`).

The registry maps ``--strategy NAME`` to a factory
``(space, seed, *, feasible=None, **options) -> sampler``; ``options``
come from the study's YAML (``strategy: {name: evolution, options: {population_size: 16}}``).
Never imports ``evaluator``.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

from search_space import ArchSpec, SearchSpace, VaenasInputError

from .base import NSGAII, TPE, Observation, RandomSearch, SpecSampler, StatefulMixin, observations, trial_rng
from .evolution import RegularizedEvolution
from .rl import ReinforceController

Factory = Callable[..., optuna.samplers.BaseSampler]
REGISTRY: dict[str, Factory] = {}
OPTIONAL: dict[str, str] = {"nni-evolution": "nni", "nni-rl": "nni"}  # name -> the extra it needs


def register(name: str) -> Callable[[Factory], Factory]:
    def deco(f: Factory) -> Factory:
        REGISTRY[name] = f
        return f

    return deco


@register("random")
def _random(space: SearchSpace, seed: int, *, feasible=None) -> SpecSampler:
    return RandomSearch(space, seed, feasible=feasible)


@register("nsga2")
def _nsga2(space: SearchSpace, seed: int, *, feasible=None, population_size: int = 8,
           mutation_prob: float | None = None, crossover_prob: float = 0.9) -> NSGAII:
    return NSGAII(space, seed, population_size=population_size, mutation_prob=mutation_prob,
                  crossover_prob=crossover_prob)


@register("tpe")
def _tpe(space: SearchSpace, seed: int, *, feasible=None, n_startup_trials: int = 10,
         n_ei_candidates: int = 24, multivariate: bool = True) -> TPE:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return TPE(space, seed, n_startup_trials=n_startup_trials, n_ei_candidates=n_ei_candidates,
                   multivariate=multivariate, group=multivariate)


@register("gp")
def _gp(space: SearchSpace, seed: int, *, feasible=None, n_startup_trials: int = 10,
        deterministic_objective: bool = False) -> "GP":
    import warnings

    try:
        import scipy  # noqa: F401 - Optuna's GPSampler needs it
    except ImportError:
        raise VaenasInputError("strategy gp: Optuna's GPSampler needs scipy; install it with `pip install scipy`") \
            from None
    from .base import GP

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return GP(space, seed, n_startup_trials=n_startup_trials, deterministic_objective=deterministic_objective,
                  warn_independent_sampling=False)


@register("evolution")
def _evolution(space: SearchSpace, seed: int, *, feasible=None, **options) -> SpecSampler:
    return RegularizedEvolution(space, seed, feasible=feasible, **options)


@register("rl")
def _rl(space: SearchSpace, seed: int, *, feasible=None, **options) -> SpecSampler:
    return ReinforceController(space, seed, feasible=feasible, **options)


@register("nni-evolution")
def _nni_evolution(space: SearchSpace, seed: int, *, feasible=None, **options) -> SpecSampler:
    from .nni_adapter import NNIEvolution, _require

    _require("nni-evolution")
    return NNIEvolution(space, seed, feasible=feasible, **options)


@register("nni-rl")
def _nni_rl(space: SearchSpace, seed: int, *, feasible=None, **options) -> SpecSampler:
    from .nni_adapter import NNIPolicyRL, _require

    _require("nni-rl")
    return NNIPolicyRL(space, seed, feasible=feasible, **options)


def extra_available(name: str) -> bool:
    """Whether an optional strategy's extra is installed (always True for the core ones)."""
    if name not in OPTIONAL:
        return True
    from .nni_adapter import nni_available

    return nni_available()


def create_sampler(name: str, space: SearchSpace, seed: int, options: dict[str, Any] | None = None, *,
                   feasible: Callable[[ArchSpec], bool] | None = None, screen=None):
    """The registered strategy ``name``; ``screen`` (a :class:`strategies.screening.Screen`) makes a
    whole-spec strategy propose a pool per trial and keep the best predicted."""
    if name not in REGISTRY:
        raise VaenasInputError(f"strategy: {name!r} is unknown; registered strategies are {sorted(REGISTRY)}")
    try:
        sampler = REGISTRY[name](space, seed, feasible=feasible, **(options or {}))
    except (TypeError, ValueError) as e:
        raise VaenasInputError(f"strategy.options: invalid for {name!r} ({e})") from None
    if screen is not None:
        if not isinstance(sampler, SpecSampler):
            whole = sorted(n for n in ("random", "evolution", "rl") if n in REGISTRY)
            raise VaenasInputError(f"strategy.screen: {name!r} draws each decision through Optuna, so it cannot "
                                   f"screen a pool of whole specs; use one of {whole} (or drop screen)")
        sampler.screen = screen
    return sampler


def suggest_spec(space: SearchSpace, trial: optuna.Trial) -> ArchSpec:
    """Let an Optuna trial make every decision of ``space``'s program."""
    return space.define(lambda name, choices: trial.suggest_categorical(name, list(choices)))


__all__ = ["NSGAII", "REGISTRY", "TPE", "Observation", "RandomSearch", "RegularizedEvolution", "ReinforceController",
           "SpecSampler", "StatefulMixin", "create_sampler", "extra_available", "observations", "register", "suggest_spec", "trial_rng"]
