"""Demand for a model as the gateways see it: requests in flight and held, the last request, and the load's history.

Plain frozen data with a stable JSON form, part of the observed state, so a scaling decision is reproduced from a
snapshot. The history is a step function over whole seconds: ``samples`` holds ``(second, load)`` where the load
changed, ``load`` being the mean number of requests in flight or held during each second from ``second`` on, up to
the next sample or ``until`` (the first second not complete yet). Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelDemand:
    model: str
    in_flight: int = 0  # requests its replicas are answering now
    queued: int = 0  # requests held by a gateway until a replica can take them
    last_request: float | None = None  # epoch seconds the last request arrived or was answered; None: none seen
    oldest_queued: float | None = None  # epoch seconds the longest-held request arrived; None: none held
    samples: tuple[tuple[int, float], ...] = ()  # (epoch second, mean load from then on), ascending, change points
    until: int = 0  # epoch second the history ends at (exclusive)

    @property
    def load(self) -> int:
        """Requests wanting a replica right now."""
        return self.in_flight + self.queued

    def window(self, *, now: float, seconds: int) -> tuple[float, float] | None:
        """(lowest, highest) load over the last ``seconds`` before ``now``, the current load included; None when the
        history does not reach that far back (a gateway that just started cannot tell sustained load yet)."""
        start = int(now) - seconds
        if not self.samples or self.samples[0][0] > start:
            return None
        values = [float(self.load)]
        for n, (second, value) in enumerate(self.samples):
            end = self.samples[n + 1][0] if n + 1 < len(self.samples) else self.until
            if end > start and second < self.until:
                values.append(value)
        return min(values), max(values)


def merge(parts: Iterable[ModelDemand]) -> tuple[ModelDemand, ...]:
    """One demand per model from the reports of several gateways: counts and loads add up; the history ends where
    the earliest report's does. Sorted by model."""
    by_model: dict[str, list[ModelDemand]] = {}
    for part in parts:
        by_model.setdefault(part.model, []).append(part)
    return tuple(_merge_one(name, by_model[name]) for name in sorted(by_model))


def _merge_one(name: str, parts: list[ModelDemand]) -> ModelDemand:
    if len(parts) == 1:
        return parts[0]
    until = min(p.until for p in parts)
    points = sorted({s for p in parts for s, _ in p.samples if s < until})
    samples: list[tuple[int, float]] = []
    for second in points:
        value = round(sum(_at(p, second) for p in parts), 3)
        if not samples or samples[-1][1] != value:
            samples.append((second, value))
    return ModelDemand(
        model=name,
        in_flight=sum(p.in_flight for p in parts),
        queued=sum(p.queued for p in parts),
        last_request=max((p.last_request for p in parts if p.last_request is not None), default=None),
        oldest_queued=min((p.oldest_queued for p in parts if p.oldest_queued is not None), default=None),
        samples=tuple(samples),
        until=until,
    )


def _at(part: ModelDemand, second: int) -> float:
    """The load of one report during ``second`` (0 before its history starts)."""
    found = 0.0
    for start, value in part.samples:
        if start > second:
            break
        found = value
    return found


def to_json(d: ModelDemand) -> dict[str, Any]:
    return {
        "model": d.model,
        "inFlight": d.in_flight,
        "queued": d.queued,
        "lastRequest": d.last_request,
        "oldestQueued": d.oldest_queued,
        "samples": [[s, v] for s, v in d.samples],
        "until": d.until,
    }


def from_json(data: dict[str, Any]) -> ModelDemand:
    return ModelDemand(
        model=data["model"],
        in_flight=data.get("inFlight", 0),
        queued=data.get("queued", 0),
        last_request=data.get("lastRequest"),
        oldest_queued=data.get("oldestQueued"),
        samples=tuple((int(s), float(v)) for s, v in data.get("samples", [])),
        until=int(data.get("until", 0)),
    )

