"""The splits of an anomaly task: training holds normal examples only; validation and test hold normal
examples the model never saw plus labelled anomalies.

From the source's labels (``evaluator/sources.py``): torchvision classes, image subfolders, a CSV
column, an .npz array or an .npy beside the data, scikit-learn's targets. ``normal`` names the normal
labels (a torchvision / scikit-learn class by number or name, a subfolder name, a label value);
every other label is an anomaly.

* Validation: the source's own ``val`` split when it has one; else ``val_fraction`` of the normal
  examples of the training pool, with anomalies of the training pool - ``val_fraction`` of them when
  the source has a test split of its own (torchvision), else their share
  ``val_fraction / (val_fraction + test_fraction)`` (the rest go to the carved test split). When
  the training pool holds no anomalies (``train/good`` only, as MVTec), half of the source's test
  split (per label kind) becomes the validation split.
* Test: the source's own test split (all of it: the one-class protocol of Ruff et al. 2018), else
  ``test_fraction`` of the normal examples plus the remaining anomalies.
* Training: the remaining normal examples. Anomalies of the training pool that no split takes are
  left out (counted in the data line). Every choice is a fixed-seed permutation.
"""

from __future__ import annotations

import numpy as np
import torch

from search_space import VaenasInputError

from .anomaly import AnomalyTask
from .sources import RawData

SEED = 0


def normal_mask(labels: np.ndarray, task: AnomalyTask, classes: list[str] | None, label: str) -> np.ndarray:
    """True where an example's label is normal; one line when a normal label names no class."""
    known = {str(v) for v in np.unique(labels)}
    wanted = set()
    for v in task.normal:
        if classes is not None and isinstance(v, str) and v in classes:
            wanted.add(str(classes.index(v)))
        elif str(v) in known:
            wanted.add(str(v))
        else:
            names = f"; class names {classes}" if classes else ""
            shown = sorted(known, key=lambda k: (len(k), k))
            raise VaenasInputError(f"task.normal: {v!r} is not a class of dataset {label} (its labels: "
                                   f"{', '.join(shown[:20])}{' ...' if len(shown) > 20 else ''}{names}); name an "
                                   "existing class")
    if len(known) < 2:
        raise VaenasInputError(f"dataset {label}: every example has the label {next(iter(known))!r}; an anomaly task "
                               "needs normal and anomalous labels (check the label column or folders)")
    return np.array([str(v) in wanted for v in labels], dtype=bool)


def _perm(n: int, salt: int) -> np.ndarray:
    return torch.randperm(n, generator=torch.Generator().manual_seed(SEED + salt)).numpy()


def _take(idx: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    return idx[:n], idx[n:]


def _part(x: torch.Tensor, normal: np.ndarray, take_n: np.ndarray, take_a: np.ndarray, salt: int):
    """Examples ``take_n`` (normal) and ``take_a`` (anomalies) of ``x``, shuffled together, and their
    anomaly flags."""
    idx = np.r_[take_n, take_a].astype(np.int64)
    idx = idx[_perm(len(idx), salt)]
    return x[torch.from_numpy(idx)], torch.from_numpy(~normal[idx])


def anomaly_splits(raw: RawData, task: AnomalyTask, val_fraction: float, test_fraction: float, label: str):
    """``(train, val, test, val_anomaly, test_anomaly, counts)`` of an anomaly task (see the module text)."""
    if raw.train_labels is None or (raw.test is not None and raw.test_labels is None):
        raise VaenasInputError(f"dataset {label}: an anomaly task needs a label per example, and this source has none; "
                               "give labels (dataset.labels for arrays, class subfolders for folders)")
    cls = raw.classes
    ok = normal_mask(np.concatenate([raw.train_labels] + [v for v in (raw.val_labels, raw.test_labels) if v is not None]),
                     task, cls, label)
    nt = len(raw.train_labels)
    normal = ok[:nt]
    n_idx, a_idx = np.nonzero(normal)[0], np.nonzero(~normal)[0]
    n_idx, a_idx = n_idx[_perm(len(n_idx), 1)], a_idx[_perm(len(a_idx), 2)]
    n_val = 0 if raw.val is not None else max(1, round(val_fraction * len(n_idx)))
    n_test = 0 if raw.test is not None else max(1, round(test_fraction * len(n_idx)))
    if len(n_idx) - n_val - n_test < 1:
        raise VaenasInputError(f"dataset {label}: {len(n_idx)} normal examples are too few to train on and hold some "
                               "out for validation and test; give more normal examples")
    val_n, rest = _take(n_idx, n_val)
    test_n, train_n = _take(rest, n_test)
    share = val_fraction if raw.test is not None else val_fraction / (val_fraction + test_fraction)
    a_val = 0 if raw.val is not None else round(share * len(a_idx))
    a_test = 0 if raw.test is not None else len(a_idx) - a_val
    val_a, rest_a = _take(a_idx, a_val)
    test_a, _ = _take(rest_a, a_test)
    train = raw.train[torch.from_numpy(train_n.astype(np.int64))]
    val, val_y = _part(raw.train, normal, val_n, val_a, 3)
    test, test_y = _part(raw.train, normal, test_n, test_a, 4)
    if raw.val is not None:
        val, val_y = raw.val, torch.from_numpy(~ok[nt:nt + len(raw.val)])
    if raw.test is not None:
        test, test_y = raw.test, torch.from_numpy(~ok[len(ok) - len(raw.test):])
        if raw.val is None and not len(a_idx):  # train/good only (MVTec): half of the test split validates
            val, val_y, test, test_y = _halve(test, test_y)
    counts = {"train": len(train), "left_out": int(len(a_idx) - len(val_a) - len(test_a))}
    for name, y in (("val", val_y), ("test", test_y)):
        counts[f"{name}_normal"], counts[f"{name}_anomalies"] = int((~y).sum()), int(y.sum())
        if not y.any() or y.all():
            what = "anomalies" if not y.any() else "normal examples"
            raise VaenasInputError(f"dataset {label}: the {'validation' if name == 'val' else 'test'} split holds no "
                                   f"{what} for normal {list(task.normal)}; AUROC needs both (check task.normal and "
                                   "the labels)")
    return train, val, test, val_y, test_y, counts


def _halve(x: torch.Tensor, y: torch.Tensor):
    """Split ``x`` into two halves per label kind (normal / anomaly): validation and test."""
    yn = y.numpy()
    first, second = [], []
    for flag, salt in ((False, 5), (True, 6)):
        idx = np.nonzero(yn == flag)[0]
        idx = idx[_perm(len(idx), salt)]
        k = len(idx) // 2
        first.append(idx[:k])
        second.append(idx[k:])
    a, b = np.concatenate(first), np.concatenate(second)
    a, b = a[_perm(len(a), 7)], b[_perm(len(b), 8)]
    ta, tb = torch.from_numpy(a.astype(np.int64)), torch.from_numpy(b.astype(np.int64))
    return x[ta], y[ta], x[tb], y[tb]
