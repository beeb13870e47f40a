"""Datasets: a source plus a likelihood, loaded into memory as train / validation / test splits.

A dataset is declared by :class:`DatasetSpec` (the ``dataset:`` key of a study config, ``--dataset``
of ``vaenas train/retrain``)::

    mnist | fashion_mnist                                   # shorthands: torchvision, bernoulli
    {source: torchvision, name: CIFAR10, likelihood: discretized_logistic}
    {source: folder, path: ./photos, image_size: [32, 32], channels: 3, likelihood: discretized_logistic}
    {source: array, path: vibration.npy, likelihood: gaussian}       # .npy / .npz (key: NAME) / .csv
    {source: sklearn, name: breast_cancer, likelihood: gaussian}     # scikit-learn's bundled tables

Optional keys: ``val_fraction`` / ``test_fraction`` (0.1 each; splits carved from a source that has
none), ``max_memory_mb`` (4096: a dataset needing more is refused before it is read), ``key`` (the
array of an .npz), ``options`` (extra keyword arguments of a torchvision class, e.g. EMNIST's
``{split: balanced}``). Relative paths are relative to the config file.

* Data root (torchvision): the ``root`` argument, else ``$VAENAS_DATA``, else
  ``$XDG_CACHE_HOME/vaenas/data`` (``~/.cache/vaenas/data``). ``download=True`` unpacks the raw
  files found there without touching the network, and downloads them when absent.
* Splits: torchvision's official test set is the test split; the last ``n_val`` examples of a
  fixed-seed permutation of its training set are the validation split (10,000 for training sets of
  50,000 or more, else ``val_fraction``). Folders use their ``train/`` ``val/`` ``test/`` subfolders
  when present; otherwise (and for arrays) the validation and test splits are carved from a
  fixed-seed permutation of every example. Search uses the validation split; the test split is
  for final reports only.
* Likelihood: its ``check_data`` must accept every split (Bernoulli: values in [0, 1]; discretised
  logistic: integers 0..255), else one line naming the problem. ``Splits.train`` holds the stored
  data (uint8 images, or float vectors); ``val`` and ``test`` are in model space, prepared once by
  the likelihood with fixed seeds (Bernoulli: binarised once, so every evaluation sees the same bits).
* Array data under the Gaussian likelihood are standardised per feature with the training split's
  mean and std (a constant feature gets std 1); ``Splits.normalization`` holds them, and they are
  stored with every checkpoint and export: a deployed model computes ``(x - mean) / std`` first.
  Images under the Gaussian likelihood are scaled to [0, 1] (``grey level / 255``), not standardised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from search_space import LIKELIHOODS, VaenasInputError, get_likelihood

from .anomaly import AnomalyTask
from .anomaly_split import anomaly_splits
from .sources import (
    DataUnavailableError, RawData, read_array, read_folder, read_sklearn, read_torchvision, torchvision_class,
)

SHORTHANDS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
DATASETS = SHORTHANDS  # kept name: the shorthand dataset names
SOURCES = ("torchvision", "folder", "array", "sklearn")
SPLIT_SEED = 0  # fixed: every study and report sees the same train/validation split
BINARIZE_SEED = 1234  # fixed: validation/test bits are the same everywhere
DEFAULT_MEMORY_MB = 4096
_KEYS = {"torchvision": {"name", "options"}, "folder": {"path", "image_size", "channels"},
         "array": {"path", "key", "labels"}, "sklearn": {"name"}}
_COMMON = {"source", "likelihood", "val_fraction", "test_fraction", "max_memory_mb"}

__all__ = ["BINARIZE_SEED", "DATASETS", "DataUnavailableError", "DatasetSpec", "SPLIT_SEED", "Splits", "binarize",
           "default_data_root", "load_data"]


def default_data_root() -> Path:
    env = os.environ.get("VAENAS_DATA")
    if env:
        return Path(env).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "vaenas" / "data"


def _err(key: str, msg: str) -> VaenasInputError:
    return VaenasInputError(f"dataset.{key}: {msg}")


def _strings(value: dict, src: str, base_dir: Path | None) -> dict[str, Any]:
    """``name``, ``path`` (made absolute against the config's folder) and ``key`` of a dataset block."""
    kw: dict[str, Any] = {}
    for k in ("name", "path", "key"):
        if k in value:
            if not isinstance(value[k], str) or not value[k]:
                raise _err(k, f"expected a non-empty string, got {value[k]!r}")
            kw[k] = value[k]
    for k in ("name",) if src in ("torchvision", "sklearn") else ("path",):
        if k not in kw:
            raise _err(k, f"required for source {src}")
    if "path" in kw:
        p = Path(kw["path"]).expanduser()
        kw["path"] = str(p if p.is_absolute() or base_dir is None else (base_dir / p).resolve())
    return kw


def _numbers(value: dict) -> dict[str, Any]:
    """``image_size``, ``channels``, the split fractions and ``max_memory_mb`` of a dataset block."""
    kw: dict[str, Any] = {}
    if "image_size" in value:
        s = value["image_size"]
        if isinstance(s, int) and not isinstance(s, bool):
            s = [s, s]
        if not (isinstance(s, list) and len(s) == 2 and all(isinstance(v, int) and not isinstance(v, bool)
                                                             and 1 <= v <= 4096 for v in s)):
            raise _err("image_size", f"expected [height, width] in pixels (1..4096), got {value['image_size']!r}")
        kw["image_size"] = tuple(s)
    if "channels" in value:
        if value["channels"] not in (1, 3) or isinstance(value["channels"], bool):
            raise _err("channels", f"expected 1 (grey) or 3 (RGB), got {value['channels']!r}")
        kw["channels"] = value["channels"]
    for k in ("val_fraction", "test_fraction"):
        if k in value:
            v = value[k]
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v < 0.5:
                raise _err(k, f"expected a fraction between 0 and 0.5, got {v!r}")
            kw[k] = float(v)
    if "max_memory_mb" in value:
        v = value["max_memory_mb"]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not v > 0:
            raise _err("max_memory_mb", f"expected a positive number of megabytes, got {v!r}")
        kw["max_memory_mb"] = float(v)
    return kw


@dataclass(frozen=True)
class DatasetSpec:
    """A dataset: where its examples come from and the likelihood that scores them."""

    source: str
    likelihood: str
    name: str | None = None
    path: str | None = None
    image_size: tuple[int, int] | None = None
    channels: int | None = None
    key: str | None = None
    options: tuple = ()  # torchvision keyword arguments, as sorted (key, value) pairs
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    max_memory_mb: float = DEFAULT_MEMORY_MB
    shorthand: str | None = None  # "mnist" / "fashion_mnist" when declared so
    labels: str | int | None = None  # array sources: the label column / array / .npy (anomaly tasks)

    @classmethod
    def parse(cls, value: Any, base_dir: Path | None = None) -> "DatasetSpec":
        """A dataset from its config form (a shorthand name or a mapping); one line per problem."""
        if isinstance(value, DatasetSpec):
            return value
        if isinstance(value, str):
            if value not in SHORTHANDS:
                raise VaenasInputError(
                    f"dataset: {value!r} is unknown; use one of {sorted(SHORTHANDS)} or a block such as "
                    "{source: torchvision|folder|array|sklearn, ..., likelihood: bernoulli|discretized_logistic|gaussian}")
            return cls("torchvision", "bernoulli", name=SHORTHANDS[value], shorthand=value)
        if not isinstance(value, dict):
            raise VaenasInputError(f"dataset: expected a name such as mnist or a mapping with source:, got {value!r}")
        src = value.get("source")
        if src not in SOURCES:
            raise _err("source", f"{src!r} is not a source; use one of {list(SOURCES)}")
        allowed = _KEYS[src] | _COMMON
        unknown = sorted(set(value) - allowed)
        if unknown:
            raise _err(unknown[0], f"unknown key for source {src}; allowed keys are {sorted(allowed)}")
        lik = value.get("likelihood")
        if lik not in LIKELIHOODS:
            raise _err("likelihood", f"{lik!r} is not a likelihood; use one of {sorted(LIKELIHOODS)}")
        kw = _strings(value, src, base_dir)
        if "labels" in value:
            lab = value["labels"]
            if isinstance(lab, bool) or not isinstance(lab, (str, int)) or lab in ("", 0) or \
                    (isinstance(lab, int) and lab < 1):
                raise _err("labels", f"expected a CSV column name or number (from 1), an .npz array's key or an .npy "
                                     f"path, got {lab!r}")
            kw["labels"] = lab
        if src == "torchvision":
            torchvision_class(kw["name"])
            opts = value.get("options") or {}
            if not isinstance(opts, dict) or {"root", "train", "download", "transform"} & set(opts):
                raise _err("options", f"expected a mapping of extra torchvision arguments (not root/train/download/"
                                      f"transform), got {opts!r}")
            kw["options"] = tuple(sorted(opts.items()))
        kw.update(_numbers(value))
        return cls(src, lik, **kw)

    def to_config(self) -> str | dict:
        """The config form (paths absolute): what a study stores and an export records."""
        if self.shorthand:
            return self.shorthand
        d: dict[str, Any] = {"source": self.source}
        for k in ("name", "path", "key", "channels", "labels"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        if self.image_size is not None:
            d["image_size"] = list(self.image_size)
        if self.options:
            d["options"] = dict(self.options)
        d["likelihood"] = self.likelihood
        for k, default in (("val_fraction", 0.1), ("test_fraction", 0.1), ("max_memory_mb", DEFAULT_MEMORY_MB)):
            if getattr(self, k) != default:
                d[k] = getattr(self, k)
        return d

    @property
    def label(self) -> str:
        if self.shorthand:
            return repr(self.shorthand)
        return f"{self.source}:{self.name or Path(self.path or '').name}"


@dataclass(frozen=True)
class Splits:
    """``train``: stored examples (uint8 images ``(N, C, H, W)`` or float32 vectors ``(N, D)``, standardised for
    Gaussian arrays); ``val``/``test``: model space, float32, fixed (e.g. binarised once with a seed)."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    likelihood: str = "bernoulli"
    normalization: dict | None = None  # {"mean": [...], "std": [...]}: model input = (x - mean) / std
    dataset: DatasetSpec | None = None
    feature_names: list[str] | None = field(default=None, compare=False)
    task: AnomalyTask | None = None  # an anomaly task: training holds normal examples only
    val_labels: torch.Tensor | None = field(default=None, compare=False)  # bool, True: an anomaly
    test_labels: torch.Tensor | None = field(default=None, compare=False)
    anomaly_counts: dict | None = field(default=None, compare=False)
    score_val: torch.Tensor | None = field(default=None, compare=False)  # what anomaly scores read (no randomness:
    score_test: torch.Tensor | None = field(default=None, compare=False)  # Bernoulli's grey levels, not bits)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.train.dim() == 4

    def describe(self) -> str:
        """One line: what was loaded, under which likelihood, and the memory it holds."""
        mb = sum(t.element_size() * t.nelement() for t in (self.train, self.val, self.test)) / 2**20
        shape = "x".join(str(v) for v in self.input_shape)
        kind = "images" if self.is_image else "vectors"
        norm = ", features standardised with the training split's mean/std" if self.normalization else ""
        if self.task is not None:
            c = self.anomaly_counts or {}
            left = f" ({c['left_out']:,} anomalies of the training pool left out)" if c.get("left_out") else ""
            return (f"data {self.name}, anomaly task (normal: {list(self.task.normal)}): {len(self.train):,} train "
                    f"(normal only) / {c.get('val_normal', 0):,} normal + {c.get('val_anomalies', 0):,} anomalies val / "
                    f"{c.get('test_normal', 0):,} normal + {c.get('test_anomalies', 0):,} anomalies test{left} "
                    f"{kind} of {shape}, likelihood {self.likelihood}{norm}; {mb:,.1f} MB in memory")
        return (f"data {self.name}: {len(self.train):,} train / {len(self.val):,} val / {len(self.test):,} test "
                f"{kind} of {shape}, likelihood {self.likelihood}{norm}; {mb:,.1f} MB in memory")


@lru_cache(maxsize=8)
def _torchvision(name: str, root: str, options: tuple, label: str) -> RawData:
    return read_torchvision(name, Path(root), dict(options), label)


def _read(ds: DatasetSpec, root: Path) -> RawData:
    if ds.source == "torchvision":
        return _torchvision(ds.name, str(root), ds.options, ds.label)
    if ds.source == "folder":
        return read_folder(Path(ds.path), ds.image_size, ds.channels, ds.max_memory_mb, ds.label)
    if ds.source == "array":
        return read_array(Path(ds.path), ds.key, ds.max_memory_mb, ds.label, ds.labels)
    return read_sklearn(ds.name, ds.label)


def _carve(x: torch.Tensor, n_val: int, n_test: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train, val, test) from a fixed-seed permutation: test the last ``n_test``, val the ``n_val`` before."""
    perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(SPLIT_SEED))
    rest = len(x) - n_val - n_test
    return x[perm[:rest]], x[perm[rest:rest + n_val]], x[perm[rest + n_val:]]


def _split(raw: RawData, ds: DatasetSpec, n_val: int | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    train, val, test = raw.train, raw.val, raw.test
    if val is None:
        pool = len(train)
        if n_val is None:
            n_val = 10_000 if ds.source == "torchvision" and pool >= 50_000 else max(1, round(ds.val_fraction * pool))
        n_test = 0 if test is not None else max(1, round(ds.test_fraction * pool))
        if not 0 < n_val < pool - n_test:
            raise VaenasInputError(f"dataset {ds.label}: {pool} examples are too few for a validation split of "
                                   f"{n_val} and a test split of {n_test}; give more examples")
        train, val, carved = _carve(train, n_val, n_test)
        test = carved if test is None else test
    elif test is None:
        n_test = max(1, round(ds.test_fraction * len(train)))
        if n_test >= len(train):
            raise VaenasInputError(f"dataset {ds.label}: too few training examples ({len(train)}) to carve a test split")
        train, _, test = _carve(train, 0, n_test)
    return train, val, test


def _stored_form(x: torch.Tensor, likelihood: str) -> torch.Tensor:
    """Array data in the dtype the likelihood trains from: uint8 for 8-bit data, float32 otherwise."""
    if x.dtype == torch.uint8:
        return x
    return x.round().to(torch.uint8) if likelihood == "discretized_logistic" else x.float()


def load_data(
    dataset: str | dict | DatasetSpec = "mnist",
    root: str | Path | None = None,
    *,
    n_val: int | None = None,
    n_train: int | None = None,
    n_eval: int | None = None,
    task: dict | AnomalyTask | None = None,
) -> Splits:
    """Load a dataset's splits. ``n_train``/``n_eval`` take leading subsets (for tests and cheap trials).
    ``task`` (an anomaly task, :mod:`evaluator.anomaly`): training keeps normal examples only, validation
    and test carry anomaly labels (:mod:`evaluator.anomaly_split`)."""
    ds = DatasetSpec.parse(dataset)
    task = AnomalyTask.parse(task) if task is not None else None
    for k, v in (("n_train", n_train), ("n_eval", n_eval), ("n_val", n_val)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise VaenasInputError(f"{k}: must be a whole number >= 1, got {v!r}")
    root = Path(root).expanduser() if root is not None else default_data_root()
    raw = _read(ds, root)
    if raw.val is None and raw.test is not None and n_val is not None and not 0 < n_val < len(raw.train):
        raise VaenasInputError(f"n_val: must be between 1 and {len(raw.train) - 1}, got {n_val}")
    val_y = test_y = counts = None
    if task is not None:
        train, val, test, val_y, test_y, counts = anomaly_splits(raw, task, ds.val_fraction, ds.test_fraction, ds.label)
    else:
        train, val, test = _split(raw, ds, n_val)
    lik = get_likelihood(ds.likelihood)
    for part in (train, val, test):
        problem = lik.check_data(part)
        if problem:
            fix = "use likelihood: gaussian for continuous data" if ds.likelihood != "gaussian" else "check the data"
            raise VaenasInputError(f"dataset {ds.label}: likelihood {ds.likelihood} {problem}; {fix}")
    norm = None
    if train.dim() == 2 and ds.likelihood == "gaussian":
        mean = train.mean(0)
        std = train.std(0, unbiased=False)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature: centred, not scaled
        if not (torch.isfinite(mean).all() and torch.isfinite(std).all()):
            raise VaenasInputError(f"dataset {ds.label}: the training split's mean or standard deviation overflows "
                                   f"(values up to {float(train.abs().max()):.3g}); rescale the data to a smaller range")
        train, val, test = ((t - mean) / std for t in (train, val, test))
        norm = {"mean": mean.tolist(), "std": std.tolist()}
    train, val, test = (_stored_form(t, ds.likelihood) for t in (train, val, test))
    for name, part in (("training", train), ("validation", val), ("test", test)):
        if part.is_floating_point() and not torch.isfinite(part).all():
            raise VaenasInputError(f"dataset {ds.label}: the {name} split holds values that are not finite once "
                                   "stored as float32 (or standardised); rescale the data to a smaller range")
    score_val, score_test = (lik.score_data(t).contiguous() if task is not None else None for t in (val, test))
    val, test = lik.eval_data(val, BINARIZE_SEED), lik.eval_data(test, BINARIZE_SEED + 1)
    if n_train is not None:
        train = train[:n_train]
    if n_eval is not None:
        val, test = val[:n_eval], test[:n_eval]
        val_y, test_y, score_val, score_test = (y[:n_eval] if y is not None else None
                                                for y in (val_y, test_y, score_val, score_test))
    name = ds.shorthand or ds.label
    return Splits(name, train, val.contiguous(), test.contiguous(), ds.likelihood, norm, ds, raw.feature_names,
                  task, val_y, test_y, counts, score_val, score_test)


def binarize(u8: torch.Tensor, seed: int) -> torch.Tensor:
    """Fixed binarisation of grey levels (the Bernoulli likelihood's evaluation data)."""
    return get_likelihood("bernoulli").eval_data(u8, seed)
