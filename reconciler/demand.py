"""Demand for a model as the gateways see it: requests in flight and held, how long since the last request, and the
load's history.

Plain frozen data with a stable JSON form, part of the observed state, so a scaling decision is reproduced from a
snapshot. Every time in it is an age a gateway measured on its own clock at the moment it reported, never a time of
day: the controller's and the gateways' clocks are never compared (a gateway minutes off would make a busy model read
as idle). The history is a step function over whole seconds counted back from the report: ``samples`` holds
``(ago, load)`` where the load changed, oldest first, ``load`` being the mean number of requests in flight or held
during each second from ``ago`` seconds before the report on, up to the next sample (the second the report falls in
is not complete and not in it).

``partial`` says some gateway did not answer: the counts are then a lower bound and idleness is unknown, so such a
report may wake a model or scale it up but never scale it down or unload it. Pure.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from typing import Any


@dataclass(frozen=True, slots=True)
class ModelDemand:
    model: str
    in_flight: int = 0  # requests its replicas are answering now
    queued: int = 0  # requests held by a gateway until a replica can take them
    since_last: float | None = None  # seconds since the last request arrived or was answered; None: none seen
    held_for: float | None = None  # seconds the longest-held request has waited; None: none held
    samples: tuple[tuple[int, float], ...] = ()  # (seconds ago, mean load from then on), oldest first, change points
    partial: bool = False  # a gateway did not answer: a lower bound, not a complete count

    @property
    def load(self) -> int:
        """Requests wanting a replica right now."""
        return self.in_flight + self.queued

    def window(self, *, seconds: int) -> tuple[float, float] | None:
        """(lowest, highest) load over the last ``seconds`` before the report, the current load included; None when
        the history does not reach that far back (a gateway that just started cannot tell sustained load yet)."""
        if not self.samples or self.samples[0][0] < seconds:
            return None
        values = [float(self.load)]
        for n, (ago, value) in enumerate(self.samples):
            end = self.samples[n + 1][0] if n + 1 < len(self.samples) else 0
            if end < seconds and ago > 0:
                values.append(value)
        return min(values), max(values)


def merge(parts: Iterable[ModelDemand], *, partial: bool = False) -> tuple[ModelDemand, ...]:
    """One demand per model from the reports of several gateways: counts and loads add up, ages line up from each
    report's own moment. ``partial``: some gateway did not answer, and every model's demand says so. Sorted by
    model."""
    by_model: dict[str, list[ModelDemand]] = {}
    for part in parts:
        by_model.setdefault(part.model, []).append(part)
    return tuple(_merge_one(name, by_model[name], partial=partial) for name in sorted(by_model))


def _merge_one(name: str, parts: list[ModelDemand], *, partial: bool) -> ModelDemand:
    if len(parts) == 1:
        return replace(parts[0], partial=True) if partial and not parts[0].partial else parts[0]
    points = sorted({ago for p in parts for ago, _ in p.samples if ago > 0}, reverse=True)
    samples: list[tuple[int, float]] = []
    for ago in points:
        value = round(sum(_at(p, ago) for p in parts), 3)
        if not samples or samples[-1][1] != value:
            samples.append((ago, value))
    return ModelDemand(
        model=name,
        in_flight=sum(p.in_flight for p in parts),
        queued=sum(p.queued for p in parts),
        since_last=min((p.since_last for p in parts if p.since_last is not None), default=None),
        held_for=max((p.held_for for p in parts if p.held_for is not None), default=None),
        samples=tuple(samples),
        partial=partial or any(p.partial for p in parts),
    )


def _at(part: ModelDemand, ago: int) -> float:
    """The load of one report during the second ``ago`` seconds before it (0 before its history starts)."""
    found = 0.0
    for start, value in part.samples:
        if start < ago:
            break
        found = value
    return found


def to_json(d: ModelDemand) -> dict[str, Any]:
    document: dict[str, Any] = {
        "model": d.model,
        "inFlight": d.in_flight,
        "queued": d.queued,
        "sinceLastRequest": d.since_last,
        "heldFor": d.held_for,
        "samples": [[s, v] for s, v in d.samples],
    }
    if d.partial:
        document["partial"] = True
    return document


def from_json(data: dict[str, Any]) -> ModelDemand:
    return ModelDemand(
        model=data["model"],
        in_flight=data.get("inFlight", 0),
        queued=data.get("queued", 0),
        since_last=data.get("sinceLastRequest"),
        held_for=data.get("heldFor"),
        samples=tuple((int(s), float(v)) for s, v in data.get("samples", [])),
        partial=bool(data.get("partial", False)),
    )
