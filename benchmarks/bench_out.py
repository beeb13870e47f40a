"""The one rule for a benchmark's ``--out``: a script writes only a file it wrote before (or a new one).

``earlier_json(path, keys, script)`` returns what the script wrote at ``path`` (``None`` when there is no
file); a file that is not JSON, or JSON with other top-level keys, is someone else's: one line on stderr and
exit 2, nothing written.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def earlier_json(path: Path, keys: set[str], script: str) -> dict | None:
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = None
    if not isinstance(doc, dict) or set(doc) != keys:
        print(f"{script}: --out {path}: exists and is not this script's output; pick another path", file=sys.stderr)
        raise SystemExit(2)
    return doc
