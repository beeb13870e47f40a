"""Distributed studies on PostgreSQL: 3 workers share one study; one is kill -9'ed mid-trial.

The server comes from the ``pg_url`` fixture (`.ci/run` starts one; locally a throwaway server
is started, or the tests are skipped with the reason printed when none can be - never in CI).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from datetime import datetime

import optuna
import pytest
import yaml

from studies.cli import main
from studies.trials import is_finished

pytestmark = pytest.mark.distributed


def config(tmp_path, data_root, url, name, trials, strategy="random", epochs=1):
    cfg = {
        "name": name, "dataset": "mnist", "data_root": str(data_root), "n_train": 2000, "storage": url,
        "space": {"family": ["mlp"], "latent_dim": [4, 8, 16], "mlp": {"depth": [1, 2], "width": [16, 32, 64, 128]},
                  "weight_bits": [2, 4, 8, 32]},
        "strategy": {"name": strategy}, "objectives": ["neg_elbo", "size_bytes"],
        "bounds": {"neg_elbo": [100, 550], "size_bytes": {"lo": 100, "hi": 1000000, "log": True}},
        "budget": {"trials": trials}, "train": {"epochs": epochs, "batch_size": 100, "lr": 0.002, "device": "cpu"},
        "latency": {"repeats": 5, "warmup": 1}, "seed": 0, "heartbeat": {"interval_s": 1, "grace_s": 5},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_three_workers_one_killed_mid_trial(tmp_path, data_root, pg_url):
    name = f"dist-{uuid.uuid4().hex[:8]}"
    budget = 10
    # trials of 20 epochs on 2,000 images (400 steps, over a second each): the victim is killed within 0.5 s of
    # its trial's start, so the trial cannot finish between the poll and the kill
    cfgp = config(tmp_path, data_root, pg_url, name, budget, epochs=20)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "studies.cli", "worker", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    workers = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(3)]
    victim = workers[0]
    storage = optuna.storages.RDBStorage(pg_url)
    # wait until the victim is mid-trial, after at least one trial of the study finished
    deadline = time.time() + 300
    killed_trial = None
    before = {}
    while time.time() < deadline and killed_trial is None:
        time.sleep(0.2)
        try:
            study = optuna.load_study(study_name=name, storage=storage)
        except KeyError:
            continue
        trials = study.get_trials(deepcopy=False)
        mine = [t for t in trials if t.state == optuna.trial.TrialState.RUNNING
                and t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and "spec_id" in t.user_attrs
                and (datetime.now() - t.datetime_start).total_seconds() < 0.5]
        if mine and any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
            before = {t.number: t.values for t in trials if t.state == optuna.trial.TrialState.COMPLETE}
            victim.send_signal(signal.SIGKILL)
            killed_trial = mine[0].number
    if killed_trial is None:
        victim.kill()
        out = victim.communicate()[0]
        for w in workers[1:]:
            w.kill()
        pytest.fail(f"the victim never ran a trial; its output: {out[-2000:]}")
    outs = [w.communicate(timeout=600)[0] for w in workers[1:]]
    victim.wait()
    assert all(w.returncode == 0 for w in workers[1:]), outs

    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(deepcopy=False)
    assert sum(is_finished(t) for t in trials) == budget  # exactly the budget, shared by the workers
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]  # no zombie
    dead = trials[killed_trial]
    assert dead.state == optuna.trial.TrialState.FAIL and "fail_reason" not in dead.user_attrs  # failed by heartbeat
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == dead.number]
    assert len(retries) == 1 and retries[0].params == dead.params  # retried once, same spec
    assert retries[0].state == optuna.trial.TrialState.COMPLETE
    for n, vals in before.items():  # nothing finished is lost or changed
        assert trials[n].state == optuna.trial.TrialState.COMPLETE and trials[n].values == vals
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    ids = [t.user_attrs["spec_id"] for t in done]
    assert len(ids) == len(set(ids))  # random search never proposes a spec twice, across workers
    assert len({t.user_attrs["worker"] for t in done}) >= 2


def test_worker_creates_or_joins_and_show_reads_postgres(tmp_path, data_root, pg_url, capsys):
    name = f"join-{uuid.uuid4().hex[:8]}"
    cfgp = config(tmp_path, data_root, pg_url, name, 2, strategy="evolution")
    runs = str(tmp_path / "runs")
    assert main(["worker", str(cfgp), "--runs-dir", runs, "--quiet"]) == 0
    assert main(["worker", str(cfgp), "--runs-dir", runs, "--quiet", "--n-trials", "3"]) == 0
    capsys.readouterr()
    assert main(["show", name, "--storage", pg_url]) == 0
    out = capsys.readouterr().out
    assert "3 complete" in out and "vaenas-test" not in out  # the password is never printed


def test_wrong_password_is_one_line_and_writes_nothing(tmp_path, data_root, pg_url, capsys):
    bad = pg_url.replace(":vaenas-test@", ":wrong@")
    cfgp = config(tmp_path, data_root, bad, "pw", 2)
    before = set(tmp_path.rglob("*"))
    assert main(["search", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "cannot open" in err and "password" in err and "wrong" not in err
    assert set(tmp_path.rglob("*")) == before


@pytest.fixture
def own_pg():
    """A server of this test's own, which the test may stop and start (an outage)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import pgserver

    try:
        url, root = pgserver.start()
    except (pgserver.PgUnavailable, ImportError, OSError) as e:
        if os.environ.get("CI"):
            pytest.fail(f"PostgreSQL outage tests need a server: {e}")
        pytest.skip(f"PostgreSQL outage tests need a server and none could be started: {e}")
    yield url, root, pgserver
    pgserver.stop(root)


def outage_config(tmp_path, data_root, url, name, trials, outage_s):
    p = config(tmp_path, data_root, url, name, trials)
    cfg = yaml.safe_load(p.read_text())
    cfg["heartbeat"] = {"interval_s": 1, "grace_s": 30, "outage_s": outage_s}
    p.write_text(yaml.safe_dump(cfg))
    return p


def start_worker(cfgp, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "studies.cli", "worker", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--quiet"]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_complete(url, name, n, proc, deadline_s=300):
    """Wait until the study has ``n`` complete trials (while ``proc`` runs)."""
    storage = optuna.storages.RDBStorage(url)
    deadline = time.time() + deadline_s
    while time.time() < deadline and proc.poll() is None:
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
            if sum(t.state == optuna.trial.TrialState.COMPLETE for t in trials) >= n:
                storage.engine.dispose()
                return True
        except KeyError:
            pass
        time.sleep(0.2)
    storage.engine.dispose()
    return False


def test_worker_rides_out_an_8s_database_outage(tmp_path, data_root, own_pg):
    """16.7: the server goes away for 8 s mid-study; the worker waits it out and ends at the budget."""
    url, root, pgserver = own_pg
    name, budget = "outage", 8
    cfgp = outage_config(tmp_path, data_root, url, name, budget, outage_s=60)
    w = start_worker(cfgp, tmp_path)
    assert wait_complete(url, name, 2, w), w.communicate()
    pgserver.halt(root)
    time.sleep(8)
    pgserver.restart(root)
    out, err = w.communicate(timeout=600)
    assert w.returncode == 0, err
    study = optuna.load_study(study_name=name, storage=url)
    trials = study.get_trials(deepcopy=False)
    assert sum(is_finished(t) for t in trials) == budget
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)


def test_a_longer_outage_stops_the_worker_with_one_line(tmp_path, data_root, own_pg):
    """An outage longer than heartbeat.outage_s: one line that says the database is unreachable
    (not Optuna's "invalid data in the commit"), no password, exit 1; what finished is kept."""
    url, root, pgserver = own_pg
    name = "down"
    cfgp = outage_config(tmp_path, data_root, url, name, 200, outage_s=3)
    w = start_worker(cfgp, tmp_path)
    assert wait_complete(url, name, 2, w), w.communicate()
    pgserver.halt(root)
    try:
        out, err = w.communicate(timeout=120)
    finally:
        pgserver.restart(root)
    lines = err.strip().splitlines()
    assert w.returncode == 1 and len(lines) == 1, err
    assert lines[0].startswith("vaenas: database unreachable:") and "vaenas-test" not in err
    study = optuna.load_study(study_name=name, storage=url)
    assert sum(t.state == optuna.trial.TrialState.COMPLETE for t in study.get_trials(deepcopy=False)) >= 2


def test_resume_on_a_server_leaves_live_workers_trials_alone(tmp_path, data_root, pg_url):
    """16.8: `search --resume` on PostgreSQL must not fail the RUNNING trials of workers that are alive
    (their heartbeats are fresh); only stale ones are failed (and retried)."""
    name = f"res-{uuid.uuid4().hex[:8]}"
    cfgp = config(tmp_path, data_root, pg_url, name, 3)
    cfg = yaml.safe_load(cfgp.read_text())
    cfg.update(n_train=20000, train={**cfg["train"], "epochs": 3})  # trials of ~10 s: still running at resume
    cfgp.write_text(yaml.safe_dump(cfg))
    w = subprocess.Popen([sys.executable, "-m", "studies.cli", "worker", str(cfgp), "--runs-dir",
                          str(tmp_path / "runs"), "--quiet"], env={**os.environ, "OMP_NUM_THREADS": "1"},
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    storage = optuna.storages.RDBStorage(pg_url)
    live = None
    deadline = time.time() + 300
    while live is None and time.time() < deadline and w.poll() is None:
        time.sleep(0.1)
        try:
            trials = optuna.load_study(study_name=name, storage=storage).get_trials(deepcopy=False)
        except KeyError:
            continue
        live = next((t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING), None)
    assert live is not None, w.communicate()[0][-2000:]
    assert main(["search", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--resume", "--quiet"]) == 0
    assert optuna.load_study(study_name=name, storage=storage).trials[live].datetime_complete is not None
    assert w.wait(timeout=600) == 0
    t = optuna.load_study(study_name=name, storage=storage).trials[live]
    assert t.state == optuna.trial.TrialState.COMPLETE, t.user_attrs.get("fail_reason")
