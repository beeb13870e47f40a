"""Multi-fidelity early stopping for multi-objective studies (successive halving, asynchronous).

``budget: {trials: 100, rungs: [0.1, 0.3, 1.0], keep: 0.33}``. While a trial trains, at each rung
(a fraction of its training budget) its point - the partial validation −ELBO with the exact static
costs of its spec (and its measured latency, when that is an objective) - is compared with the
points every other trial of the study recorded at the same rung. It trains on only if it ranks in
the best ``ceil(keep * n)`` of those ``n`` points (itself included) by non-dominated sorting,
hypervolume contribution breaking ties within a front (:func:`evaluator.promoted`). Otherwise
training stops there: the trial is stored PRUNED with ``stopped_at_rung``, its figures under
``partial`` (labelled partial), and counts toward the budget, but it is never on a front, in a
hypervolume or exported (those read COMPLETE trials only). Strategies see it as a finished trial
without values (:func:`strategies.base.observations`).

Decisions read the shared storage, so they work across workers and after ``--resume``: each
trial's ``rungs`` attribute lists, per rung reached, its point, the trial numbers it was compared
with and the decision - enough to recompute every decision from the storage alone. Like ASHA,
a decision uses the trials that had reached the rung by then: the first trials at a rung go on
easily (one of one is the best third), later ones must beat a growing field.
"""

from __future__ import annotations

import math

import optuna

from strategies.pareto import Bound, promoted
from strategies.trial_record import trial_attrs

RUNGS_ATTR = "rungs"  # trial attr: [{rung, fraction, point, compared_with, promoted}, ...]
STOPPED_ATTR = "stopped_at_rung"  # trial attr of a trial stopped early (PRUNED)


def rung_points(trials, rung: int, exclude: int | None = None) -> dict[int, list[float]]:
    """Trial number -> the point each trial recorded at ``rung`` (repeats of a spec record nothing)."""
    out = {}
    for t in trials:
        if t.number == exclude or "reused_from_trial" in trial_attrs(t):
            continue
        for rec in trial_attrs(t).get(RUNGS_ATTR, ()):
            if rec["rung"] == rung:
                out[t.number] = rec["point"]
    return out


def decide(number: int, point: list[float], others: dict[int, list[float]], bounds: list[Bound],
           keep: float) -> tuple[bool, list[int]]:
    """Does trial ``number`` with ``point`` go on, compared with ``others`` (number -> point)? Points are
    ordered by trial number (the earlier trial wins an exact tie). Returns (decision, numbers compared)."""
    numbers = sorted([*others, number])
    pts = [point if n == number else others[n] for n in numbers]
    return promoted(numbers.index(number), pts, bounds, keep), [n for n in numbers if n != number]


def finite(v: float) -> float:
    return float(v) if math.isfinite(v) else math.inf


class StudyRungs:
    """The rung gate of one trial (:class:`evaluator.RungGate`): decisions read the study's storage and
    each is written to the trial (``rungs``) before training goes on or stops."""

    def __init__(self, study: optuna.Study, trial: optuna.Trial, fractions: tuple[float, ...], keep: float,
                 objectives: list[str], bounds: list[Bound]):
        self.study, self.trial, self.fractions, self.keep = study, trial, tuple(fractions), keep
        self.objectives, self.bounds = list(objectives), list(bounds)
        self.needs = tuple(objectives)
        self.records: list[dict] = []

    def decide(self, rung: int, fraction: float, partial: dict[str, float]) -> bool:
        point = [finite(partial[k]) for k in self.objectives]
        others = rung_points(self.study.get_trials(deepcopy=False), rung, exclude=self.trial.number)
        ok, compared = decide(self.trial.number, point, others, self.bounds, self.keep)
        self.records.append({"rung": rung, "fraction": fraction, "point": point, "partial_neg_elbo":
                             finite(partial["neg_elbo"]), "compared_with": compared, "promoted": ok})
        self.trial.set_user_attr(RUNGS_ATTR, self.records)
        return ok


def stopped_attrs(result) -> dict:
    """The attributes of a trial stopped at a rung (:class:`evaluator.Stopped`): its figures there,
    labelled partial."""
    return {STOPPED_ATTR: result.rung, "stopped_at_fraction": result.fraction,
            "partial": {**result.partial, "note": f"PARTIAL: after {result.fraction:g} of the training budget"},
            "train_seconds": result.train_seconds, "epochs": result.epochs}


def is_stopped(t) -> bool:
    return t.state == optuna.trial.TrialState.PRUNED and STOPPED_ATTR in trial_attrs(t)
