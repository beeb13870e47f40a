"""The run loop: an Optuna multi-objective study driven by ask/tell.

Each trial stores, as user attributes: ``spec`` (JSON), ``spec_id``, every objective, ``seed``,
``train_seconds``, ``latency_path``, ``uncounted_ops`` and, for a failed trial, ``fail_reason`` -
so optuna-dashboard and any Optuna tool can read the study. A supernet estimate stores the same
packed into one JSON attribute ``record`` (one write per trial, :mod:`studies.estimates`); read
them all through :func:`search_space.trial_attrs.trial_attrs`. Artifacts of trial ``n``
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
:func:`run_search` is small named steps: open or create the study (:func:`_open_study`), then
:func:`_trial_loop` asks for a trial under the liveness claim and :func:`_run_trial` runs it.

Strategy state: after every trial the sampler's ``state_dict()`` is stored in the study
(``strategy_state``), and ``--resume`` loads it, so the strategy continues where it was.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import socket
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
import torch

from evaluator import Evaluator, Objectives, Stopped, check_latency_backend, hypervolume, load_data, non_dominated_mask, static_costs
from search_space import ArchSpec, VaenasInputError, optuna_private
from search_space.trial_attrs import trial_attrs
from strategies import SpecSampler, create_sampler, suggest_spec

from .config import STATIC_CONSTRAINTS, StudyConfig
from .artifacts import describe as describe_artifacts
from .artifacts import open_store as open_artifact_store
from .artifacts import upload as upload_artifacts
from .rungs import StudyRungs, is_stopped, stopped_attrs
from .liveness import WORKER_DIED, claim_lock, claim_path, liveness_for
from .storage import StorageUnreachable, _check_file_storage, _study_names, lock_study, open_storage, redact, storage_file  # noqa: F401

INTERRUPTED = "interrupted"  # cut off (Ctrl-C, killed worker): does not use up budget, is replaced
SURPLUS = "surplus"  # asked by a worker that lost the race for the last budget slot: not counted
NOT_COUNTED = {INTERRUPTED, SURPLUS, WORKER_DIED}
WORKER_ID = f"{socket.gethostname()}:{os.getpid()}"  # stored on each trial: which process ran it
optuna.logging.set_verbosity(optuna.logging.WARNING)


class StudyExistsError(VaenasInputError):
    pass


def study_dir(runs_dir: str | Path, name: str) -> Path:
    return Path(runs_dir) / name


def check_runs_dir(runs_dir: str | Path) -> None:
    """``--runs-dir`` must be a folder vaenas can write in (or one it can create)."""
    d = Path(runs_dir)
    anc = next((p for p in (d, *d.parents) if p.exists()), Path("."))
    if not anc.is_dir():
        raise VaenasInputError(f"--runs-dir: {str(anc)!r} is a file, not a folder; choose a folder for the studies")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise VaenasInputError(f"--runs-dir: {str(anc)!r} is not writable; choose a folder you can write to")


def storage_url(cfg: StudyConfig, runs_dir: str | Path) -> str:
    return cfg.storage or f"sqlite:///{study_dir(runs_dir, cfg.name) / 'study.db'}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it). The temporary file is
    removed when the write or the rename fails (full disk), and those of dead processes are cleaned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for old in path.parent.glob(f".{path.name}.tmp*"):  # left by a killed process
        pid = old.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            old.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(path: Path, model, spec: ArchSpec, extra: dict | None = None) -> None:
    """``model.pt``: the spec, the weights and ``extra`` (e.g. ``normalization``: the input statistics a
    deployed model applies first, for standardised array data)."""
    buf = io.BytesIO()
    torch.save({"format": "vaenas.checkpoint", "version": 1, "spec": spec.to_json(), **(extra or {}),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buf)
    atomic_write(path, buf.getvalue())


def data_meta(data) -> dict:
    """What a checkpoint or an export records about its data: the dataset (config form), the likelihood,
    the input shape and, for standardised arrays, the input normalisation a deployed model applies first."""
    ds = data.dataset.to_config() if data.dataset is not None else data.name
    meta = {"dataset": ds, "likelihood": data.likelihood, "input_shape": list(data.input_shape)}
    if data.normalization is not None:
        meta["normalization"] = data.normalization
    return meta


REMEASURE = "remeasure"  # phase of a trial that re-measures an estimated front spec standalone


def is_finished(t: optuna.trial.FrozenTrial) -> bool:
    """Does ``t`` count toward the budget? A COMPLETE trial, a trial stopped at a rung, a FAIL of the
    spec's own; not a re-measurement, a repeat of a spec already measured, or a trial cut off."""
    a = trial_attrs(t)
    if a.get("phase") == REMEASURE or "reused_from_trial" in a:
        return False  # extra: not part of the search budget
    if t.state == optuna.trial.TrialState.COMPLETE or is_stopped(t):
        return True
    return t.state == optuna.trial.TrialState.FAIL and a.get("fail_reason", INTERRUPTED) not in NOT_COUNTED


def is_feasible(t: optuna.trial.FrozenTrial) -> bool:
    return t.state == optuna.trial.TrialState.COMPLETE and bool(trial_attrs(t).get("feasible", True))


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


def _set_constraints(trial: optuna.Trial, names, values) -> None:
    for k, v in zip(names, values):
        trial.set_constraint(k, v)  # Optuna's samplers (NSGA-II, TPE) read these
    trial.set_user_attr("feasible", all(v <= 0 for v in values))


def is_estimate(t: optuna.trial.FrozenTrial) -> bool:
    return bool(trial_attrs(t).get("neg_elbo_is_estimate", False))


def reported_trials(trials: list[optuna.trial.FrozenTrial]) -> list[optuna.trial.FrozenTrial]:
    """The feasible COMPLETE trials a front is reported over: the measured ones where a study has
    both supernet estimates and measured trials (estimates are never mixed into a measured front)."""
    ok = [t for t in trials if is_feasible(t)]
    measured = [t for t in ok if not is_estimate(t)]
    return measured if measured and len(measured) < len(ok) else ok


def front_stats(study: optuna.Study, cfg: StudyConfig) -> tuple[int, float]:
    pts = [t.values for t in reported_trials(study.get_trials(deepcopy=False,
                                                              states=(optuna.trial.TrialState.COMPLETE,)))]
    if not pts:
        return 0, 0.0
    return int(non_dominated_mask(pts).sum()), hypervolume(pts, cfg.bounds)


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


def _store_objectives(trial: optuna.Trial, obj: Objectives) -> None:
    for k, v in obj.to_dict().items():
        trial.set_user_attr(k, v)


def _init_study_attrs(study: optuna.Study, cfg: StudyConfig) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(cfg.objectives)
    raw = json.loads(json.dumps(cfg.raw, default=str))
    if isinstance(raw.get("storage"), str):
        raw["storage"] = redact(raw["storage"])  # the study is readable by anyone who can read the storage
    study.set_user_attr("config", raw)
    study.set_user_attr("objectives", cfg.objectives)
    study.set_user_attr("bounds", [[b.lo, b.hi, b.log] for b in cfg.bounds])
    study.set_user_attr("space", cfg.space.to_dict())
    study.set_user_attr("fingerprint", cfg.fingerprint())


def _check_same_study(study: optuna.Study, cfg: StudyConfig) -> None:
    """Refuse to resume or join a study whose trials measured something else (its stored fingerprint,
    :meth:`StudyConfig.fingerprint`, differs from this config's), naming the first key that differs."""
    stored = study.user_attrs.get("fingerprint")
    if stored is None:  # a study made before fingerprints: only its objectives were recorded
        if study.user_attrs.get("objectives") not in (None, cfg.objectives):
            raise VaenasInputError(f"study {cfg.name!r} in the storage optimises {study.user_attrs['objectives']}, "
                                   f"this config {cfg.objectives}; use another study name")
        return
    now = cfg.fingerprint()
    for key in now:
        if stored.get(key) != now[key]:
            where, was, new = _first_difference(key, stored.get(key), now[key])
            raise VaenasInputError(
                f"study {cfg.name!r} was run with {where} = {was}, this config has {new}: its trials would not be "
                f"comparable; restore {where} to resume it, or start a new study under another name: in the config")


def _first_difference(key: str, a: str | None, b: str) -> tuple[str, str, str]:
    """The first (dotted) key at which two fingerprint values differ, and the two values, shortened."""
    va, vb = json.loads(a) if a is not None else None, json.loads(b)
    while isinstance(va, dict) and isinstance(vb, dict):
        sub = next((k for k in sorted(set(va) | set(vb)) if va.get(k) != vb.get(k)), None)
        if sub is None:
            break
        key, va, vb = f"{key}.{sub}", va.get(sub), vb.get(sub)
    short = lambda v: (t if len(t := json.dumps(v)) <= 60 else t[:57] + "...")  # noqa: E731
    return key, short(va), short(vb)


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
    sdir = study_dir(runs_dir, cfg.name)
    check_runs_dir(runs_dir)
    url = storage_url(cfg, runs_dir)
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
    path = storage_file(url)
    heartbeat = cfg.heartbeat if path is None else None  # file storages: lock files tell the living (liveness.py)
    names = _existing_studies(url, heartbeat, path)
    if cfg.name in names and not (resume or worker):
        raise StudyExistsError(f"study {cfg.name!r} already exists in {redact(url)}; pass --resume to continue it, "
                               "run `vaenas worker` to add a worker, or choose another name")
    if resume and cfg.name not in names:
        raise VaenasInputError(f"--resume: no study {cfg.name!r} in {redact(url)}; run without --resume to start it")
    data = load_data(cfg.dataset, cfg.data_root, n_train=cfg.n_train)  # bad input fails here, before any write
    cfg.bind_data(data)  # the space takes the data's input shape and likelihood
    if cfg.latency.backend in ("c", "executorch", "command"):
        check_latency_backend(cfg.latency, cfg.space.sample(random.Random(cfg.seed)))  # one line before any write
    if progress:
        print(data.describe(), flush=True)
    feasible = static_feasibility(cfg.constraints)
    # Whole-spec strategies draw from (seed, trial number), so workers need no seed of their own;
    # Optuna's samplers keep a random state, which must differ between workers.
    sampler = create_sampler(cfg.strategy, cfg.space, cfg.seed, cfg.strategy_options, feasible=feasible)
    if worker and not isinstance(sampler, SpecSampler):
        sampler = create_sampler(cfg.strategy, cfg.space, cfg.seed + os.getpid(), cfg.strategy_options,
                                 feasible=feasible)
    if cfg.storage is None:  # the default storage lives in runs/<study>/
        sdir.mkdir(parents=True, exist_ok=True)
    with claim_lock(claim_path(path)) if path is not None else contextlib.nullcontext():
        # one process at a time creates the storage and the study (no race on a fresh SQLite file)
        study = _open_study(cfg, url, heartbeat, sampler, data, create=cfg.name not in names, worker=worker)
        lock = None if _child else lock_study(url, exclusive=resume)  # held while this function runs
        if resume:
            _resume(study, sampler, path is not None)
        if cfg.enqueue and "config_enqueued" not in study.user_attrs:
            for spec in cfg.enqueue:  # once per study: a resumed study does not enqueue them again
                study.enqueue_trial(cfg.space.to_params(spec), user_attrs={"proposed_by": "config"},
                                    skip_if_exists=True)
            study.set_user_attr("config_enqueued", [s.id for s in cfg.enqueue])
    if cfg.darts is not None and "darts_sweep" not in study.user_attrs:
        if worker:
            raise VaenasInputError(f"darts: study {cfg.name!r} has not run its lambda sweep yet; start it with "
                                   "`vaenas search CONFIG` before adding workers")
        darts_enqueue(study, cfg, data, progress)

    store = _artifact_store(study, cfg, sdir)
    live = liveness_for(path, optuna_private.heartbeat_enabled(study))
    evaluators = _Evaluators(cfg, data, sdir, study, progress)
    finished_before = _counts(study)[0]
    t_start = time.perf_counter()
    children: list = []
    interrupted = False
    bar = _progress_bar(study, cfg, budget) if progress and sys.stderr.isatty() else None
    try:
        if jobs > 1:
            _share_cores(jobs)
            children = _start_workers(cfg, runs_dir, jobs - 1, budget, timeout, poll_s)
        if cfg.supernet is not None:
            interrupted = _supernet_loop(study, cfg, sampler, live, evaluators, feasible, budget, timeout, poll_s, bar)
        else:
            interrupted = _trial_loop(study, cfg, sampler, live, evaluators, feasible, budget, timeout, poll_s, bar,
                                      store)
    finally:
        if bar is not None:
            bar.close()
        lost = _join_workers(children, stop=interrupted or sys.exc_info()[0] is not None)
        live.close()
    for pid, code in lost:
        print(f"worker process {pid} ended with {'signal ' + str(-code) if code < 0 else 'exit code ' + str(code)}; "
              "its trial, if it had one, was retried by the others", file=sys.stderr, flush=True)
    remeasured = 0
    if cfg.supernet is not None and not worker and not interrupted and _counts(study)[0] >= budget:
        try:
            remeasured = remeasure_front(study, cfg, evaluators.standalone, sdir, progress)
        except KeyboardInterrupt:
            interrupted = True
    size, hv = front_stats(study, cfg)
    if lock is not None:
        lock.close()
    finished = _counts(study)[0]
    return SearchSummary(cfg.name, redact(url), finished, finished - finished_before, size, hv, interrupted,
                         time.perf_counter() - t_start, remeasured, cfg.supernet is not None)


MAX_JOBS = 64
MAX_REPEATS = 200  # proposals in a row of specs already measured before the search gives up (space exhausted)


def _existing_studies(url: str, heartbeat, path: Path | None) -> list[str]:
    """The study names in the storage; none (and nothing created) when a file storage does not exist.
    An existing file is opened under the claim lock (another process may be creating its tables)."""
    if path is None:
        return _study_names(open_storage(url, heartbeat))
    _check_file_storage(url, readonly=False)
    if not path.exists():
        return []
    with claim_lock(claim_path(path)):
        return _study_names(open_storage(url, heartbeat))


def check_jobs(jobs) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= MAX_JOBS:
        raise VaenasInputError(f"--jobs: must be a whole number from 1 to {MAX_JOBS} (worker processes on this "
                               f"machine), got {jobs!r}")


def _open_study(cfg: StudyConfig, url: str, heartbeat, sampler, data, *, create: bool, worker: bool) -> optuna.Study:
    """Create the study (with its attributes) or load it; refuse one that measured something else."""
    storage = open_storage(url, heartbeat, outage_s=cfg.outage_s)
    if create:
        study = optuna.create_study(study_name=cfg.name, storage=storage, sampler=sampler, load_if_exists=worker,
                                    directions=["minimize"] * len(cfg.objectives))
        if "objectives" not in study.user_attrs:
            _init_study_attrs(study, cfg)
            study.set_user_attr("data", data_meta(data))  # plots, export and retrain reload the data from it
    else:
        study = optuna.load_study(study_name=cfg.name, storage=storage, sampler=sampler)
    _check_same_study(study, cfg)
    return study


def _resume(study: optuna.Study, sampler, file_storage: bool) -> None:
    """Load the strategy's state; mark trials left RUNNING by a killed process as interrupted. On a
    file storage this process holds the study alone (``lock_study``), so every RUNNING trial is dead;
    on a server other workers may be alive: their trials are left to the heartbeats."""
    state = study.user_attrs.get("strategy_state")
    if state is not None and hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(state)
    if not file_storage and optuna_private.heartbeat_enabled(study):
        return
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
        optuna_private.set_trial_failed(study, t, "fail_reason", INTERRUPTED)


class _Evaluators:
    """The standalone evaluator, and the supernet one, trained (or loaded) only when first needed."""

    def __init__(self, cfg: StudyConfig, data, sdir: Path, study: optuna.Study, progress: bool):
        self.cfg, self.data, self.sdir, self.study, self.progress = cfg, data, sdir, study, progress
        self.standalone = Evaluator(data, cfg.train, cfg.latency)
        self._supernet = None

    def get(self):
        if self.cfg.supernet is None:
            return self.standalone
        if self._supernet is None:
            ev = self._supernet = supernet_evaluator(self.cfg, self.data, self.sdir, self.progress)
            attrs = self.study.user_attrs
            if ev.calibration is not None and "supernet_calibration" not in attrs:
                self.study.set_user_attr("supernet_calibration", ev.calibration.to_dict())
            if ev.train_seconds and "supernet_train_seconds" not in attrs:
                self.study.set_user_attr("supernet_train_seconds", ev.train_seconds)
            if self.cfg.supernet.latency_table:
                ev.latency_table = self._latency_table()
        return self._supernet

    def _latency_table(self):
        """The study's latency table: fitted once (stored in the study), reused on ``--resume``."""
        from evaluator.latency_table import LatencyTable, fit_latency_table

        stored = self.study.user_attrs.get("latency_table")
        if stored is not None:
            return LatencyTable.from_dict(stored)
        if self.progress:
            print(f"fitting the latency table: measuring sampled specs on {self.cfg.latency.backend} ...", flush=True)
        table = fit_latency_table(self.cfg.space, self.cfg.latency, self.cfg.seed)
        self.study.set_user_attr("latency_table", table.to_dict())
        if self.progress:
            print(table.describe(), flush=True)
        return table


def _counts(study: optuna.Study) -> tuple[int, list[int]]:
    """(finished trials that count toward the budget, numbers of the RUNNING ones)."""
    trials = study.get_trials(deepcopy=False)
    running = sorted(t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING)
    return sum(is_finished(t) for t in trials), running


def _progress_bar(study: optuna.Study, cfg: StudyConfig, budget: int):
    from tqdm import tqdm

    return tqdm(total=budget, initial=min(_counts(study)[0], budget), desc=f"search {cfg.name}", unit="trial")


def _trial_loop(study, cfg, sampler, live, evaluators, feasible, budget, timeout, poll_s, bar, store=None) -> bool:
    """Ask, run and tell trials until the study has ``budget`` finished ones (or ``timeout``).
    Returns whether it was interrupted (Ctrl-C, SIGTERM): the trial in hand is then marked so."""
    t_start = time.perf_counter()
    trial = None
    rejected_in_a_row = repeats_in_a_row = 0
    try:
        while True:
            with live.claim():  # file storages: one worker at a time counts and asks
                live.fail_dead(study)
                n_fin, running = _counts(study)
                if n_fin >= budget or (timeout is not None and time.perf_counter() - t_start > timeout):
                    return False
                if not (live.can_wait and n_fin + len(running) >= budget):
                    with _signals_deferred(), warnings.catch_warnings():  # heartbeats: run here, on purpose
                        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used")
                        trial = study.ask()
                        trial.set_user_attr("worker", WORKER_ID)
                        live.tag(trial)
            if trial is None:
                time.sleep(poll_s)  # other workers hold the last slots; one may die and need a retry
                continue
            if not live.exact and _surplus(study, trial, budget):
                trial = None
                continue
            with live.running(trial):
                outcome = _run_trial(study, cfg, trial, evaluators, feasible, store)
            trial = None
            if outcome == "rejected":
                rejected_in_a_row += 1
                if rejected_in_a_row >= 1000:
                    raise VaenasInputError(f"constraints: {cfg.strategy!r} proposed 1000 specs in a row that "
                                           f"break {cfg.constraints}; loosen the limits or narrow the space")
                continue
            rejected_in_a_row = 0
            repeats_in_a_row = repeats_in_a_row + 1 if outcome == "reused" else 0
            if repeats_in_a_row >= MAX_REPEATS:
                print(f"vaenas: {cfg.strategy!r} proposed {MAX_REPEATS} specs in a row that the study had already "
                      f"measured (repeats cost no budget); stopping with {_counts(study)[0]} of {budget} trials - the "
                      "space may have few specs left, widen it or lower budget.trials", file=sys.stderr, flush=True)
                return False
            if hasattr(sampler, "state_dict"):
                study.set_user_attr("strategy_state", sampler.state_dict())
            if bar is not None:
                size, hv = front_stats(study, cfg)
                bar.n = min(_counts(study)[0], budget)
                bar.set_postfix(front=size, hv=f"{hv:.4f}")
                bar.refresh()
    except KeyboardInterrupt:
        if trial is not None:
            trial.set_user_attr("fail_reason", INTERRUPTED)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return True


def _supernet_loop(study, cfg, sampler, live, evaluators, feasible, budget, timeout, poll_s, bar) -> bool:
    """Supernet mode: enqueued trials first (the ordinary loop), then the estimates against an in-memory
    mirror, one storage write each (:mod:`studies.estimates`). Returns whether it was interrupted."""
    from .estimates import estimate_loop, mirror_of

    waiting = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.WAITING,))
    if waiting and _trial_loop(study, cfg, sampler, live, evaluators, feasible,
                               min(budget, _counts(study)[0] + len(waiting)), timeout, poll_s, bar):
        return True
    evaluators.get()  # the supernet (and latency table) before the first estimate
    t0 = time.perf_counter()

    def progress(mirror, n_fin):
        if bar is not None:
            size, hv = front_stats(mirror, cfg)
            bar.n = min(n_fin, budget)
            bar.set_postfix(front=size, hv=f"{hv:.4f}")
            bar.refresh()

    mirror = mirror_of(study, sampler, cfg.space)
    index: dict = {}
    for t in mirror.get_trials(deepcopy=False):
        index_result(index, t, cfg)

    def run_one(m: optuna.Study, trial: optuna.Trial) -> None:
        _run_trial(m, cfg, trial, evaluators, feasible, None, index)
        index_result(index, m.get_trials(deepcopy=False)[trial.number], cfg)

    return estimate_loop(study, mirror, run_one, is_finished, budget,
                         None if timeout is None else max(0.0, timeout - (time.perf_counter() - t0)), sampler,
                         WORKER_ID, progress)


@contextlib.contextmanager
def _signals_deferred():
    """Ctrl-C or SIGTERM arriving while a trial is being created is delivered right after, once the
    trial is in hand - so it is marked interrupted instead of left RUNNING with no owner."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for signum in got:
            signal.raise_signal(signum)  # as it would have been delivered: the handlers in place decide


def _surplus(study: optuna.Study, trial: optuna.Trial, budget: int) -> bool:
    """Server storages: did this trial lose a race for the last slot to an earlier trial of another
    worker? Then it is failed as "surplus" (not counted)."""
    n_fin, running = _counts(study)
    if trial.number in running and running.index(trial.number) >= budget - n_fin:
        trial.set_user_attr("fail_reason", SURPLUS)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return True
    return False


def _run_trial(study: optuna.Study, cfg: StudyConfig, trial: optuna.Trial, evaluators: _Evaluators,
               feasible, store=None, index: dict | None = None) -> str:
    """Suggest a spec, then: record it as infeasible ("rejected"), reuse an earlier trial's result
    of the same spec ("reused": not counted in the budget), or train and measure it ("evaluated",
    perhaps stopped at a rung); the trial is told."""
    spec = suggest_spec(cfg.space, trial)
    trial.set_user_attr("spec", spec.to_json())
    trial.set_user_attr("spec_id", spec.id)
    trial.set_user_attr("seed", cfg.seed)
    if feasible is not None and not feasible(spec):
        _reject(study, cfg, trial, spec)
        return "rejected"
    earlier = _earlier_result(study, cfg, spec, index)
    if earlier is not None:
        _reuse(study, trial, earlier)
        return "reused"
    evaluator = evaluators.get()
    gate = StudyRungs(study, trial, cfg.rungs, cfg.keep, cfg.objectives, cfg.bounds) if cfg.rungs else None
    result, model = evaluator.evaluate_with_model(spec, cfg.seed, gate) if gate else \
        evaluator.evaluate_with_model(spec, cfg.seed)
    if isinstance(result, Stopped):
        for k, v in stopped_attrs(result).items():
            trial.set_user_attr(k, v)
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        return "evaluated"
    if not isinstance(result, Objectives):
        trial.set_user_attr("fail_reason", result.reason)
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        return "evaluated"
    _store_objectives(trial, result)
    if cfg.constraints:
        _set_constraints(trial, cfg.constraints, constraint_values(result.to_dict(), cfg.constraints))
    _save_trial_files(trial, spec, None if result.neg_elbo_is_estimate else model, evaluators, store)
    study.tell(trial, list(result.values(cfg.objectives)))
    return "evaluated"


def _earlier_result(study: optuna.Study, cfg: StudyConfig, spec: ArchSpec, index: dict | None = None):
    """The search trial that already measured ``spec`` in this study (COMPLETE, or stopped at a rung),
    of the same kind (estimate or standalone); None if there is none. ``index`` (spec id -> trial,
    kept by the caller, :func:`index_result`) replaces the scan of the study."""
    if index is not None:
        return index.get(spec.id)
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,
                                                      optuna.trial.TrialState.PRUNED)):
        if trial_attrs(t).get("spec_id") == spec.id and _is_result(t, cfg):
            return t
    return None


def _is_result(t: optuna.trial.FrozenTrial, cfg: StudyConfig) -> bool:
    """Can later trials of the same spec reuse ``t``'s figures?"""
    a = trial_attrs(t)
    return (t.state == optuna.trial.TrialState.COMPLETE or is_stopped(t)) and a.get("phase") != REMEASURE \
        and is_estimate(t) == (cfg.supernet is not None) and "reused_from_trial" not in a


def index_result(index: dict, t: optuna.trial.FrozenTrial, cfg: StudyConfig) -> None:
    """Add finished trial ``t`` to a spec-id index of reusable results (the first one of a spec wins)."""
    if _is_result(t, cfg):
        index.setdefault(trial_attrs(t).get("spec_id"), t)


def _reuse(study: optuna.Study, trial: optuna.Trial, earlier: optuna.trial.FrozenTrial) -> None:
    """Tell ``trial`` what ``earlier`` measured for the same spec (not counted in the budget)."""
    for k, v in trial_attrs(earlier).items():
        if k not in ("spec", "spec_id", "seed", "worker", "worker_lock", "rungs"):
            trial.set_user_attr(k, v)
    trial.set_user_attr("reused_from_trial", earlier.number)
    for k, v in earlier.constraints.items():
        trial.set_constraint(k, v)
    if earlier.state == optuna.trial.TrialState.PRUNED:
        study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    else:
        study.tell(trial, earlier.values)


def _save_trial_files(trial: optuna.Trial, spec: ArchSpec, model, evaluators: _Evaluators, store) -> None:
    """``trials/<n>/``: model.pt, arch.json and samples.png of a trained model, each uploaded as an
    artifact of the trial. A supernet estimate (``model`` None: its weights are the supernet's) writes
    nothing: its spec is in the trial's attributes, and estimates must stay cheap."""
    if model is None:
        return
    tdir = evaluators.sdir / "trials" / str(trial.number)
    meta = data_meta(evaluators.data)
    save_checkpoint(tdir / "model.pt", model, spec, meta)
    files = [tdir / "model.pt", tdir / "arch.json"]
    if store is not None:
        from .plots import samples_png

        atomic_write(files[1], spec.to_json(indent=2).encode())
        files.append(samples_png(model, evaluators.data.val[:8], tdir / "samples.png",
                                 standardised=meta.get("normalization") is not None, seed=trial.number))
        upload_artifacts(store, trial, files)


def _artifact_store(study: optuna.Study, cfg: StudyConfig, sdir: Path):
    """The study's artifact store: the one recorded in the study (set by its first process from the
    config's ``artifacts:``), so every worker writes to the same place."""
    if "artifact_store" not in study.user_attrs:
        study.set_user_attr("artifact_store", describe_artifacts(cfg.artifacts, sdir))
    return open_artifact_store(study.user_attrs["artifact_store"])


def _reject(study: optuna.Study, cfg: StudyConfig, trial: optuna.Trial, spec: ArchSpec) -> None:
    """A spec provably over a static limit: recorded (PRUNED) for the sampler, never trained."""
    c = static_costs(spec)
    vals = {k: getattr(c, k) for k in STATIC_CONSTRAINTS}
    cons = [(vals[k] - lim) / lim if k in vals else 0.0 for k, lim in cfg.constraints.items()]
    _set_constraints(trial, cfg.constraints, cons)
    trial.set_user_attr("fail_reason", "infeasible: " + ", ".join(
        f"{k} {vals[k]} > {lim:g}" for k, lim in cfg.constraints.items() if k in vals and vals[k] > lim))
    study.tell(trial, state=optuna.trial.TrialState.PRUNED)


def _share_cores(jobs: int) -> None:
    """``jobs`` processes share this machine's cores: torch gets its share in each (this one too)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def _start_workers(cfg: StudyConfig, runs_dir, n: int, budget: int, timeout, poll_s: float) -> list:
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # never fork a process that has torch threads (or CUDA) running
    procs = [ctx.Process(target=_worker_process, args=(cfg, str(runs_dir), budget, timeout, poll_s, n + 1),
                         name=f"vaenas-worker-{i + 1}", daemon=False) for i in range(n)]
    for p in procs:
        p.start()
    return procs


def _worker_process(cfg: StudyConfig, runs_dir: str, budget: int, timeout, poll_s: float, jobs: int) -> None:
    """One of ``search --jobs N``'s worker processes: ``run_search(worker=True)`` without output;
    SIGTERM (sent by the parent on Ctrl-C) marks its trial interrupted, like Ctrl-C."""
    import signal

    def _term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _term)
    _share_cores(jobs)
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


def _join_workers(procs: list, stop: bool) -> list[tuple[int, int]]:
    """Wait for the worker processes (after SIGTERM when ``stop``); the (pid, exit code) of each that
    did not end cleanly. Exit code 2 (bad input) and 1 (a failure) are raised here as errors."""
    if stop:
        for p in procs:
            if p.is_alive():
                p.terminate()  # SIGTERM: the worker marks its trial interrupted and exits
    for p in procs:
        p.join()
    lost = [(p.pid, p.exitcode) for p in procs if p.exitcode not in (0, None)]
    if not stop and any(code == 2 for _, code in lost):
        raise VaenasInputError("a worker process stopped on bad input (its message is above)")
    return [(pid, code) for pid, code in lost if not (stop and code == 1)]


def darts_enqueue(study: optuna.Study, cfg: StudyConfig, data, progress: bool = False) -> list[dict]:
    """Run the config's DARTS lambda sweep once; enqueue each distinct derived spec as a normal trial.

    The sweep (lambda, derived spec, expected size) is stored in the study (``darts_sweep``) so a
    resumed study neither re-runs nor re-enqueues it. The enqueued trials are trained and scored
    by the study's evaluator like every other trial, so fronts are comparable across strategies.
    """
    from evaluator import resolve_device
    from strategies.darts import DartsConfig, lambda_sweep

    d = cfg.darts
    dc = DartsConfig(**{k: d[k] for k in ("steps", "arch_lr", "warmup_steps", "batch_size") if k in d},
                     lr=cfg.train.lr, seed=cfg.seed, device=str(resolve_device(cfg.train.device)))
    t0 = time.perf_counter()
    if progress:
        print(f"DARTS: lambda sweep over {d['lambdas']} ({dc.steps} steps each) ...", flush=True)
    res = lambda_sweep(cfg.space, data.train, data.val, d["lambdas"], dc, depth=d.get("depth"))
    sweep, seen = [], set()
    for lam, (spec, info) in zip(d["lambdas"], res):
        sweep.append({"lambda": lam, "spec_id": spec.id, "spec": spec.to_json(),
                      "expected_size_bytes": info["expected_size_bytes"],
                      "expected_cost_ratio": info["expected_cost_ratio"], "duplicate": spec.id in seen})
        if spec.id not in seen:
            seen.add(spec.id)
            study.enqueue_trial(cfg.space.to_params(spec), user_attrs={"proposed_by": "darts", "darts_lambda": lam},
                                skip_if_exists=True)
    study.set_user_attr("darts_sweep", sweep)
    study.set_user_attr("darts_seconds", time.perf_counter() - t0)
    return sweep


def supernet_evaluator(cfg: StudyConfig, data, sdir: Path, progress: bool = False):
    """Train the study's supernet (or load ``sdir/supernet.pt`` trained with the same settings)."""
    from evaluator import TrainConfig
    from evaluator.supernet import DepthCalibration, SupernetEvaluator, calibrate_depths, train_supernet
    from search_space.supernet import build_supernet

    sn = cfg.supernet
    tcfg = TrainConfig(**{**cfg.train.to_dict(), "epochs": sn.epochs, "max_steps": None, "seed": cfg.seed})
    key = {"space": cfg.space.to_dict(), "dataset": cfg.dataset.to_config(), "n_train": cfg.n_train, "train": tcfg.to_dict(),
           "sandwich": {"n_random": sn.n_random, "kd_weight": sn.kd_weight}}
    key_json = json.dumps(key, sort_keys=True, default=str)
    path = sdir / "supernet.pt"
    net, calibration, ck, dirty, train_seconds = None, None, {}, False, 0.0
    if path.exists():
        ck = torch.load(path, map_location="cpu", weights_only=True)
        if ck.get("format") == "vaenas.supernet" and ck.get("key") == key_json:
            net = build_supernet(cfg.space)
            net.load_state_dict(ck["state_dict"])
            from evaluator import resolve_device

            net.to(resolve_device(cfg.train.device))
            if ck.get("calibration") is not None:
                calibration = DepthCalibration.from_dict(json.loads(ck["calibration"]))
        else:
            ck = {}
    if net is None:
        if progress:
            print(f"training the supernet ({sn.epochs:g} epochs, sandwich rule) ...", flush=True)
        net, res = train_supernet(cfg.space, data, tcfg, sn.sandwich(cfg.seed), progress=progress)
        train_seconds = res.seconds
        ck = {"format": "vaenas.supernet", "version": 1, "key": key_json,
              "state_dict": {k: v.detach().cpu() for k, v in net.state_dict().items()}}
        dirty = True
    net.eval()
    evaluator = SupernetEvaluator(net, data, cfg.train, cfg.latency, sn)
    if sn.calibrate and calibration is None:
        if progress:
            print("calibrating the supernet per depth on standalone-trained anchor specs ...", flush=True)
        calibration = calibrate_depths(net, data, cfg.train, evaluator.val, cfg.seed,
                                       estimate=lambda spec: evaluator.evaluate(spec, cfg.seed).neg_elbo)
        ck["calibration"] = json.dumps(calibration.to_dict())
        dirty = True
    if dirty:
        buf = io.BytesIO()
        torch.save(ck, buf)
        atomic_write(path, buf.getvalue())
    evaluator.calibration = calibration if sn.calibrate else None
    evaluator.train_seconds = train_seconds  # 0 when loaded from supernet.pt
    return evaluator


def greedy_hv_subset(points, bounds, k: int) -> list[int]:
    """Indices of ``k`` points chosen greedily, each adding the most hypervolume (normalised by ``bounds``)
    to those already chosen; ties (no gain left) go to the earliest point. The greedy choice is within
    a factor 1 - 1/e of the best subset's hypervolume (hypervolume is submodular)."""
    chosen: list[int] = []
    base = 0.0
    rest = list(range(len(points)))
    while rest and len(chosen) < k:
        gains = [hypervolume([points[j] for j in chosen] + [points[i]], bounds) - base for i in rest]
        best = int(np.argmax(gains))
        chosen.append(rest.pop(best))
        base += gains[best]
    return sorted(chosen)


def remeasure_front(study: optuna.Study, cfg: StudyConfig, evaluator: Evaluator, sdir: Path,
                    progress: bool = False) -> int:
    """Train up to ``supernet.remeasure`` specs of the estimated front standalone; add them as trials.

    With more front specs than that, the ones whose estimated points cover the most hypervolume
    (greedy, :func:`greedy_hv_subset`) are re-measured.

    Specs already re-measured in the study are skipped (so ``--resume`` finishes an interrupted
    re-measurement). Returns how many were measured in this call.
    """
    from optuna.distributions import CategoricalDistribution

    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    est = [t for t in trials if is_estimate(t) and is_feasible(t) and trial_attrs(t).get("phase") != REMEASURE]
    if not est:
        return 0
    mask = non_dominated_mask([t.values for t in est])
    front = sorted((t for t, m in zip(est, mask) if m), key=lambda t: (t.values[0], t.number))
    seen_ids, picked = set(), []
    for t in front:  # one per spec
        if trial_attrs(t)["spec_id"] not in seen_ids:
            seen_ids.add(trial_attrs(t)["spec_id"])
            picked.append(t)
    n = cfg.supernet.remeasure
    if len(picked) > n:  # the n specs whose estimated points cover the most hypervolume (greedy)
        picked = [picked[i] for i in greedy_hv_subset([t.values for t in picked], cfg.bounds, n)]
    done = {trial_attrs(t).get("spec_id") for t in trials if trial_attrs(t).get("phase") == REMEASURE}
    todo = [t for t in picked if trial_attrs(t)["spec_id"] not in done]
    for i, t in enumerate(todo):
        spec = ArchSpec.from_json(trial_attrs(t)["spec"])
        if progress:
            print(f"re-measuring front spec {i + 1}/{len(todo)} ({spec.id}, estimated −ELBO "
                  f"{trial_attrs(t)['neg_elbo']:.2f}) by standalone training ...", flush=True)
        result, model = evaluator.evaluate_with_model(spec, cfg.seed)
        attrs = {"spec": spec.to_json(), "spec_id": spec.id, "seed": cfg.seed, "phase": REMEASURE,
                 "remeasure_of": t.number, "estimate_neg_elbo": trial_attrs(t)["neg_elbo"], "worker": WORKER_ID,
                 "estimate_neg_elbo_uncalibrated": trial_attrs(t).get("neg_elbo_uncalibrated")}
        if not isinstance(result, Objectives):
            attrs["fail_reason"] = result.reason
            study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
            continue
        attrs.update(result.to_dict())
        system = {}
        if cfg.constraints:
            cons = constraint_values(result.to_dict(), cfg.constraints)
            system = {f"constraints:{k}": v for k, v in zip(cfg.constraints, cons)}  # as Trial.set_constraint
            attrs["feasible"] = all(c <= 0 for c in cons)
        params = {k: v for k, v in cfg.space.to_params(spec).items()}
        dists = {k: CategoricalDistribution(list(c)) for k, c in cfg.space.dimensions().items() if k in params}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists,
                                                  values=list(result.values(cfg.objectives)),
                                                  user_attrs=attrs, system_attrs=system))
        number = max(x.number for x in study.get_trials(deepcopy=False)
                     if trial_attrs(x).get("remeasure_of") == t.number)
        save_checkpoint(sdir / "trials" / str(number) / "model.pt", model, spec, data_meta(evaluator.data))
    return len(todo)
