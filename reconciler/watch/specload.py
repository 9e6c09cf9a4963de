"""The spec directory as watch reads it every cycle: read in full each time, parsed only when a byte changed.

Level-based still: every cycle reads every file (a change that watchfiles missed, on a network filesystem say, is
still seen at the next tick); only the parse and validation, the costly part of a quiet cycle, are skipped when the
contents are exactly those of the last cycle.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from reconciler.spec import LoadResult, load_contents, load_specs, read_specs


class SpecLoader:
    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)
        self._key: Any = None
        self._result: LoadResult | None = None

    def __call__(self) -> LoadResult:
        if not self.directory.is_dir():
            self._key = None
            return load_specs(self.directory)  # says what is wrong with the directory itself
        contents, unreadable = read_specs(self.directory)
        key = (sorted((path, hashlib.blake2b(data, digest_size=16).digest()) for path, data in contents.items()),
               unreadable)
        if self._result is None or key != self._key:
            self._result = load_contents(contents, unreadable, base_dir=self.directory)
            self._key = key
        return self._result
