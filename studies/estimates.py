"""Supernet estimates at storage speed: scored against an in-memory mirror, stored with one write each.

A supernet estimate takes milliseconds; asked and told through the study's storage it takes far
more (an SQLite transaction for each parameter and each attribute, and a scan of the study per
trial). So the estimate loop keeps an in-memory Optuna study holding the same trials
(:func:`mirror_of`), runs the ordinary trial (:func:`studies.trial.run_trial`: suggest, reuse,
evaluate, tell) against it, and copies each finished trial into the real storage with one
``Study.add_trial`` - one transaction: its values, constraints and ONE JSON attribute ``record``
holding all its attributes; its parameters are rebuilt from its spec when read back
(:mod:`strategies.trial_record`).
Trial numbers stay equal in both, because a supernet study's estimates run in one process
(``search`` refuses ``--jobs`` and ``worker`` for supernet studies). A trial cut off by Ctrl-C
was never written: nothing is left RUNNING. (Writing from a second thread while the next spec
is scored is slower, since Optuna's write is mostly Python holding the interpreter lock;
``benchmarks/README.md`` has the measurement.) The strategy's state is stored every
``STATE_EVERY`` trials and when the loop ends.
"""

from __future__ import annotations

import time
import warnings

import optuna

from strategies.trial_record import packed, unpacked

STATE_EVERY = 50  # trials between two writes of the strategy's state (and at the end)


def mirror_of(study: optuna.Study, sampler, space) -> optuna.Study:
    """An in-memory study with ``study``'s directions, user attrs and every trial (packed ones unpacked,
    their parameters rebuilt from their specs in ``space``), driven by ``sampler``."""
    mirror = optuna.create_study(directions=study.directions, sampler=sampler)
    for k, v in study.user_attrs.items():
        mirror.set_user_attr(k, v)
    trials = study.get_trials(deepcopy=False)
    if any(t.state == optuna.trial.TrialState.WAITING for t in trials):
        raise RuntimeError("mirror_of: run the study's enqueued trials first")
    mirror.add_trials([unpacked(t, space) for t in trials])
    return mirror


def estimate_loop(study: optuna.Study, mirror: optuna.Study, run_trial, is_finished, budget: int, timeout,
                  sampler, worker_id: str, on_progress=None) -> bool:
    """Run trials against ``mirror`` until it holds ``budget`` finished ones (or ``timeout`` s), copying
    each into ``study``. ``run_trial(mirror, trial) -> outcome``. Returns whether it was interrupted."""
    t_start = time.perf_counter()
    n_fin = sum(is_finished(t) for t in mirror.get_trials(deepcopy=False))
    since_state = 0
    last_progress = 0.0
    try:
        while n_fin < budget and (timeout is None or time.perf_counter() - t_start <= timeout):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                trial = mirror.ask()
            trial.set_user_attr("worker", worker_id)
            run_trial(mirror, trial)
            done = mirror.get_trials(deepcopy=False)[trial.number]
            study.add_trial(packed(done))  # the one write of this trial
            n_fin += is_finished(done)
            since_state += 1
            if since_state >= STATE_EVERY:
                _store_state(study, sampler)
                since_state = 0
            if on_progress is not None and time.perf_counter() - last_progress > 0.5:
                on_progress(mirror, n_fin)
                last_progress = time.perf_counter()
    except KeyboardInterrupt:
        return True
    finally:
        _store_state(study, sampler)
        if on_progress is not None:
            on_progress(mirror, n_fin)
    return False


def _store_state(study: optuna.Study, sampler) -> None:
    if hasattr(sampler, "state_dict"):
        study.set_user_attr("strategy_state", sampler.state_dict())
