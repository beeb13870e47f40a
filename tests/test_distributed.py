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

import optuna
import pytest
import yaml

from studies.cli import main
from studies.run import is_finished

pytestmark = pytest.mark.distributed


def config(tmp_path, data_root, url, name, trials, strategy="random"):
    cfg = {
        "name": name, "dataset": "mnist", "data_root": str(data_root), "n_train": 2000, "storage": url,
        "space": {"family": ["mlp"], "latent_dim": [4, 8, 16], "mlp": {"depth": [1, 2], "width": [16, 32, 64, 128]},
                  "weight_bits": [2, 4, 8, 32]},
        "strategy": {"name": strategy}, "objectives": ["neg_elbo", "size_bytes"],
        "bounds": {"neg_elbo": [100, 550], "size_bytes": {"lo": 100, "hi": 1000000, "log": True}},
        "budget": {"trials": trials}, "train": {"epochs": 1, "batch_size": 100, "lr": 0.002, "device": "cpu"},
        "latency": {"repeats": 5, "warmup": 1}, "seed": 0, "heartbeat": {"interval_s": 1, "grace_s": 5},
    }
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def test_three_workers_one_killed_mid_trial(tmp_path, data_root, pg_url):
    name = f"dist-{uuid.uuid4().hex[:8]}"
    budget = 10
    cfgp = config(tmp_path, data_root, pg_url, name, budget)
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
                and t.user_attrs.get("worker", "").endswith(f":{victim.pid}") and "spec_id" in t.user_attrs]
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
