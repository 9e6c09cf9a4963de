"""Requests held for an on-demand model until it has a replica: one bounded FIFO per model.

Each held request waits on a future of its own; ``release`` answers them all, oldest first, with what they should do
next (the route that now has replicas, or an error). A request that leaves early (its client went away, its
loadTimeout passed) takes itself out, so the queue only ever holds requests somebody still waits for.
"""

from __future__ import annotations

import asyncio
from typing import Any


class HoldQueue:
    __slots__ = ("_waiting",)

    def __init__(self) -> None:
        # Insertion-ordered: iteration is oldest first, and a request leaving from the middle costs O(1).
        self._waiting: dict[asyncio.Future, float] = {}

    def __len__(self) -> int:
        return len(self._waiting)

    @property
    def oldest(self) -> float | None:
        """When the longest-held request arrived (epoch seconds); None when none is held."""
        return next(iter(self._waiting.values()), None)

    def add(self, future: asyncio.Future, arrived: float) -> None:
        self._waiting[future] = arrived

    def discard(self, future: asyncio.Future) -> None:
        self._waiting.pop(future, None)

    def release(self, outcome: Any) -> int:
        """Answer every held request with ``outcome``, oldest first; how many were waiting."""
        waiting, self._waiting = self._waiting, {}
        for future in waiting:
            if not future.done():
                future.set_result(outcome)
        return len(waiting)
