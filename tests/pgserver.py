"""A throwaway PostgreSQL server for the distributed tests (and `.ci/run`).

Runs Debian's PostgreSQL binaries as an unprivileged user (``postgres`` if it exists, else
``nobody``, when we are root) on 127.0.0.1 with a fresh data directory, password auth
(scram-sha-256) for the user ``vaenas``; removes everything on stop.

    python tests/pgserver.py start DIR     # prints the URL; the server keeps running
    python tests/pgserver.py stop DIR
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

USER, PASSWORD, DB = "vaenas", "vaenas-test", "vaenas"


class PgUnavailable(RuntimeError):
    pass


def _bindir() -> Path:
    for d in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(d, "initdb")) and os.path.exists(os.path.join(d, "pg_ctl")):
            return Path(d)
    w = shutil.which("pg_ctl")
    if w and shutil.which("initdb"):
        return Path(w).parent
    raise PgUnavailable("no PostgreSQL server binaries (initdb, pg_ctl); install Debian's `postgresql` package")


def _as_user() -> tuple[list[str], str | None]:
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"], name
        return ["su", name, "-s", "/bin/sh", "-c"], name  # pragma: no cover
    raise PgUnavailable("running as root and no unprivileged user (postgres, nobody) to run the server as")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(prefix: list[str], cmd: list[str], **kw) -> subprocess.CompletedProcess:
    if prefix[:1] == ["su"]:  # pragma: no cover
        cmd = prefix + [" ".join(cmd)]
    else:
        cmd = prefix + cmd
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def start(base: str | None = None) -> tuple[str, Path]:
    """Start a server; returns (SQLAlchemy URL, its directory). Raises PgUnavailable with the reason."""
    bindir = _bindir()
    prefix, user = _as_user()
    root = Path(base) if base else Path(tempfile.mkdtemp(prefix="vaenas-pg-"))
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    data, sock = root / "data", root / "sock"
    sock.mkdir(exist_ok=True)
    pw = root / "pw"
    pw.touch(mode=0o600)  # readable by its owner only (the server's user, below), removed after initdb
    os.chmod(pw, 0o600)
    pw.write_text(PASSWORD + "\n")
    if user:
        info = pwd.getpwnam(user)
        for p in (root, sock, root / "pw"):
            os.chown(p, info.pw_uid, info.pw_gid)
    r = _run(prefix, [str(bindir / "initdb"), "-D", str(data), "-U", USER, "--auth=scram-sha-256",
                      f"--pwfile={pw}", "-E", "UTF8", "--no-instructions"])
    pw.unlink(missing_ok=True)
    if r.returncode != 0:
        raise PgUnavailable(f"initdb failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
    port = _free_port()
    (root / "port").write_text(str(port))
    _pg_ctl_start(root)
    url = f"postgresql+psycopg2://{USER}:{PASSWORD}@127.0.0.1:{port}/{DB}"
    try:
        import psycopg2

        for _ in range(50):
            try:
                conn = psycopg2.connect(host="127.0.0.1", port=port, user=USER, password=PASSWORD, dbname="postgres")
                break
            except psycopg2.OperationalError:
                time.sleep(0.2)
        else:
            raise PgUnavailable("the server did not accept connections")
        conn.autocommit = True
        conn.cursor().execute(f"CREATE DATABASE {DB}")
        conn.close()
    except Exception:
        stop(root)
        raise
    return url, root


def _pg_ctl_start(root: Path) -> None:
    prefix, _ = _as_user()
    port = int((root / "port").read_text())
    r = _run(prefix, [str(_bindir() / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log"), "-w", "-t", "30",
                      "-o", f"-c listen_addresses=127.0.0.1 -p {port} -k {root / 'sock'} -c fsync=off", "start"])
    if r.returncode != 0:
        log = (root / "log").read_text() if (root / "log").exists() else ""
        raise PgUnavailable(f"pg_ctl start failed: {(r.stderr or r.stdout or log).strip().splitlines()[-1:]}")


def halt(root: str | Path) -> None:
    """Stop the server (an outage: clients are disconnected), keeping its data for :func:`restart`."""
    prefix, _ = _as_user()
    r = _run(prefix, [str(_bindir() / "pg_ctl"), "-D", str(Path(root) / "data"), "-m", "fast", "-w", "stop"])
    if r.returncode != 0:
        raise PgUnavailable(f"pg_ctl stop failed: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")


def restart(root: str | Path) -> None:
    """Start a server stopped by :func:`halt` again, on the same port."""
    _pg_ctl_start(Path(root))


def stop(root: str | Path) -> None:
    root = Path(root)
    prefix, _ = _as_user()
    try:
        _run(prefix, [str(_bindir() / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("start", "stop"):
        sys.exit("usage: pgserver.py start|stop DIR")
    if sys.argv[1] == "start":
        try:
            print(start(sys.argv[2])[0])
        except PgUnavailable as e:
            sys.exit(f"pgserver: {e}")
    else:
        stop(sys.argv[2])
