"""Reading a dataset's examples from where they live: torchvision, an image folder, an array file,
scikit-learn's bundled tables. Each reader returns :class:`RawData` in its stored form (uint8
images ``(N, C, H, W)``, or vectors ``(N, D)``); splitting, likelihood checks and normalisation
are ``evaluator/data.py``'s. Every problem is one :class:`~search_space.VaenasInputError` line that
names the file or value and the fix; sizes are checked against the memory limit *before* the
examples are decoded or read.
"""

from __future__ import annotations

import csv
import inspect
import io
import math
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from search_space import VaenasInputError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp")
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
SKLEARN_TABLES = ("breast_cancer", "diabetes", "digits", "iris", "wine")  # bundled in the wheel: no download


class DataUnavailableError(VaenasInputError):
    """The dataset is neither on disk nor downloadable."""


@dataclass
class RawData:
    """Examples as stored. ``val``/``test`` are None where the source has no such split (carved later)."""

    train: torch.Tensor
    test: torch.Tensor | None = None
    val: torch.Tensor | None = None
    feature_names: list[str] | None = None
    notes: list[str] = field(default_factory=list)
    train_labels: np.ndarray | None = None  # one class label per example (anomaly tasks), where the source has them
    test_labels: np.ndarray | None = None
    val_labels: np.ndarray | None = None
    classes: list[str] | None = None  # torchvision / scikit-learn: the name of each integer label


def check_memory(label: str, n: int, dims: int, itemsize: int, limit_mb: float, fix: str) -> None:
    """Refuse before loading when ``n`` examples of ``dims`` values need more than the limit.

    Counted: the stored examples (``itemsize`` bytes per value) plus float32 model-space copies of up
    to a fifth of them (the validation and test splits)."""
    need = n * dims * itemsize + math.ceil(0.2 * n) * dims * 4
    if need > limit_mb * 2**20:
        raise VaenasInputError(
            f"dataset {label}: needs about {need / 2**20:,.0f} MB in memory ({n:,} examples x {dims:,} values), over "
            f"the limit of {limit_mb:g} MB; raise dataset.max_memory_mb or {fix}")


# ----------------------------------------------------------------------------- torchvision
MNIST_LIKE = {"MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST"}


def torchvision_class(name: str):
    """The torchvision dataset class ``name`` if it takes ``train=`` or ``split=``, else a one-line error."""
    import torchvision.datasets as tvd

    cls = getattr(tvd, name, None) if isinstance(name, str) and not name.startswith("_") else None
    params = inspect.signature(cls.__init__).parameters if inspect.isclass(cls) else {}
    if cls is None or not ({"train", "split"} & set(params)):
        raise VaenasInputError(
            f"dataset.name: {name!r} is not a torchvision image dataset with a train/test split; use one of "
            "MNIST, FashionMNIST, KMNIST, EMNIST, QMNIST, CIFAR10, CIFAR100, SVHN, USPS (names as in torchvision.datasets)")
    return cls


def _to_nchw_uint8(ds) -> torch.Tensor:
    """A torchvision dataset's images as a uint8 tensor (N, C, H, W), from ``.data`` when it holds them."""
    data = getattr(ds, "data", None)
    if isinstance(data, (torch.Tensor, np.ndarray)) and data.ndim in (3, 4):
        t = torch.as_tensor(np.asarray(data)) if isinstance(data, np.ndarray) else data
        if t.dtype == torch.uint8:
            if t.ndim == 3:
                return t.unsqueeze(1).contiguous()
            if t.shape[-1] in (1, 3) and t.shape[1] not in (1, 3):
                return t.permute(0, 3, 1, 2).contiguous()  # NHWC (CIFAR)
            if t.shape[1] in (1, 3):
                return t.contiguous()  # NCHW (SVHN)
    out = []  # any other dataset: decode item by item (PIL images)
    for i in range(len(ds)):
        img = ds[i][0]
        a = np.asarray(eight_bit(img, "RGB" if img.mode not in GREY_MODES else "L"))
        out.append(torch.from_numpy(a.copy()).reshape(a.shape[0], a.shape[1], -1).permute(2, 0, 1))
    return torch.stack(out)


def eight_bit(im, mode: str, name: str = "an image"):
    """``im`` as 8-bit ``mode`` ("L" or "RGB"), scaled by its bit depth: a 16-bit grey image's 0..65535 map
    to 0..255 (PIL's own conversion clips them, turning 64 grey levels into two); 32-bit integer images
    with values beyond 16 bits and float images are refused in one line, never clipped."""
    from PIL import Image

    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N") or im.mode == "I":
        a = np.asarray(im).astype(np.int64)
        if im.mode == "I" and (a.min(initial=0) < 0 or a.max(initial=0) > 65535):
            raise VaenasInputError(f"dataset: {name} is a 32-bit integer image with values outside 0..65535; save "
                                   "the images as 8- or 16-bit PNG")
        im = Image.fromarray(np.round(a / 257.0).astype(np.uint8), "L")
    elif im.mode == "F":
        raise VaenasInputError(f"dataset: {name} is a floating-point image; save the images as 8- or 16-bit PNG "
                               "(or give the values as an array: source: array)")
    return im.convert(mode)


class _unpack_lock:
    """An exclusive OS lock on ``<root>/.<name>.vaenas-lock`` while torchvision checks and unpacks a
    dataset: several processes starting on a fresh data root (workers) would otherwise read each
    other's half-written files. Where the root cannot be written (a read-only shared copy), no lock."""

    def __init__(self, root: Path, name: str):
        self.path, self.f, self.created = root / f".{name}.vaenas-lock", None, False

    def __enter__(self):
        import fcntl

        if not self.path.parent.is_dir():
            return self  # nothing there to unpack: nothing to lock, and nothing is created here
        try:
            self.created = not self.path.exists()
            self.f = open(self.path, "a")
        except OSError:
            return self
        fcntl.flock(self.f, fcntl.LOCK_EX)
        return self

    def __exit__(self, exc_type, *exc):
        if self.f is not None:
            self.f.close()  # releases the lock
            if exc_type is not None and self.created:
                self.path.unlink(missing_ok=True)  # a failed load leaves nothing behind


def _checksum_mismatch(cls, raw: Path) -> bool:
    """True when every archive the dataset needs is present and one of them fails its MD5 (corrupt or
    truncated), as opposed to files that are simply missing."""
    from torchvision.datasets.utils import check_integrity

    resources = [(u.rsplit("/", 1)[-1], md5) for u, md5 in getattr(cls, "resources", [])]
    if not resources or not raw.is_dir() or not all((raw / f).is_file() for f, _ in resources):
        return False
    return any(not check_integrity(str(raw / f), md5) for f, md5 in resources)


def read_torchvision(name: str, root: Path, options: dict, label: str) -> RawData:
    cls = torchvision_class(name)
    params = inspect.signature(cls.__init__).parameters
    raw = root / name / "raw" if name in MNIST_LIKE else root
    existed = {p for p in (root, root / name, root / name / "raw") if p.exists()}
    try:
        with _unpack_lock(root, name):  # one process unpacks a fresh root; the others wait, then read
            if "train" in params:
                tr, te = (cls(str(root), train=flag, download=True, **options) for flag in (True, False))
            else:
                tr, te = (cls(str(root), split=s, download=True, **options) for s in ("train", "test"))
    except TypeError as e:
        raise VaenasInputError(f"dataset.options: torchvision.datasets.{name} refused its arguments ({e}); pass what it "
                               "needs in options, e.g. EMNIST: options: {split: balanced}") from None
    except Exception as e:  # network errors, checksum errors, permission errors
        for p in (root / name / "raw", root / name, root):  # leave nothing behind that we created
            if p not in existed and p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        what = ("copy the four IDX .gz files into " + str(raw)) if name in MNIST_LIKE else \
            f"put torchvision's files for {name} under {root}"
        first = str(e).splitlines()[0] if str(e) else ""
        if _checksum_mismatch(cls, raw):
            raise DataUnavailableError(
                f"dataset {label}: the files under {raw} are there but corrupt or incomplete (their checksums do not "
                f"match: {type(e).__name__}); replace them with intact copies (check them with md5sum)") from None
        raise DataUnavailableError(f"dataset {label}: not found under {raw} and could not be downloaded "
                                   f"({type(e).__name__}: {first}); {what} or go online") from None
    return RawData(_to_nchw_uint8(tr), _to_nchw_uint8(te), train_labels=_targets(tr), test_labels=_targets(te),
                   classes=[str(c) for c in getattr(tr, "classes", [])] or None)


def _targets(ds) -> np.ndarray | None:
    """A torchvision dataset's integer class labels (``targets``, or SVHN's ``labels``), None without them."""
    t = getattr(ds, "targets", None)
    t = getattr(ds, "labels", None) if t is None else t
    if t is None:
        return None
    a = np.asarray(t.numpy() if isinstance(t, torch.Tensor) else t)
    return a.astype(np.int64) if a.ndim == 1 and a.dtype.kind in "iu" and len(a) == len(ds) else None


# ----------------------------------------------------------------------------- image folders
def _image_files(d: Path) -> list[Path]:
    return sorted(p for p in d.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS
                  and not any(part.startswith(".") for part in p.relative_to(d).parts))


def _unreadable(path: Path, e: Exception) -> VaenasInputError:
    first = str(e).splitlines()[0] if str(e) else type(e).__name__
    return VaenasInputError(f"dataset.path: {path} is not a readable image ({first}); remove or replace the file")


def read_folder(path: Path, image_size: tuple[int, int] | None, channels: int | None, limit_mb: float,
                label: str) -> RawData:
    """Images under ``path`` (class subfolders or flat; ``train/`` ``val/`` ``test/`` subfolders when present)."""
    from PIL import Image

    if not path.is_dir():
        raise VaenasInputError(f"dataset.path: folder {str(path)!r} does not exist; check the path")
    split_dirs = {s: path / s for s in ("train", "val", "test") if (path / s).is_dir()}
    groups = {s: _image_files(d) for s, d in split_dirs.items()} if "train" in split_dirs else {"train": _image_files(path)}
    if not groups["train"]:
        raise VaenasInputError(f"dataset.path: no {'/'.join(e[1:] for e in IMAGE_EXTS)} images under "
                               f"{str(split_dirs.get('train', path))!r}; point path at a folder of images")
    files = [f for fs in groups.values() for f in fs]
    sizes, modes = {}, set()
    for f in files:  # headers only: sizes and modes, no pixel decoding yet
        try:
            with Image.open(f) as im:
                sizes.setdefault((im.height, im.width), f)
                modes.add(im.mode)
        except Exception as e:
            raise _unreadable(f, e) from None
    if image_size is None:
        if len(sizes) > 1:
            (s1, f1), (s2, f2) = list(sizes.items())[:2]
            raise VaenasInputError(
                f"dataset: images have different sizes ({s1[0]}x{s1[1]} in {f1.name}, {s2[0]}x{s2[1]} in {f2.name}); "
                "set image_size: [height, width] in the dataset block to resize them all")
        image_size = next(iter(sizes))
    if channels is None:
        channels = 1 if modes <= GREY_MODES else 3
    h, w = image_size
    check_memory(label, len(files), channels * h * w, 1, limit_mb, "set a smaller image_size")
    mode = "L" if channels == 1 else "RGB"

    def decode(f: Path) -> torch.Tensor:
        try:
            with Image.open(f) as im:
                im = eight_bit(im, mode, f.name)
                if (im.height, im.width) != (h, w):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:
            raise _unreadable(f, e) from None
        return torch.from_numpy(a.copy()).reshape(h, w, channels).permute(2, 0, 1)

    out = {s: torch.stack([decode(f) for f in fs]) if fs else None for s, fs in groups.items()}
    labels = {s: np.array([_folder_label(f, split_dirs.get(s, path)) for f in fs], dtype=object) if fs else None
              for s, fs in groups.items()}
    return RawData(out["train"], out.get("test"), out.get("val"), train_labels=labels["train"],
                   test_labels=labels.get("test"), val_labels=labels.get("val"))


def _folder_label(f: Path, root: Path) -> str:
    """An image's label: the subfolder it lies in under its split folder (``good/``, ``crack/``); "" at the top."""
    parts = f.relative_to(root).parts
    return parts[0] if len(parts) > 1 else ""


# ----------------------------------------------------------------------------- arrays
def _npz_member_shape(path: Path, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype of one array of an .npz from its header (nothing decoded)."""
    with zipfile.ZipFile(path) as z, z.open(key + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = reader(fh)
    return shape, dtype


def _csv_table(path: Path, limit_mb: float, label: str, text: str | None = None) -> tuple[np.ndarray, list[str] | None]:
    if text is None:
        text = path.read_text(encoding="utf-8-sig", errors="replace")  # a byte-order mark is not part of the first cell
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise VaenasInputError(f"dataset.path: {path} is empty; give a CSV with one example per row")
    n_cols = len(next(csv.reader([lines[0]])))
    check_memory(label, len(lines), n_cols, 4, limit_mb, "use fewer rows or columns")
    rows, header = [], None
    for r, row in enumerate(csv.reader(io.StringIO(text)), start=1):
        if not any(c.strip() for c in row):
            continue
        vals = []
        for c, cell in enumerate(row, start=1):
            try:
                vals.append(float(cell))
            except ValueError:
                if not rows and header is None and r == 1:
                    vals = None
                    break
                what = "is empty" if not cell.strip() else f"is {cell.strip()[:30]!r}, not a number"
                raise VaenasInputError(f"dataset.path: {path.name} row {r}, column {c} {what}; every cell must be a "
                                       "number (one header row is allowed)") from None
        if vals is None:
            header = [c.strip() for c in row]
            continue
        if len(vals) != n_cols:
            raise VaenasInputError(f"dataset.path: {path.name} row {r} has {len(vals)} cells, the first row {n_cols}; "
                                   "every row needs the same number of columns")
        rows.append(vals)
    if not rows:
        raise VaenasInputError(f"dataset.path: {path} has no numeric rows; give one example per row")
    return np.asarray(rows, dtype=np.float64), header


def read_array(path: Path, key: str | None, limit_mb: float, label: str, labels: str | int | None = None) -> RawData:
    """Rows of an .npy / .npz / .csv file are examples; trailing axes are flattened into features.

    ``labels`` (anomaly tasks): a CSV's label column (its header name, or its number counting from 1), the
    key of the label array in an .npz, or the path of an .npy of labels beside an .npy; one label per row."""
    if not path.is_file():
        raise VaenasInputError(f"dataset.path: file {str(path)!r} does not exist; check the path")
    suffix = path.suffix.lower()
    names, y = None, None
    try:
        if suffix == ".npy":
            arr = np.load(path, mmap_mode="r", allow_pickle=False)
            check_memory(label, arr.shape[0] if arr.ndim else 0, int(np.prod(arr.shape[1:])), 4, limit_mb,
                         "use fewer rows")
            arr = np.asarray(arr)
            if labels is not None:
                y = _npy_labels(path, labels)
        elif suffix == ".npz":
            with np.load(path, allow_pickle=False) as z:
                keys = list(z.files)
                if labels is not None:
                    if labels not in keys:
                        raise VaenasInputError(f"dataset.labels: {labels!r} is not an array of {path.name} (it holds "
                                               f"{keys}); name the array of labels")
                    y = np.asarray(z[labels])
                    keys = [k for k in keys if k != labels]
                if key is None:
                    if len(keys) != 1:
                        raise VaenasInputError(f"dataset.key: {path.name} holds arrays {keys}; name the one to use "
                                               "with key: NAME")
                    key = keys[0]
                if key not in keys:
                    raise VaenasInputError(f"dataset.key: {key!r} is not in {path.name} (it holds {keys})")
                shape, _ = _npz_member_shape(path, key)
                check_memory(label, shape[0] if shape else 0, int(np.prod(shape[1:])), 4, limit_mb, "use fewer rows")
                arr = z[key]
        elif suffix == ".csv":
            text, y = _csv_labels(path, labels) if labels is not None else (None, None)
            arr, names = _csv_table(path, limit_mb, label, text)
        else:
            raise VaenasInputError(f"dataset.path: {path.name} is not an .npy, .npz or .csv file")
    except VaenasInputError:
        raise
    except (ValueError, OSError, zipfile.BadZipFile, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise VaenasInputError(f"dataset.path: {path.name} cannot be read as a numeric array ({first})") from None
    rows = _as_rows(arr, path.name)
    if y is not None and (y.ndim != 1 or len(y) != len(rows)):
        raise VaenasInputError(f"dataset.labels: {len(y) if y.ndim == 1 else list(y.shape)} labels for {len(rows)} "
                               f"rows of {path.name}; give one label per row")
    return RawData(rows, feature_names=names, train_labels=_label_values(y) if y is not None else None)


def _npy_labels(path: Path, labels) -> np.ndarray:
    p = Path(str(labels)).expanduser()
    p = p if p.is_absolute() else path.parent / p
    if not p.is_file() or p.suffix.lower() != ".npy":
        raise VaenasInputError(f"dataset.labels: {str(p)!r} is not an .npy file of labels; give the path of an .npy "
                               "with one label per row of the data")
    return np.asarray(np.load(p, allow_pickle=False))


def _csv_labels(path: Path, column) -> tuple[str, np.ndarray]:
    """The CSV's text without its label column, and that column's cells (header dropped)."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    rows = [r for r in csv.reader(io.StringIO(text)) if any(c.strip() for c in r)]
    if not rows:
        raise VaenasInputError(f"dataset.path: {path} is empty; give a CSV with one example per row")
    header = [c.strip() for c in rows[0]]
    if isinstance(column, int) and not isinstance(column, bool):
        j = column - 1
    else:
        j = header.index(str(column)) if str(column) in header else -1
    if not 0 <= j < len(header):
        raise VaenasInputError(f"dataset.labels: {column!r} is not a column of {path.name} (its first row: "
                               f"{header[:8]}); give the label column's header name or its number counting from 1")
    has_header = isinstance(column, str) or not _is_number(rows[0][j:j + 1] or [""])
    body = rows[1:] if has_header else rows
    cells = np.array([r[j].strip() if j < len(r) else "" for r in body], dtype=object)
    out = io.StringIO()
    csv.writer(out).writerows([r[:j] + r[j + 1:] for r in rows])
    return out.getvalue(), cells


def _is_number(cells: list[str]) -> bool:
    try:
        float(cells[0])
        return True
    except ValueError:
        return False


def _label_values(y: np.ndarray) -> np.ndarray:
    """Labels as integers when every one is a whole number, else as strings."""
    try:
        f = np.asarray(y, dtype=np.float64)
        if np.isfinite(f).all() and (f == np.round(f)).all():
            return f.astype(np.int64)
    except (TypeError, ValueError):
        pass
    return np.array([str(v).strip() for v in y], dtype=object)


def _as_rows(arr: np.ndarray, what: str) -> torch.Tensor:
    if arr.dtype.kind not in "biuf":
        raise VaenasInputError(f"dataset: {what} holds {arr.dtype} values, not numbers; save a numeric array")
    if arr.ndim < 2:
        raise VaenasInputError(f"dataset: {what} is a {arr.ndim}-D array of shape {list(arr.shape)}; rows are examples, "
                               "so give a 2-D array (examples, features)")
    arr = arr.reshape(arr.shape[0], -1)
    bad = ~np.isfinite(arr) if arr.dtype.kind == "f" else np.zeros(arr.shape, bool)
    if bad.any():
        r, c = (int(v) for v in np.argwhere(bad)[0])
        raise VaenasInputError(f"dataset: {what} has {int(bad.sum())} NaN/inf values (first at row {r + 1}, column "
                               f"{c + 1}); remove or impute them first")
    return torch.from_numpy(np.array(arr, dtype=np.float64))  # a copy: writable, owned


def read_sklearn(name: str, label: str) -> RawData:
    """One of scikit-learn's bundled tables (no download): its feature matrix."""
    if name not in SKLEARN_TABLES:
        raise VaenasInputError(f"dataset.name: {name!r} is not a bundled scikit-learn table; use one of "
                               f"{list(SKLEARN_TABLES)}")
    try:
        import sklearn.datasets as skd
    except ImportError:
        raise VaenasInputError("dataset: source sklearn needs scikit-learn; install it with "
                               "`pip install scikit-learn` (or the extra `pip install -e '.[tabular]'`)") from None
    bunch = getattr(skd, f"load_{name}")()
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or None
    target = np.asarray(bunch.target)
    classes = [str(c) for c in getattr(bunch, "target_names", [])] or None
    return RawData(_as_rows(np.asarray(bunch.data), f"sklearn {name}"), feature_names=names,
                   train_labels=target.astype(np.int64) if target.dtype.kind in "iu" else None, classes=classes)
