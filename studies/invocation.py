"""How the user started vaenas, so every hint we print (``retrain it: ...``, ``resume with: ...``)
can be pasted as it is: ``vaenas`` only when that name on PATH is this program; else the path they
typed (``.venv/bin/vaenas``, as the README runs it) or ``python -m studies.cli``."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from search_space import VaenasInputError


def prog() -> str:
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else ""
    p = Path(argv0)
    if p.name == "vaenas":
        found = shutil.which("vaenas")
        if found and Path(found).resolve() == p.resolve():
            return "vaenas"
        return argv0 if os.sep in argv0 else str(p)
    if p.name == "cli.py" and p.parent.name == "studies":  # python -m studies.cli
        exe = Path(sys.executable)
        try:
            shown = str(exe.relative_to(Path.cwd()))
        except ValueError:
            shown = "python" if shutil.which("python") and Path(shutil.which("python")).resolve() == exe.resolve() \
                else str(exe)
        return f"{shown} -m studies.cli"
    return "vaenas"  # imported (tests, notebooks): the documented name


class CliError(VaenasInputError):
    """Bad input on the command line: one line, exit 2."""
