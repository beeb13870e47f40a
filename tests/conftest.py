"""Shared fixtures: a private copy of the repo's sibling ``../shared/data`` raw IDX files."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path | None:
    for cand in (os.environ.get("VAENAS_SHARED_DATA"), REPO.parent / "shared" / "data", REPO / ".data"):
        if cand and (Path(cand) / "MNIST" / "raw" / "train-images-idx3-ubyte.gz").is_file():
            return Path(cand)
    return None


@pytest.fixture(scope="session")
def data_root(tmp_path_factory) -> Path:
    """A data root holding copies of the raw MNIST / Fashion-MNIST files (torchvision unpacks them)."""
    src = shared_data_dir()
    if src is None:
        msg = "MNIST raw files not found: set VAENAS_SHARED_DATA or place them in ../shared/data"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    root = tmp_path_factory.mktemp("data")
    for name in ("MNIST", "FashionMNIST"):
        if (src / name / "raw").is_dir():
            (root / name / "raw").mkdir(parents=True)
            for f in (src / name / "raw").glob("*.gz"):
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
