"""``search --jobs N``: worker processes on this machine sharing one study (and its cores)."""

from __future__ import annotations

import contextlib
import os

import torch

from search_space import VaenasInputError

MAX_JOBS = 64


def check_jobs(jobs) -> None:
    if not isinstance(jobs, int) or isinstance(jobs, bool) or not 1 <= jobs <= MAX_JOBS:
        raise VaenasInputError(f"--jobs: must be a whole number from 1 to {MAX_JOBS} (worker processes on this "
                               f"machine), got {jobs!r}")


def share_cores(jobs: int) -> None:
    """``jobs`` processes share this machine's cores: torch gets its share in each (this one too)."""
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))


def start_workers(target, args: tuple, n: int) -> list:
    """``n`` spawned processes running ``target(*args)`` (a module-level function)."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")  # never fork a process that has torch threads (or CUDA) running
    procs = [ctx.Process(target=target, args=args, name=f"vaenas-worker-{i + 1}", daemon=False) for i in range(n)]
    for p in procs:
        p.start()
    return procs


def watch_parent(parent_pid: int, every_s: float = 1.0) -> None:
    """In a worker process: when the parent that started it is gone (killed with -9, so it could not stop its
    workers), deliver SIGTERM to this process - its trial is marked interrupted and it exits."""
    import signal
    import threading
    import time

    def watch():
        while os.getppid() == parent_pid:
            time.sleep(every_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="vaenas-parent-watch", daemon=True).start()


def join_workers(procs: list, stop: bool) -> list[tuple[int, int]]:
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


@contextlib.contextmanager
def signals_deferred():
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
