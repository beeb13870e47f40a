"""What a study's trials mean: which count toward the budget, which are feasible, which a front is
reported over. The keys and fail reasons are the trial record's (:mod:`strategies.trial_record`)."""

from __future__ import annotations

import math

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluator import static_costs
from search_space import ArchSpec, VaenasInputError
from strategies.pareto import hypervolume, non_dominated_mask
from strategies.trial_record import ESTIMATE, FEASIBLE, PHASE, REUSED_FROM, specs_own_failure, trial_attrs

from .config import STATIC_CONSTRAINTS, StudyConfig
from .rungs import is_stopped

REMEASURE = "remeasure"  # phase of a trial that re-measures an estimated front spec standalone


def is_finished(t: FrozenTrial) -> bool:
    """Does ``t`` count toward the budget? A COMPLETE trial, a trial stopped at a rung, a FAIL of the
    spec's own; not a re-measurement, a repeat of a spec already measured, or a trial cut off."""
    a = trial_attrs(t)
    if a.get(PHASE) == REMEASURE or REUSED_FROM in a:
        return False  # extra: not part of the search budget
    if t.state == TrialState.COMPLETE or is_stopped(t):
        return True
    return t.state == TrialState.FAIL and specs_own_failure(t)


def is_feasible(t: FrozenTrial) -> bool:
    return t.state == TrialState.COMPLETE and bool(trial_attrs(t).get(FEASIBLE, True))


def is_estimate(t: FrozenTrial) -> bool:
    return bool(trial_attrs(t).get(ESTIMATE, False))


def constraint_values(values: dict, constraints: dict[str, float]) -> list[float]:
    """Optuna's convention: one value per constraint, <= 0 satisfied (relative excess over the limit)."""
    return [(float(values[k]) - lim) / lim for k, lim in constraints.items()]


def static_feasibility(constraints: dict[str, float]):
    """``feasible(spec)`` for the limits the spec alone decides, or None if there are none."""
    static = {k: v for k, v in constraints.items() if k in STATIC_CONSTRAINTS}
    if not static:
        return None

    def feasible(spec: ArchSpec) -> bool:
        c = static_costs(spec)
        return all(getattr(c, k) <= lim for k, lim in static.items())

    return feasible


def exact_costs(spec: ArchSpec) -> dict[str, float]:
    """Every cost the spec alone decides (what screening knows before a trial trains)."""
    c = static_costs(spec)
    return {k: float(getattr(c, k)) for k in STATIC_CONSTRAINTS}


def screen_for(cfg):
    """The study's screen (:class:`strategies.screening.Screen`), or None when it screens nothing."""
    if cfg.screen is None:
        return None
    from strategies.screening import Screen

    return Screen(cfg.screen, cfg.space, cfg.objectives, cfg.bounds, exact_costs)


BUDGET_PROBE = 400  # specs sampled to show a static budget can be met at all


def smallest_spec(space, fam: str):
    """``fam``'s spec of the fewest units: the smallest width, depth, latent size and bit-width, the largest
    sparsity and stride, the lowest rank (one candidate of the budget probe, not a proven minimum)."""
    def choose(name: str, choices: tuple):
        if name == "family":
            return fam
        nums = [c for c in choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if not nums:
            return choices[0]
        return max(nums) if ("sparsity" in name or "stride" in name) else min(nums)
    return space.define(choose)


def check_budget_reachable(space, constraints: dict[str, float], seed: int = 0) -> None:
    """One line, before anything trains, when no spec the space can make meets the static limits: the
    smallest figures found (each family's smallest spec and ``BUDGET_PROBE`` sampled ones)."""
    import random

    from search_space import SpecError

    static = {k: v for k, v in constraints.items() if k in STATIC_CONSTRAINTS}
    if not static:
        return
    cands = []
    for fam in space.family:
        try:
            cands.append(smallest_spec(space, fam))
        except SpecError:
            pass
    rng = random.Random(seed)
    best = {k: math.inf for k in static}
    for i in range(BUDGET_PROBE + len(cands)):
        spec = cands[i] if i < len(cands) else space.sample(rng)
        c = static_costs(spec)
        if all(getattr(c, k) <= lim for k, lim in static.items()):
            return
        best = {k: min(best[k], getattr(c, k)) for k in static}
    shown = "; ".join(f"{k} <= {lim:,g} (the smallest found: {best[k]:,})" for k, lim in static.items())
    raise VaenasInputError(f"constraints: no spec of this space meets {shown}, checked on each family's smallest spec "
                           f"and {BUDGET_PROBE} sampled ones before training; raise the limit or allow smaller specs "
                           "(widths, latent_dim, weight_bits)")


def reported_trials(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The feasible COMPLETE trials a front is reported over: the measured ones where a study has
    both supernet estimates and measured trials (estimates are never mixed into a measured front)."""
    ok = [t for t in trials if is_feasible(t)]
    measured = [t for t in ok if not is_estimate(t)]
    return measured if measured and len(measured) < len(ok) else ok


def front_stats(study: optuna.Study, cfg: StudyConfig) -> tuple[int, float]:
    pts = [t.values for t in reported_trials(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))]
    if not pts:
        return 0, 0.0
    return int(non_dominated_mask(pts).sum()), hypervolume(pts, cfg.bounds)


def counts(study: optuna.Study) -> tuple[int, list[int]]:
    """(finished trials that count toward the budget, numbers of the RUNNING ones)."""
    trials = study.get_trials(deepcopy=False)
    running = sorted(t.number for t in trials if t.state == TrialState.RUNNING)
    return sum(is_finished(t) for t in trials), running
