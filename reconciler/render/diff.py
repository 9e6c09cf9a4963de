"""`reconciler diff` for people: the spec changes between two revisions, what they do to the placement, then the
head's plan. Text (optionally coloured) and Markdown for a pull-request comment; JSON is `diff_to_json` as is."""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

from rich.text import Text

from reconciler.changes import (
    Change,
    Diff,
    FieldChange,
    PlacementChange,
    PlacementChangeKind,
    SpecChange,
    SpecKind,
    diff_to_json,
)
from reconciler.quantity import format_bytes
from reconciler.render import markdown as md
from reconciler.render import text
from reconciler.render._common import NONE, replica_name, where

CHANGE_SYMBOLS = {Change.ADDED: "+", Change.REMOVED: "-", Change.CHANGED: "~"}
CHANGE_STYLES = {Change.ADDED: "green", Change.REMOVED: "red", Change.CHANGED: "yellow"}
PLACEMENT_SYMBOLS = {
    PlacementChangeKind.ADDED: "+",
    PlacementChangeKind.PLACED: "+",
    PlacementChangeKind.MOVED: "→",
    PlacementChangeKind.RESIZED: "~",
    PlacementChangeKind.REMOVED: "-",
    PlacementChangeKind.UNPLACED: "✗",
}
PLACEMENT_STYLES = {
    PlacementChangeKind.ADDED: "green",
    PlacementChangeKind.PLACED: "green",
    PlacementChangeKind.MOVED: "cyan",
    PlacementChangeKind.RESIZED: "yellow",
    PlacementChangeKind.REMOVED: "red",
    PlacementChangeKind.UNPLACED: "bold red",
}
_BYTE_FIELDS = frozenset({"vram", "reserve"})


def render_text(diff: Diff, *, color: bool = False) -> str:
    lines: list[Text] = [Text(f"Spec changes in {diff.directory} from {diff.base} to {diff.head}:", "bold"), Text()]
    lines += spec_lines(diff.specs)
    lines += [Text(), Text("What they change in the placement (base's plan → head's plan):", "bold"), Text()]
    lines += _placement_lines(diff.placement)
    lines += [Text(), Text(f"The head's plan against {diff.observed}:", "bold"), Text()]
    lines += text.plan_lines(diff.plan)
    return text.to_str(lines, color=color)


def render_markdown(diff: Diff) -> str:
    lines = [
        f"### reconciler diff: {md.escape(diff.base)} → {md.escape(diff.head)}",
        "",
        f"Specs in {md.code(diff.directory)}. Both plans are computed against {md.escape(diff.observed)}.",
        "",
        "#### Spec changes",
        "",
    ]
    if diff.specs:
        lines += ["| | Kind | Name | Change |", "|:-:|---|---|---|"]
        for change in diff.specs:
            if change.change is Change.CHANGED:
                detail = "<br>".join(md.escape(_field_line(change.kind, f)) for f in change.fields)
            else:
                detail = f"{change.change}: {md.escape(describe(change.kind, change.spec))}"
            lines.append(
                f"| {md.code(CHANGE_SYMBOLS[change.change])} | {change.kind} | {md.code(change.name)} | {detail} |"
            )
    else:
        lines.append("None: the specs are the same.")
    lines += ["", "#### What they change in the placement", ""]
    if diff.placement:
        lines += ["| | Replica | From | To | Change |", "|:-:|---|---|---|---|"]
        for change in diff.placement:
            source = NONE if change.before is None else md.code(str(change.before))
            target = NONE if change.after is None else md.code(str(change.after))
            lines.append(
                f"| {md.code(PLACEMENT_SYMBOLS[change.kind])} | {md.code(replica_name(change.model, change.replica))}"
                f" | {source} | {target} | {md.escape(_placement_words(change))} |"
            )
    else:
        lines.append("None: every replica stays where the base's plan puts it.")
    lines.append("")
    lines += md.plan_blocks(diff.plan, title=f"#### The head's plan against {md.escape(diff.observed)}")
    return "\n".join(lines) + "\n"


def render_json(diff: Diff) -> str:
    return json.dumps(diff_to_json(diff), indent=2, ensure_ascii=False) + "\n"


def spec_lines(changes: tuple[SpecChange, ...]) -> list[Text]:
    """The spec changes as `reconciler diff` lists them (for `reconciler history N` too)."""
    if not changes:
        return [Text("  none: the specs are the same.")]
    return [line for change in changes for line in _spec_lines(change)]


def _spec_lines(change: SpecChange) -> list[Text]:
    line = Text("  ")
    line.append(f"{CHANGE_SYMBOLS[change.change]} {change.kind} ", CHANGE_STYLES[change.change])
    line.append(change.name, "bold")
    if change.change is not Change.CHANGED:
        line.append(f"  ({describe(change.kind, change.spec)})", "dim")
    lines = [line]
    lines += [Text(f"      {_field_line(change.kind, field)}") for field in change.fields]
    return lines


def _placement_lines(changes: tuple[PlacementChange, ...]) -> list[Text]:
    if not changes:
        return [Text("  none: every replica stays where the base's plan puts it.")]
    names = [replica_name(c.model, c.replica) for c in changes]
    routes = [f"{where(c.before)} → {where(c.after)}" for c in changes]
    name_w, route_w = max(map(len, names)), max(map(len, routes))
    lines = []
    for change, name, route in zip(changes, names, routes, strict=True):
        line = Text("  ")
        line.append(PLACEMENT_SYMBOLS[change.kind], PLACEMENT_STYLES[change.kind])
        line.append(f" {name:<{name_w}}", "bold")
        line.append(f"  {route:<{route_w}}")
        line.append(f"  # {_placement_words(change)}", "dim")
        lines.append(line)
    return lines


def _placement_words(change: PlacementChange) -> str:
    match change.kind:
        case PlacementChangeKind.ADDED:
            return f"new replica, {_vram(change.vram_after)}"
        case PlacementChangeKind.PLACED:
            return f"placed now ({_vram(change.vram_after)}); the base could not place it"
        case PlacementChangeKind.MOVED:
            words = "moved"
            if change.vram_before != change.vram_after:
                words += f", {_vram(change.vram_before)} → {_vram(change.vram_after)}"
            return words
        case PlacementChangeKind.RESIZED:
            return f"{_vram(change.vram_before)} → {_vram(change.vram_after)}"
        case PlacementChangeKind.REMOVED:
            return "no longer asked for"
        case PlacementChangeKind.UNPLACED:
            return f"cannot be placed: {change.reason}"
    raise AssertionError(change.kind)


def _vram(amount: int | None) -> str:
    return NONE if amount is None else format_bytes(amount)


def _field_line(kind: SpecKind, field: FieldChange) -> str:
    return f"{field.field}: {value(kind, field.field, field.before)} → {value(kind, field.field, field.after)}"


def value(kind: SpecKind, field: str, data: Any) -> str:
    """A spec value as a person would write it back: sizes in binary units, maps as key=value."""
    if data is None:
        return "none"
    if field in _BYTE_FIELDS and isinstance(data, int):
        return format_bytes(data)
    if field == "inventory":
        return "; ".join(_inventory_node(node) for node in data) or "empty"
    if field == "priorityClass" and data == "":
        return "(none)"
    if isinstance(data, dict) and all(isinstance(v, str) for v in data.values()) and field != "engineArgs":
        return ", ".join(f"{k}={v}" for k, v in data.items()) or "{}"
    if isinstance(data, str):
        return data if data else '""'
    return json.dumps(data, ensure_ascii=False, sort_keys=True)


def _inventory_node(node: dict[str, Any]) -> str:
    counts = Counter((g["name"], g["memory"]) for g in node["gpus"])
    gpus = ", ".join(
        f"{n} × {name or 'GPU'} {format_bytes(memory)}" if n > 1 else f"{name or 'GPU'} {format_bytes(memory)}"
        for (name, memory), n in counts.items()
    )
    return f"{node['node']}: {gpus or 'no GPUs'}"


def describe(kind: SpecKind, spec: dict[str, Any]) -> str:
    """One line that says what an added or removed spec is."""
    match kind:
        case SpecKind.MODEL:
            replicas = spec["replicas"]
            count = "as many replicas as fit" if replicas == "max" else (
                "1 replica" if replicas == 1 else f"{replicas} replicas"
            )
            size = format_bytes(spec["vram"])
            if spec["tensorParallel"] > 1:
                size = f"{spec['tensorParallel']} GPUs × {size}"
            klass = spec["priorityClass"] or "(none)"
            return f"pool {spec['pool']} · class {klass} · {count} × {size}"
        case SpecKind.RESOURCE_POOL:
            nodes = len(spec["inventory"])
            gpus = sum(len(n["gpus"]) for n in spec["inventory"])
            return (
                f"{spec['placement']} · {nodes} {'node' if nodes == 1 else 'nodes'}, "
                f"{gpus} {'GPU' if gpus == 1 else 'GPUs'}"
            )
        case SpecKind.PRIORITY_CLASS:
            words = [f"value {spec['value']}"]
            if spec["preemption"] == "Never":
                words.append("never preempts")
            if not spec["preemptible"]:
                words.append("not preemptible")
            if spec["default"]:
                words.append("default")
            return " · ".join(words)
    raise AssertionError(kind)
