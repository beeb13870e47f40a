"""Anomaly detection (issue 32): metrics against scikit-learn, the shipped threshold, normal-only training,
labels from every source, and the C / ONNX scores against PyTorch's."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from evaluator import load_data
from evaluator.anomaly import (
    SCORES, AnomalyTask, anomaly_scores, auprc, auroc, choose_threshold, export_section, rates, score_noise,
)
from evaluator.deploy import export_model
from search_space import ArchSpec, SearchSpace, VaenasInputError, build_vae, pack_model

TASK = {"kind": "anomaly", "normal": [0]}


# ----------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", range(6))
def test_auroc_auprc_match_sklearn(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(20, 400))
    y = rng.random(n) < rng.uniform(0.05, 0.9)
    y[:2] = [True, False]
    s = rng.normal(size=n) + y * rng.uniform(0, 2)
    if seed % 2:  # ties, as a coarse score (or a float32 one) has
        s = np.round(s, 1)
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auprc(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


@pytest.mark.parametrize("fpr", [0.0, 0.01, 0.05, 0.2])
def test_threshold_gives_the_stated_fpr_and_is_the_lowest(fpr):
    rng = np.random.default_rng(3)
    y = rng.random(1000) < 0.3
    s = np.round(rng.normal(size=1000) + 2 * y, 2)
    th = choose_threshold(y, s, fpr)
    got_fpr, got_tpr, _ = rates(y, s, th.value)
    assert got_fpr <= fpr + 1e-12 and (got_fpr, got_tpr) == (th.fpr, th.tpr)
    lower = s[~y][s[~y] < th.value]
    if len(lower):  # the next lower normal score as threshold would break the target
        assert rates(y, s, float(lower.max()))[0] > fpr
    best = choose_threshold(y, s, None)
    assert best.f1 == pytest.approx(max(rates(y, s, float(t))[2] for t in np.unique(s)))


# ----------------------------------------------------------------------------- data
def test_training_split_is_normal_only_and_eval_splits_hold_both(data_root):
    import torchvision

    d = load_data("mnist", data_root, task={"kind": "anomaly", "normal": [3, "7 - seven"]})
    tv = torchvision.datasets.MNIST(str(data_root), train=True, download=True)
    normal = {bytes(im.numpy().tobytes()) for im, t in zip(tv.data, tv.targets) if int(t) in (3, 7)}
    assert len(d.train) > 10_000 and all(bytes(im.numpy().tobytes()) in normal for im in d.train[:, 0])
    test_tv = torchvision.datasets.MNIST(str(data_root), train=False, download=True)
    assert torch.equal(d.test_labels, ~torch.isin(test_tv.targets, torch.tensor([3, 7])))  # the whole test set
    for y in (d.val_labels, d.test_labels):
        assert 0 < int(y.sum()) < len(y)
    assert "anomaly task" in d.describe() and "train (normal only)" in d.describe()


def _write_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((6, 6), value, np.uint8), "L").save(path)


def test_labels_from_folder_subfolders(tmp_path):
    for i in range(30):
        _write_png(tmp_path / "train" / "good" / f"{i}.png", 10 + i)
    for i in range(10):
        _write_png(tmp_path / "test" / "good" / f"{i}.png", 20 + i)
        _write_png(tmp_path / "test" / ("crack" if i % 2 else "scratch") / f"{i}.png", 200 + i)
    d = load_data({"source": "folder", "path": str(tmp_path), "likelihood": "bernoulli"},
                  task={"kind": "anomaly", "normal": ["good"]})
    assert (d.train.float().mean((1, 2, 3)) < 100).all()  # only good images train
    assert int(d.val_labels.sum()) + int(d.test_labels.sum()) == 10  # MVTec layout: half of test validates
    assert int((~d.val_labels).sum()) + int((~d.test_labels).sum()) == 10


def test_labels_from_csv_column_npz_and_npy(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 4))
    lab = np.where(np.arange(200) % 5 == 0, "bad", "ok")
    rows = ["a,b,state,c,d"] + [",".join([f"{v:.4f}" for v in r[:2]] + [l] + [f"{v:.4f}" for v in r[2:]])
                                for r, l in zip(x, lab)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    d = load_data({"source": "array", "path": str(tmp_path / "t.csv"), "likelihood": "gaussian", "labels": "state"},
                  task={"kind": "anomaly", "normal": ["ok"]})
    assert d.input_shape == (4,)
    assert len(d.train) + d.anomaly_counts["val_normal"] + d.anomaly_counts["test_normal"] == 160
    assert d.anomaly_counts["val_anomalies"] + d.anomaly_counts["test_anomalies"] == 40
    d3 = load_data({"source": "array", "path": str(tmp_path / "t.csv"), "likelihood": "gaussian", "labels": 3},
                   task={"kind": "anomaly", "normal": "ok"})
    assert len(d3.train) == len(d.train)
    np.savez(tmp_path / "t.npz", x=x, y=(np.arange(200) % 5 == 0).astype(np.int64))
    dz = load_data({"source": "array", "path": str(tmp_path / "t.npz"), "likelihood": "gaussian", "labels": "y"},
                   task={"kind": "anomaly", "normal": [0]})
    assert len(dz.train) == len(d.train)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.arange(200) % 5 == 0)
    dy = load_data({"source": "array", "path": str(tmp_path / "x.npy"), "likelihood": "gaussian", "labels": "y.npy"},
                   task={"kind": "anomaly", "normal": [0]})
    assert torch.equal(dy.val_labels, dz.val_labels)


def test_labels_from_sklearn_by_class_name():
    d = load_data({"source": "sklearn", "name": "breast_cancer", "likelihood": "gaussian"},
                  task={"kind": "anomaly", "normal": ["benign"]})
    c = d.anomaly_counts
    assert len(d.train) + c["val_normal"] + c["test_normal"] == 357  # benign
    assert c["val_anomalies"] + c["test_anomalies"] == 212  # malignant: never trained on


@pytest.mark.parametrize("task, match", [
    ({"kind": "anomaly", "normal": [12]}, "is not a class"),
    ({"kind": "anomaly", "normal": list(range(10))}, "holds no anomalies"),
    ({"kind": "anomaly", "normal": []}, "expected the normal class labels"),
    ({"kind": "anomaly", "normal": [0], "score": "mse"}, "is not a score"),
    ({"kind": "novelty", "normal": [0]}, "is not a task"),
])
def test_bad_task_is_one_line(data_root, task, match):
    with pytest.raises(VaenasInputError, match=match):
        load_data("mnist", data_root, task=task)


def test_label_column_with_one_value_is_refused(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,y\n" + "\n".join(f"{i},{i * 2},1" for i in range(50)) + "\n")
    with pytest.raises(VaenasInputError, match="every example has the label"):
        load_data({"source": "array", "path": str(tmp_path / "t.csv"), "likelihood": "gaussian", "labels": "y"},
                  task={"kind": "anomaly", "normal": [1]})


# ----------------------------------------------------------------------------- exported scores
SPACE = {"family": ["mlp"], "latent_dim": [3], "activation": ["tanh"], "mlp": {"depth": [1], "width": [24]},
         "decoder": "mirror", "weight_bits": [4]}


def _spec(shape, likelihood, integer=False) -> ArchSpec:
    sp = SearchSpace.from_dict({**SPACE, **({"arithmetic": ["int8"]} if integer else {})})
    sp = sp.bind_data(shape, likelihood, "test")
    return sp.define(lambda name, c: c[0])


def _data(likelihood: str, n: int, shape) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    if likelihood == "bernoulli":
        return (torch.rand((n, *shape), generator=g) > 0.5).float()
    if likelihood == "discretized_logistic":
        return torch.randint(0, 256, (n, *shape), generator=g).float() * (2 / 255) - 1
    return torch.randn((n, *shape), generator=g)


def _model(spec: ArchSpec):
    torch.manual_seed(0)
    m = build_vae(spec)
    if spec.is_integer:
        for _ in range(2):
            m(torch.rand(16, *spec.input_shape))
    return m.eval()


CASES = [("bernoulli", "neg_elbo", False), ("gaussian", "iwae", False), ("discretized_logistic", "recon_prob", False),
         ("gaussian", "recon_error", False), ("bernoulli", "iwae", True), ("discretized_logistic", "neg_elbo", True)]


@pytest.mark.parametrize("likelihood, kind, integer", CASES)
def test_c_and_onnx_scores_equal_pytorch(tmp_path, likelihood, kind, integer):
    import onnxruntime as ort

    spec = _spec((20,), likelihood, integer)
    model = _model(spec)
    x = _data(likelihood, 12, (20,))
    torch_scores = anomaly_scores(model, x, kind)
    y = np.arange(12) % 3 == 0
    th = choose_threshold(y, torch_scores, 0.25)
    fig = {"score": kind, "samples": 0 if SCORES[kind].samples == 0 else SCORES[kind].samples, "threshold": th.value,
           "rule": "validation FPR <= 0.25", "val_fpr": th.fpr, "val_tpr": th.tpr, "val_f1": th.f1,
           "auroc": auroc(y, torch_scores), "auprc": auprc(y, torch_scores)}
    doc = export_model(spec, pack_model(model), tmp_path, ("onnx", "c"),
                       {"anomaly": export_section(fig, AnomalyTask.parse(TASK))})
    assert doc["anomaly"]["threshold"] == th.value
    subprocess.run(["make", "-s", "vae_score_demo"], cwd=tmp_path, check=True, capture_output=True)
    text = "\n".join(" ".join(f"{v:.9g}" for v in r) for r in x.numpy())
    out = subprocess.run(["./vae_score_demo"], cwd=tmp_path, input=text, capture_output=True, text=True, check=True)
    c = np.array([[float(v) for v in ln.split()] for ln in out.stdout.splitlines()])
    np.testing.assert_allclose(c[:, 0], torch_scores, rtol=1e-4)
    assert (c[:, 1].astype(bool) == (c[:, 0].astype(np.float32) > np.float32(th.value))).all()
    sess = ort.InferenceSession(str(tmp_path / "score.onnx"))
    s_onnx, flag = sess.run(None, {"x": x.numpy()})
    np.testing.assert_allclose(s_onnx, torch_scores, rtol=1e-4)
    assert (flag == (s_onnx > np.float32(th.value))).all()


def test_scores_are_fixed_and_noise_table_is_seeded():
    spec = _spec((20,), "bernoulli")
    model = _model(spec)
    x = _data("bernoulli", 5, (20,))
    a, b = anomaly_scores(model, x, "iwae"), anomaly_scores(model, x, "iwae")
    assert np.array_equal(a, b)  # no sampling noise between calls
    assert torch.equal(score_noise(3, 8), score_noise(3, 8))
    one = np.concatenate([anomaly_scores(model, x[i:i + 1], "neg_elbo") for i in range(5)])
    np.testing.assert_allclose(one, anomaly_scores(model, x, "neg_elbo"), rtol=1e-6)  # batch-independent
