"""What a change of the specs changes: which pools, classes and models were added, removed or changed (and which
fields), and how the placement of the base revision's plan differs from the head's.

Pure data in, pure data out, for `reconciler diff`; the renderers say it in words.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.desired import DesiredState, desired_to_json
from reconciler.plan import Location, PlacedReplica, Plan, Unplaced, to_json


class SpecKind(StrEnum):
    RESOURCE_POOL = "ResourcePool"
    PRIORITY_CLASS = "PriorityClass"
    MODEL = "Model"


class Change(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    CHANGED = "changed"


@dataclass(frozen=True, slots=True)
class FieldChange:
    field: str  # as desired_to_json spells it
    before: Any  # plain JSON data
    after: Any


@dataclass(frozen=True, slots=True)
class SpecChange:
    kind: SpecKind
    name: str
    change: Change
    fields: tuple[FieldChange, ...] = ()  # for CHANGED: every field that differs, in the spec's order
    spec: Any = None  # the spec as plain data: the head's (added, changed) or the base's (removed)


class PlacementChangeKind(StrEnum):
    ADDED = "added"  # a new replica, placed
    PLACED = "placed"  # could not be placed at base, is placed at head
    MOVED = "moved"  # placed at both, on other GPUs
    RESIZED = "resized"  # same GPUs, other VRAM
    REMOVED = "removed"  # placed at base, no longer asked for
    UNPLACED = "unplaced"  # asked for at head but placed nowhere (it was placed at base, or it is new)


@dataclass(frozen=True, slots=True)
class PlacementChange:
    kind: PlacementChangeKind
    model: str
    replica: int
    before: Location | None
    after: Location | None
    vram_before: int | None
    vram_after: int | None
    reason: str = ""  # why it cannot be placed (UNPLACED)


# Fields of a model copied from its class: a class change is reported once, on the class.
_COPIED_FROM_CLASS = frozenset({"priority", "preemption", "preemptible"})
_SECTIONS = (
    (SpecKind.RESOURCE_POOL, "pools"),
    (SpecKind.PRIORITY_CLASS, "priorityClasses"),
    (SpecKind.MODEL, "models"),
)


def spec_changes(base: DesiredState, head: DesiredState) -> tuple[SpecChange, ...]:
    """Pools, then classes, then models, each by name."""
    base_data, head_data = desired_to_json(base), desired_to_json(head)
    changes: list[SpecChange] = []
    for kind, section in _SECTIONS:
        before = {item["name"]: item for item in base_data[section]}
        after = {item["name"]: item for item in head_data[section]}
        for name in sorted(before.keys() | after.keys()):
            if name not in after:
                changes.append(SpecChange(kind, name, Change.REMOVED, spec=before[name]))
            elif name not in before:
                changes.append(SpecChange(kind, name, Change.ADDED, spec=after[name]))
            else:
                # Keys written only when set (a model's `scaling`) may be on one side only.
                keys = [*after[name], *(k for k in before[name] if k not in after[name])]
                fields = tuple(
                    FieldChange(key, before[name].get(key), after[name].get(key))
                    for key in keys
                    if before[name].get(key) != after[name].get(key)
                    and not (kind is SpecKind.MODEL and key in _COPIED_FROM_CLASS)
                )
                if fields:
                    changes.append(SpecChange(kind, name, Change.CHANGED, fields, spec=after[name]))
    return tuple(changes)


def placement_changes(base: Plan, head: Plan) -> tuple[PlacementChange, ...]:
    """How the end state of the head's plan differs from the base's, by model and replica."""
    placed_before = {(p.model, p.replica): p for p in base.placement}
    placed_after = {(p.model, p.replica): p for p in head.placement}
    unplaced_before = {(u.model, u.replica): u for u in base.unplaced}
    unplaced_after = {(u.model, u.replica): u for u in head.unplaced}
    keys = placed_before.keys() | placed_after.keys() | unplaced_after.keys()
    changes = [
        change
        for key in sorted(keys)
        if (
            change := _placement_change(
                key,
                before=placed_before.get(key),
                after=placed_after.get(key),
                was_unplaced=key in unplaced_before,
                unplaced=unplaced_after.get(key),
            )
        )
        is not None
    ]
    return tuple(changes)


def _placement_change(
    key: tuple[str, int],
    *,
    before: PlacedReplica | None,
    after: PlacedReplica | None,
    was_unplaced: bool,
    unplaced: Unplaced | None,
) -> PlacementChange | None:
    model, replica = key
    old = before.location if before else None
    new = after.location if after else None
    vram_old = before.vram if before else None
    vram_new = after.vram if after else None
    if unplaced is not None and after is None:
        if was_unplaced:
            return None  # unplaced at both: nothing changed
        return PlacementChange(PlacementChangeKind.UNPLACED, model, replica, old, None, vram_old, None, unplaced.reason)
    if after is None:
        return PlacementChange(PlacementChangeKind.REMOVED, model, replica, old, None, vram_old, None)
    if before is None:
        kind = PlacementChangeKind.PLACED if was_unplaced else PlacementChangeKind.ADDED
        return PlacementChange(kind, model, replica, None, new, None, vram_new)
    if old != new:
        return PlacementChange(PlacementChangeKind.MOVED, model, replica, old, new, vram_old, vram_new)
    if vram_old != vram_new:
        return PlacementChange(PlacementChangeKind.RESIZED, model, replica, old, new, vram_old, vram_new)
    return None


def changes_to_json(
    specs: tuple[SpecChange, ...], placement: tuple[PlacementChange, ...]
) -> dict[str, list[dict[str, Any]]]:
    def location(loc: Location | None) -> dict[str, Any] | None:
        return None if loc is None else {"node": loc.node, "gpus": list(loc.gpus)}

    return {
        "specChanges": [
            {
                "kind": str(c.kind),
                "name": c.name,
                "change": str(c.change),
                "fields": [{"field": f.field, "before": f.before, "after": f.after} for f in c.fields],
            }
            for c in specs
        ],
        "placementChanges": [
            {
                "change": str(c.kind),
                "model": c.model,
                "replica": c.replica,
                "from": location(c.before),
                "to": location(c.after),
                "vramBefore": c.vram_before,
                "vramAfter": c.vram_after,
                "reason": c.reason,
            }
            for c in placement
        ],
    }


@dataclass(frozen=True, slots=True)
class Diff:
    """Everything `reconciler diff` shows: the spec changes, the placement delta, and the head's plan."""

    base: str  # the base revision as people should read it ("main (1a2b3c4)")
    head: str  # the head revision, or "the working tree"
    directory: str  # the spec directory, relative to the repository
    observed: str  # what both plans were computed against, in words
    specs: tuple[SpecChange, ...]
    placement: tuple[PlacementChange, ...]
    plan: Plan  # the head's plan against the observed state


def diff_to_json(diff: Diff) -> dict[str, Any]:
    return {
        "base": diff.base,
        "head": diff.head,
        "directory": diff.directory,
        "observed": diff.observed,
        **changes_to_json(diff.specs, diff.placement),
        "plan": to_json(diff.plan),
    }
