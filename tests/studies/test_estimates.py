"""Cheap supernet scoring: the latency table, one storage write per estimate, the in-memory mirror."""

import random

import numpy as np
import optuna
import pytest

import evaluator.latency_table as lt
from evaluator import LatencyConfig
from search_space import ArchSpec, SearchSpace
from search_space.plan import decoder_steps, encoder_steps
from strategies.trial_record import RECORD, packed, trial_attrs, unpacked
from studies.cli import main
from studies.config import StudyConfig
from studies.trials import is_finished

from studies.run import run_search

from conftest import small_config

SPACE = SearchSpace.from_dict({"family": ["mlp"], "latent_dim": [4, 8, 16], "mlp": {"depth": [1, 2, 3],
                               "width": [16, 64, 128]}, "weight_bits": [2, 4, 8, 32], "bits_per_layer": True,
                               "activation": ["relu", "elu"]})


def test_features_count_the_inference_program():
    spec = ArchSpec(family="mlp", enc_hidden=(64, 16), dec_hidden=(16, 64), latent_dim=8,
                    weight_bits=(2, 8, 32, 4, 8, 32))
    f = dict(zip(lt.FEATURES, lt.features(spec)))
    steps = encoder_steps(spec) + decoder_steps(spec)
    macs = {s.name: s.in_size * s.out_size for s in steps}
    assert f["pass"] == 1 and f["fc.int4.layer"] + f["fc.int8.layer"] + f["fc.f32.layer"] == len(steps) == 6
    bits = dict(zip(spec.layer_names(), spec.weight_bits))
    for cls, sel in (("int4", lambda b: b <= 4), ("int8", lambda b: 4 < b <= 8), ("f32", lambda b: b == 32)):
        assert f[f"fc.{cls}.mmac"] == pytest.approx(sum(m for n, m in macs.items() if sel(bits[n])) / 1e6)
    assert f["activation.kelem"] == pytest.approx(sum(s.out_size for s in steps if s.act_after) / 1e3)
    assert f["act_quant.kelem"] == 0 and sum(f[k] for k in lt.FEATURES if k.startswith("conv")) == 0


def test_table_recovers_known_per_layer_costs(monkeypatch):
    """Measurements that ARE a sum of per-layer costs (+1 % noise): the fit finds those costs, and its
    validation on other specs reports what it sees."""
    true = {"pass": 0.01, "fc.int4.layer": 0.004, "fc.int4.mmac": 0.9, "fc.int8.layer": 0.002,
            "fc.int8.mmac": 0.08, "fc.f32.layer": 0.001, "fc.f32.mmac": 0.3, "activation.kelem": 0.02}
    w = np.array([true.get(k, 0.0) for k in lt.FEATURES])
    rng = np.random.default_rng(0)
    monkeypatch.setattr(lt, "_measure", lambda spec, cfg, seed: float(lt.features(spec) @ w) * rng.uniform(0.99, 1.01))
    table = lt.fit_latency_table(SPACE, LatencyConfig(), seed=3, n_fit=40, n_check=20)
    for k, v in true.items():
        assert table.costs.get(k, 0.0) == pytest.approx(v, rel=0.1, abs=2e-4), k
    v = table.validation
    assert v["n_fit"] == 40 and v["n_check"] == 20 and v["spearman"] > 0.99 and v["median_abs_pct"] < 2
    spec = SPACE.sample(random.Random(9))
    assert table.estimate_ms(spec) == pytest.approx(float(lt.features(spec) @ w), rel=0.05)
    assert lt.LatencyTable.from_dict(table.to_dict()) == table
    assert "ESTIMATES" in table.describe() and "Spearman" in table.describe()


def test_table_validation_sees_a_bad_table(monkeypatch):
    """Latencies no per-layer sum can explain (random): the validation says so, it is not flattered."""
    rng = random.Random(1)
    monkeypatch.setattr(lt, "_measure", lambda spec, cfg, seed: rng.uniform(0.05, 1.0))
    table = lt.fit_latency_table(SPACE, LatencyConfig(), seed=0, n_fit=20, n_check=20)
    assert table.validation["spearman"] < 0.7 and table.validation["median_abs_pct"] > 20


def test_nnls_is_non_negative_and_exact_when_it_can_be():
    a = np.array([[1.0, 2.0, 0.0], [1.0, 1.0, 0.0], [1.0, 5.0, 0.0], [1.0, 3.0, 0.0]])
    assert lt.nnls(a, a @ np.array([0.5, 2.0, 0.0])) == pytest.approx([0.5, 2.0, 0.0])
    x = lt.nnls(a, a @ np.array([3.0, -0.2, 0.0]))  # the best fit has a negative slope: it is dropped
    assert (x >= 0).all() and x[1] == 0


def test_real_table_on_onnxruntime_is_validated(mnist_small):
    table = lt.fit_latency_table(SPACE.bind_data(mnist_small.input_shape, mnist_small.likelihood, "mnist"),
                                 LatencyConfig(repeats=5, warmup=1), n_fit=10, n_check=6)
    v = table.validation
    assert v["n_check"] == 6 and np.isfinite(v["spearman"]) and v["max_abs_ms"] >= v["median_abs_ms"] >= 0
    assert all(c >= 0 for c in table.costs.values()) and table.seconds > 0


def test_packed_trial_round_trip():
    from optuna.distributions import CategoricalDistribution

    spec = SPACE.sample(random.Random(2))
    params = SPACE.to_params(spec)
    dists = {k: CategoricalDistribution(list(SPACE.dimensions()[k])) for k in params}
    attrs = {"spec": spec.to_json(), "spec_id": spec.id, "neg_elbo": 1.0, "uncounted_ops": ["relu"]}
    t = optuna.trial.create_trial(values=[1.0, 2.0], params=params, distributions=dists, user_attrs=attrs,
                                  system_attrs={"constraints": [0.5]})
    p = packed(t)
    assert set(p.user_attrs) == {RECORD} and p.params == {} and trial_attrs(p) == attrs
    assert p.system_attrs == t.system_attrs and p.values == t.values
    u = unpacked(p, SPACE)
    assert u.user_attrs == attrs and u.params == params and u.distributions == dists
    assert unpacked(t, SPACE) is t  # a trial stored the ordinary way is left as it is


def _sn_config(tmp_path, data_root, name, trials, strategy="evolution", **over):
    return small_config(tmp_path, data_root, name=name, trials=trials, strategy=strategy,
                        supernet={"epochs": 1, "n_val": 200, "remeasure": 0, "calibrate": False}, **over)


def test_one_storage_write_per_estimate(tmp_path, data_root, monkeypatch):
    from studies.storage import _rdb_class

    cls = _rdb_class()
    writes = []
    for name in ("create_new_trial", "_create_new_trial", "set_trial_param", "_set_trial_param",
                 "set_trial_user_attr", "set_trial_system_attr", "set_trial_state_values",
                 "set_trial_intermediate_value"):
        real = getattr(cls, name)
        monkeypatch.setattr(cls, name, (lambda real, name: lambda self, *a, **k: (writes.append(name), real(self, *a, **k))[1])(real, name))
    cfg = StudyConfig.load(_sn_config(tmp_path, data_root, "sn1", 30, objectives=["neg_elbo", "size_bytes", "latency_ms"],
                                      bounds={"neg_elbo": [100, 550], "size_bytes": {"lo": 100, "hi": 1e6, "log": True},
                                              "latency_ms": {"lo": 0.001, "hi": 10, "log": True}}))
    s = run_search(cfg, runs_dir=tmp_path / "runs", progress=False)
    assert s.finished == 30
    study = optuna.load_study(study_name="sn1", storage=f"sqlite:///{tmp_path / 'runs' / 'sn1' / 'study.db'}")
    # Optuna's cache calls the private _create_new_trial; one trial-level write per trial, nothing else
    assert len(writes) == len(study.trials) >= 30 and set(writes) <= {"create_new_trial", "_create_new_trial"}
    assert all(set(t.user_attrs) == {RECORD} for t in study.trials)
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert all(trial_attrs(t)["latency_path"].startswith("latency table") for t in done)


def test_estimates_resume_with_optuna_sampler_and_params_rebuilt(tmp_path, data_root, monkeypatch):
    cfgp = _sn_config(tmp_path, data_root, "sn2", 12, strategy="nsga2")
    from studies import estimates

    real = estimates.estimate_loop
    calls = {"n": 0}

    def cut_after_5(study, mirror, run_trial, *a, **k):
        def run(m, t):
            calls["n"] += 1
            if calls["n"] == 6:
                raise KeyboardInterrupt
            return run_trial(m, t)
        return real(study, mirror, run, *a, **k)

    monkeypatch.setattr(estimates, "estimate_loop", cut_after_5)
    s = run_search(StudyConfig.load(cfgp), runs_dir=tmp_path / "runs", progress=False)
    assert s.interrupted and s.finished == 5
    monkeypatch.setattr(estimates, "estimate_loop", real)
    url = f"sqlite:///{tmp_path / 'runs' / 'sn2' / 'study.db'}"
    study = optuna.load_study(study_name="sn2", storage=url)
    assert len(study.trials) == 5 and all(t.state != optuna.trial.TrialState.RUNNING for t in study.trials)
    s = run_search(StudyConfig.load(cfgp), runs_dir=tmp_path / "runs", progress=False, resume=True)
    assert not s.interrupted and s.finished == 12
    study = optuna.load_study(study_name="sn2", storage=url)
    assert [t.number for t in study.trials] == list(range(len(study.trials)))
    assert sum(is_finished(t) for t in study.trials) == 12
    cfg = StudyConfig.load(cfgp)
    from evaluator import load_data

    cfg.bind_data(load_data("mnist", data_root, n_train=1000))
    for t in study.trials:  # NSGA-II's bookkeeping survived the one-write layout
        assert "NSGAII:generation" in t.system_attrs
        u = unpacked(t, cfg.space)
        assert u.params == cfg.space.to_params(ArchSpec.from_json(trial_attrs(t)["spec"]))


def test_supernet_study_refuses_workers(tmp_path, data_root, capsys):
    cfgp = _sn_config(tmp_path, data_root, "sn3", 4)
    assert main(["search", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--jobs", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "one process" in err[0] and not (tmp_path / "runs").exists()
