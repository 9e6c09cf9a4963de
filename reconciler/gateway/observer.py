"""What the gateway reports about its traffic, as an interface: the server calls it, an exporter implements it.

The server stays free of any metrics system; ``reconciler.adapter.gateway`` plugs in Ray's metrics (one Prometheus
scrape per node covers every gateway). Labels carry model, key *name* (or ``-`` on an open gateway), status code,
replica application and the reason a held request was refused (``queue_full``, ``load_timeout``); never a key.
Gauges (in flight, queued) are sampled about once a second, not set per request.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def request(self, *, model: str, key: str, status: int, seconds: float) -> None: ...
    def first_token(self, *, model: str, key: str, seconds: float) -> None: ...
    def tokens(self, *, model: str, key: str, prompt: int, completion: int) -> None: ...
    def in_flight(self, *, model: str, replica: str, count: int) -> None: ...
    def queued(self, *, model: str, count: int) -> None: ...
    def cold_start(self, *, model: str, seconds: float) -> None: ...
    def refused(self, *, model: str, reason: str) -> None: ...


class Silent:
    """Reports nowhere: a gateway without an exporter (tests, a plain process)."""

    def request(self, *, model: str, key: str, status: int, seconds: float) -> None:
        return None

    def first_token(self, *, model: str, key: str, seconds: float) -> None:
        return None

    def tokens(self, *, model: str, key: str, prompt: int, completion: int) -> None:
        return None

    def in_flight(self, *, model: str, replica: str, count: int) -> None:
        return None

    def queued(self, *, model: str, count: int) -> None:
        return None

    def cold_start(self, *, model: str, seconds: float) -> None:
        return None

    def refused(self, *, model: str, reason: str) -> None:
        return None


class Recorder(Silent):
    """Keeps what it is told, in order: for tests and for a look at what the gateway saw."""

    def __init__(self) -> None:
        self.events: list[tuple] = []

    def request(self, *, model: str, key: str, status: int, seconds: float) -> None:
        self.events.append(("request", model, key, status))

    def first_token(self, *, model: str, key: str, seconds: float) -> None:
        self.events.append(("first_token", model, key))

    def tokens(self, *, model: str, key: str, prompt: int, completion: int) -> None:
        self.events.append(("tokens", model, key, prompt, completion))

    def cold_start(self, *, model: str, seconds: float) -> None:
        self.events.append(("cold_start", model, seconds))

    def refused(self, *, model: str, reason: str) -> None:
        self.events.append(("refused", model, reason))
