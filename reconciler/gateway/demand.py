"""One model's load as one gateway sees it: requests in flight and held, the last request, and the load's history.

A report gives every time as an age on this gateway's clock (seconds since the last request, how long the oldest
held request has waited, the history counted back from the report), so the controller never compares its clock with
the gateway's.

The history is what lets the controller tell sustained load from a burst (``scaleUpAfter``, ``scaleDownAfter``): the
time-weighted mean of the load (requests in flight plus held) over each whole epoch second, kept as change points.
The level is integrated on every change, so the cost per request is a few float operations whatever the traffic, and
a second is closed when the first change (or report) after it comes. Pure: the caller passes the time.
"""

from __future__ import annotations

from collections import deque

from reconciler.demand import ModelDemand
from reconciler.settings import DEFAULTS

HISTORY_S = DEFAULTS.apply.gateway.demand_history


class Meter:
    __slots__ = ("_area", "_at", "_keep", "_samples", "_second", "in_flight", "last_request", "model", "queued")

    def __init__(self, model: str, *, now: float, keep_s: int = HISTORY_S) -> None:
        self.model = model
        self.in_flight = 0
        self.queued = 0
        self.last_request: float | None = None
        self._second = int(now)  # the second being integrated (not complete yet)
        self._area = 0.0  # load x seconds within it so far
        self._at = now
        self._samples: deque[tuple[int, float]] = deque()
        self._keep = keep_s

    @property
    def idle(self) -> bool:
        return not self.in_flight and not self.queued

    def arrived(self, now: float) -> None:
        self.last_request = now

    def step(self, *, now: float, in_flight: int = 0, queued: int = 0) -> None:
        """Requests began (+1) or ended (-1) being in flight or held at ``now``."""
        self._advance(now)
        if in_flight < 0:
            # A model is idle from its last answer, not from the arrival of a request that waited for a cold start.
            self.last_request = now
        self.in_flight += in_flight
        self.queued += queued

    def report(self, *, now: float, oldest_queued: float | None = None) -> ModelDemand:
        """The demand at ``now``; ``oldest_queued``: when the longest-held request arrived (this gateway's clock)."""
        self._advance(now)
        return ModelDemand(
            model=self.model, in_flight=self.in_flight, queued=self.queued,
            since_last=None if self.last_request is None else round(max(0.0, now - self.last_request), 3),
            held_for=None if oldest_queued is None else round(max(0.0, now - oldest_queued), 3),
            samples=tuple((self._second - second, value) for second, value in self._samples),
        )

    def _advance(self, now: float) -> None:
        level = self.in_flight + self.queued
        second = int(now)
        if second > self._second:
            self._close(self._second, self._area + level * (self._second + 1 - self._at))
            if second > self._second + 1:
                self._close(self._second + 1, float(level))  # whole seconds at one level: one change point
            self._second, self._area, self._at = second, 0.0, float(second)
        if now > self._at:  # a clock set back integrates nothing rather than a negative area
            self._area += level * (now - self._at)
            self._at = now

    def _close(self, second: int, value: float) -> None:
        value = round(value, 3)
        samples = self._samples
        if not samples or samples[-1][1] != value:
            samples.append((second, value))
        # Older points go, but the last one at or before the cutoff stays: it gives the level from the cutoff on.
        cutoff = second + 1 - self._keep
        while len(samples) > 1 and samples[1][0] <= cutoff:
            samples.popleft()
