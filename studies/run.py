"""The run loop: an Optuna multi-objective study driven by ask/tell.

Each trial stores, as user attributes: ``spec`` (JSON), ``spec_id``, every objective, ``seed``,
``train_seconds``, ``latency_path``, ``uncounted_ops`` and, for a failed trial, ``fail_reason`` -
so optuna-dashboard and any Optuna tool can read the study. A supernet estimate stores the same
packed into one JSON attribute ``record`` (one write per trial, :mod:`studies.estimates`); read
them all through :func:`strategies.trial_record.trial_attrs`. Artifacts of trial ``n``
(checkpoint) go under ``runs/<study>/trials/<n>/``.

Rungs (``budget: {rungs: [...], keep: ...}``): trials may stop early, see :mod:`studies.rungs`.

Budget: ``budget.trials`` *finished* trials - COMPLETE, or FAIL with a reason of the spec's own
(e.g. diverged). A trial cut off by Ctrl-C or a killed process does not count: ``--resume``
marks it FAIL ("interrupted") and runs another in its place, so a resumed study ends with
exactly the budgeted number of finished trials. A spec already finished in the study is not
trained again: its stored objectives are reused, and the repeat does not count toward the budget.

Constraints (``constraints: {size_bytes: 16384}``): each trial stores its constraint values with
Optuna's ``Trial.set_constraint`` (``(value - limit) / limit``, <= 0 is satisfied) and a
``feasible`` attr; every sampler reads them, and infeasible trials are kept off the front.
Limits the spec alone decides (size, params, FLOPs, BitOps) are checked before training: our
whole-spec strategies never propose such a spec, and a proposal of Optuna's samplers that breaks
one is recorded as PRUNED ("infeasible") without training and does not count toward the budget.

Supernet mode (a ``supernet:`` block): one weight-sharing supernet is trained on the study's
data first (saved as ``runs/<study>/supernet.pt``, reused on ``--resume``), and every trial is
scored on its inherited weights: costs exact, latency measured, −ELBO an ESTIMATE (trial attr
``neg_elbo_is_estimate``; no checkpoint per trial). When the budget is met, up to
``supernet.remeasure`` specs of the estimated front are trained standalone with the study's
``train`` recipe and added as trials with ``phase: remeasure`` (not counted in the budget); the
report's front, hypervolume and export use those measured trials. Workers never re-measure:
run ``vaenas search CONFIG --resume`` once they are done.

Workers (``vaenas worker``, ``search --jobs N``): several processes share one study and its
budget; which RUNNING trials belong to dead workers is decided in :mod:`studies.liveness` (lock
files on one machine, heartbeats on a server), and a dead worker's trial is retried once.
:func:`run_search` is small named steps: check the arguments, load the data and make the strategy
(:func:`_prepare`), open or create the study (:mod:`studies.identity`), then :func:`_trial_loop`
asks for a trial under the liveness claim and :func:`studies.trial.run_trial` runs and tells it.

The rooms: what trials mean (:mod:`studies.trials`), one trial (:mod:`studies.trial`), a study's
identity (:mod:`studies.identity`), files (:mod:`studies.files`), worker processes
(:mod:`studies.workers`), supernet mode and DARTS (:mod:`studies.supernet_mode`).

Strategy state: after every trial the sampler's ``state_dict()`` is stored in the study
(``strategy_state``), and ``--resume`` loads it, so the strategy continues where it was.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import optuna

from evaluator import check_latency_backend, load_data
from search_space import VaenasInputError
from strategies import SpecSampler, create_sampler, optuna_private
from strategies.trial_record import WORKER

from .artifacts import store_for as artifact_store
from .config import StudyConfig
from .files import check_runs_dir, study_dir
from .identity import StudyExistsError, enqueue_config_specs, existing_studies, open_study, resume_study, storage_url
from .liveness import claim_lock, claim_path, liveness_for
from .rungs import rungs_line
from .storage import StorageUnreachable, lock_study, redact, storage_file
from .supernet_mode import Evaluators, darts_enqueue, remeasure_front
from .trial import WORKER_ID, cut_off, index_result, run_trial, surplus
from .warm_start import warm_start_specs
from .trials import check_budget_reachable, counts, front_stats, is_finished, screen_for, static_feasibility
from .workers import check_jobs, join_workers, share_cores, signals_deferred, start_workers, watch_parent

__all__ = ["SearchSummary", "StudyExistsError", "run_search"]
MAX_REPEATS = 200  # proposals in a row of specs already measured before the search gives up (space exhausted)
MAX_REJECTED = 1000  # proposals in a row over a static limit before the search gives up
optuna.logging.set_verbosity(optuna.logging.WARNING)


@dataclass
class SearchSummary:
    study_name: str
    storage: str
    finished: int
    new_trials: int
    front_size: int
    hypervolume: float
    interrupted: bool
    seconds: float
    remeasured: int = 0  # supernet mode: front specs re-measured standalone in this run
    estimated: bool = False  # supernet mode: the search trials' −ELBO are estimates


@dataclass
class _Run:
    """What one call of :func:`run_search` works with, once the study is open."""

    cfg: StudyConfig
    study: optuna.Study
    sampler: object
    live: object
    evaluators: Evaluators
    feasible: object
    budget: int
    timeout: float | None
    poll_s: float
    bar: object = None
    store: object = None
    in_hand: object = None  # the trial this process holds (cut off on Ctrl-C)


def run_search(cfg: StudyConfig, *, runs_dir: str | Path = "runs", resume: bool = False, n_trials: int | None = None,
               timeout_s: float | None = None, progress: bool = True, worker: bool = False,
               poll_s: float = 2.0, jobs: int = 1, _child: bool = False) -> SearchSummary:
    """Run a study to its budget of finished trials.

    ``resume``: continue an existing study as its only process (trials left RUNNING by a killed
    process are marked interrupted and replaced). ``worker``: join the study, creating it if it
    does not exist yet, next to other workers on the same storage; the budget is shared, and a
    killed worker's trial is failed and retried once (:mod:`studies.liveness`: at once on a file
    storage, after the heartbeat's grace period on a server). ``jobs``: this process and ``jobs - 1``
    worker processes it starts run the study together (one machine).
    """
    budget, timeout = _check_args(cfg, runs_dir, n_trials, timeout_s, jobs, worker)
    url = storage_url(cfg, runs_dir)
    path = storage_file(url)
    heartbeat = cfg.heartbeat if path is None else None  # file storages: lock files tell the living (liveness.py)
    names = _check_existing(cfg, url, heartbeat, path, resume, worker, runs_dir)
    data, sampler, feasible = _prepare(cfg, worker, progress, runs_dir)
    sdir = study_dir(runs_dir, cfg.name)
    study, lock = _open(cfg, url, heartbeat, path, sampler, data, names, resume, worker, _child, sdir)
    if cfg.darts is not None and "darts_sweep" not in study.user_attrs:
        if worker:
            raise VaenasInputError(f"darts: study {cfg.name!r} has not run its lambda sweep yet; start it with "
                                   "`vaenas search CONFIG` before adding workers")
        darts_enqueue(study, cfg, data, progress)
    run = _Run(cfg, study, sampler, liveness_for(path, optuna_private.heartbeat_enabled(study)),
               Evaluators(cfg, data, sdir, study, progress), feasible, budget, timeout, poll_s,
               store=artifact_store(study, cfg.artifacts, sdir))
    finished_before, t_start = counts(study)[0], time.perf_counter()
    interrupted = _run_loops(run, runs_dir, jobs, progress)
    remeasured = 0
    if cfg.supernet is not None and not worker and not interrupted and counts(study)[0] >= budget:
        try:
            remeasured = remeasure_front(study, cfg, run.evaluators.standalone, sdir, progress)
        except KeyboardInterrupt:
            interrupted = True
    size, hv = front_stats(study, cfg)
    if lock is not None:
        lock.close()
    finished = counts(study)[0]
    return SearchSummary(cfg.name, redact(url), finished, finished - finished_before, size, hv, interrupted,
                         time.perf_counter() - t_start, remeasured, cfg.supernet is not None)


def _check_args(cfg: StudyConfig, runs_dir, n_trials, timeout_s, jobs: int, worker: bool) -> tuple[int, float | None]:
    """The budget and the timeout, or one line on bad input (before anything is written)."""
    check_runs_dir(runs_dir)
    budget = n_trials if n_trials is not None else cfg.trials
    if budget < 1:
        raise VaenasInputError(f"--n-trials: must be >= 1, got {budget}")
    timeout = timeout_s if timeout_s is not None else cfg.timeout_s
    if timeout is not None and not (math.isfinite(timeout) and timeout > 0):
        raise VaenasInputError(f"--timeout: must be a positive number of seconds, got {timeout}")
    check_jobs(jobs)
    if cfg.supernet is not None and (worker or jobs > 1):
        raise VaenasInputError("supernet: a supernet study scores its specs in one process (milliseconds each, one "
                               "storage write per trial); run `vaenas search CONFIG` without --jobs, and no workers")
    return budget, timeout


def _check_existing(cfg: StudyConfig, url: str, heartbeat, path, resume: bool, worker: bool, runs_dir) -> list[str]:
    """The storage's study names; refuses a new study under a taken name and a resume of none."""
    if cfg.storage is not None and path is not None and not path.parent.is_dir():
        raise VaenasInputError(f"--storage: the folder {str(path.parent)!r} of {str(path)!r} does not exist; create "
                               "it, or point --storage at a file in an existing folder")
    names = existing_studies(url, heartbeat, path)
    if cfg.name in names and not (resume or worker):
        raise StudyExistsError(f"study {cfg.name!r} already exists in {redact(url)}; pass --resume to continue it, "
                               "run `vaenas worker` to add a worker, or choose another name")
    if resume and cfg.name not in names:
        raise VaenasInputError(f"--resume: no study {cfg.name!r} in {redact(url)}; run without --resume to start it")
    trials = study_dir(runs_dir, cfg.name) / "trials"
    if cfg.name not in names and not (resume or worker) and trials.is_dir() and any(trials.iterdir()):
        raise StudyExistsError(f"study {cfg.name!r}: {trials} holds an earlier study's trials, but {redact(url)} has "
                               "no such study (emptied or replaced?); restore the storage, or move the folder away")
    return names


def _prepare(cfg: StudyConfig, worker: bool, progress: bool, runs_dir="runs"):
    """The data (bad input fails here, before any write), the latency backend's check, the strategy."""
    data = load_data(cfg.dataset, cfg.data_root, n_train=cfg.n_train, task=cfg.task)
    cfg.bind_data(data)  # the space takes the data's input shape and likelihood
    check_budget_reachable(cfg.space, cfg.constraints, cfg.seed)  # a budget nothing meets: one line, nothing trains
    if cfg.warm_start is not None:
        cfg.enqueue = cfg.enqueue + warm_start_specs(cfg, data, runs_dir, progress)
    if cfg.latency.backend in ("c", "executorch", "cortex_m", "command"):
        check_latency_backend(cfg.latency, cfg.space.sample(random.Random(cfg.seed)))  # one line before any write
    if progress:
        print(data.describe(), flush=True)
        if cfg.rungs:
            print(rungs_line(cfg), flush=True)
    feasible = static_feasibility(cfg.constraints)
    # Whole-spec strategies draw from (seed, trial number), so workers need no seed of their own;
    # Optuna's samplers keep a random state, which must differ between workers.
    sampler = create_sampler(cfg.strategy, cfg.space, cfg.seed, cfg.strategy_options, feasible=feasible,
                             screen=screen_for(cfg))
    if worker and not isinstance(sampler, SpecSampler):
        sampler = create_sampler(cfg.strategy, cfg.space, cfg.seed + os.getpid(), cfg.strategy_options,
                                 feasible=feasible)
    return data, sampler, feasible


def _open(cfg: StudyConfig, url, heartbeat, path, sampler, data, names, resume, worker, child, sdir: Path):
    """Open (or create) the study under the claim lock; hold the study lock; resume; enqueue."""
    if cfg.storage is None:  # the default storage lives in runs/<study>/
        sdir.mkdir(parents=True, exist_ok=True)
    with claim_lock(claim_path(path)) if path is not None else contextlib.nullcontext():
        # one process at a time creates the storage and the study (no race on a fresh SQLite file)
        study = open_study(cfg, url, heartbeat, sampler, data, create=cfg.name not in names, worker=worker)
        lock = None if child else lock_study(url, exclusive=resume)  # held while run_search runs
        if resume:
            resume_study(study, sampler, path is not None)
        enqueue_config_specs(study, cfg)
    return study, lock


def _run_loops(run: _Run, runs_dir, jobs: int, progress: bool) -> bool:
    """This process's loop beside ``jobs - 1`` worker processes; returns whether it was interrupted."""
    children: list = []
    interrupted = False
    run.bar = _progress_bar(run.study, run.cfg, run.budget) if progress and sys.stderr.isatty() else None
    try:
        if jobs > 1:
            share_cores(jobs)
            args = (run.cfg, str(runs_dir), run.budget, run.timeout, run.poll_s, jobs, os.getpid())
            children = start_workers(_worker_process, args, jobs - 1)
        interrupted = _supernet_loop(run) if run.cfg.supernet is not None else _trial_loop(run)
    finally:
        if run.bar is not None:
            run.bar.close()
        lost = join_workers(children, stop=interrupted or sys.exc_info()[0] is not None)
        run.live.close()
    for pid, code in lost:
        print(f"worker process {pid} ended with {'signal ' + str(-code) if code < 0 else 'exit code ' + str(code)}; "
              "its trial, if it had one, was retried by the others", file=sys.stderr, flush=True)
    return interrupted


def _progress_bar(study: optuna.Study, cfg: StudyConfig, budget: int):
    from tqdm import tqdm

    return tqdm(total=budget, initial=min(counts(study)[0], budget), desc=f"search {cfg.name}", unit="trial")


def _show_progress(run: _Run, study: optuna.Study, n_fin: int) -> None:
    if run.bar is not None:
        size, hv = front_stats(study, run.cfg)
        run.bar.n = min(n_fin, run.budget)
        run.bar.set_postfix(front=size, hv=f"{hv:.4f}")
        run.bar.refresh()


def _ask(run: _Run, t_start: float):
    """Under the liveness claim: ``"done"`` when the budget (or time) is spent, else a new trial, or None
    while other workers hold the last slots (one may die and need a retry)."""
    with run.live.claim():  # file storages: one worker at a time counts and asks
        run.live.fail_dead(run.study)
        n_fin, running = counts(run.study)
        if n_fin >= run.budget or (run.timeout is not None and time.perf_counter() - t_start > run.timeout):
            return "done"
        if run.live.can_wait and n_fin + len(running) >= run.budget:
            return None
        with signals_deferred(), warnings.catch_warnings():  # heartbeats: run here, on purpose
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
            trial = run.in_hand = run.study.ask()
            trial.set_user_attr(WORKER, WORKER_ID)
            run.live.tag(trial)
    return trial


def _trial_loop(run: _Run) -> bool:
    """Ask, run and tell trials until the study has ``budget`` finished ones (or ``timeout``).
    Returns whether it was interrupted (Ctrl-C, SIGTERM): the trial in hand is then marked so."""
    t_start, streak = time.perf_counter(), _Streaks(run.cfg, run.budget)
    try:
        while True:
            run.in_hand = None
            trial = _ask(run, t_start)
            if trial == "done":
                return False
            if trial is None:
                time.sleep(run.poll_s)
                continue
            if not run.live.exact and surplus(run.study, trial, run.budget):
                run.in_hand = None
                continue
            with run.live.running(trial):
                outcome = run_trial(run.study, run.cfg, trial, run.evaluators, run.feasible, run.store)
            run.in_hand = None
            if streak.stop(outcome, run.study):
                return False
            if outcome != "rejected":
                _after_tell(run)
    except KeyboardInterrupt:
        if run.in_hand is not None:
            cut_off(run.study, run.in_hand)
        return True


def _after_tell(run: _Run) -> None:
    """The callbacks after a told trial: the strategy's state kept in the study, the progress bar."""
    if hasattr(run.sampler, "state_dict"):
        run.study.set_user_attr("strategy_state", run.sampler.state_dict())
    if run.bar is not None:
        _show_progress(run, run.study, counts(run.study)[0])


class _Streaks:
    """Gives up on a strategy that keeps proposing specs over a static limit (bad input) or specs the
    study has already measured (the space may be exhausted)."""

    def __init__(self, cfg: StudyConfig, budget: int):
        self.cfg, self.budget, self.rejected, self.repeats = cfg, budget, 0, 0

    def stop(self, outcome: str, study: optuna.Study) -> bool:
        if outcome == "rejected":
            self.rejected += 1
            if self.rejected >= MAX_REJECTED:
                raise VaenasInputError(f"constraints: {self.cfg.strategy!r} proposed {MAX_REJECTED} specs in a row "
                                       f"that break {self.cfg.constraints}; loosen the limits or narrow the space")
            return False
        self.rejected = 0
        self.repeats = self.repeats + 1 if outcome == "reused" else 0
        if self.repeats >= MAX_REPEATS:
            print(f"vaenas: {self.cfg.strategy!r} proposed {MAX_REPEATS} specs in a row that the study had already "
                  f"measured (repeats cost no budget); stopping with {counts(study)[0]} of {self.budget} trials - the "
                  "space may have few specs left, widen it or lower budget.trials", file=sys.stderr, flush=True)
            return True
        return False


def _supernet_loop(run: _Run) -> bool:
    """Supernet mode: enqueued trials first (the ordinary loop), then the estimates against an in-memory
    mirror, one storage write each (:mod:`studies.estimates`). Returns whether it was interrupted."""
    from .estimates import estimate_loop, mirror_of

    study, cfg = run.study, run.cfg
    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if waiting:
        first = _Run(**{**run.__dict__, "in_hand": None, "budget": min(run.budget, counts(study)[0] + len(waiting)), "store": None})
        if _trial_loop(first):
            return True
    run.evaluators.get()  # the supernet (and latency table) before the first estimate
    t0 = time.perf_counter()
    mirror = mirror_of(study, run.sampler, cfg.space)
    index: dict = {}
    for t in mirror.get_trials(deepcopy=False):
        index_result(index, t, cfg)

    def run_one(m: optuna.Study, trial: optuna.Trial) -> None:
        run_trial(m, cfg, trial, run.evaluators, run.feasible, None, index)
        index_result(index, m.get_trials(deepcopy=False)[trial.number], cfg)

    return estimate_loop(study, mirror, run_one, is_finished, run.budget,
                         None if run.timeout is None else max(0.0, run.timeout - (time.perf_counter() - t0)),
                         run.sampler, WORKER_ID, lambda m, n_fin: _show_progress(run, m, n_fin))


def _worker_process(cfg: StudyConfig, runs_dir: str, budget: int, timeout, poll_s: float, jobs: int,
                    parent_pid: int) -> None:
    """One of ``search --jobs N``'s worker processes: ``run_search(worker=True)`` without output;
    SIGTERM (sent by the parent on Ctrl-C) marks its trial interrupted, like Ctrl-C."""
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    watch_parent(parent_pid)
    share_cores(jobs)
    try:
        s = run_search(cfg, runs_dir=runs_dir, worker=True, n_trials=budget, timeout_s=timeout, progress=False,
                       poll_s=poll_s, _child=True)
    except VaenasInputError as e:
        print(f"vaenas: error: worker process {os.getpid()}: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except StorageUnreachable as e:
        print(f"vaenas: worker process {os.getpid()}: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(1)
    sys.exit(1 if s.interrupted else 0)
