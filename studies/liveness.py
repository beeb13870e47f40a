"""Which RUNNING trials belong to live workers - the one owner of that question.

Three kinds, chosen by the storage (:func:`liveness_for`):

- **File storages** (SQLite file, ``journal:`` file) - several workers on *one machine*, no
  server: every worker process holds an exclusive ``flock`` on a lock file of its own
  (``.<storage>.workers/<pid>-<random>.lock`` beside the storage) for its whole life, and tags each
  trial it runs with that file's name (trial attr ``worker_lock``). The kernel drops the lock the
  moment the process dies, ``kill -9`` included, so another worker that can take the lock knows
  the trial's worker is dead: the trial is failed (``fail_reason`` "worker died") and queued again
  once with the same parameters (Optuna's ``RetryHeartbeatStaleTrialCallback``). Asking for a
  trial and the dead-worker check run under one exclusive claim lock, so two workers never take
  the last budget slot together (no surplus trials) and never retry the same trial twice. The
  same lock serialises creating the storage and the study (four workers started at one instant
  on a fresh SQLite file do not race on Optuna's tables). Trials tagged by another host are never
  judged: a file storage on a shared disk is not a multi-machine path (use PostgreSQL).
- **Server storages with heartbeats** (PostgreSQL, MySQL): Optuna's heartbeats; a trial silent
  for ``grace_s`` is failed and retried once. Asking is not serialised across machines, so a
  worker that loses the race for the last slot fails its trial as "surplus" (not counted).
- **Server storages without heartbeats**: nothing is known; no waiting for other workers.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import uuid
import warnings
from pathlib import Path

import optuna

from strategies import optuna_private
from strategies.trial_record import FAIL_REASON, WORKER_DIED

HOST = socket.gethostname()


def _retry(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
    """Queue ``trial`` again with the same parameters, once (a retry that dies is not retried)."""
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        RetryHeartbeatStaleTrialCallback(max_retry=1)(study, trial)


class NoLiveness:
    """A server storage without heartbeats: a dead worker's trial stays RUNNING."""

    exact = False  # asking is not serialised: a race for the last slot leaves a surplus trial
    can_wait = False  # RUNNING trials may be dead forever: never wait for them

    def claim(self):
        return contextlib.nullcontext()

    def fail_dead(self, study: optuna.Study) -> list[int]:
        return []

    def tag(self, trial: optuna.Trial) -> None:
        pass

    def running(self, trial: optuna.Trial):
        return contextlib.nullcontext()

    def close(self) -> None:
        pass


class HeartbeatLiveness(NoLiveness):
    """Optuna's heartbeats on an RDB storage (the storage was opened with a heartbeat interval)."""

    can_wait = True

    def fail_dead(self, study: optuna.Study) -> list[int]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna_private.fail_stale_trials(study)  # the storage's callback retries each one once
        return []

    def running(self, trial: optuna.Trial):
        return optuna_private.heartbeat_thread(trial)


class FileLiveness(NoLiveness):
    """Lock files on one machine (see the module text). Create it before the first trial; keep it
    for the life of the process (or :meth:`close` it when the process stops working on the study)."""

    exact = True
    can_wait = True

    def __init__(self, storage_path: Path):
        self.dir = storage_path.with_name(f".{storage_path.name}.workers")
        self.dir.mkdir(exist_ok=True)
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
        self._own = open(self.dir / self.name, "w")
        fcntl.flock(self._own, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh random name: never held by another
        self._claim_path = claim_path(storage_path)

    def claim(self):
        return claim_lock(self._claim_path)

    def tag(self, trial: optuna.Trial) -> None:
        trial.set_user_attr("worker_lock", f"{HOST}/{self.name}")

    def is_dead(self, trial: optuna.trial.FrozenTrial) -> bool:
        """Call under :meth:`claim`. A RUNNING trial with no tag was asked by a process that died
        inside its claim (tagging happens there); one tagged by another host is taken as alive."""
        tag = trial.user_attrs.get("worker_lock")
        if tag is None:
            return True
        host, _, name = tag.rpartition("/")
        if host != HOST or "/" in name or not name.endswith(".lock"):
            return False
        path = self.dir / name
        try:
            f = open(path, "r+")
        except FileNotFoundError:
            return True  # its owner is gone and its file was cleaned
        with f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return False  # the owner holds its lock: alive
            path.unlink(missing_ok=True)
            return True

    def fail_dead(self, study: optuna.Study) -> list[int]:
        """Fail and requeue (once) the RUNNING trials of dead workers; returns their numbers. Call
        under :meth:`claim`."""
        dead = []
        for t in study.get_trials(deepcopy=True, states=(optuna.trial.TrialState.RUNNING,)):
            if self.is_dead(t):
                optuna_private.set_trial_failed(study, t, FAIL_REASON, WORKER_DIED)
                _retry(study, t)
                dead.append(t.number)
        return dead

    def close(self) -> None:
        if not self._own.closed:
            (self.dir / self.name).unlink(missing_ok=True)
            self._own.close()


def claim_path(storage_path: Path) -> Path:
    return storage_path.with_name(f".{storage_path.name}.claim")


@contextlib.contextmanager
def claim_lock(path: Path):
    """An exclusive, blocking OS lock on ``path`` (created) for the ``with`` block."""
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def liveness_for(storage_path: Path | None, heartbeats: bool):
    """The liveness of a storage: lock files for a file storage (its path), else heartbeats or none."""
    if storage_path is not None:
        return FileLiveness(storage_path)
    return HeartbeatLiveness() if heartbeats else NoLiveness()
