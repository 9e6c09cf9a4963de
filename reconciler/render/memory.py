"""Measured memory for people: a replica's figure beside its plan, overruns, right-size suggestions. Renders only."""

from __future__ import annotations

from collections.abc import Iterable

from reconciler.observed import ObservedReplica
from reconciler.planner.memory import Overrun, RightSize
from reconciler.quantity import format_bytes

_QUANTITY_UNITS = (("Gi", 1 << 30), ("Mi", 1 << 20), ("Ki", 1 << 10))


def spec_quantity(n: int) -> str:
    """A byte count as a spec would write it: ``2Gi``, ``1.25Gi``, ``768Mi`` (exact, in the largest unit that
    takes at most two decimals)."""
    for suffix, unit in _QUANTITY_UNITS:
        if n >= unit and (n * 100) % unit == 0:
            return f"{n / unit:.2f}".rstrip("0").rstrip(".") + suffix
    return str(n)


def span_text(seconds: float) -> str:
    """How long a peak was watched, in its largest whole unit: ``45 s``, ``12 min``, ``5 h``, ``3 d``."""
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def measured_text(replica: ObservedReplica) -> str:
    """``measured 1.1 GiB (rss)``, or "" when the replica was not measured."""
    if replica.measured is None:
        return ""
    return f"measured {format_bytes(replica.measured)} ({replica.measured_source})"


def overrun_line(o: Overrun) -> str:
    where = f"{o.node}/" + "+".join(f"gpu{g}" for g in o.gpus)
    risk = (f"at risk on its GPU: {', '.join(o.neighbours)}" if o.neighbours
            else "no other replica shares its GPU")
    return (f"overrun: {o.replica_id} on {where} uses {format_bytes(o.measured)} per GPU ({o.source}), "
            f"planned {format_bytes(o.planned)}; {risk}")


def rightsize_line(s: RightSize) -> str:
    watched = f"measured peak {format_bytes(s.peak)} over {span_text(s.span)}"
    each = "on its GPU" if s.gpus == 1 else f"on each of {s.gpus} GPUs"
    if s.freed >= 0:
        advice = f"{spec_quantity(s.suggested)} would free {format_bytes(s.freed)} {each}"
    else:
        advice = f"raise it to {spec_quantity(s.suggested)} ({format_bytes(-s.freed)} more {each})"
    return f"{s.model}: vram {spec_quantity(s.vram)}, {watched}: {advice}"


def rightsize_lines(suggestions: Iterable[RightSize]) -> list[str]:
    suggestions = list(suggestions)
    if not suggestions:
        return []
    return ["Right-size (fixed vram against measured peaks):"] + [f"  {rightsize_line(s)}" for s in suggestions]
