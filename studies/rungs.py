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

from search_space import VaenasInputError

from strategies.pareto import Bound, promoted
from strategies.trial_record import trial_attrs

# When does an early −ELBO rank specs like the final one? benchmarks/rung_correlation.py, 40 random specs of
# the `mnist` preset's space, Kendall τ of early vs final validation −ELBO (README "Early discard"):
#   2-epoch recipe:  0.19 at 0.1 epoch, 0.30 at 0.25, 0.76 at 0.5, 0.92 at 1 epoch;
#   10-epoch recipe: 0.27 at 0.1 epoch, 0.32 at 0.25, 0.62 at 0.5, 0.73 at 1 epoch.
# So `rungs: auto` decides once, at 0.5 epoch (recipes up to 4 epochs) or 1 epoch (longer ones).
AUTO_RUNG_EPOCHS = ((4.0, 0.5), (math.inf, 1.0))  # (recipes up to this many epochs, the rung's epoch)


def auto_rungs(epochs: float) -> list[float]:
    """``budget.rungs: auto``: one decision at the earliest epoch where the measured τ >= 0.6, and the end;
    [] when that is over half the recipe (nothing worth saving)."""
    at = next(e for upto, e in AUTO_RUNG_EPOCHS if epochs <= upto)
    return [at / epochs, 1.0] if at / epochs <= 0.5 else []


def parse_rungs(budget: dict, epochs: float = 1.0) -> tuple[tuple[float, ...], float]:
    """``budget.rungs`` (fractions of a trial's training, increasing, in (0, 1]; the final 1.0 may be
    left out; or ``auto``: :func:`studies.rungs.auto_rungs` of the recipe's epochs) and ``budget.keep``
    -> (the decision fractions below 1, keep)."""
    raw = budget.get("rungs")
    if raw == "auto":
        raw = auto_rungs(epochs)
        if not raw:
            raise VaenasInputError(f"budget.rungs: auto puts its one rung at 0.5 epoch or later (earlier, the −ELBO ranks "
                              f"specs poorly), which is over half of this {epochs:g}-epoch recipe: nothing to gain; "
                              "remove budget.rungs")
    if raw is None:
        if "keep" in budget:
            raise VaenasInputError("budget.keep: only means something with budget.rungs; add rungs: [0.1, 0.3, 1.0] or "
                              "remove keep")
        return (), 1 / 3
    if not isinstance(raw, list) or not raw or not all(isinstance(f, (int, float)) and not isinstance(f, bool)
                                                       for f in raw):
        raise VaenasInputError(f"budget.rungs: expected a list of fractions of the training budget, e.g. [0.1, 0.3, 1.0], "
                          f"got {raw!r}")
    fr = [float(f) for f in raw]
    if not all(0 < f <= 1 for f in fr) or any(b <= a for a, b in zip(fr, fr[1:])):
        raise VaenasInputError(f"budget.rungs: fractions must increase strictly within (0, 1], e.g. [0.1, 0.3, 1.0]; got {raw}")
    decisions = tuple(f for f in fr if f < 1)
    if not decisions:
        raise VaenasInputError("budget.rungs: needs at least one fraction below 1 (where a trial may be stopped), e.g. "
                          "[0.3, 1.0]")
    keep = budget.get("keep", 1 / 3)
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise VaenasInputError(f"budget.keep: expected a number, got {type(keep).__name__}")
    if not 0 < keep < 1:
        raise VaenasInputError(f"budget.keep: must be a fraction in (0, 1) of the trials at a rung that go on, got {keep}")
    return decisions, float(keep)


def rungs_line(cfg) -> str:
    """What a study with rungs prints as it starts."""
    return (f"rungs: a trial may stop after {', '.join(f'{f * cfg.train.epochs:g}' for f in cfg.rungs)} of its "
            f"{cfg.train.epochs:g} epochs (keep {cfg.keep:.2f}); each rung's Kendall τ is printed at the end")


def rung_taus(trials) -> list[tuple[int, float, int, float]]:
    """Per rung: (rung, fraction, n, Kendall τ of the −ELBO there vs the final −ELBO) over the COMPLETE
    trials that recorded it - how well each rung ranked the trials that went on (a low τ: it judged early)."""
    from strategies.pareto import kendall_tau

    by_rung: dict[int, list] = {}
    for t in trials:
        if t.state != optuna.trial.TrialState.COMPLETE or "reused_from_trial" in trial_attrs(t):
            continue
        for rec in trial_attrs(t).get(RUNGS_ATTR, ()):
            by_rung.setdefault(rec["rung"], []).append((rec["fraction"], rec["partial_neg_elbo"],
                                                        trial_attrs(t).get("neg_elbo")))
    out = []
    for r, rows in sorted(by_rung.items()):
        rows = [x for x in rows if x[2] is not None and math.isfinite(x[1])]
        out.append((r, rows[0][0] if rows else math.nan, len(rows),
                    kendall_tau([x[1] for x in rows], [x[2] for x in rows])))
    return out


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
