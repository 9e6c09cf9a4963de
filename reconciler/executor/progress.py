"""What an apply shows while it waits: each application being started or stopped, where, its state, elapsed time.

A live table on a terminal (rich), plain lines otherwise (one per change of state), so logs and CI stay readable.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import IO


@dataclass
class Row:
    app: str
    what: str  # "start assistant#0 on node-a/gpu1", "stop ..."
    state: str
    since: float  # monotonic time the wait started


class Progress:
    def __init__(self, stream: IO[str] | None = None, *, live: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.live = self.stream.isatty() if live is None else live
        self._rows: dict[str, Row] = {}
        self._printed: dict[str, str] = {}
        self._live = None
        self._phase = ""

    def phase(self, name: str, detail: str) -> None:
        self._phase = f"{name}: {detail}"
        if not self.live:
            print(f"[{name}] {detail}", file=self.stream, flush=True)

    def note(self, line: str) -> None:
        """A line worth reading whatever the display (a drain that ran out of time)."""
        print(f"  {line}", file=self.stream, flush=True)

    def track(self, app: str, what: str) -> None:
        self._rows[app] = Row(app=app, what=what, state="waiting", since=time.monotonic())

    def update(self, app: str, state: str) -> None:
        row = self._rows.get(app)
        if row is None:
            return
        row.state = state
        if self.live:
            self._refresh()
        elif self._printed.get(app) != state:
            self._printed[app] = state
            elapsed = time.monotonic() - row.since
            print(f"  {row.what}: {state} ({elapsed:.0f}s)", file=self.stream, flush=True)

    def tick(self) -> None:
        if self.live:
            self._refresh()

    def _refresh(self) -> None:
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table

        table = Table(title=self._phase, title_justify="left", expand=False)
        table.add_column("replica")
        table.add_column("state")
        table.add_column("elapsed", justify="right")
        now = time.monotonic()
        for row in self._rows.values():
            table.add_row(row.what, row.state, f"{now - row.since:.0f}s")
        if self._live is None:
            self._live = Live(table, console=Console(file=self.stream), refresh_per_second=4, transient=False)
            self._live.start()
        else:
            self._live.update(table)

    def close(self) -> None:
        if self._live is not None:
            self._live.stop()
            self._live = None
        self._rows.clear()
