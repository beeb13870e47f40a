"""MNIST / Fashion-MNIST through torchvision, held in memory as tensors.

* Data root: the ``root`` argument, else ``$VAENAS_DATA``, else ``$XDG_CACHE_HOME/vaenas/data``
  (``~/.cache/vaenas/data``). torchvision's ``download=True`` unpacks the raw ``.gz`` IDX files
  found under ``<root>/<MNIST|FashionMNIST>/raw`` without touching the network, and downloads them
  when absent.
* Splits: the last ``n_val`` images of a fixed-seed permutation of the official training set are
  the validation split (search uses it); the official test set is for final reports only.
* Binarisation: training images stay as grey levels and are binarised stochastically per batch
  by the training loop; validation and test are binarised once, with a fixed seed, so every
  evaluation sees the same bits.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from search_space import VaenasInputError

DATASETS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
SPLIT_SEED = 0  # fixed: every study and report sees the same train/validation split
BINARIZE_SEED = 1234  # fixed: validation/test bits are the same everywhere


class DataUnavailableError(VaenasInputError):
    """The dataset is neither on disk nor downloadable."""


def default_data_root() -> Path:
    env = os.environ.get("VAENAS_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vaenas" / "data"


@dataclass(frozen=True)
class Splits:
    """``train``: uint8 grey levels (N, 1, 28, 28); ``val``/``test``: fixed binarised float32 {0, 1}."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.train.shape[1:])  # type: ignore[return-value]


@lru_cache(maxsize=8)
def _raw(name: str, root: str) -> tuple[torch.Tensor, torch.Tensor]:
    import torchvision

    cls = getattr(torchvision.datasets, DATASETS[name])
    existed = {p for p in (Path(root), Path(root) / DATASETS[name], Path(root) / DATASETS[name] / "raw") if p.exists()}
    try:
        tr = cls(root, train=True, download=True)
        te = cls(root, train=False, download=True)
    except Exception as e:  # network errors, checksum errors, permission errors
        raw = Path(root) / DATASETS[name] / "raw"
        for p in (raw, raw.parent, Path(root)):  # leave nothing behind that we created
            if p not in existed and p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        raise DataUnavailableError(
            f"dataset {name!r}: not found under {raw} and could not be downloaded ({type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}); copy the four IDX .gz files into {raw} or go online"
        ) from None
    return tr.data.unsqueeze(1).contiguous(), te.data.unsqueeze(1).contiguous()


def binarize(u8: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(u8.float().div(255.0), generator=g)


def load_data(
    name: str = "mnist",
    root: str | Path | None = None,
    *,
    n_val: int = 10_000,
    n_train: int | None = None,
    n_eval: int | None = None,
) -> Splits:
    """Load a dataset's splits. ``n_train``/``n_eval`` take leading subsets (for tests and cheap trials)."""
    if name not in DATASETS:
        raise VaenasInputError(f"dataset: {name!r} is unknown; use one of {sorted(DATASETS)}")
    root = Path(root).expanduser() if root is not None else default_data_root()
    train_all, test_u8 = _raw(name, str(root))
    if not 0 < n_val < len(train_all):
        raise VaenasInputError(f"n_val: must be between 1 and {len(train_all) - 1}, got {n_val}")
    perm = torch.randperm(len(train_all), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train_u8, val_u8 = train_all[perm[:-n_val]], train_all[perm[-n_val:]]
    val = binarize(val_u8, BINARIZE_SEED)
    test = binarize(test_u8, BINARIZE_SEED + 1)
    if n_train is not None:
        train_u8 = train_u8[:n_train]
    if n_eval is not None:
        val, test = val[:n_eval], test[:n_eval]
    return Splits(name, train_u8, val, test)
