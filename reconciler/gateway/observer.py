"""What the gateway reports about its traffic, as an interface: the server calls it, an exporter implements it.

The server stays free of any metrics system; ``reconciler.adapter.gateway`` plugs in Ray's metrics (one Prometheus
scrape per node covers every gateway). Labels carry model, key *name* (or ``-`` on an open gateway), status code and
replica application; never a key.
"""

from __future__ import annotations

from typing import Protocol


class Observer(Protocol):
    def request(self, *, model: str, key: str, status: int, seconds: float) -> None: ...
    def first_token(self, *, model: str, key: str, seconds: float) -> None: ...
    def tokens(self, *, model: str, key: str, prompt: int, completion: int) -> None: ...
    def in_flight(self, *, model: str, replica: str, count: int) -> None: ...


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
