"""Bring your own data: image folders (RGB/grey, class subfolders or flat), .npy/.npz/.csv arrays,
Fashion-MNIST at 8 bits - each through a short study end to end (search -> front -> export ->
retrain); data splits and normalisation; spec versions; bad input as one line, exit 2, nothing written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from evaluator import load_data
from evaluator.sources import _to_nchw_uint8
from search_space import ArchSpec
from studies.cli import main


# ----------------------------------------------------------------------------- generated data
def _pattern(i: int, h: int, w: int, rgb: bool) -> np.ndarray:
    """A smooth image with a few degrees of freedom (so a VAE has something to learn), uint8."""
    rng = np.random.default_rng(i)
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    a, b, c = rng.uniform(0, 2 * np.pi, 3)
    base = 0.5 + 0.5 * np.sin(6 * xx + a) * np.cos(5 * yy + b)
    chans = [base, np.roll(base, 2, 1) * 0.8 + 0.1 * np.cos(c), 1 - base] if rgb else [base]
    img = np.stack(chans, -1) + rng.normal(0, 0.03, (h, w, len(chans)))
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)


def write_images(folder: Path, n: int, size=(8, 8), rgb=True, classes=("a", "b"), exts=(".png",)) -> Path:
    for i in range(n):
        sub = folder / classes[i % len(classes)] if classes else folder
        sub.mkdir(parents=True, exist_ok=True)
        a = _pattern(i, *size, rgb)
        img = Image.fromarray(a if rgb else a[..., 0], "RGB" if rgb else "L")
        img.save(sub / f"img{i:03d}{exts[i % len(exts)]}", quality=95)
    return folder


def vectors(n: int = 240, d: int = 6, seed: int = 0) -> np.ndarray:
    """Correlated sensor-like features: 2 latent factors, a nonlinear feature, very different scales."""
    rng = np.random.default_rng(seed)
    f = rng.normal(size=(n, 2))
    x = np.stack([f[:, 0], f[:, 1], f[:, 0] + 0.3 * f[:, 1], np.tanh(f[:, 0]), 5 * f[:, 1] ** 2, f[:, 0] - f[:, 1]], 1)
    x = x[:, :d] + rng.normal(0, 0.05, (n, d))
    return x * np.array([1, 10, 0.1, 1, 100, 3])[:d] + np.array([0, 50, -2, 0, 7, 1])[:d]


# ----------------------------------------------------------------------------- studies end to end
def study_yaml(tmp_path: Path, name: str, dataset, family=("mlp",), trials=3, **over) -> Path:
    space = {"family": list(family), "latent_dim": [2, 4], "weight_bits": [4, 8, 32]}
    if "mlp" in family:
        space["mlp"] = {"depth": [1], "width": [8, 16]}
    if "conv" in family:
        space["conv"] = {"depth": [1], "channels": [4], "kernel": [3], "stride": [2], "fc_depth": [0]}
    cfg = {"name": name, "dataset": dataset, "space": space, "strategy": "random",
           "objectives": ["neg_elbo", "size_bytes"],
           "bounds": {"neg_elbo": [-50, 5000], "size_bytes": {"lo": 100, "hi": 1e6, "log": True}},
           "budget": {"trials": trials}, "train": {"epochs": 2, "batch_size": 16, "lr": 0.003},
           "latency": {"repeats": 3, "warmup": 1}, "seed": 0}
    cfg.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def run_study_end_to_end(tmp_path: Path, cfgp: Path, name: str, capsys, retrain_args=()) -> dict:
    runs = tmp_path / "runs"
    assert main(["search", str(cfgp), "--runs-dir", str(runs), "--quiet"]) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "exported winner" in out and "front size" in out
    plots = runs / name / "plots"
    recon = plots / "knee_reconstructions.png"
    assert (plots / "front_size_bytes.png").is_file() and recon.is_file()
    import matplotlib.image as mpimg

    assert mpimg.imread(recon)[..., :3].std() > 0.05  # drawn, not blank
    knee = runs / name / "export" / "knee.json"
    doc = json.loads(knee.read_text())
    spec = ArchSpec.from_dict(doc["spec"])
    assert doc["likelihood"] == spec.likelihood and doc["input_shape"] == list(spec.input_shape)
    rdir = tmp_path / f"retrain-{name}"
    assert main(["retrain", str(knee), "--epochs", "1", "--iwae-k", "4", "--batch-size", "16",
                 "--out", str(rdir), *retrain_args]) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    report = json.loads((rdir / "report.json").read_text())
    assert report["spec_id"] == spec.id and report["likelihood"] == spec.likelihood
    assert math.isfinite(report["test_neg_elbo"]) and math.isfinite(report["test_iwae_nll"])
    if spec.is_image:
        dims = math.prod(spec.input_shape)
        assert report["test_bits_per_dim"] == pytest.approx(report["test_neg_elbo"] / (dims * math.log(2)))
        assert "bits/dim" in printed
    ck = torch.load(rdir / "model.pt", weights_only=True)
    assert ck["likelihood"] == spec.likelihood and ck["input_shape"] == list(spec.input_shape)
    assert (rdir / "reconstructions.png").is_file()
    return {"doc": doc, "report": report, "spec": spec, "runs": runs, "checkpoint": ck}


def test_rgb_folder_with_class_subfolders_conv_and_mlp(tmp_path, capsys):
    folder = write_images(tmp_path / "photos", 60, size=(8, 8), rgb=True, exts=(".png", ".jpg", ".bmp"))
    cfgp = study_yaml(tmp_path, "rgb", {"source": "folder", "path": str(folder), "likelihood": "discretized_logistic"},
                      family=("mlp", "conv"), trials=4)
    r = run_study_end_to_end(tmp_path, cfgp, "rgb", capsys)
    assert r["spec"].input_shape == (3, 8, 8) and r["spec"].likelihood == "discretized_logistic"
    assert r["doc"]["provenance"]["dataset"]["source"] == "folder"  # retrain read the dataset from the export
    assert "--dataset" not in r["doc"]["retrain_command"]


def test_grey_flat_folder_resized(tmp_path, capsys):
    folder = write_images(tmp_path / "scans", 48, size=(12, 10), rgb=False, classes=())
    write_images(tmp_path / "scans", 2, size=(9, 9), rgb=False, classes=())  # overwrites 2 with another size
    ds = {"source": "folder", "path": "scans", "image_size": [8, 8], "likelihood": "bernoulli"}  # relative path
    cfgp = study_yaml(tmp_path, "grey", ds)
    r = run_study_end_to_end(tmp_path, cfgp, "grey", capsys)
    assert r["spec"].input_shape == (1, 8, 8) and r["spec"].likelihood == "bernoulli"
    assert r["doc"]["provenance"]["dataset"]["path"] == str(folder.resolve())


@pytest.mark.parametrize("fmt", ["npy", "npz", "csv"])
def test_array_files_gaussian(tmp_path, capsys, fmt):
    x = vectors()
    path = tmp_path / f"sensor.{fmt}"
    ds = {"source": "array", "path": str(path), "likelihood": "gaussian"}
    if fmt == "npy":
        np.save(path, x)
    elif fmt == "npz":
        np.savez(path, x=x, labels=np.arange(len(x)))
        ds["key"] = "x"
    else:
        lines = ["a,b,c,d,e,f"] + [",".join(repr(float(v)) for v in row) for row in x]
        path.write_text("\n".join(lines) + "\n")
    cfgp = study_yaml(tmp_path, f"arr-{fmt}", ds, darts={"lambdas": [0, 100], "steps": 20, "warmup_steps": 5,
                                                          "batch_size": 16})
    r = run_study_end_to_end(tmp_path, cfgp, f"arr-{fmt}", capsys)
    assert r["spec"].input_shape == (6,) and r["spec"].likelihood == "gaussian" and r["spec"].family == "mlp"
    norm = r["doc"]["input_normalization"]
    data = load_data(ds)
    assert norm == data.normalization == r["checkpoint"]["normalization"]
    assert "bits_per_dim" not in r["report"] and "test_bits_per_dim" not in r["report"]
    # the stored statistics are the training split's own, in the data's units
    carved = torch.from_numpy(x)[torch.randperm(len(x), generator=torch.Generator().manual_seed(0))]
    n_val = n_test = round(0.1 * len(x))
    train = carved[: len(x) - n_val - n_test]
    assert np.allclose(norm["mean"], train.mean(0).numpy(), rtol=1e-6)
    assert np.allclose(norm["std"], train.std(0, unbiased=False).numpy(), rtol=1e-6)
    # a trial checkpoint carries them too
    ck = torch.load(next((r["runs"] / f"arr-{fmt}" / "trials").glob("*/model.pt")), weights_only=True)
    assert ck["normalization"] == norm


def test_fashion_mnist_8bit_discretized_logistic(tmp_path, data_root, capsys):
    ds = {"source": "torchvision", "name": "FashionMNIST", "likelihood": "discretized_logistic"}
    cfgp = study_yaml(tmp_path, "fm8", ds, data_root=str(data_root), n_train=400,
                      bounds={"neg_elbo": [500, 6000], "size_bytes": {"lo": 100, "hi": 1e6, "log": True}})
    r = run_study_end_to_end(tmp_path, cfgp, "fm8", capsys,
                             retrain_args=("--data-root", str(data_root), "--n-train", "400"))
    assert r["spec"].input_shape == (1, 28, 28) and r["spec"].likelihood == "discretized_logistic"
    bpd = r["report"]["test_bits_per_dim"]
    assert 0 < bpd < 8  # better than a uniform 8-bit code, after 1 epoch on 400 images
    view_out = capsys.readouterr()
    assert main(["show", "fm8", "--runs-dir", str(r["runs"])]) == 0
    assert "bits_per_dim" in capsys.readouterr().out


# ----------------------------------------------------------------------------- data details
def test_folder_split_subfolders_are_used_as_given(tmp_path):
    for split, n in (("train", 30), ("val", 7), ("test", 5)):
        write_images(tmp_path / "ds" / split, n, rgb=False)
    d = load_data({"source": "folder", "path": str(tmp_path / "ds"), "likelihood": "discretized_logistic"})
    assert (len(d.train), len(d.val), len(d.test)) == (30, 7, 5) and d.input_shape == (1, 8, 8)
    assert d.train.dtype == torch.uint8 and d.val.min() >= -1 and d.val.max() <= 1
    flat = load_data({"source": "folder", "path": str(tmp_path / "ds" / "train"), "likelihood": "bernoulli"})
    assert (len(flat.train), len(flat.val), len(flat.test)) == (24, 3, 3)  # carved 80/10/10 with a fixed seed
    again = load_data({"source": "folder", "path": str(tmp_path / "ds" / "train"), "likelihood": "bernoulli"})
    assert torch.equal(flat.val, again.val) and set(torch.unique(flat.val).tolist()) <= {0.0, 1.0}


def test_torchvision_layouts_become_nchw_uint8():
    class Fake:
        def __init__(self, data):
            self.data = data

    nhwc = np.random.default_rng(0).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)  # CIFAR
    assert torch.equal(_to_nchw_uint8(Fake(nhwc)), torch.from_numpy(nhwc).permute(0, 3, 1, 2))
    nchw = np.transpose(nhwc, (0, 3, 1, 2)).copy()  # SVHN
    assert torch.equal(_to_nchw_uint8(Fake(nchw)), torch.from_numpy(nchw))
    grey = torch.randint(0, 256, (4, 7, 7), dtype=torch.uint8)  # MNIST family
    assert _to_nchw_uint8(Fake(grey)).shape == (4, 1, 7, 7)

    class Pil:  # no .data: decoded item by item
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return Image.fromarray(nhwc[i], "RGB"), 0

    assert torch.equal(_to_nchw_uint8(Pil()), torch.from_numpy(nhwc[:2]).permute(0, 3, 1, 2))


def test_spec_versions_old_specs_load_and_ids_are_unchanged():
    seed = ArchSpec.mlp((400, 400), 20)
    assert seed.id == "8d4203b4b241"  # the id recorded before likelihoods existed
    d = seed.to_dict()
    assert d["version"] == 1 and "likelihood" not in d
    assert ArchSpec.from_dict(d).likelihood == "bernoulli"
    v2 = ArchSpec.mlp((16,), 4, input_shape=(6,), likelihood="gaussian")
    assert v2.to_dict()["version"] == 2 and ArchSpec.from_json(v2.to_json()) == v2
    rgb = seed.replace(input_shape=(3, 32, 32), likelihood="discretized_logistic")
    assert ArchSpec.from_json(rgb.to_json()) == rgb and rgb.id != seed.replace(input_shape=(3, 32, 32)).id
    with pytest.raises(Exception, match="needs image data"):
        ArchSpec(family="conv", enc_hidden=(), latent_dim=2, weight_bits=(32,) * 4, enc_channels=(4,), kernels=(3,),
                 strides=(1,), input_shape=(6,))


# ----------------------------------------------------------------------------- bad input
def _npy(path: Path, arr) -> Path:
    np.save(path, np.asarray(arr))
    return path


BAD = [  # (id, setup(tmp) -> dataset block or config overrides, needle)
    ("folder-missing", lambda t: {"source": "folder", "path": str(t / "nope"), "likelihood": "bernoulli"},
     "does not exist"),
    ("folder-empty", lambda t: ((t / "empty").mkdir(), {"source": "folder", "path": str(t / "empty"),
                                                        "likelihood": "bernoulli"})[1], "no png/jpg/jpeg/bmp images"),
    ("mixed-sizes", lambda t: (write_images(t / "m", 3, size=(8, 8)), write_images(t / "m" / "z", 2, size=(6, 9)),
                               {"source": "folder", "path": str(t / "m"), "likelihood": "bernoulli"})[2],
     "images have different sizes"),
    ("unreadable-image", lambda t: (write_images(t / "u", 4), (t / "u" / "a" / "bad.png").write_bytes(b"not a png"),
                                    {"source": "folder", "path": str(t / "u"), "likelihood": "bernoulli"})[2],
     "bad.png is not a readable image"),
    ("csv-non-numeric", lambda t: ((t / "x.csv").write_text("a,b\n1,2\n3,4\n5,abc\n" + "1,1\n" * 30),
                                   {"source": "array", "path": str(t / "x.csv"), "likelihood": "gaussian"})[1],
     "row 4, column 2 is 'abc', not a number"),
    ("nan-in-array", lambda t: {"source": "array", "likelihood": "gaussian",
                                "path": str(_npy(t / "n.npy", np.where(np.eye(40, 3) > 0, np.nan, 1.0)))},
     "NaN/inf values (first at row 1, column 1)"),
    ("inf-in-npz", lambda t: (np.savez(t / "i.npz", x=np.full((30, 2), np.inf)),
                              {"source": "array", "path": str(t / "i.npz"), "likelihood": "gaussian"})[1], "NaN/inf"),
    ("bernoulli-outside-01", lambda t: {"source": "array", "likelihood": "bernoulli",
                                        "path": str(_npy(t / "g.npy", vectors()))}, "values must lie in [0, 1]"),
    ("dlogistic-not-8bit", lambda t: {"source": "array", "likelihood": "discretized_logistic",
                                      "path": str(_npy(t / "f.npy", np.abs(vectors())))}, "needs 8-bit data"),
    ("unknown-torchvision", lambda t: {"source": "torchvision", "name": "CIFAR11", "likelihood": "bernoulli"},
     "'CIFAR11' is not a torchvision image dataset"),
    ("memory-limit", lambda t: (write_images(t / "big", 4), {"source": "folder", "path": str(t / "big"),
                                                             "likelihood": "bernoulli", "max_memory_mb": 0.001})[1],
     "over the limit of 0.001 MB"),
    ("unknown-likelihood", lambda t: {"source": "array", "path": "x.npy", "likelihood": "poisson"},
     "dataset.likelihood: 'poisson' is not a likelihood"),
    ("unknown-source-key", lambda t: {"source": "array", "path": "x.npy", "likelihood": "gaussian", "size": 3},
     "dataset.size: unknown key for source array"),
    ("values-that-overflow", lambda t: {"source": "array", "likelihood": "gaussian",
                                        "path": str(_npy(t / "h.npy", np.abs(vectors()) * 1e300))},
     "mean or standard deviation overflows"),
    ("npz-ambiguous", lambda t: (np.savez(t / "two.npz", a=np.ones((30, 2)), b=np.ones((30, 2))),
                                 {"source": "array", "path": str(t / "two.npz"), "likelihood": "gaussian"})[1],
     "holds arrays ['a', 'b']; name the one to use"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_data_is_one_line_exit_2_nothing_written(case, tmp_path, capsys):
    _, setup, needle = case
    ds = setup(tmp_path)
    cfgp = study_yaml(tmp_path, "bad", ds)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    assert main(["search", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written


def test_conv_family_on_vectors_is_one_line(tmp_path, capsys):
    ds = {"source": "array", "path": str(_npy(tmp_path / "v.npy", vectors())), "likelihood": "gaussian"}
    cfgp = study_yaml(tmp_path, "convvec", ds, family=("conv",))
    assert main(["search", str(cfgp), "--runs-dir", str(tmp_path / "runs"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "family conv needs image data" in err[0] and "use family: [mlp]" in err[0], err
    assert not (tmp_path / "runs").exists()


def test_retrain_on_data_the_spec_was_not_made_for_is_one_line(tmp_path, capsys):
    arch = tmp_path / "a.json"
    arch.write_text(ArchSpec.mlp((8,), 2, input_shape=(6,), likelihood="gaussian").to_json())
    npy = _npy(tmp_path / "w.npy", vectors(d=5)[:, :5])
    ds = json.dumps({"source": "array", "path": str(npy), "likelihood": "gaussian"})
    assert main(["retrain", str(arch), "--epochs", "1", "--dataset", ds, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "takes input [6]" in err[0] and "has [5]" in err[0], err
    assert not (tmp_path / "o").exists()


def test_sklearn_table_loads_standardised():
    d = load_data({"source": "sklearn", "name": "breast_cancer", "likelihood": "gaussian"})
    assert d.input_shape == (30,) and len(d.train) + len(d.val) + len(d.test) == 569
    assert torch.allclose(d.train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(d.train.std(0, unbiased=False), torch.ones(30), atol=1e-4)
    assert len(d.feature_names) == 30 and d.normalization is not None


def test_readme_dataset_examples_are_valid_configs(tmp_path):
    from studies.config import StudyConfig

    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    blocks = [b.split("```")[0] for b in text.split("```yaml\n")[1:]]
    studies = [yaml.safe_load(b) for b in blocks if "\nname: " in "\n" + b]
    assert {s["name"] for s in studies} >= {"photos", "vibration"}
    for s in studies:
        cfg = StudyConfig.from_dict(s, base_dir=tmp_path)
        assert cfg.dataset.likelihood in ("discretized_logistic", "gaussian")
    from evaluator import DatasetSpec

    forms: list[str] = []
    for line in blocks[[i for i, b in enumerate(blocks) if b.startswith("dataset: mnist")][0]].splitlines():
        code = line.split("#")[0]
        if code.startswith("dataset:"):
            forms.append(code)
        elif code.strip():
            forms[-1] += " " + code.strip()  # a continued mapping
    assert len(forms) == 5
    for form in forms:  # every form shown parses
        DatasetSpec.parse(yaml.safe_load(form)["dataset"], tmp_path)


def _write_idx(path: Path, arr: np.ndarray) -> None:
    """An IDX file as the MNIST family stores it (big-endian dims, unsigned bytes)."""
    import struct

    magic = 0x0800 | arr.ndim
    path.write_bytes(struct.pack(">I", magic) + struct.pack(f">{arr.ndim}I", *arr.shape) + arr.astype(np.uint8).tobytes())


def test_other_torchvision_classes_load_offline_from_their_files(tmp_path):
    """KMNIST (no shorthand) through the generic torchvision source, with its files already on disk:
    no network, grey levels kept for the 8-bit likelihood."""
    raw = tmp_path / "KMNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    tr, te = rng.integers(0, 256, (120, 28, 28)), rng.integers(0, 256, (30, 28, 28))
    for name, arr in (("train-images-idx3-ubyte", tr), ("t10k-images-idx3-ubyte", te),
                      ("train-labels-idx1-ubyte", np.zeros(120)), ("t10k-labels-idx1-ubyte", np.zeros(30))):
        _write_idx(raw / name, arr)
    d = load_data({"source": "torchvision", "name": "KMNIST", "likelihood": "discretized_logistic"}, tmp_path)
    assert (len(d.train), len(d.val), len(d.test)) == (108, 12, 30) and d.input_shape == (1, 28, 28)
    assert torch.allclose(d.test, torch.from_numpy(te).float().unsqueeze(1) * 2 / 255 - 1, atol=1e-6)


def test_supernet_study_on_an_rgb_folder(tmp_path, capsys):
    """Supernet mode over own data: a conv supernet on RGB images under the discretized logistic
    (its distillation term and calibration), estimates labelled, front re-measured, exported, retrained."""
    folder = write_images(tmp_path / "imgs", 48, size=(8, 8), rgb=True)
    cfgp = study_yaml(tmp_path, "sn", {"source": "folder", "path": str(folder), "likelihood": "discretized_logistic"},
                      family=("conv",), trials=4,
                      supernet={"epochs": 2, "n_random": 1, "finetune_steps": 2, "n_val": 8, "remeasure": 2})
    r = run_study_end_to_end(tmp_path, cfgp, "sn", capsys)
    import optuna

    from strategies.trial_record import trial_attrs

    study = optuna.load_study(study_name="sn", storage=f"sqlite:///{r['runs'] / 'sn' / 'study.db'}")
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert any(trial_attrs(t).get("neg_elbo_is_estimate") for t in done)
    assert any(trial_attrs(t).get("phase") == "remeasure" for t in done)
    assert all(trial_attrs(t).get("bits_per_dim") is not None for t in done)
    assert not r["doc"]["neg_elbo_is_estimate"]  # the exported knee was measured


def test_a_csv_with_a_byte_order_mark_keeps_its_first_row(tmp_path):
    """A CSV saved by a spreadsheet starts with a UTF-8 BOM; its first data row is data, not a header."""
    rows = np.random.default_rng(3).random((40, 3))
    text = "\n".join(",".join(f"{v:.6f}" for v in r) for r in rows)
    (tmp_path / "bom.csv").write_text(text, encoding="utf-8-sig")
    (tmp_path / "plain.csv").write_text(text)
    a = load_data({"source": "array", "path": str(tmp_path / "bom.csv"), "likelihood": "gaussian"}, tmp_path)
    b = load_data({"source": "array", "path": str(tmp_path / "plain.csv"), "likelihood": "gaussian"}, tmp_path)
    assert len(a.train) + len(a.val) + len(a.test) == 40 and a.feature_names is None
    assert torch.equal(a.train, b.train) and a.normalization == b.normalization


def test_16_bit_grey_pngs_keep_their_levels(tmp_path):
    """A folder of 16-bit grey PNGs with 64 levels (0-63,000) loads as 64 levels scaled by the bit depth, not
    clipped to 0 and 255; a float image is refused in one line."""
    from search_space import VaenasInputError

    d = tmp_path / "png16"
    d.mkdir()
    for i in range(12):
        a = ((np.arange(16 * 16).reshape(16, 16) + i) % 64 * 1000).astype(np.uint16)
        Image.fromarray(a).save(d / f"{i}.png")
    assert Image.open(d / "0.png").mode == "I;16"
    s = load_data({"source": "folder", "path": str(d), "likelihood": "discretized_logistic"}, tmp_path)
    levels = torch.unique(s.train)  # stored as 8-bit grey levels
    assert s.train.dtype == torch.uint8 and len(levels) == 64 and int(levels.max()) == round(63000 / 257)
    from evaluator.sources import eight_bit

    with pytest.raises(VaenasInputError, match="floating-point image"):
        eight_bit(Image.fromarray(np.random.default_rng(0).random((8, 8)).astype(np.float32), "F"), "L")
    with pytest.raises(VaenasInputError, match="values outside 0..65535"):
        eight_bit(Image.fromarray(np.full((4, 4), 70000, np.int32), "I"), "L")
