"""Screening in a real study (issue 35): records on the trials, the predictor's held-out τ printed,
bad input; budget mode with workers."""

from __future__ import annotations

import optuna
import pytest

import yaml

from conftest import small_config as _small_config
from strategies.trial_record import SCREEN, SPEC_ID, trial_attrs


def small_config(tmp_path, data_root, strategy, **over):
    """The shared small study with a strategy block (name, screen) of its own."""
    p = _small_config(tmp_path, data_root, **over)
    d = yaml.safe_load(p.read_text())
    d["strategy"] = strategy
    p.write_text(yaml.safe_dump(d))
    return p


def test_screened_study_trains_the_top_of_each_pool_and_prints_the_held_out_tau(tmp_path, data_root, capsys):
    from studies.cli import main

    runs = str(tmp_path / "runs")
    p = small_config(tmp_path, data_root, name="scr", trials=7, n_train=300,
                     strategy={"name": "evolution", "screen": {"pool": 6, "startup": 3}})
    assert main(["search", str(p), "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    study = optuna.load_study(study_name="scr", storage=f"sqlite:///{runs}/scr/study.db")
    screened = [t for t in study.trials if SCREEN in trial_attrs(t)]
    assert len(screened) == 4  # every trial after the 3 startup ones
    trained = {trial_attrs(t)[SPEC_ID] for t in study.trials}
    for t in screened:
        rec = trial_attrs(t)[SCREEN]
        assert rec["pool"] == 6 and rec["modelled"] == ["neg_elbo"]  # size_bytes is exact
        assert rec["predicted"]["size_bytes"] == trial_attrs(t)["size_bytes"]
        assert all(g <= rec["gain"] for _, g in rec["below_cut"])
        assert trial_attrs(t)[SPEC_ID] not in {s for s, _ in rec["below_cut"]}
    assert "screening: 4 trials each trained the best-predicted of a pool of 6 proposals" in out
    assert "neg_elbo" in out.split("screening:")[1].splitlines()[0]
    assert len(trained) == 7


@pytest.mark.parametrize("strategy, msg", [
    ({"name": "nsga2", "screen": {"pool": 4}}, "strategy.screen: 'nsga2' draws each decision through Optuna"),
    ({"name": "random", "screen": {"pool": 1}}, "strategy.screen.pool: must be a whole number >= 2"),
    ({"name": "random", "screen": {"cut": 1}}, "strategy.screen: expected {pool: N, startup: N}"),
])
def test_bad_screen_is_one_line_and_writes_nothing(tmp_path, data_root, capsys, strategy, msg):
    from studies.cli import main

    p = small_config(tmp_path, data_root, name="bad", strategy=strategy)
    assert main(["search", str(p), "--runs-dir", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and msg in err[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_budget_mode_with_two_workers_and_screening_keeps_every_trial_within_the_limit(tmp_path, data_root, capsys):
    from studies.cli import main

    runs = str(tmp_path / "runs")
    p = small_config(tmp_path, data_root, name="bw", trials=8, n_train=300, objectives=["neg_elbo"],
                     bounds={"neg_elbo": [100, 550]}, constraints={"size_bytes": 30000},
                     strategy={"name": "evolution", "screen": {"pool": 4, "startup": 3}})
    assert main(["search", str(p), "--runs-dir", runs, "--jobs", "2"]) == 0
    out = capsys.readouterr().out
    assert "budget mode: the best feasible of" in out
    study = optuna.load_study(study_name="bw", storage=f"sqlite:///{runs}/bw/study.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 8 and all(trial_attrs(t)["size_bytes"] <= 30000 for t in done)
    p.write_text(p.read_text().replace("trials: 8", "trials: 10"))
    assert main(["search", str(p), "--runs-dir", runs, "--resume", "--jobs", "2"]) == 0
    study = optuna.load_study(study_name="bw", storage=f"sqlite:///{runs}/bw/study.db")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 10 and all(trial_attrs(t)["size_bytes"] <= 30000 for t in done)
