"""Shared fixtures and helpers: a private copy of the repo's sibling ``../shared/data`` raw IDX files, a
PostgreSQL server, and a small study config."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    """Where the tests take MNIST from: $VAENAS_SHARED_DATA, then $VAENAS_DATA (the data root the README
    tells users to set), then the repo's sibling ../shared/data, then .data/. A folder counts when it
    holds MNIST/raw/ with the training images, packed (.gz) or unpacked by torchvision."""
    for cand in (os.environ.get("VAENAS_SHARED_DATA"), os.environ.get("VAENAS_DATA"), REPO.parent / "shared" / "data",
                 REPO / ".data"):
        raw = Path(cand) / "MNIST" / "raw" if cand else None
        if raw and any((raw / f).is_file() for f in ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")):
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding copies of the raw MNIST / Fashion-MNIST files (torchvision unpacks them).
    No data is a failure, not a skip: a test run that skipped every data test would prove nothing."""
    src = shared_data_dir()
    if src is None:
        pytest.fail("MNIST not found: set VAENAS_DATA (or VAENAS_SHARED_DATA) to a folder holding MNIST/raw/ "
                    "with the four IDX files, or place them in ../shared/data")
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST"):
        if (src / name / "raw").is_dir():
            (root / name / "raw").mkdir(parents=True)
            for f in (src / name / "raw").iterdir():
                if f.is_file() and "idx" in f.name:
                    shutil.copyfile(f, root / name / "raw" / f.name)
    return root


@pytest.fixture(scope="session")
def mnist_small(data_root):
    from evaluator import load_data

    return load_data("mnist", data_root, n_train=2000, n_eval=500)


@pytest.fixture(scope="session")
def pg_url():
    """A PostgreSQL URL: $VAENAS_TEST_PG_URL (`.ci/run` starts a server) or a throwaway server of our own.

    Skipped, with the reason printed, only when no server can be started; under CI it must run.
    """
    url = os.environ.get("VAENAS_TEST_PG_URL")
    if url:
        yield url
        return
    import sys

    sys.path.insert(0, str(Path(__file__).parent))
    from pgserver import PgUnavailable, start, stop

    try:
        url, root = start()
    except (PgUnavailable, ImportError, OSError) as e:
        msg = f"PostgreSQL tests need a server and none could be started: {e}"
        print(msg)
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    yield url
    stop(root)


def small_config(tmp_path, data_root, name="e2e", trials=5, strategy="random", **over):
    cfg = {
        "name": name, "dataset": "mnist", "data_root": str(data_root), "n_train": 1000,
        "space": {"family": ["mlp"], "latent_dim": [4, 8], "mlp": {"depth": [1, 2], "width": [16, 64]},
                  "weight_bits": [2, 4, 8, 32]},
        "strategy": {"name": strategy}, "objectives": ["neg_elbo", "size_bytes"],
        "bounds": {"neg_elbo": [100, 550], "size_bytes": {"lo": 100, "hi": 1000000, "log": True}},
        "budget": {"trials": trials}, "train": {"epochs": 1, "batch_size": 100, "lr": 0.002},
        "latency": {"repeats": 5, "warmup": 1}, "seed": 0,
    }
    cfg.update(over)
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg))
    return p


def close_to(got, ref, what: str, tol: float = 1e-4) -> None:
    """``got`` equals the torch tensor ``ref`` within ``tol`` relative to ``ref``'s magnitude."""
    import numpy as np

    got, ref = np.asarray(got, np.float64).reshape(ref.shape), ref.numpy().astype(np.float64)
    err = float(np.abs(got - ref).max()) / max(float(np.abs(ref).max()), 1e-6)
    assert err <= tol, f"{what}: max error {err:.2e} relative to the output's magnitude"


def check_onnx_export(folder: Path, x, mu, logvar, out) -> None:
    """The exported encoder.onnx and decoder.onnx in onnxruntime give the model's mu, logvar and out."""
    import onnxruntime as ort

    enc = ort.InferenceSession(str(folder / "encoder.onnx"), providers=["CPUExecutionProvider"])
    dec = ort.InferenceSession(str(folder / "decoder.onnx"), providers=["CPUExecutionProvider"])
    o_mu, o_lv = enc.run(None, {"x": x.numpy()})
    close_to(o_mu, mu, "onnx mu")
    close_to(o_lv, logvar, "onnx logvar")
    close_to(dec.run(None, {"z": mu.numpy()})[0], out, "onnx out")


def trained_like(spec, seed: int, low: float = 0.7, calibrate: bool = False):
    """A model as training leaves it: pruned along the schedule, step sizes / codebooks perturbed (times
    U(low, 1.2), after a max-abs calibration with ``calibrate``), biases set."""
    import torch

    from search_space import build_vae

    torch.manual_seed(seed)
    m = build_vae(spec)
    with torch.no_grad():
        for step in range(1, 21):
            m.after_step(step, 20)
        m.finalize_sparsity()
        for layer in m.weight_layers().values():
            if layer.bits < 32:
                if calibrate:
                    layer.calibrate()
                p = layer.step_size()
                p.mul_(torch.empty_like(p).uniform_(low, 1.2))
            if layer.bias is not None:
                layer.bias.normal_(0, 0.1)
    return m.eval()
