"""How the next candidate is chosen: Optuna samplers driving the search space's named decisions.

One interface: a strategy is an Optuna ``BaseSampler``; the study asks a trial and the space's
define-by-run program calls ``trial.suggest_categorical(name, choices)`` for each decision. The
registry maps ``--strategy NAME`` to a factory ``(space, seed, **options) -> BaseSampler``.
Never imports ``evaluator``.
"""

from __future__ import annotations

from typing import Any, Callable

import optuna

from search_space import ArchSpec, SearchSpace, VaenasInputError

Factory = Callable[..., optuna.samplers.BaseSampler]
REGISTRY: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    def deco(f: Factory) -> Factory:
        REGISTRY[name] = f
        return f

    return deco


@register("random")
def _random(space: SearchSpace, seed: int) -> optuna.samplers.BaseSampler:
    return optuna.samplers.RandomSampler(seed=seed)


@register("nsga2")
def _nsga2(space: SearchSpace, seed: int, population_size: int = 8, mutation_prob: float | None = None,
           crossover_prob: float = 0.9) -> optuna.samplers.BaseSampler:
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population_size, mutation_prob=mutation_prob,
                                         crossover_prob=crossover_prob)


def create_sampler(name: str, space: SearchSpace, seed: int, options: dict[str, Any] | None = None):
    if name not in REGISTRY:
        raise VaenasInputError(f"strategy: {name!r} is unknown; registered strategies are {sorted(REGISTRY)}")
    try:
        return REGISTRY[name](space, seed, **(options or {}))
    except TypeError as e:
        raise VaenasInputError(f"strategy.options: invalid for {name!r} ({e})") from None


def suggest_spec(space: SearchSpace, trial: optuna.Trial) -> ArchSpec:
    """Let an Optuna trial make every decision of ``space``'s program."""
    return space.define(lambda name, choices: trial.suggest_categorical(name, list(choices)))


__all__ = ["REGISTRY", "create_sampler", "register", "suggest_spec"]
