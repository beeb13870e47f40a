"""Optuna storages - the one owner of their quirks: which URL is which file, opening one (a
read-only command never creates one), passwords kept out of every message, the OS lock beside a
file storage, and riding out a database server's short outages (:class:`ResilientRDBStorage`).
"""

from __future__ import annotations

import re
import time
import warnings
from pathlib import Path

import optuna

from search_space import VaenasInputError
from strategies import optuna_private

OUTAGE_S = 60.0  # how long a worker waits out a database server that went away, by default


def lock_study(url: str, exclusive: bool):
    """An OS lock beside a file storage (SQLite file, journal) while this process uses the study: shared
    for ``search`` and ``worker`` (several may run), exclusive for ``--resume``, which fails the trials
    left RUNNING and so must be the study's only process. The kernel drops the lock when the process
    dies (even ``kill -9``), so a killed run never blocks a resume. Server storages: no lock (``--resume``
    there is documented as the only process). Returns the open lock file (keep it) or None."""
    import fcntl

    path = storage_file(url)
    if path is None:
        return None
    f = open(path.with_name(f".{path.name}.lock"), "a")
    try:
        fcntl.flock(f, (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        if exclusive:
            raise VaenasInputError(f"--resume: the study in {redact(url)} is in use by another vaenas process (a search "
                                   "or worker still running); wait for it to finish or stop it, then resume") from None
        raise VaenasInputError(f"the study in {redact(url)} is being resumed by another vaenas process; wait for it "
                               "to finish") from None
    return f


def storage_file(url: str) -> Path | None:
    """The file a file storage lives in (``journal:PATH``, ``sqlite:///PATH``); None for servers."""
    if url.startswith("journal:"):
        return Path(url[len("journal:"):])
    if url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        return Path(url[len("sqlite:///"):].split("?")[0])
    return None


def _check_file_storage(url: str, readonly: bool) -> None:
    """SQLite and journal files: a read-only command never creates one, and a file that is not what
    the URL says is one line (not Optuna's or SQLAlchemy's errors about servers and passwords)."""
    path = storage_file(url)
    if path is None:
        return
    if url.startswith("journal:"):
        if not url[len("journal:"):] or path.is_dir():
            raise VaenasInputError(f"storage: {url!r} needs a file path, e.g. journal:runs/my-study.log")
    elif path.is_dir():
        raise VaenasInputError(f"storage: {str(path)!r} is a folder, not an SQLite database file")
    if readonly and (not path.is_file() or path.stat().st_size == 0):
        raise VaenasInputError(f"storage: {str(path)!r} does not exist or is empty; check the path (`vaenas list` "
                               "shows the studies under runs/)")
    if url.startswith("sqlite:///") and path.is_file() and path.stat().st_size > 0:
        with open(path, "rb") as f:
            if f.read(16) != b"SQLite format 3\x00":
                raise VaenasInputError(f"storage: {str(path)!r} is not an SQLite database (corrupt, or another kind of "
                                       "file); restore it from a backup or point --storage at the study's study.db")


def open_storage(url: str, heartbeat: tuple[int, int] | None = (30, 120), readonly: bool = False,
                 outage_s: float = OUTAGE_S):
    """An Optuna storage for ``url``, with heartbeats where Optuna supports them (RDB storages).

    ``journal:PATH`` is Optuna's journal file storage (workers on one machine; their liveness is
    studies/liveness.py's). Problems opening it become one-line :class:`VaenasInputError` messages.
    ``readonly``: for commands that only read a study - a missing or empty file is an error, never
    created. A server storage rides out an outage of up to ``outage_s`` seconds later on
    (:class:`ResilientRDBStorage`).
    """
    _check_file_storage(url, readonly)
    if url.startswith("journal:"):
        from optuna.storages import JournalStorage
        from optuna.storages.journal import JournalFileBackend

        path = storage_file(url)
        if not path.parent.is_dir():
            raise VaenasInputError(f"storage: folder {str(path.parent)!r} of {url!r} does not exist; create it first")
        return JournalStorage(JournalFileBackend(str(path)))
    from optuna.storages import RetryHeartbeatStaleTrialCallback

    kw = {}
    if heartbeat is not None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            kw = {"heartbeat_interval": heartbeat[0], "grace_period": heartbeat[1],
                  "heartbeat_stale_trial_callback": RetryHeartbeatStaleTrialCallback(max_retry=1)}
    from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError

    if readonly and url.startswith("sqlite"):  # a reader never creates tables in a file: it may look while a
        kw["skip_table_creation"] = True  # writer creates them, or the file may be another program's database
    for attempt in range(8):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # SQLite too: "database is locked" under several local workers is waited out the same way
                engine = None if url.startswith("sqlite") else {"pool_pre_ping": True}
                storage = _rdb_class()(url, engine_kwargs=engine, **kw)
                storage.outage_s = outage_s
                return storage
        except ImportError as e:
            raise VaenasInputError(f"storage: {redact(url)} needs a database driver ({e}); for PostgreSQL install "
                                   "the extra with `pip install -e '.[postgres]'`") from None
        except (IntegrityError, ProgrammingError, OperationalError) as e:
            if attempt < 7 and _creation_race(e):
                time.sleep(0.5 + attempt)  # another process is creating Optuna's tables right now: retry
            elif isinstance(e, OperationalError):
                raise VaenasInputError(_cannot_open(url, e)) from None
            else:
                raise
        except Exception as e:  # sqlalchemy errors: unreachable host, wrong password, bad URL
            raise VaenasInputError(_cannot_open(url, e)) from None


def _creation_race(e: Exception) -> bool:
    """Did creating Optuna's tables collide with another process creating them? Servers report it as
    an integrity or programming error, SQLite as an OperationalError "table ... already exists"."""
    from sqlalchemy.exc import OperationalError

    return not isinstance(e, OperationalError) or "already exists" in str(getattr(e, "orig", None) or e)


def _cannot_open(url: str, e: Exception) -> str:
    msg = str(getattr(e, "orig", None) or e).strip().splitlines()
    hint = "check the path and that the file is a study database" if url.startswith("sqlite") else \
        "check the URL, that the server is up, the user and the password"
    return f"storage: cannot open {redact(url)}: {msg[0] if msg else type(e).__name__}; {hint}"


_PASSWORD_IN_USERINFO = re.compile(r"(://[^/@?#]*?:)[^@/?#]*@")  # scheme://user:PASSWORD@ (user may be empty)
_PASSWORD_IN_QUERY = re.compile(r"([?&;](?:password|passwd|pwd|pass)=)[^&;#]*", re.IGNORECASE)


def redact(url: str) -> str:
    """The URL with every password replaced by ***: ``user:pw@``, ``:pw@`` (empty user) and
    ``?password=`` / ``passwd=`` / ``pwd=`` / ``pass=`` query parameters, in any case."""
    return _PASSWORD_IN_QUERY.sub(r"\1***", _PASSWORD_IN_USERINFO.sub(r"\1***@", url))


def _study_names(storage) -> list[str]:
    return [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]


class StorageUnreachable(RuntimeError):
    """The database server did not answer for the whole outage window."""

    plain = True  # the CLI prints the message as it is: "vaenas: database unreachable: ..."


def _connection_lost(e: BaseException) -> bool:
    """Is ``e`` (or what Optuna wrapped in its StorageInternalError) a lost or refused connection?"""
    from sqlalchemy import exc

    seen = 0
    while e is not None and seen < 6:  # Optuna and SQLAlchemy wrap the driver's error one or more times
        if isinstance(e, exc.DBAPIError) and e.connection_invalidated:
            return True
        if isinstance(e, (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError, exc.PendingRollbackError)):
            return True
        e, seen = e.__cause__ or e.__context__, seen + 1
    return False


# every RDBStorage method that talks to the database, the private ones Optuna's _CachedStorage calls
# included (this list is checked against RDBStorage by a test)
_RETRIED = ("create_new_study", "delete_study", "set_study_user_attr", "set_study_system_attr",
            "get_study_id_from_name", "get_study_name_from_id", "get_study_directions", "get_study_user_attrs",
            "get_study_system_attrs", "get_all_studies", "create_new_trial", "set_trial_param", "get_trial_param",
            "set_trial_state_values", "set_trial_intermediate_value", "set_trial_user_attr", "set_trial_system_attr",
            "get_trial_id_from_study_id_trial_number", "get_trial", "get_all_trials", "get_best_trial",
            "get_n_trials", "record_heartbeat", "_get_stale_trial_ids", "get_trial_user_attrs",
            "get_trial_system_attrs", "_create_new_trial", "_set_trial_param", "_get_trials", "_get_best_trial_id")


def _riding_out(name: str, method):
    def call(self, *args, **kwargs):
        t0, delay = time.monotonic(), 0.25
        while True:
            try:
                return method(self, *args, **kwargs)
            except Exception as e:
                if not _connection_lost(e):
                    raise
                if name == "record_heartbeat":
                    return None  # a missed heartbeat is not fatal (grace_s); the next one may get through
                waited = time.monotonic() - t0
                if waited >= self.outage_s:
                    cause = e.__cause__ or e
                    first = (str(getattr(cause, "orig", None) or cause).strip().splitlines() or [""])[0]
                    raise StorageUnreachable(
                        f"database unreachable: {redact(self.url)} did not answer for {waited:.0f} s ({first}); "
                        "this worker stopped, and its trial in hand is retried by the other workers' heartbeats or "
                        "by `vaenas search CONFIG --resume`; start the server, then run the command again") from None
                time.sleep(min(delay, self.outage_s - waited))
                delay = min(2 * delay, 8.0)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = method.__doc__
    return call


_CLASS: list[type] = []


def _rdb_class() -> type:
    """Optuna's RDBStorage with each database call retried with backoff (0.25 s, doubling to 8 s)
    while the server is unreachable (or an SQLite file locked), for up to ``outage_s`` seconds, then
    :class:`StorageUnreachable`. A write whose answer was lost may be repeated: Optuna's writes of
    attributes and states are idempotent; a trial created twice is left RUNNING without a
    heartbeat (rare: only when the connection drops between the commit and its answer)."""
    if not _CLASS:
        from optuna.storages import RDBStorage

        optuna_private.quiet_lost_connection_fallback()

        methods = {n: _riding_out(n, getattr(RDBStorage, n)) for n in _RETRIED if hasattr(RDBStorage, n)}
        _CLASS.append(type("ResilientRDBStorage", (RDBStorage,), {"outage_s": OUTAGE_S, **methods}))
    return _CLASS[0]
