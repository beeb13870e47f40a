"""A study's files: where they live, and writes that leave a file whole or untouched."""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from search_space import ArchSpec, VaenasInputError


def study_dir(runs_dir: str | Path, name: str) -> Path:
    return Path(runs_dir) / name


def check_runs_dir(runs_dir: str | Path) -> None:
    """``--runs-dir`` must be a folder vaenas can write in (or one it can create)."""
    d = Path(runs_dir)
    anc = next((p for p in (d, *d.parents) if p.exists()), Path("."))
    if not anc.is_dir():
        raise VaenasInputError(f"--runs-dir: {str(anc)!r} is a file, not a folder; choose a folder for the studies")
    if not os.access(anc, os.W_OK | os.X_OK):
        raise VaenasInputError(f"--runs-dir: {str(anc)!r} is not writable; choose a folder you can write to")


def default_storage_url(name: str, runs_dir: str | Path) -> str:
    """The embedded SQLite storage of study ``name``: ``runs/<study>/study.db``."""
    return f"sqlite:///{study_dir(runs_dir, name) / 'study.db'}"


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``path`` whole or not at all (a temporary file renamed over it). The temporary file is
    removed when the write or the rename fails (full disk), and those of dead processes are cleaned."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    for old in path.parent.glob(f".{path.name}.tmp*"):  # left by a killed process
        pid = old.name.rsplit(".tmp", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            old.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def save_checkpoint(path: Path, model, spec: ArchSpec, extra: dict | None = None) -> None:
    """``model.pt``: the spec, the weights and ``extra`` (e.g. ``normalization``: the input statistics a
    deployed model applies first, for standardised array data)."""
    buf = io.BytesIO()
    torch.save({"format": "vaenas.checkpoint", "version": 1, "spec": spec.to_json(), **(extra or {}),
                "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()}}, buf)
    atomic_write(path, buf.getvalue())


def save_tensors(path: Path, doc: dict) -> None:
    """A dict of tensors and plain values written with ``torch.save``, whole or not at all."""
    buf = io.BytesIO()
    torch.save(doc, buf)
    atomic_write(path, buf.getvalue())


def data_meta(data) -> dict:
    """What a checkpoint or an export records about its data: the dataset (config form), the likelihood,
    the input shape and, for standardised arrays, the input normalisation a deployed model applies first."""
    ds = data.dataset.to_config() if data.dataset is not None else data.name
    meta = {"dataset": ds, "likelihood": data.likelihood, "input_shape": list(data.input_shape)}
    if data.normalization is not None:
        meta["normalization"] = data.normalization
    if getattr(data, "task", None) is not None:
        meta["task"] = data.task.to_config()
    return meta
