"""Hostile inputs and faults that need more than one command line: what a command may write over
(studies/outputs.py), full disks, signals, redacted secrets, resumed and copied studies."""

from __future__ import annotations

import json

import optuna
import pytest
import torch

from studies.outputs import OutputRefused, check_output_dir, check_output_file, protected_kind


def test_protected_files_are_recognised_by_content_wherever_they_are(tmp_path):
    db = tmp_path / "anything.csv"
    optuna.create_study(storage=f"sqlite:///{db}")
    assert "SQLite" in protected_kind(db)
    ck = tmp_path / "weights.bin"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, ck)
    assert "checkpoint" in protected_kind(ck)
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    log = tmp_path / "my-study.log"
    optuna.create_study(storage=JournalStorage(JournalFileBackend(str(log))))
    assert "journal" in protected_kind(log)
    (tmp_path / "mine.json").write_text(json.dumps({"a": 1}))
    assert protected_kind(tmp_path / "mine.json") is None
    for p in (db, ck, log):
        with pytest.raises(OutputRefused, match="never writes over it"):
            check_output_file(p, force=True)  # not even with --force
    with pytest.raises(OutputRefused, match="pass --force"):
        check_output_file(tmp_path / "mine.json")
    assert check_output_file(tmp_path / "mine.json", force=True) == tmp_path / "mine.json"
    assert check_output_file(tmp_path / "new.json") == tmp_path / "new.json"


def test_study_folders_are_closed_except_export_and_plots(tmp_path):
    study = tmp_path / "runs" / "s"
    (study / "trials" / "0").mkdir(parents=True)
    (study / "study.db").write_bytes(b"SQLite format 3\x00")
    for p in (study / "notes.txt", study / "trials" / "0" / "x.json", study / "trials" / "t.csv"):
        with pytest.raises(OutputRefused, match="inside study folder"):
            check_output_file(p, force=True)
    assert check_output_file(study / "export" / "a.json")
    assert check_output_file(study / "plots" / "p.png")
    with pytest.raises(OutputRefused, match="inside study folder"):
        check_output_dir(study / "trials" / "0", ["model.pt"], force=True)
    with pytest.raises(OutputRefused, match="inside study folder"):
        check_output_dir(study, ["model.pt"], force=True)
    assert check_output_dir(study / "export" / "retrain_knee", ["model.pt"])
    # a study on a journal storage has no study.db: its trials/ folder of checkpoints marks it
    other = tmp_path / "runs" / "j"
    (other / "trials" / "3").mkdir(parents=True)
    with pytest.raises(OutputRefused, match="inside study folder"):
        check_output_dir(other / "trials" / "3", ["model.pt"])


def test_force_replaces_a_users_own_export(tmp_path, study_runs_small, capsys):
    from studies.cli import main

    out = tmp_path / "mine.json"
    out.write_text("{}")
    assert main(["export", "hard", "--runs-dir", str(study_runs_small), "--out", str(out)]) == 2
    assert out.read_text() == "{}"
    assert main(["export", "hard", "--runs-dir", str(study_runs_small), "--out", str(out), "--force"]) == 0
    assert json.loads(out.read_text())["type"] == "vaenas.Export"
    capsys.readouterr()
    # the default export path is the study's export/ folder, named after the pick: the knee.json that
    # search wrote is rewritten (same trial, nothing lost); an export of another trial there needs --force
    assert main(["export", "hard", "--runs-dir", str(study_runs_small)]) == 0
    knee = study_runs_small / "hard" / "export" / "knee.json"
    doc = json.loads(knee.read_text())
    doc["provenance"]["trial"] = 99  # as if the knee had been another trial
    knee.write_text(json.dumps(doc))
    assert main(["export", "hard", "--runs-dir", str(study_runs_small)]) == 2
    assert "pass --force" in capsys.readouterr().err
    assert main(["export", "hard", "--runs-dir", str(study_runs_small), "--force"]) == 0


@pytest.fixture(scope="module")
def study_runs_small(tmp_path_factory, data_root):
    import yaml

    from studies.cli import main

    d = tmp_path_factory.mktemp("hard")
    cfg = {"name": "hard", "dataset": "mnist", "data_root": str(data_root), "n_train": 300,
           "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [8]}, "weight_bits": [4, 32]},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "budget": {"trials": 1}, "train": {"epochs": 1, "batch_size": 100}, "latency": {"repeats": 3, "warmup": 1}}
    (d / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", str(d / "c.yaml"), "--runs-dir", str(d / "runs"), "--quiet"]) == 0
    return d / "runs"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_cuda_without_a_gpu_is_one_line_before_anything_is_written(tmp_path, capsys):
    import yaml

    from studies.cli import main

    cfg = {"name": "g", "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [8]}},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "train": {"epochs": 1, "device": "cuda"}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["search", str(tmp_path / "c.yaml"), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "asked for a GPU but none is available" in err[0]
    assert not (tmp_path / "runs").exists()


def test_ranges_are_counted_not_built_and_sizes_bounded():
    import tracemalloc

    from search_space import SearchSpace, SpaceError

    tracemalloc.start()
    with pytest.raises(SpaceError, match="1,000,000,000 values"):
        SearchSpace.from_dict({"latent_dim": [4], "mlp": {"depth": [1], "width": {"min": 1, "max": 10**9}}})
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 50 * 2**20  # refused before a billion-element list exists (it would need ~36 GB)
    # the bound is on the largest spec: a wide space below it is fine
    s = SearchSpace.from_dict({"latent_dim": [4, 64], "mlp": {"depth": [1, 3], "width": {"min": 64, "max": 4096,
                                                                                           "step": 64}}})
    assert len(s.mlp["width"]) == 64


@pytest.mark.parametrize("change, where", [
    ({"train": {"epochs": 2, "batch_size": 100}}, "train.epochs"),
    ({"space": {"latent_dim": [4, 8], "mlp": {"depth": [1], "width": [8]}, "weight_bits": [4, 32]}},
     "space.latent_dim"),
    ({"latency": {"repeats": 5, "warmup": 1}}, "latency.repeats"),
    ({"dataset": "fashion_mnist"}, "dataset"),
])
def test_resume_and_worker_refuse_a_different_study(change, where, study_runs_small, tmp_path, capsys):
    import yaml

    from studies.cli import main

    cfg = yaml.safe_load((study_runs_small.parent / "c.yaml").read_text())
    db = study_runs_small / "hard" / "study.db"
    before = db.read_bytes()
    (tmp_path / "c.yaml").write_text(yaml.safe_dump({**cfg, **change}))
    for cmd in (["search", str(tmp_path / "c.yaml"), "--resume", "--n-trials", "2"],
                ["worker", str(tmp_path / "c.yaml"), "--n-trials", "2"]):
        assert main([*cmd, "--runs-dir", str(study_runs_small), "--quiet"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"was run with {where} = " in err[0] and "another name" in err[0], err
    assert db.read_bytes() == before  # nothing written: no trial started, none left RUNNING
    # the unchanged config still resumes
    assert main(["search", str(study_runs_small.parent / "c.yaml"), "--resume", "--runs-dir", str(study_runs_small),
                 "--quiet"]) == 0


@pytest.mark.parametrize("url", [
    "postgresql://u:s3cret@h/db", "postgresql+psycopg2://u:s3cret@h:5432/db?sslmode=require",
    "postgresql://h/db?user=u&password=s3cret", "postgresql://:s3cret@h/db?user=u",
    "mysql://u:s3:cret@h/db", "postgresql://u@h/db?PASSWORD=s3cret&x=1", "postgresql://u@h/db?x=1;pwd=s3cret",
    "postgresql://u@h/db?passwd=s3cret", "postgresql://u@h/db?pass=s3cret#frag",
])
def test_passwords_are_redacted_in_every_url_spelling(url):
    from studies.storage import redact

    out = redact(url)
    assert "s3" not in out and "cret" not in out and "***" in out
    assert out.split("//")[0] == url.split("//")[0]  # the rest of the URL stays readable


def test_a_storage_password_in_the_yaml_is_not_stored_in_the_study(data_root):
    from evaluator import load_data
    from studies.config import StudyConfig
    from studies.identity import init_study_attrs as _init_study_attrs  # the one place the config is stored in a study

    class Study:  # records what would be written to the storage
        attrs: dict = {}

        def set_metric_names(self, names):
            pass

        def set_user_attr(self, k, v):
            self.attrs[k] = v

    raw = {"name": "pw", "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [8]}},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "storage": "postgresql://u:s3cret@h/db?password=s3cret"}
    c = StudyConfig.from_dict(raw)
    c.bind_data(load_data("mnist", data_root, n_train=10))
    study = Study()
    _init_study_attrs(study, c)
    assert "s3cret" not in json.dumps(study.attrs) and "***" in study.attrs["config"]["storage"]


def test_atomic_write_leaves_no_temporary_file(tmp_path, monkeypatch):
    import os

    from studies import files as run

    target = tmp_path / "a.json"
    stale = tmp_path / ".a.json.tmp999999999"  # a killed process's leftover (no such PID)
    stale.write_bytes(b"half")

    def full_disk(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(run.os, "replace", full_disk)
    with pytest.raises(OSError):
        run.atomic_write(target, b"data")
    assert not target.exists() and not (tmp_path / f".a.json.tmp{os.getpid()}").exists()
    monkeypatch.undo()
    run.atomic_write(target, b"data")
    assert target.read_bytes() == b"data" and not stale.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_corrupt_gz_is_not_reported_as_missing(tmp_path, data_root):
    import shutil

    from evaluator import load_data
    from evaluator.sources import DataUnavailableError

    raw = tmp_path / "MNIST" / "raw"
    shutil.copytree(data_root / "MNIST" / "raw", raw, ignore=shutil.ignore_patterns("*ubyte"))
    gz = raw / "t10k-images-idx3-ubyte.gz"
    gz.write_bytes(gz.read_bytes()[:1000])  # truncated
    with pytest.raises(DataUnavailableError, match="there but corrupt or incomplete"):
        load_data("mnist", tmp_path)


def test_show_on_an_all_failed_study_lists_the_reasons(tmp_path, capsys):
    from studies.cli import main

    url = f"sqlite:///{tmp_path / 'f.db'}"
    s = optuna.create_study(study_name="f", storage=url, directions=["minimize", "minimize"])
    s.set_user_attr("objectives", ["neg_elbo", "size_bytes"])
    s.set_user_attr("bounds", [[0, 1, False], [0, 1, False]])
    t = s.ask()
    t.set_user_attr("fail_reason", "training diverged: mean loss nan")
    s.tell(t, state=optuna.trial.TrialState.FAIL)
    s.ask().set_user_attr("worker", "host:42")  # left RUNNING
    assert main(["show", "f", "--storage", url]) == 0
    out = capsys.readouterr().out
    assert "0 complete, 1 failed, 1 running" in out and "trial 0 FAIL: training diverged" in out
    assert "trial 1 RUNNING on host:42" in out


def test_sigterm_is_handled_like_ctrl_c_and_stderr_stays_one_line_off_a_terminal(tmp_path, data_root):
    """SIGTERM mid-trial: the trial is marked interrupted, exit 1, one stderr line (no progress bar on a
    pipe); --resume then finishes the budget."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[2]
    cfg = {"name": "term", "dataset": "mnist", "data_root": str(data_root), "n_train": 20000,
           "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [64, 128]}},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "budget": {"trials": 2}, "train": {"epochs": 3, "batch_size": 50}, "latency": {"repeats": 3, "warmup": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "studies.cli", "search", "c.yaml", "--runs-dir", "runs"]
    env = {**os.environ, "PYTHONPATH": str(repo)}
    p = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    db = tmp_path / "runs" / "term" / "study.db"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a trial is running
        if db.exists():
            try:
                st = optuna.load_study(study_name="term", storage=f"sqlite:///{db}")
                if any(t.state == optuna.trial.TrialState.RUNNING for t in st.trials):
                    break
            except Exception:
                pass
        time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 1, err
    assert err == "" and "interrupted" in out and "resume with" in out, (out, err)  # no bar on a pipe
    st = optuna.load_study(study_name="term", storage=f"sqlite:///{db}")
    assert not [t for t in st.trials if t.state == optuna.trial.TrialState.RUNNING]
    assert any(t.user_attrs.get("fail_reason") == "interrupted" for t in st.trials)
    r = subprocess.run(cmd + ["--resume", "--quiet"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_resume_while_another_process_runs_the_study_is_refused(tmp_path, data_root, capsys):
    """--resume fails the trials left RUNNING, so it must be the study's only process: while a search or
    worker holds the study (its shared lock), resume is one line and the running trial is untouched."""
    import yaml

    from studies.cli import main
    from studies.storage import lock_study

    cfg = {"name": "busy", "dataset": "mnist", "data_root": str(data_root), "n_train": 300,
           "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [8, 16]}},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]},
           "budget": {"trials": 1}, "train": {"epochs": 1}, "latency": {"repeats": 3, "warmup": 1}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    runs = tmp_path / "runs"
    assert main(["search", str(tmp_path / "c.yaml"), "--runs-dir", str(runs), "--quiet"]) == 0
    url = f"sqlite:///{runs / 'busy' / 'study.db'}"
    study = optuna.load_study(study_name="busy", storage=url)
    running = study.ask()  # another process's trial in progress
    held = lock_study(url, exclusive=False)  # ... and that process holds the study
    capsys.readouterr()
    assert main(["search", str(tmp_path / "c.yaml"), "--runs-dir", str(runs), "--resume", "--n-trials", "2",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is in use by another vaenas process" in err[0]
    assert study.trials[running.number].state == optuna.trial.TrialState.RUNNING  # untouched
    held.close()  # that process ended (the kernel drops its lock, even on kill -9)
    assert main(["search", str(tmp_path / "c.yaml"), "--runs-dir", str(runs), "--resume", "--n-trials", "2",
                 "--quiet"]) == 0
    t = optuna.load_study(study_name="busy", storage=url).trials[running.number]
    assert t.state == optuna.trial.TrialState.FAIL and t.user_attrs["fail_reason"] == "interrupted"


@pytest.mark.slow  # ~70 s: 10 rounds of 3 processes; `.ci/run` runs it (pytest -m slow)
def test_three_processes_unpacking_a_fresh_data_root_do_not_race(tmp_path, data_root):
    """Workers starting together on a new machine all unpack the same IDX files: 3 processes on a fresh
    data root, 10 times - every process loads the data (torchvision's unpack runs under a file lock)."""
    import os
    import shutil
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    code = "import sys; from evaluator import load_data; d = load_data('mnist', sys.argv[1], n_train=10); print(len(d.test))"
    env = {**os.environ, "PYTHONPATH": str(repo), "OMP_NUM_THREADS": "1",
           "HTTPS_PROXY": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9"}
    for round_ in range(10):
        root = tmp_path / f"root{round_}"
        shutil.copytree(data_root / "MNIST" / "raw", root / "MNIST" / "raw", ignore=shutil.ignore_patterns("*ubyte"))
        procs = [subprocess.Popen([sys.executable, "-c", code, str(root)], env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True) for _ in range(3)]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0], (round_, [o[1][-500:] for o in outs])
        assert all(o[0].strip() == "10000" for o in outs)
        shutil.rmtree(root)


def test_every_storage_call_optuna_makes_rides_out_an_outage():
    """ResilientRDBStorage retries what Optuna calls on RDBStorage - its _CachedStorage calls private
    methods too; a method Optuna renames would silently lose its retries, so the list is checked."""
    import inspect
    import re

    from optuna.storages import RDBStorage
    from optuna.storages import _cached_storage

    from studies.storage import _RETRIED, _rdb_class

    called = set(re.findall(r"_backend\.(\w+)\(", inspect.getsource(_cached_storage)))
    touches_db = called - {"get_heartbeat_interval", "get_heartbeat_stale_trial_callback"}
    assert touches_db <= set(_RETRIED), touches_db - set(_RETRIED)
    assert all(hasattr(RDBStorage, n) for n in _RETRIED), [n for n in _RETRIED if not hasattr(RDBStorage, n)]
    cls = _rdb_class()
    assert all(getattr(cls, n) is not getattr(RDBStorage, n) for n in _RETRIED)


def test_a_reader_never_creates_tables_and_a_writer_rides_out_a_creation_race(tmp_path, monkeypatch):
    """A process that only reads (a poller, `vaenas show`) opens a half-created SQLite file without
    creating tables, so it cannot collide with the process creating them; the writer that does
    collide ("table ... already exists", SQLite's word for it) retries instead of failing."""
    import sqlite3

    import sqlalchemy
    from optuna.storages._rdb import models

    from studies import storage as st
    from search_space.errors import VaenasInputError

    db = tmp_path / "s.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE studies (study_id INTEGER PRIMARY KEY)")  # what a writer has made so far
    con.commit()
    with pytest.raises(VaenasInputError, match="storage: cannot open"):
        st.open_storage(f"sqlite:///{db}", heartbeat=None, readonly=True)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"studies"}  # the reader created nothing
    con.close()
    db.unlink()

    real, calls = models.BaseModel.metadata.create_all, []

    def racing(*a, **k):
        calls.append(1)
        if len(calls) == 1:
            real(*a, **k)  # the other process wins the race ...
            raise sqlalchemy.exc.OperationalError("CREATE TABLE trial_values", {},
                                                  sqlite3.OperationalError("table trial_values already exists"))
        return real(*a, **k)

    monkeypatch.setattr(models.BaseModel.metadata, "create_all", racing)
    monkeypatch.setattr(st.time, "sleep", lambda s: None)
    storage = st.open_storage(f"sqlite:///{db}", heartbeat=None)  # ... and this one retries
    assert len(calls) == 2
    assert optuna.create_study(storage=storage, study_name="x").study_name == "x"


def test_optunas_fallback_warning_is_dropped_for_a_lost_connection_only():
    """A server killed mid-query: Optuna's "Falling back to a slower alternative" warning would be
    printed before vaenas's one line "database unreachable"; its real use (too many SQL variables) stays."""
    import logging

    from studies.storage import _rdb_class

    _rdb_class()
    log = logging.getLogger("optuna.storages._rdb.storage")  # its filters, whatever level another test left set

    def kept(msg: str) -> bool:
        return bool(log.filter(log.makeRecord(log.name, logging.WARNING, __file__, 0, msg, (), None)))

    assert not kept("Caught an error from sqlalchemy: (psycopg2.OperationalError) server closed the connection "
                    "unexpectedly. Falling back to a slower alternative.")
    assert kept("Caught an error from sqlalchemy: (sqlite3.OperationalError) too many SQL variables. "
                "Falling back to a slower alternative.")
    assert kept("something else")


def test_read_only_runs_dir_is_one_line_exit_2(tmp_path):
    """--runs-dir in a folder the user cannot write: one line, exit 2, nothing written. Root may write
    anywhere chmod forbids, so as root the folder is a read-only tmpfs mount (a read-only disk)."""
    import os
    import subprocess
    import sys

    import yaml

    cfg = {"name": "ro", "space": {"latent_dim": [4], "mlp": {"depth": [1], "width": [8]}},
           "objectives": ["neg_elbo", "size_bytes"], "bounds": {"neg_elbo": [50, 600], "size_bytes": [100, 1e7]}}
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    ro = tmp_path / "ro"
    ro.mkdir()
    mounted = False
    if os.geteuid() == 0:
        m = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(ro)], capture_output=True, text=True)
        if m.returncode != 0:
            pytest.skip(f"running as root without the right to mount a read-only folder: {m.stderr.strip()}")
        mounted = True
    else:
        os.chmod(ro, 0o555)
    try:
        before = sorted(str(p) for p in tmp_path.rglob("*"))
        for runs in ("ro", "ro/runs"):
            r = subprocess.run([sys.executable, "-m", "studies.cli", "search", "c.yaml", "--runs-dir", runs],
                               cwd=tmp_path, capture_output=True, text=True)
            assert r.returncode == 2, r.stderr
            err = r.stderr.strip().splitlines()
            assert len(err) == 1 and "--runs-dir" in err[0] and "not writable" in err[0], err
        assert sorted(str(p) for p in tmp_path.rglob("*")) == before
    finally:
        if mounted:
            subprocess.run(["umount", str(ro)])
        else:
            os.chmod(ro, 0o755)


def test_tests_take_mnist_from_vaenas_data(tmp_path, monkeypatch):
    """The README tells users to set $VAENAS_DATA; the tests' data comes from there too (packed or
    unpacked IDX files), ahead of ../shared/data."""
    import conftest

    monkeypatch.delenv("VAENAS_SHARED_DATA", raising=False)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / "train-images-idx3-ubyte").write_bytes(b"\0")  # unpacked by torchvision, .gz gone
    monkeypatch.setenv("VAENAS_DATA", str(tmp_path))
    assert conftest.shared_data_dir() == tmp_path
    monkeypatch.setenv("VAENAS_DATA", str(tmp_path / "empty"))
    assert conftest.shared_data_dir() != tmp_path / "empty"


def test_list_never_prints_a_stored_name_s_terminal_escapes(tmp_path, capsys):
    """A study name is anyone's text on a shared storage: `vaenas list` shows its escapes, never sends them."""
    import optuna

    from studies.cli import main

    (tmp_path / "x").mkdir()
    url = f"sqlite:///{tmp_path / 'x' / 'study.db'}"
    optuna.create_study(study_name="evil\x1b[2J\x1b]0;pwned\x07\rname", storage=url)
    assert main(["list", "--runs-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "\r" not in out
    assert "evil\\x1b[2J\\x1b]0;pwned\\x07\\rname" in out


def _files(root):
    return {p: p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_copied_study_resumes_writing_only_inside_the_copy(tmp_path, data_root, monkeypatch):
    """A study folder is self-contained: copy runs/ elsewhere, `search --resume` there, and every file
    created or changed is inside the copy - none in the original (its artifacts folder included), none
    beside it. The original recorded its artifact folder as an absolute path, as studies made before
    did: that path is not followed."""
    import shutil

    import optuna

    from conftest import small_config
    from studies.cli import main

    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    cfgp = small_config(a, data_root, name="ok", trials=2)
    monkeypatch.chdir(a)
    assert main(["search", str(cfgp), "--runs-dir", "runs", "--quiet"]) == 0
    study = optuna.load_study(study_name="ok", storage=f"sqlite:///{a / 'runs' / 'ok' / 'study.db'}")
    study.set_user_attr("artifact_store", {"backend": "filesystem", "path": str(a / "runs" / "ok" / "artifacts")})
    shutil.copytree(a, b)
    before = _files(tmp_path)
    monkeypatch.chdir(b)
    assert main(["search", str(b / cfgp.name), "--runs-dir", "runs", "--resume", "--n-trials", "4", "--quiet"]) == 0
    after = _files(tmp_path)
    changed = sorted(str(p.relative_to(tmp_path)) for p in after if before.get(p) != after[p])
    assert changed and all(c.startswith("b/runs/ok/") for c in changed), changed
    assert {p for p in after if p.is_relative_to(a)} == {p for p in before if p.is_relative_to(a)}
    new_art = [c for c in changed if c.startswith("b/runs/ok/artifacts/")]
    assert new_art  # the resumed trials' files went to the copy's own artifact folder


def _older_study(study_runs_small, tmp_path, edit):
    """A copy of the small study whose stored fingerprint ``edit`` changed (as another vaenas wrote it)."""
    import json
    import shutil

    import optuna

    runs = tmp_path / "runs"
    shutil.copytree(study_runs_small, runs)
    study = optuna.load_study(study_name="hard", storage=f"sqlite:///{runs / 'hard' / 'study.db'}")
    fp = dict(study.user_attrs["fingerprint"])
    edit(fp, json)
    study.set_user_attr("fingerprint", fp)
    return runs


@pytest.mark.parametrize("edit", [
    lambda fp, json: [fp.pop("darts"), fp.pop("constraints"), fp.pop("supernet")],  # keys added later
    lambda fp, json: fp.update(train=json.dumps({k: v for k, v in json.loads(fp["train"]).items()
                                                 if k not in ("lr_warmup_steps", "qat_delay")}, sort_keys=True)),
], ids=["blocks-added-later", "train-keys-added-later"])
def test_a_study_from_an_earlier_vaenas_resumes_when_the_config_uses_the_defaults(edit, study_runs_small, tmp_path):
    from studies.cli import main

    runs = _older_study(study_runs_small, tmp_path, edit)
    cfg = study_runs_small.parent / "c.yaml"
    assert main(["search", str(cfg), "--resume", "--n-trials", "2", "--runs-dir", str(runs), "--quiet"]) == 0


def test_fingerprints_name_a_real_difference_and_refuse_a_newer_vaenas(study_runs_small, tmp_path, capsys):
    import yaml

    from studies.cli import main

    runs = _older_study(study_runs_small, tmp_path, lambda fp, json: fp.pop("darts"))
    cfg = yaml.safe_load((study_runs_small.parent / "c.yaml").read_text())
    (tmp_path / "d.yaml").write_text(yaml.safe_dump({**cfg, "darts": {"lambdas": [0, 10]}}))
    assert main(["search", str(tmp_path / "d.yaml"), "--resume", "--runs-dir", str(runs), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was run with darts = null, this config has {" in err  # not "null ... has null"
    runs2 = _older_study(study_runs_small, tmp_path / "2", lambda fp, json: fp.update(quantum="\"on\""))
    assert main(["search", str(study_runs_small.parent / "c.yaml"), "--resume", "--runs-dir", str(runs2),
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "newer vaenas" in err[0] and "'quantum'" in err[0]


def test_an_emptied_study_db_never_costs_the_earlier_trials_files(study_runs_small, tmp_path, capsys):
    """study.db emptied (0 bytes): a plain `search` would have started a new study and written over
    trials/0/model.pt, and `--resume` wrote Optuna's schema into the file before refusing. Both are one
    line, exit 2, nothing written."""
    import shutil

    from studies.cli import main

    runs = tmp_path / "runs"
    shutil.copytree(study_runs_small, runs)
    db = runs / "hard" / "study.db"
    db.write_bytes(b"")
    before = _files(runs)
    cfg = str(study_runs_small.parent / "c.yaml")
    for extra, needle in (([], "holds an earlier study's trials"), (["--resume"], "--resume: no study 'hard'")):
        assert main(["search", cfg, "--runs-dir", str(runs), "--quiet", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], err
        assert _files(runs) == before and db.stat().st_size == 0
