"""Golden files: the expected output of a renderer or command, kept in a `golden/` folder beside its tests.

`UPDATE_GOLDEN=1 pytest tests` rewrites them from the current output; review the diff before committing.
"""

from __future__ import annotations

import os
from pathlib import Path


def check(path: Path, actual: str) -> None:
    if os.environ.get("UPDATE_GOLDEN") == "1":
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(actual, encoding="utf-8")
        return
    assert path.exists(), f"{path.name} is missing: run with UPDATE_GOLDEN=1 to write it, then review it"
    expected = path.read_text(encoding="utf-8")
    assert actual == expected, f"output differs from {path.name} (UPDATE_GOLDEN=1 rewrites it; review the diff)"
