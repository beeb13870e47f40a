"""Anomaly studies (issue 32): the config's task block, auroc as a maximised objective, bad input, and a search
that ends in ROC plots and an export shipping the score and threshold."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from evaluator.objectives import Objectives
from studies.config import ConfigError, StudyConfig
from conftest import small_config

TASK = {"kind": "anomaly", "normal": [1]}


def _cfg(**over) -> dict:
    d = {"name": "a", "space": {"family": ["mlp"], "latent_dim": [4], "mlp": {"depth": [1], "width": [16]}},
         "objectives": ["auroc", "size_bytes"], "bounds": {"auroc": [0.5, 1.0], "size_bytes": [100, 100000]},
         "task": TASK}
    d.update(over)
    return d


def test_auroc_is_maximised_and_its_bounds_are_stored_minimised():
    cfg = StudyConfig.from_dict(_cfg())
    assert (cfg.bounds[0].lo, cfg.bounds[0].hi) == (-1.0, -0.5)
    assert "task" in cfg.fingerprint()
    o = Objectives(spec_id="x", neg_elbo=1.0, flops=1, bitops=1, params=1, size_bytes=10, latency_ms=0.1, auroc=0.9)
    assert o.values(["auroc", "size_bytes"]) == (-0.9, 10.0)
    assert "task" not in StudyConfig.from_dict(_cfg(task=None, objectives=["neg_elbo", "size_bytes"],
                                                    bounds={"neg_elbo": [80, 200], "size_bytes": [1, 9]})).fingerprint()


@pytest.mark.parametrize("over, needle", [
    ({"task": None}, "auroc needs labelled anomalies"),
    ({"constraints": {"auroc": 0.9}}, "constraints are maxima"),
    ({"task": {"kind": "anomaly", "normal": [1], "threshold": {"fpr": 2}}}, "task.threshold"),
    ({"task": {"kind": "anomaly", "normal": [1], "samples": 0}}, "task.samples"),
])
def test_bad_task_configs(over, needle):
    with pytest.raises(ConfigError, match=needle):
        StudyConfig.from_dict(_cfg(**over))


@pytest.mark.parametrize("task, over, needle", [
    ({"kind": "anomaly", "normal": [12]}, {}, "task.normal: 12 is not a class"),
    ({"kind": "anomaly", "normal": list(range(10))}, {}, "holds no anomalies"),
    (None, {"objectives": ["auroc", "size_bytes"], "bounds": {"auroc": [0.5, 1], "size_bytes": [1, 9]}},
     "auroc needs labelled anomalies"),
])
def test_bad_anomaly_input_is_one_line_exit_2_nothing_written(tmp_path, data_root, task, over, needle, capsys):
    from studies.cli import main

    p = small_config(tmp_path, data_root, name="bad", **({"task": task} if task else {}), **over)
    assert main(["search", str(p), "--runs-dir", str(tmp_path / "runs")]) == 2  # in process: the data stay cached
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], lines
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_anomaly_search_ships_score_and_threshold(tmp_path, data_root):
    import onnxruntime as ort

    from evaluator import load_data
    from evaluator.anomaly import anomaly_scores
    from studies.retrain import load_checkpoint

    p = small_config(tmp_path, data_root, name="anom", trials=3, task={**TASK, "score": ["neg_elbo", "recon_error"]},
                     objectives=["auroc", "size_bytes"],
                     bounds={"auroc": [0.5, 1.0], "size_bytes": {"lo": 100, "hi": 1000000, "log": True}})
    runs = tmp_path / "runs"
    r = subprocess.run([sys.executable, "-m", "studies.cli", "search", str(p), "--runs-dir", str(runs)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "anomaly task (normal: [1])" in r.stdout and " auroc " in r.stdout and "roc.png" in r.stdout
    sdir = runs / "anom"
    assert (sdir / "plots" / "roc.png").is_file() and (sdir / "plots" / "knee_scores.png").is_file()
    knee = sdir / "export" / "knee"
    man = json.loads((knee / "manifest.json").read_text())
    an = man["anomaly"]
    assert an["score"] in ("neg_elbo", "recon_error") and an["validation"]["fpr"] <= 0.01
    # the shipped threshold gives the stated validation FPR, recomputed here from the exported ONNX score
    data = load_data("mnist", data_root, task=yaml.safe_load(p.read_text())["task"])
    sess = ort.InferenceSession(str(knee / "score.onnx"))
    s, flag = sess.run(None, {"x": data.score_val.numpy()})
    y = data.val_labels.numpy()
    assert abs(float(flag[~y].mean()) - an["validation"]["fpr"]) <= 2 / (~y).sum()
    trial = man["trial"]
    model = load_checkpoint(sdir / "trials" / str(trial) / "model.pt")
    ref = anomaly_scores(model, data.score_val, an["score"], an["samples"] or None)
    np.testing.assert_allclose(s, ref, rtol=1e-4)
    subprocess.run(["make", "-s"], cwd=knee, check=True, capture_output=True)
    assert (knee / "vae_score_demo").is_file()


@pytest.mark.slow
def test_train_with_task_reports_test_auroc_and_threshold(tmp_path, data_root):
    out = tmp_path / "run"
    r = subprocess.run([sys.executable, "-m", "studies.cli", "train", "--data-root", str(data_root), "--n-train", "300",
                        "--epochs", "3", "--iwae-k", "0", "--task", "{kind: anomaly, normal: [1], score: recon_error}",
                        "--out", str(out), "--device", "cpu"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())["anomaly"]
    assert rep["score"] == "recon_error" and 0.5 < rep["test_auroc"] <= 1 and rep["val_fpr"] <= 0.01
    assert "TEST AUROC" in r.stdout
    bad = subprocess.run([sys.executable, "-m", "studies.cli", "train", "--data-root", str(data_root), "--task",
                          "{kind: anomaly, normal: [10]}", "--out", str(tmp_path / "bad")], capture_output=True, text=True)
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "10 is not a class" in bad.stderr
    assert not (tmp_path / "bad").exists()
