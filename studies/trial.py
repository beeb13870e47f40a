"""One trial: propose a spec, decide its outcome, tell it (Optuna's ``_run_trial`` / ``_tell_with_warning``).

:func:`run_trial` is three named steps: the proposal (the spec's identity - ``spec``, ``spec_id``,
``seed`` - is written at once, so a trial whose process dies still says what it was), the outcome
(:class:`Outcome`: rejected as over a static limit, reused from an earlier trial of the same spec,
or trained and measured, perhaps stopped at a rung or failed), and :func:`tell`, the one place a
trial's result reaches the study. A trained model's files are written before the tell: a COMPLETE
trial always has its checkpoint.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import optuna
from optuna.trial import FrozenTrial, TrialState

from evaluator import Objectives, Stopped, static_costs
from search_space import ArchSpec
from strategies import suggest_spec
from strategies.trial_record import (
    FAIL_REASON, FEASIBLE, INFEASIBLE, INTERRUPTED, PHASE, REUSED_FROM, SCREEN, SEED, SPEC, SPEC_ID, SURPLUS,
    trial_attrs,
)

from .artifacts import upload as upload_artifacts
from .config import STATIC_CONSTRAINTS, StudyConfig
from .files import atomic_write, data_meta, save_checkpoint
from .rungs import StudyRungs, is_stopped, stopped_attrs
from .trials import REMEASURE, constraint_values, counts, is_estimate

WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"  # stored on each trial: which process ran it
NOT_REUSED = (SPEC, SPEC_ID, SEED, SCREEN, "worker", "worker_lock", "rungs")  # a repeat keeps its own


@dataclass
class Outcome:
    """What a trial ends as: its state, objective values (COMPLETE), attributes and constraint values
    (``(value - limit) / limit``, <= 0 satisfied); ``kind`` tells the loop what happened."""

    state: TrialState
    values: list[float] | None = None
    attrs: dict = field(default_factory=dict)
    constraints: dict[str, float] = field(default_factory=dict)
    kind: str = "evaluated"  # "rejected" | "reused" | "evaluated"


def tell(study: optuna.Study, trial: optuna.Trial, outcome: Outcome) -> str:
    """The one writer of a trial's result: its attributes, its constraints (Optuna's samplers read
    them), then Optuna's tell. Returns the outcome's kind."""
    for k, v in outcome.attrs.items():
        trial.set_user_attr(k, v)
    for k, v in outcome.constraints.items():
        trial.set_constraint(k, v)
    study.tell(trial, outcome.values, state=outcome.state)
    return outcome.kind


def add(study: optuna.Study, outcome: Outcome, params: dict | None = None, distributions: dict | None = None) -> None:
    """A trial that ran outside the study's ask (a re-measurement) added whole, in one write; its
    constraints stored as ``Trial.set_constraint`` stores them."""
    system = {f"constraints:{k}": v for k, v in outcome.constraints.items()}
    study.add_trial(optuna.trial.create_trial(state=outcome.state, values=outcome.values, params=params,
                                              distributions=distributions, user_attrs=outcome.attrs,
                                              system_attrs=system))


def cut_off(study: optuna.Study, trial: optuna.Trial, reason: str = INTERRUPTED) -> None:
    """Fail a trial that was cut off (Ctrl-C) or lost the race for the last slot: not the spec's fault."""
    tell(study, trial, Outcome(TrialState.FAIL, attrs={FAIL_REASON: reason}))


def surplus(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Server storages: did this trial lose a race for the last slot to an earlier trial of another
    worker? Then it is failed as "surplus" (not counted)."""
    n_fin, running = counts(study)
    if trial.number in running and running.index(trial.number) >= budget - n_fin:
        cut_off(study, trial, SURPLUS)
        return True
    return False


def run_trial(study: optuna.Study, cfg: StudyConfig, trial: optuna.Trial, evaluators, feasible, store=None,
              index: dict | None = None) -> str:
    """Suggest a spec, decide its outcome ("rejected", "reused": not counted in the budget, or
    "evaluated"), tell it. ``evaluators``: ``.get()`` the evaluator, ``.sdir`` and ``.data`` for files."""
    spec = suggest_spec(cfg.space, trial)
    screened = getattr(study.sampler, "screen_record", lambda n: None)(trial.number)
    for k, v in ((SPEC, spec.to_json()), (SPEC_ID, spec.id), (SEED, cfg.seed), (SCREEN, screened)):
        if v is not None:
            trial.set_user_attr(k, v)
    if feasible is not None and not feasible(spec):
        return tell(study, trial, rejected(cfg, spec))
    earlier = earlier_result(study, cfg, spec, index)
    if earlier is not None:
        return tell(study, trial, reused(earlier))
    return tell(study, trial, evaluated(study, cfg, trial, spec, evaluators, store))


def rejected(cfg: StudyConfig, spec: ArchSpec) -> Outcome:
    """A spec provably over a static limit: recorded (PRUNED) for the sampler, never trained."""
    c = static_costs(spec)
    vals = {k: getattr(c, k) for k in STATIC_CONSTRAINTS}
    cons = {k: (vals[k] - lim) / lim if k in vals else 0.0 for k, lim in cfg.constraints.items()}
    over = ", ".join(f"{k} {vals[k]} > {lim:g}" for k, lim in cfg.constraints.items() if k in vals and vals[k] > lim)
    return Outcome(TrialState.PRUNED, attrs={FEASIBLE: all(v <= 0 for v in cons.values()), FAIL_REASON: INFEASIBLE + over},
                   constraints=cons, kind="rejected")


def reused(earlier: FrozenTrial) -> Outcome:
    """What ``earlier`` measured for the same spec (not counted in the budget)."""
    attrs = {k: v for k, v in trial_attrs(earlier).items() if k not in NOT_REUSED}
    attrs[REUSED_FROM] = earlier.number
    if earlier.state == TrialState.PRUNED:
        return Outcome(TrialState.PRUNED, attrs=attrs, constraints=dict(earlier.constraints), kind="reused")
    return Outcome(TrialState.COMPLETE, list(earlier.values), attrs, dict(earlier.constraints), kind="reused")


def evaluated(study: optuna.Study, cfg: StudyConfig, trial: optuna.Trial, spec: ArchSpec, evaluators,
              store) -> Outcome:
    """Train and measure ``spec`` (rungs may stop it early); a measured model's files are saved."""
    evaluator = evaluators.get()
    if cfg.rungs:
        gate = StudyRungs(study, trial, cfg.rungs, cfg.keep, cfg.objectives, cfg.bounds)
        result, model = evaluator.evaluate_with_model(spec, cfg.seed, gate)
    else:
        result, model = evaluator.evaluate_with_model(spec, cfg.seed)
    if isinstance(result, Stopped):
        return Outcome(TrialState.PRUNED, attrs=stopped_attrs(result))
    if not isinstance(result, Objectives):
        return Outcome(TrialState.FAIL, attrs={FAIL_REASON: result.reason})
    attrs = result.to_dict()
    cons = dict(zip(cfg.constraints, constraint_values(attrs, cfg.constraints))) if cfg.constraints else {}
    if cfg.constraints:
        attrs[FEASIBLE] = all(v <= 0 for v in cons.values())
    save_trial_files(trial, spec, None if result.neg_elbo_is_estimate else model, evaluators, store)
    return Outcome(TrialState.COMPLETE, list(result.values(cfg.objectives)), attrs, cons)


def earlier_result(study: optuna.Study, cfg: StudyConfig, spec: ArchSpec, index: dict | None = None):
    """The search trial that already measured ``spec`` in this study (COMPLETE, or stopped at a rung),
    of the same kind (estimate or standalone); None if there is none. ``index`` (spec id -> trial,
    kept by the caller, :func:`index_result`) replaces the scan of the study."""
    if index is not None:
        return index.get(spec.id)
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)):
        if trial_attrs(t).get(SPEC_ID) == spec.id and is_result(t, cfg):
            return t
    return None


def is_result(t: FrozenTrial, cfg: StudyConfig) -> bool:
    """Can later trials of the same spec reuse ``t``'s figures?"""
    a = trial_attrs(t)
    return (t.state == TrialState.COMPLETE or is_stopped(t)) and a.get(PHASE) != REMEASURE \
        and is_estimate(t) == (cfg.supernet is not None) and REUSED_FROM not in a


def index_result(index: dict, t: FrozenTrial, cfg: StudyConfig) -> None:
    """Add finished trial ``t`` to a spec-id index of reusable results (the first one of a spec wins)."""
    if is_result(t, cfg):
        index.setdefault(trial_attrs(t).get(SPEC_ID), t)


def save_trial_files(trial: optuna.Trial, spec: ArchSpec, model, evaluators, store) -> None:
    """``trials/<n>/``: model.pt, arch.json and samples.png of a trained model, each uploaded as an
    artifact of the trial. A supernet estimate (``model`` None: its weights are the supernet's) writes
    nothing: its spec is in the trial's attributes, and estimates must stay cheap."""
    if model is None:
        return
    tdir = Path(evaluators.sdir) / "trials" / str(trial.number)
    meta = data_meta(evaluators.data)
    save_checkpoint(tdir / "model.pt", model, spec, meta)
    files = [tdir / "model.pt", tdir / "arch.json"]
    if store is not None:
        from .plots import samples_png

        atomic_write(files[1], spec.to_json(indent=2).encode())
        files.append(samples_png(model, evaluators.data.val[:8], tdir / "samples.png",
                                 standardised=meta.get("normalization") is not None, seed=trial.number))
        upload_artifacts(store, trial, files)
