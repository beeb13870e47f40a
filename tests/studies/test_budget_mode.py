"""Budget mode (issue 35, first part): one objective plus hard limits - the best model that fits."""

from __future__ import annotations

import optuna
import pytest

from conftest import small_config
from search_space import VaenasInputError
from studies.config import StudyConfig


def _d(**over) -> dict:
    d = {"name": "b", "space": {"family": ["mlp"], "latent_dim": [4], "mlp": {"depth": [1], "width": [16]}},
         "objectives": ["neg_elbo"], "bounds": {"neg_elbo": [80, 300]}, "constraints": {"size_bytes": 20000}}
    d.update(over)
    return d


def test_one_objective_is_a_study_and_none_or_five_are_not():
    assert StudyConfig.from_dict(_d()).objectives == ["neg_elbo"]
    for objs in ([], ["neg_elbo", "size_bytes", "flops", "params", "latency_ms"]):
        with pytest.raises(VaenasInputError, match="pick 1 to 4 distinct objectives"):
            StudyConfig.from_dict(_d(objectives=objs, bounds={o: [0, 1] for o in objs}))


def test_a_budget_no_spec_meets_is_one_line_before_training(tmp_path, data_root, capsys):
    from studies.cli import main

    p = small_config(tmp_path, data_root, name="tight", objectives=["neg_elbo"], bounds={"neg_elbo": [100, 550]},
                     constraints={"size_bytes": 500})
    assert main(["search", str(p), "--runs-dir", str(tmp_path / "runs")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "no spec of this space meets size_bytes <= 500 (the smallest found: " in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_budget_mode_search_resumes_never_trains_an_infeasible_spec_and_exports_the_best(tmp_path, data_root, capsys):
    from studies.cli import main

    runs = str(tmp_path / "runs")
    p = small_config(tmp_path, data_root, name="budget", trials=3, strategy="tpe", objectives=["neg_elbo"],
                     bounds={"neg_elbo": [100, 550]}, constraints={"size_bytes": 30000})
    assert main(["search", str(p), "--runs-dir", runs]) == 0
    out = capsys.readouterr().out
    assert "budget mode: the best feasible of" in out and "how close it sits to each limit: size_bytes" in out
    assert "exported winner (best feasible, trial" in out
    p.write_text(p.read_text().replace("trials: 3", "trials: 5"))
    assert main(["search", str(p), "--runs-dir", runs, "--resume"]) == 0
    study = optuna.load_study(study_name="budget", storage=f"sqlite:///{runs}/budget/study.db")
    from strategies.trial_record import REUSED_FROM, trial_attrs

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    trained = [t for t in done if REUSED_FROM not in trial_attrs(t)]  # a repeated spec reuses its figures
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    assert len(trained) == 5 and all(trial_attrs(t)["size_bytes"] <= 30000 for t in done)
    for t in pruned:  # over the limit: recorded for the sampler, never trained, no budget slot
        assert not (tmp_path / "runs" / "budget" / "trials" / str(t.number) / "model.pt").exists()
    best = min(done, key=lambda t: t.values[0])
    assert (tmp_path / "runs" / "budget" / "export" / "knee" / "manifest.json").is_file()
    assert f"trial {best.number}" in capsys.readouterr().out


@pytest.mark.slow
def test_warm_start_enqueues_exactly_the_other_studys_front(tmp_path, data_root, capsys):
    from strategies.trial_record import trial_attrs
    from studies.cli import main
    from studies.report import load_view

    runs = str(tmp_path / "runs")
    a = small_config(tmp_path, data_root, name="first", trials=4)
    assert main(["search", str(a), "--runs-dir", runs]) == 0
    view = load_view("first", runs)
    front = [trial_attrs(view.study.trials[int(n)])["spec_id"] for n in view.front["trial"]]
    b = small_config(tmp_path, data_root, name="second", trials=len(front) + 1, warm_start="first")
    assert main(["search", str(b), "--runs-dir", runs]) == 0
    assert f"warm start: {len(front)} front specs of study 'first' run first" in capsys.readouterr().out
    second = optuna.load_study(study_name="second", storage=f"sqlite:///{runs}/second/study.db")
    first_ids = [trial_attrs(t)["spec_id"] for t in second.trials[:len(front)]]
    assert first_ids == front
    c = small_config(tmp_path, data_root, name="third", warm_start="first",
                     dataset={"source": "sklearn", "name": "breast_cancer", "likelihood": "gaussian"},
                     bounds={"neg_elbo": [-50, 100], "size_bytes": {"lo": 100, "hi": 1000000, "log": True}})
    capsys.readouterr()
    assert main(["search", str(c), "--runs-dir", runs]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "warm_start: study 'first' searched inputs of shape [1, 28, 28]" in err[0]
    assert not (tmp_path / "runs" / "third").exists()
