"""What the text and Markdown renderers share: how a replica, a place, a size and a plan's summary are spelled,
and how a GPU's VRAM is cut into the cells of a bar."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from reconciler.plan import Action, ActionKind, GpuUse, GpuView, Location, Plan, replica_id
from reconciler.quantity import format_bytes

NONE = "—"

# The summary sentence names these always, in Terraform's shape; replace and update only when the plan has any.
_ALWAYS = (ActionKind.CREATE, ActionKind.MOVE, ActionKind.EVICT, ActionKind.DELETE)
_SUMMARY_ORDER = (
    ActionKind.CREATE,
    ActionKind.REPLACE,
    ActionKind.UPDATE,
    ActionKind.MOVE,
    ActionKind.EVICT,
    ActionKind.DELETE,
)

NO_CHANGES = "No changes. The cluster matches the specs."


replica_name = replica_id  # how every renderer writes a replica


def where(loc: Location | None) -> str:
    return NONE if loc is None else str(loc)


def route(action: Action) -> str:
    """From → to, said once when the replica stays where it is."""
    if action.source is not None and action.source == action.target:
        return str(action.source)
    return f"{where(action.source)} → {where(action.target)}"


def size(action: Action) -> str:
    """VRAM of the replica; a tensor-parallel one takes that much on each of its GPUs."""
    loc = action.target or action.source
    count = len(loc.gpus) if loc is not None else 1
    return format_bytes(action.vram) if count == 1 else f"{count} × {format_bytes(action.vram)}"


def summary_sentence(plan: Plan) -> str:
    counts = plan.summary
    parts = [
        f"{counts[str(kind)]} to {kind}"
        for kind in _SUMMARY_ORDER
        if kind in _ALWAYS or counts[str(kind)]
    ]
    return f"Plan: {', '.join(parts)}."


def unplaced_sentence(count: int) -> str:
    return f"{count} replica cannot be placed." if count == 1 else f"{count} replicas cannot be placed."


def closing_lines(plan: Plan) -> list[str]:
    """The last words of a plan: its summary, or that nothing changes."""
    if plan.empty:
        if plan.unplaced:
            return [f"No changes. The cluster matches the specs as far as they fit: {unplaced_sentence(len(plan.unplaced))}"]
        return [NO_CHANGES]
    lines = [summary_sentence(plan)]
    if plan.unplaced:
        lines.append(unplaced_sentence(len(plan.unplaced)))
    return lines


def reason(action: Action) -> str:
    if action.make_before_break:
        return f"{action.reason} (make-before-break)"
    return action.reason


class CellKind(StrEnum):
    REPLICA = "replica"
    FOREIGN = "foreign"
    RESERVE = "reserve"
    FREE = "free"


@dataclass(frozen=True, slots=True)
class Segment:
    kind: CellKind
    width: int  # cells
    use: GpuUse | None = None  # the replica, for REPLICA segments


def used(uses: tuple[GpuUse, ...]) -> int:
    return sum(u.vram for u in uses)


def free(gpu: GpuView, uses: tuple[GpuUse, ...]) -> int:
    return gpu.memory - gpu.reserve - gpu.foreign - used(uses)


def segments(gpu: GpuView, uses: tuple[GpuUse, ...], width: int) -> list[Segment]:
    """Cut `width` cells in proportion to bytes: replicas from the left, then free space, then foreign use, then
    the reserve on the right. Boundaries are rounded cumulatively so the cells always add up to `width`; anything
    that takes VRAM gets at least one cell so that no replica disappears from the picture."""
    parts: list[tuple[CellKind, int, GpuUse | None]] = [(CellKind.REPLICA, u.vram, u) for u in uses]
    parts.append((CellKind.FREE, max(0, free(gpu, uses)), None))
    parts.append((CellKind.FOREIGN, gpu.foreign, None))
    parts.append((CellKind.RESERVE, gpu.reserve, None))
    total = max(gpu.memory, sum(p[1] for p in parts), 1)
    widths: list[int] = []
    cumulative, edge = 0, 0
    for _, amount, _ in parts:
        cumulative += amount
        new_edge = round(cumulative * width / total)
        widths.append(new_edge - edge)
        edge = new_edge
    for i, (kind, amount, _) in enumerate(parts):
        if amount > 0 and widths[i] == 0:
            widest = max(range(len(widths)), key=lambda j: (widths[j], parts[j][0] is CellKind.FREE))
            if widths[widest] > 1:
                widths[widest] -= 1
                widths[i] = 1
    return [Segment(kind, w, use) for (kind, _, use), w in zip(parts, widths, strict=True) if w > 0]
