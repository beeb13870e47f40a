"""The trial record: one owner of what a study's trial holds, how it is read and written, and what
strategies learn from it (:class:`Observation`).

Keys: every attribute name a trial carries is a constant here (``SPEC``, ``SPEC_ID``, ``FAIL_REASON``,
...). Fail reasons that say nothing about the spec - the trial was cut off (``INTERRUPTED``), lost a
race for the last budget slot (``SURPLUS``) or its worker died (``WORKER_DIED``) - are
:data:`NOT_THE_SPECS_FAULT`: such a trial neither counts toward a budget nor teaches a strategy.

Layout (studies write it; every reader goes through :func:`trial_attrs`):

Standalone trials store each attribute as its own Optuna user attribute (``spec``, ``spec_id``,
``neg_elbo``, every cost, ...), written as the trial runs. A supernet estimate, scored in
milliseconds, is written with ONE storage write (:mod:`studies.estimates`): its attributes are
packed into the one JSON attribute ``record`` and its parameters are left out (they are the
spec's decisions, rebuilt from ``spec`` when the study is read back for a strategy). Every reader
goes through :func:`trial_attrs`, which gives both layouts as one flat dict.
"""

from __future__ import annotations

import copy
import functools
from dataclasses import dataclass
from typing import Any

RECORD = "record"  # the one user attribute of a packed trial: {attribute: value}

# ---------------------------------------------------------------------------- keys
SPEC = "spec"  # the ArchSpec's JSON
SPEC_ID = "spec_id"
SEED = "seed"
WORKER = "worker"  # host:pid of the process that ran it
FAIL_REASON = "fail_reason"
FEASIBLE = "feasible"
PHASE = "phase"  # "remeasure": a front spec re-measured standalone after a supernet search
REUSED_FROM = "reused_from_trial"
STOPPED_AT = "stopped_at_fraction"  # stopped early at a rung after this fraction of its training
ESTIMATE = "neg_elbo_is_estimate"
SCREEN = "screen"  # a screened trial: its pool, the gains below the cut, the prediction made before it trained

# ---------------------------------------------------------------------------- fail reasons
INTERRUPTED = "interrupted"  # cut off (Ctrl-C, killed process): does not use up budget, is replaced
SURPLUS = "surplus"  # asked by a worker that lost the race for the last budget slot: not counted
WORKER_DIED = "worker died mid-trial (killed or crashed); retried once"
INFEASIBLE = "infeasible: "  # prefix: a spec over a static limit, never trained
NOT_THE_SPECS_FAULT = frozenset({None, INTERRUPTED, SURPLUS, WORKER_DIED})  # None: no reason stored


def fail_reason(t) -> str | None:
    return trial_attrs(t).get(FAIL_REASON)


def specs_own_failure(t) -> bool:
    """A FAIL trial whose reason is the spec's own (it diverged, ...), not a cut-off or a dead worker."""
    return fail_reason(t) not in NOT_THE_SPECS_FAULT


def trial_attrs(t) -> dict[str, Any]:
    """A trial's user attributes, a packed ``record`` unpacked (read-only view)."""
    ua = t.user_attrs
    rec = ua.get(RECORD)
    if rec is None:
        return ua
    return {**rec, **{k: v for k, v in ua.items() if k != RECORD}}


def packed(t):
    """A copy of FrozenTrial ``t`` stored with one attribute (``record``) and no parameters."""
    out = copy.copy(t)
    out.user_attrs = {RECORD: dict(trial_attrs(t))}
    out.params, out.distributions = {}, {}
    return out


def unpacked(t, space):
    """A copy of FrozenTrial ``t`` with its attributes unpacked and, when it had none stored, its
    parameters rebuilt from its spec (``space.to_params``) - as it was before :func:`packed`."""
    if RECORD not in t.user_attrs:
        return t
    from optuna.distributions import CategoricalDistribution

    from search_space import ArchSpec

    out = copy.copy(t)
    out.user_attrs = dict(trial_attrs(t))
    js = out.user_attrs.get("spec")
    if js is not None and not t.params:
        params = space.to_params(ArchSpec.from_json(js))
        dims = space.dimensions()
        out.distributions = {k: CategoricalDistribution(list(dims[k])) for k in params if k in dims}
        out.params = {k: params[k] for k in out.distributions}
    return out


# ---------------------------------------------------------------------------- what strategies learn from
@dataclass(frozen=True)
class Observation:
    """One finished trial as strategies see it. ``values`` is None for a failed trial."""

    number: int
    spec: Any  # ArchSpec
    values: tuple[float, ...] | None
    feasible: bool = True
    attrs: dict[str, Any] | None = None  # the trial's system attrs (strategy bookkeeping)
    stopped_at: float | None = None  # stopped early at a rung after this fraction of its training (values None)


@functools.lru_cache(maxsize=100_000)
def _spec(js: str):
    from search_space import ArchSpec

    return ArchSpec.from_json(js)  # frozen, so one parsed copy can be shared


def observation(t) -> Observation | None:
    """``t`` as a lesson, or None when it teaches nothing: no spec, or failed through no fault of it."""
    from optuna.trial import TrialState

    a = trial_attrs(t)
    js = a.get(SPEC)
    if js is None or t.state == TrialState.FAIL and not specs_own_failure(t):
        return None
    done = t.state == TrialState.COMPLETE
    feasible = a.get(FEASIBLE, True) and all(c <= 0 for c in t.constraints.values())
    return Observation(t.number, _spec(js), tuple(t.values) if done else None, bool(feasible) and done,
                       dict(t.system_attrs), a.get(STOPPED_AT))


def observations(study, cache: dict | None = None) -> list[Observation]:
    """Finished trials that carry a spec, in trial-number order: COMPLETE, FAIL of the spec's own
    (diverged, ...), PRUNED (rejected as infeasible, or stopped early at a rung: ``stopped_at``, no
    values - its partial figures are not comparable with finished ones); not trials cut off by a
    crash, Ctrl-C or a dead worker. ``cache`` (a dict the caller keeps): a finished trial never
    changes, so each is read once - the per-proposal cost stays flat as the study grows."""
    from optuna.trial import TrialState

    out = []
    key = study.study_name
    for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.FAIL, TrialState.PRUNED)):
        if cache is not None and (key, t.number) in cache:
            o = cache[key, t.number]
        else:
            o = observation(t)
            if cache is not None:
                cache[key, t.number] = o
        if o is not None:
            out.append(o)
    out.sort(key=lambda o: o.number)
    return out
