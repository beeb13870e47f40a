"""What a command may write over: one rule for every output flag (``--out``, ``--csv``, ``--json``).

A command writes its own outputs (exports, tables, retrained models) and nothing else:

* never over a study's own files, recognised by their content wherever they are: an SQLite
  database, an Optuna journal, a vaenas checkpoint or supernet (``model.pt``, ``supernet.pt``);
* never inside a study folder (a folder holding ``study.db``, or a ``trials/`` folder of
  checkpoints), except in its ``export/`` and ``plots/`` folders;
* over any other existing file - a user's own earlier export, table or model - only with ``--force``.

Every check runs before the command does any work, so a refused command has written nothing.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

from search_space import VaenasInputError

OPEN_IN_STUDY = ("export", "plots")  # the parts of a study folder a user's outputs may go to


class OutputRefused(VaenasInputError):
    pass


def protected_kind(path: Path) -> str | None:
    """``"a study database"`` etc. if ``path`` holds a file a command must never write over."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return None
    if head.startswith(b"SQLite format 3\x00"):
        return "an SQLite database (a study's storage)"
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                if any(n.endswith("data.pkl") for n in z.namelist()):
                    return "a PyTorch checkpoint"
        except (zipfile.BadZipFile, OSError):
            return None
    first = head.split(b"\n", 1)[0]
    if first.startswith(b"{") and b"op_code" in first:
        try:
            if "op_code" in json.loads(first):
                return "an Optuna journal (a study's storage)"
        except ValueError:
            pass
    return None


def _study_folder(path: Path) -> Path | None:
    """The study folder ``path`` lies in (an ancestor holding study.db or a trials/ folder), if any."""
    for anc in path.parents:
        if (anc / "study.db").is_file() or ((anc / "trials").is_dir() and anc.name != "trials"
                                           and any(p.name.isdigit() for p in (anc / "trials").iterdir())):
            return anc
    return None


def check_output_file(path: str | Path, *, force: bool = False, flag: str = "--out") -> Path:
    """Refuse (one line) to write ``path`` over a study's file, inside a study folder, or over an
    existing file without ``--force``; returns the path."""
    p = Path(path)
    resolved = p.resolve()
    if p.exists() and p.is_dir():
        raise OutputRefused(f"{flag}: {str(p)!r} is a folder; give a file name")
    kind = protected_kind(resolved) if p.exists() else None
    if kind:
        raise OutputRefused(f"{flag}: {str(p)!r} is {kind}; vaenas never writes over it - choose another file name")
    study = _study_folder(resolved)
    if study is not None and resolved.relative_to(study).parts[0] not in OPEN_IN_STUDY:
        raise OutputRefused(f"{flag}: {str(p)!r} is inside study folder {str(study)!r}, which belongs to the study; "
                            f"write to its export/ folder or outside it")
    if p.exists() and not force:
        raise OutputRefused(f"{flag}: {str(p)!r} already exists; pass --force to replace it, or choose another name")
    return p


def check_output_dir(path: str | Path, files: list[str], *, force: bool = False, flag: str = "--out") -> Path:
    """The same rule for a folder a command fills with ``files``: not a file, not a study's folder,
    and none of ``files`` there already unless ``--force``."""
    d = Path(path)
    if d.exists() and not d.is_dir():
        raise OutputRefused(f"{flag}: {str(d)!r} exists and is not a directory")
    resolved = d.resolve()
    study = _study_folder(resolved / "x")
    if study is not None and (resolved == study or resolved.relative_to(study).parts[0] not in OPEN_IN_STUDY):
        raise OutputRefused(f"{flag}: {str(d)!r} is inside study folder {str(study)!r}, which belongs to the study; "
                            "choose a folder outside it")
    existing = [f for f in files if (d / f).exists()]
    for f in existing:
        kind = protected_kind(d / f)
        if kind and f not in ("model.pt",):
            raise OutputRefused(f"{flag}: {str(d / f)!r} is {kind}; vaenas never writes over it")
    if existing and not force:
        raise OutputRefused(f"{flag}: {str(d)!r} already holds {', '.join(existing)} from an earlier run; pass --force "
                            "to replace them, or choose another folder")
    return d
