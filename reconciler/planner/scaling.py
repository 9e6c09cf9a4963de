"""How many replicas a `replicas: {min, max}` model wants now, from its demand and the clock. Pure.

The rules, in the order they are tried (the first that applies decides):

1. **wake**: requests are held for a model with no replica: one replica at once (no waiting for ``scaleUpAfter``:
   somebody is waiting for the answer).
2. **idle**: no request for ``idleAfter`` (and none in flight or held): scale to ``min`` (0 unloads the model).
3. **up**: the load (requests in flight or held) stayed above ``targetInFlight`` per replica for all of
   ``scaleUpAfter``: as many replicas as the lowest load of that window needs, up to ``max``.
4. **down**: the load stayed below what the replicas serve for all of ``scaleDownAfter``: as many replicas as the
   highest load of that window needs, never below ``min`` nor below one (only idleness goes below one).

Windows are read from the demand's history (``ModelDemand.window``); where the history does not reach back far enough
(a gateway that just started) the count stays. Sustained windows are what keeps the count from flapping: a burst
shorter than ``scaleUpAfter`` adds nothing, a lull shorter than ``scaleDownAfter`` removes nothing.

Idleness and windows are ages the gateways measured on their own clocks; the observation's time only turns the last
request's age back into a time for people. A partial demand (a gateway did not answer) may wake a model or scale it up,
never scale it down or unload it: the silent gateway may be the busy one.
"""

from __future__ import annotations

import math
from dataclasses import replace
from enum import StrEnum

from reconciler.demand import ModelDemand
from reconciler.desired import DesiredState, Model, Scaling
from reconciler.observed import ObservedState, ReplicaState
from reconciler.plan import Action, ActionKind, ScaleDecision, Unplaced


class Rule(StrEnum):
    STEADY = "steady"
    WAKE = "wake"
    IDLE = "idle"
    UP = "up"
    DOWN = "down"
    RANGE = "range"  # the spec's range moved past the running count


def running_counts(observed: ObservedState) -> dict[str, int]:
    """Replicas per model that run, start or wait for room: what a model has now, as far as scaling goes."""
    keys = {r.key for r in observed.replicas if r.state not in (ReplicaState.STOPPING, ReplicaState.FAILED)}
    counts: dict[str, int] = {}
    for model, _ in keys:
        counts[model] = counts.get(model, 0) + 1
    return counts


def decide(model: Model, *, demand: ModelDemand | None, running: int, now: float | None) -> ScaleDecision:
    s = model.scaling
    assert s is not None, "only models with replicas: {min, max} scale with demand"
    d = demand or ModelDemand(model=model.name)

    last = None if d.since_last is None or now is None else round(now - d.since_last, 3)

    def out(wanted: int, rule: str, reason: str) -> ScaleDecision:
        return ScaleDecision(model=model.name, running=running, wanted=wanted, rule=str(rule), reason=reason,
                             in_flight=d.in_flight, queued=d.queued, last_request=last)

    current = min(max(running, s.min), s.max)
    if running == 0 and d.queued and s.max > 0:
        wanted = max(s.min, 1)
        return out(wanted, Rule.WAKE, f"wake: {_requests(d.queued)} waiting for {model.name}")
    if now is None:  # no clock (an offline plan): what runs stays, within the range
        return _ranged(out, current, running, s)
    if d.load == 0 and current > s.min and _idle_for(d, seconds=s.idle_after):
        what = "unload" if s.min == 0 else f"scale to min {s.min}"
        if d.partial:
            return out(current, Rule.STEADY if current == running else Rule.RANGE,
                       f"idle {_duration(s.idle_after)} as far as known, but {PARTIAL}: not "
                       f"{'unloaded' if s.min == 0 else 'scaled down'}")
        return out(s.min, Rule.IDLE, f"idle {_duration(s.idle_after)}: {what}")
    up = d.window(seconds=s.scale_up_after)
    if up is not None and current < s.max:
        need = min(s.max, _replicas_for(up[0], s))
        if need > current:
            return out(need, Rule.UP, f"scale up: {_in_flight(d.load)} over {_replicas(running)}, target "
                                      f"{s.target_in_flight} per replica for {_duration(s.scale_up_after)}")
    down = d.window(seconds=s.scale_down_after)
    if down is not None and current > max(s.min, 1):
        need = max(s.min, 1, _replicas_for(down[1], s))
        if need < current and d.partial:
            return out(current, Rule.STEADY if current == running else Rule.RANGE, f"{PARTIAL}: not scaled down")
        if need < current:
            return out(need, Rule.DOWN, f"scale down: at most {_number(down[1])} in flight over "
                                        f"{_replicas(running)} for {_duration(s.scale_down_after)}, target "
                                        f"{s.target_in_flight} per replica")
    return _ranged(out, current, running, s)


def _ranged(out, current: int, running: int, s: Scaling) -> ScaleDecision:
    if current != running:
        return out(current, Rule.RANGE, f"replicas: {{min: {s.min}, max: {s.max}}} (was {running})")
    return out(current, Rule.STEADY, "")


PARTIAL = "a gateway did not report its demand in time"


def _idle_for(d: ModelDemand, *, seconds: int) -> bool:
    """No request for ``seconds``: by the last request's age, or, when no request was seen (a gateway restarted),
    by a history that reaches back that far and shows no load."""
    if d.since_last is not None:
        return d.since_last >= seconds
    window = d.window(seconds=seconds)
    return window is not None and window[1] == 0


def _replicas_for(load: float, s: Scaling) -> int:
    return math.ceil(round(load, 3) / max(1, s.target_in_flight))


def decisions(desired: DesiredState, observed: ObservedState) -> tuple[ScaleDecision, ...]:
    """The decision of every on-demand model, sorted by model."""
    counts = running_counts(observed)
    return tuple(
        decide(m, demand=observed.demand_of(m.name), running=counts.get(m.name, 0), now=observed.at)
        for m in desired.models
        if m.scaling is not None
    )


def resolve(desired: DesiredState, found: tuple[ScaleDecision, ...]) -> DesiredState:
    """The desired state with each on-demand model's count set to what demand asks for: what the packer places."""
    wanted = {d.model: d.wanted for d in found}
    if not wanted:
        return desired
    models = tuple(replace(m, replicas=wanted[m.name]) if m.name in wanted else m for m in desired.models)
    return replace(desired, models=models)


def notes(found: tuple[ScaleDecision, ...], *, now: float | None) -> dict[str, tuple[str, str]]:
    """Per on-demand model, how an eviction names it: (as the one giving way: how busy it is, as the one loading:
    for whom)."""
    out: dict[str, tuple[str, str]] = {}
    for d in found:
        if d.in_flight or d.queued:
            busy = f"{d.in_flight + d.queued} in flight"
        elif d.last_request is not None and now is not None:
            busy = f"idle {_duration(max(0, int(now - d.last_request)))}"
        else:
            busy = "no request seen"
        wanted = f"for {d.queued} waiting request{'' if d.queued == 1 else 's'}" if d.queued else (f"for load ({d.reason})" if d.rule == Rule.UP
                                                                        else "")
        out[d.model] = (busy, wanted)
    return out


def keep_ranks(found: tuple[ScaleDecision, ...]) -> dict[str, int]:
    """How much each on-demand model's running replicas are worth keeping when some of one priority must give way:
    0 for never used, then by the time of the last request, busy ones (requests in flight or held) highest. The
    packer breaks ties between equally good evictions with it: idle ones go first, then the least recently used."""
    used = sorted((d for d in found if d.last_request is not None and not (d.in_flight or d.queued)),
                  key=lambda d: (d.last_request, d.model))
    ranks = {d.model: n + 1 for n, d in enumerate(used)}
    busy = len(used) + 1
    for d in found:
        if d.in_flight or d.queued:
            ranks[d.model] = busy + d.in_flight + d.queued
    return ranks


def with_reasons(actions: tuple[Action, ...], found: tuple[ScaleDecision, ...]) -> tuple[Action, ...]:
    """Creates and deletes that a scaling decision caused carry its reason: "scale up: ...; new replica: ..."."""
    why = {d.model: d for d in found if d.changes}
    if not why:
        return actions
    out = []
    for a in actions:
        d = why.get(a.model)
        if d is not None and a.kind == ActionKind.CREATE and d.wanted > d.running:
            a = replace(a, reason=f"{d.reason}; {a.reason}")
        elif d is not None and a.kind == ActionKind.DELETE and d.wanted < d.running and a.replica >= d.wanted:
            a = replace(a, reason=d.reason)
        out.append(a)
    return tuple(out)


def with_waiting(unplaced: list[Unplaced], found: tuple[ScaleDecision, ...],
                 desired: DesiredState) -> list[Unplaced]:
    """An on-demand replica that cannot be placed while requests wait for it says so: they are held until room
    comes or their loadTimeout passes."""
    waiting = {d.model: d.queued for d in found if d.queued}
    out = []
    for u in unplaced:
        if u.model in waiting:
            timeout = desired.model(u.model).scaling.load_timeout  # type: ignore[union-attr]
            u = replace(u, reason=f"{u.reason}; {_requests(waiting[u.model])} waiting for it, held until it fits "
                                  f"or for at most loadTimeout {_duration(timeout)}")
        out.append(u)
    return out


def _requests(n: int) -> str:
    return f"{n} request" + ("" if n == 1 else "s")


def _replicas(n: int) -> str:
    return f"{n} replica" + ("" if n == 1 else "s")


def _in_flight(n: int) -> str:
    return f"{n} in flight"


def _number(x: float) -> str:
    return f"{x:.1f}".rstrip("0").rstrip(".")


def _duration(seconds: int) -> str:
    """15m, 1h30m, 45s: as the spec writes durations."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"
