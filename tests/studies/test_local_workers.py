"""Several workers on one machine without a server (issue 16.2): ``search --jobs N`` and
``vaenas worker`` on SQLite and ``journal:`` files. Liveness comes from lock files
(studies/liveness.py): a ``kill -9``'ed worker's trial is failed at once and retried once, the
budget is met exactly, and no junk ("surplus") trials are left.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import optuna
import pytest
import yaml

from strategies.trial_record import SURPLUS, WORKER_DIED, observations

from studies.trials import is_finished

from studies.storage import open_storage

ENV = {**os.environ, "PYTHONUNBUFFERED": "1"}


def config(tmp_path, data_root, name, trials, storage=None, n_train=4000, epochs=1):
    cfg = {
        "name": name, "dataset": "mnist", "data_root": str(data_root), "n_train": n_train,
        "space": {"family": ["mlp"], "latent_dim": [4, 8, 16], "mlp": {"depth": [1, 2], "width": [32, 64, 128]},
                  "weight_bits": [2, 4, 8, 32]},
        "strategy": {"name": "random"}, "objectives": ["neg_elbo", "size_bytes"],
        "bounds": {"neg_elbo": [100, 550], "size_bytes": {"lo": 100, "hi": 1000000, "log": True}},
        "budget": {"trials": trials}, "train": {"epochs": epochs, "batch_size": 100, "lr": 0.002, "device": "cpu"},
        "latency": {"repeats": 3, "warmup": 1}, "seed": 0,
    }
    if storage:
        cfg["storage"] = storage
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def cli(*args) -> list[str]:
    return [sys.executable, "-m", "studies.cli", *args]


def load(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=open_storage(url, heartbeat=None, readonly=True))


def wait_for_victim(url, name, pick, deadline_s=240):
    """Poll the study until ``pick(trials)`` names a (pid, trial number) to kill; returns it."""
    deadline = time.time() + deadline_s
    while time.time() < deadline:
        time.sleep(0.05)
        try:
            trials = load(url, name).get_trials(deepcopy=False)
        except Exception:  # not created yet, or a write in progress
            continue
        found = pick(trials)
        if found:
            return found
    return None


def running_of(trials, pids):
    """(pid, number) of a RUNNING trial whose worker is one of ``pids``, once some trial finished."""
    if not any(t.state == optuna.trial.TrialState.COMPLETE for t in trials):
        return None
    for t in trials:
        w = t.user_attrs.get("worker", "")
        if t.state == optuna.trial.TrialState.RUNNING and "spec_id" in t.user_attrs and w.rsplit(":", 1)[-1] in pids:
            return int(w.rsplit(":", 1)[-1]), t.number
    return None


def check_study(study, budget, killed=None):
    trials = study.get_trials(deepcopy=False)
    assert sum(is_finished(t) for t in trials) == budget  # exactly the budget
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]  # no zombie
    assert not [t for t in trials if t.user_attrs.get("fail_reason") == SURPLUS]  # no junk trials
    failed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert [t.number for t in failed] == ([killed] if killed is not None else [])
    if killed is not None:
        dead = trials[killed]
        assert dead.user_attrs["fail_reason"] == WORKER_DIED
        retries = [t for t in trials if t.system_attrs.get("failed_trial") == killed]
        assert len(retries) == 1 and retries[0].params == dead.params  # retried once, same spec
        assert retries[0].state == optuna.trial.TrialState.COMPLETE
        lessons = {o.number for o in observations(study)}  # what evolution, RL and NNI learn from
        assert killed not in lessons and retries[0].number in lessons  # the dead worker's trial teaches nothing
    assert len(trials) == budget + (1 if killed is not None else 0)
    return trials


def _jobs_2_with_a_worker_trial(tmp_path, data_root, name, budget):
    """`vaenas search --jobs 2` started, once its spawned worker process runs a trial: (runs dir, storage URL,
    the parent process, (the worker's pid, its trial's number)). Trials last seconds (12,000 images x 5
    epochs), so the parent cannot finish the budget alone before its worker has imported torch and joined."""
    cfgp = config(tmp_path, data_root, name, budget, n_train=12000, epochs=5)
    runs = tmp_path / "runs"
    url = f"sqlite:///{runs / name / 'study.db'}"
    parent = subprocess.Popen(cli("search", str(cfgp), "--runs-dir", str(runs), "--jobs", "2", "--quiet"),
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path)

    def child_running(trials):
        pids = {w.rsplit(":", 1)[-1] for t in trials if (w := t.user_attrs.get("worker"))} - {str(parent.pid)}
        return running_of(trials, pids)

    victim = wait_for_victim(url, name, child_running)
    if victim is None:
        parent.kill()
        pytest.fail(f"no worker process ran a trial: {parent.communicate()}")
    return runs, url, parent, victim


def test_search_jobs_2_kill_one_worker_mid_trial(tmp_path, data_root):
    """The acceptance case: `vaenas search CONFIG --jobs 2`, one worker process kill -9'ed mid-trial."""
    name, budget = "jobs", 8
    # trials long enough (about 2 s each here) that the parent cannot finish the budget alone before its
    # spawned worker has imported torch and joined (about 3.5 s here); at 6,000 images x 2 epochs it did (CI failed)
    runs, url, parent, victim = _jobs_2_with_a_worker_trial(tmp_path, data_root, name, budget)
    os.kill(victim[0], signal.SIGKILL)
    out, err = parent.communicate(timeout=600)
    assert parent.returncode == 0, (out, err)
    assert f"worker process {victim[0]} ended with signal 9" in err
    trials = check_study(load(url, name), budget, killed=victim[1])
    assert trials[victim[1]].user_attrs["worker"].endswith(f":{victim[0]}")  # a worker process's trial, not the parent's
    assert "8 finished trials" in out and (runs / name / "export" / "knee.json").is_file()
    assert not list((runs / name / ".study.db.workers").iterdir())  # every lock file cleaned


def test_journal_two_workers_one_killed_survivor_finishes(tmp_path, data_root):
    """The reported case: two `vaenas worker` on one journal file, one killed - the survivor used to
    busy-loop forever; it must finish at exactly the budget with the dead trial retried once."""
    name, budget = "jr", 6
    url = f"journal:{tmp_path / 'study.log'}"
    cfgp = config(tmp_path, data_root, name, budget, storage=url, n_train=6000, epochs=2)
    cmd = cli("worker", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--quiet")
    workers = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for _ in range(2)]
    victim = wait_for_victim(url, name, lambda trials: running_of(trials, {str(w.pid) for w in workers}))
    if victim is None:
        for w in workers:
            w.kill()
        pytest.fail(f"no worker ran a trial: {[w.communicate()[0][-2000:] for w in workers]}")
    os.kill(victim[0], signal.SIGKILL)
    survivor = next(w for w in workers if w.pid != victim[0])
    t0 = time.time()
    out = survivor.communicate(timeout=600)[0]
    for w in workers:
        w.wait()
    assert survivor.returncode == 0, out
    assert time.time() - t0 < 120  # it did not spin: the remaining trials take seconds
    check_study(load(url, name), budget, killed=victim[1])


def test_four_workers_at_one_instant_on_a_fresh_sqlite_file(tmp_path, data_root):
    """Four `vaenas worker` started together on a study that does not exist yet: one creates the
    storage and the study, the others join; nobody dies, the budget is met exactly."""
    name, budget = "four", 6
    cfgp = config(tmp_path, data_root, name, budget, n_train=1000)
    runs = tmp_path / "runs"
    cmd = cli("worker", str(cfgp), "--runs-dir", str(runs), "--quiet")
    workers = [subprocess.Popen(cmd, env={**ENV, "OMP_NUM_THREADS": "1"}, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True) for _ in range(4)]
    outs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0] * 4, outs
    check_study(load(f"sqlite:///{runs / name / 'study.db'}", name), budget)


def test_search_jobs_sigterm_interrupts_every_worker(tmp_path, data_root):
    """SIGTERM to `search --jobs 2` (a scheduler's stop) reaches its workers: every trial in hand is
    marked interrupted, nothing is left RUNNING, and --resume finishes the study."""
    name, budget = "term", 30
    cfgp = config(tmp_path, data_root, name, budget, n_train=6000, epochs=2)
    runs = tmp_path / "runs"
    url = f"sqlite:///{runs / name / 'study.db'}"
    parent = subprocess.Popen(cli("search", str(cfgp), "--runs-dir", str(runs), "--jobs", "2", "--quiet"),
                              env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def two_running(trials):
        return len({t.user_attrs.get("worker") for t in trials
                    if t.state == optuna.trial.TrialState.RUNNING and "spec_id" in t.user_attrs}) == 2

    assert wait_for_victim(url, name, two_running), parent.kill() or parent.communicate()
    in_hand = {t.number for t in load(url, name).get_trials(deepcopy=False) if t.state == optuna.trial.TrialState.RUNNING}
    parent.send_signal(signal.SIGTERM)
    out, err = parent.communicate(timeout=120)
    assert parent.returncode == 1, (out, err)
    trials = load(url, name).get_trials(deepcopy=False)
    assert not [t for t in trials if t.state == optuna.trial.TrialState.RUNNING]
    interrupted = {t.number for t in trials if t.user_attrs.get("fail_reason") == "interrupted"}
    # every trial in hand when the signal came is interrupted - unless it finished in the instant
    # between the snapshot and the signal (then its worker held no trial, or a newer one: a loaded machine
    # does this, and a repeated spec's trial completes at once from the earlier result, so several can pass)
    assert 1 <= len(interrupted) <= 2 and all(n in in_hand or n > max(in_hand) for n in interrupted)
    for t in trials:
        if t.number in in_hand and t.number not in interrupted:
            assert t.state == optuna.trial.TrialState.COMPLETE
    r = subprocess.run(cli("search", str(cfgp), "--runs-dir", str(runs), "--resume", "--quiet", "--n-trials", "4"),
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by init) is gone too
        return f.read().split(") ", 1)[1][0] != "Z"


def test_workers_stop_when_their_parent_is_killed_with_sigkill(tmp_path, data_root):
    """`kill -9` of a `search --jobs 2` parent: its worker notices within seconds, marks its trial
    interrupted and exits - it does not train on until the budget is spent."""
    name, budget = "orphan", 40
    _, url, parent, victim = _jobs_2_with_a_worker_trial(tmp_path, data_root, name, budget)
    parent.kill()  # SIGKILL: the parent cannot stop its workers
    parent.wait()
    worker_pid, trial = victim
    deadline = time.time() + 30
    while _alive(worker_pid) and time.time() < deadline:
        time.sleep(0.2)
    assert not _alive(worker_pid), "the orphaned worker kept training"
    trials = load(url, name).get_trials(deepcopy=False)
    assert trials[trial].state == optuna.trial.TrialState.FAIL and trials[trial].user_attrs["fail_reason"] == "interrupted"
    assert sum(is_finished(t) for t in trials) < budget
