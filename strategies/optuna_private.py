"""Every use of Optuna's private API in vaenas, in one module, so an Optuna upgrade touches one file.

It lives in ``search_space`` because that is the one package every layer may import (the evaluator's
Pareto maths, the strategies' samplers and the studies' run loop all need a piece of it); it imports
Optuna lazily, so ``search_space`` itself does not depend on Optuna. What is wrapped, and why:

* ``optuna._hypervolume.compute_hypervolume`` - exact hypervolume (WFG) in any dimension;
* ``optuna.study._multi_objective._is_pareto_front`` - non-dominated mask;
* ``optuna.samplers._lazy_random_state.LazyRandomState`` - a sampler's random state, saved and
  restored so a resumed strategy continues its stream;
* ``Study._storage`` / ``FrozenTrial._trial_id`` - writing a trial's attributes and state after
  the fact (a dead worker's or an interrupted trial), and handing the storage to optuna-dashboard
  and to the artifact API;
* ``optuna.storages._heartbeat`` - failing stale trials, the heartbeat thread, whether heartbeats
  are on;
* the logger ``optuna.storages._rdb.storage`` - its "Caught an error from sqlalchemy ... Falling
  back to a slower alternative" warning, which Optuna also prints when the connection was lost
  mid-query (vaenas's storage rides that out and says so in one line of its own).

The retried method names of Optuna's RDB storage (``studies/storage.py``) are the one other
dependency on Optuna's internals; a test checks that list against Optuna's source.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def hypervolume(points: np.ndarray, reference: np.ndarray, assume_pareto: bool = False) -> float:
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(np.asarray(points, dtype=float), np.asarray(reference, dtype=float),
                                     assume_pareto=assume_pareto))


def pareto_front_mask(points: np.ndarray) -> np.ndarray:
    """True for points no other point dominates (all objectives minimised; duplicates all kept)."""
    from optuna.study._multi_objective import _is_pareto_front

    return _is_pareto_front(np.asarray(points, dtype=float), assume_unique_lexsorted=False)


def lazy_random_states(sampler: Any, prefix: str = "") -> dict[str, Any]:
    """Every ``LazyRandomState`` inside an Optuna sampler (its own and its nested samplers'), by path."""
    import optuna
    from optuna.samplers._lazy_random_state import LazyRandomState

    found = {}
    for k, v in vars(sampler).items():
        if isinstance(v, LazyRandomState):
            found[prefix + k] = v
        elif isinstance(v, optuna.samplers.BaseSampler):
            found.update(lazy_random_states(v, prefix + k + "."))
    return found


def storage_of(study: Any) -> Any:
    """The storage object an ``optuna.Study`` writes through."""
    return study._storage


def study_id(study: Any) -> int:
    """The study's id in its storage (the dashboard's URLs use it)."""
    return study._study_id


def trial_id(trial: Any) -> int:
    """The storage's id of a trial (``Trial`` or ``FrozenTrial``), not its number."""
    return trial._trial_id


def set_trial_failed(study: Any, trial: Any, reason_key: str, reason: str) -> None:
    """Mark another process's (or an abandoned) trial FAIL with ``user_attrs[reason_key] = reason``."""
    import optuna

    storage = storage_of(study)
    storage.set_trial_user_attr(trial_id(trial), reason_key, reason)
    storage.set_trial_state_values(trial_id(trial), optuna.trial.TrialState.FAIL)


def set_trial_user_attr(study: Any, trial: Any, key: str, value: Any) -> None:
    storage_of(study).set_trial_user_attr(trial_id(trial), key, value)


def heartbeat_enabled(study: Any) -> bool:
    from optuna.storages._heartbeat import is_heartbeat_enabled

    return bool(is_heartbeat_enabled(storage_of(study)))


def fail_stale_trials(study: Any) -> None:
    from optuna.storages._heartbeat import fail_stale_trials as _fail

    _fail(study)


def heartbeat_thread(trial: Any):
    """A context manager that records the running trial's heartbeat (Optuna's own thread)."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    return get_heartbeat_thread(trial_id(trial), storage_of(trial.study))


_RDB_LOGGER = "optuna.storages._rdb.storage"


class _LostConnectionFallback:
    """Drops Optuna's "falling back to a slower alternative" warning when the query failed because the
    connection was lost (the fallback query fails too, and studies/storage.py retries it); keeps it
    for what it was written for, a query with more IN variables than the database allows."""

    def filter(self, record) -> bool:
        msg = record.getMessage()
        return not (msg.startswith("Caught an error from sqlalchemy") and "too many" not in msg.lower())


def quiet_lost_connection_fallback() -> None:
    """Install the filter above on Optuna's RDB storage logger (once)."""
    import logging

    log = logging.getLogger(_RDB_LOGGER)
    if not any(isinstance(f, _LostConnectionFallback) for f in log.filters):
        log.addFilter(_LostConnectionFallback())
