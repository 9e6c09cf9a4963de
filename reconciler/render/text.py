"""A plan for a terminal, the way Terraform shows one: one line per action with its symbol and reason, then each
GPU's VRAM before and after as bars with the replicas' names in them, then what could not be placed, then the
summary sentence.

Everything is built as rich ``Text`` once; ``color`` only decides whether the styles become ANSI codes, so the
plain output is exactly the coloured one without them. Lines are never wrapped: the output does not depend on the
terminal's width.
"""

from __future__ import annotations

from io import StringIO
from itertools import groupby

from rich.console import Console
from rich.text import Text

from reconciler.plan import SYMBOLS, ActionKind, GpuUse, GpuView, Plan
from reconciler.quantity import format_bytes
from reconciler.render.jobs import job_lines
from reconciler.render.scaling import scaling_lines
from reconciler.render._common import (
    CellKind,
    closing_lines,
    free,
    reason,
    replica_name,
    route,
    segments,
    size,
    used,
)

BAR_WIDTH = 48

STYLES: dict[ActionKind, str] = {
    ActionKind.CREATE: "green",
    ActionKind.DELETE: "red",
    ActionKind.EVICT: "bold red",
    ActionKind.MOVE: "cyan",
    ActionKind.REPLACE: "magenta",
    ActionKind.UPDATE: "yellow",
}

# Replica backgrounds in the bars, given to models in name order so one model keeps its colour across GPUs.
_PALETTE = (
    "black on bright_cyan",
    "black on bright_green",
    "black on bright_yellow",
    "black on bright_magenta",
    "white on blue",
    "black on cyan",
    "black on green",
    "black on yellow",
    "white on magenta",
    "white on red",
)

CELLS: dict[CellKind, tuple[str, str]] = {
    CellKind.FREE: ("·", "bright_black"),
    CellKind.FOREIGN: ("░", "red"),
    CellKind.RESERVE: ("▒", "bright_black"),
}

HEADER = "reconciler will perform the following actions:"


def render_plan(plan: Plan, *, color: bool = False) -> str:
    """The plan as text; ANSI colour codes only when `color`."""
    return to_str(plan_lines(plan), color=color)


def plan_lines(plan: Plan) -> list[Text]:
    """The plan as styled lines, for callers that put it after something else (`reconciler diff`)."""
    lines: list[Text] = [
        Text(f"Planned against observed state {plan.fingerprint} and specs {plan.desired_fingerprint}.", "dim"),
        Text(),
    ]
    if plan.actions:
        lines += [Text(HEADER), Text()]
        lines += _action_lines(plan)
        lines.append(Text())
    if plan.gpus:
        lines += _gpu_lines(plan)
        lines.append(Text())
    if plan.unplaced:
        lines += _unplaced_lines(plan)
        lines.append(Text())
    if plan.quality:
        lines += [Text(f"Placement in pool {q.pool}: {q.summary}.", "dim") for q in plan.quality]
        lines.append(Text())
    if plan.jobs:
        lines += [Text(line) for line in job_lines(plan)]
        lines.append(Text())
    if plan.scaling:
        lines += [Text(line) for line in scaling_lines(plan)]
        lines.append(Text())
    lines += [Text(line, "bold") for line in closing_lines(plan)]
    return lines


def to_str(lines: list[Text], *, color: bool) -> str:
    if not color:
        return "".join(line.plain.rstrip() + "\n" for line in lines)
    buffer = StringIO()
    console = Console(
        file=buffer,
        force_terminal=True,
        color_system="standard",
        no_color=False,
        width=max([len(line.plain) for line in lines] + [80]),
        highlight=False,
        emoji=False,
        markup=False,
        legacy_windows=False,
    )
    for line in lines:
        console.print(line, soft_wrap=True, crop=False)
    return buffer.getvalue()


def _action_lines(plan: Plan) -> list[Text]:
    names = [replica_name(a.model, a.replica) for a in plan.actions]
    routes = [route(a) for a in plan.actions]
    sizes = [size(a) for a in plan.actions]
    name_w = max(map(len, names))
    route_w = max(map(len, routes))
    size_w = max(map(len, sizes))
    kind_w = max(len(str(a.kind)) for a in plan.actions)
    lines = []
    for action, name, where, amount in zip(plan.actions, names, routes, sizes, strict=True):
        style = STYLES[action.kind]
        line = Text("  ")
        line.append(f"{SYMBOLS[action.kind]} {str(action.kind):<{kind_w}}", style)
        line.append(f"  {name:<{name_w}}", "bold")
        line.append(f"  {where:<{route_w}}  {amount:>{size_w}}")
        line.append(f"  # {reason(action)}", "dim")
        lines.append(line)
    return lines


def _gpu_lines(plan: Plan) -> list[Text]:
    models = sorted({u.model for g in plan.gpus for u in g.before + g.after})
    colours = {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)}
    lines = [_legend(plan)]
    for pool, pool_gpus in groupby(plan.gpus, key=lambda g: g.pool):
        lines.append(Text())
        lines.append(Text(f"pool {pool}", "bold"))
        for node, node_gpus in groupby(pool_gpus, key=lambda g: g.node):
            lines.append(Text(f"  {node}"))
            for gpu in node_gpus:
                lines.append(Text(f"    {_gpu_title(gpu)}"))
                if _same(gpu.before, gpu.after):
                    lines.append(_bar_line("unchanged", gpu, gpu.after, colours))
                else:
                    lines.append(_bar_line("before", gpu, gpu.before, colours))
                    lines.append(_bar_line("after", gpu, gpu.after, colours))
    return lines


def _legend(plan: Plan) -> Text:
    line = Text("VRAM per GPU, before and after (")
    line.append("name│", "bold")
    line.append(" a replica, ")
    keys = [CellKind.FREE]
    if any(g.foreign for g in plan.gpus):
        keys.append(CellKind.FOREIGN)
    if any(g.reserve for g in plan.gpus):
        keys.append(CellKind.RESERVE)
    words = {CellKind.FREE: "free", CellKind.FOREIGN: "other processes", CellKind.RESERVE: "pool reserve"}
    for i, kind in enumerate(keys):
        char, style = CELLS[kind]
        line.append(char, style)
        line.append(f" {words[kind]}" + (", " if i < len(keys) - 1 else ""))
    line.append("):")
    return line


def _gpu_title(gpu: GpuView) -> str:
    parts = [f"gpu{gpu.index}"]
    if gpu.name:
        parts.append(gpu.name)
    parts.append(format_bytes(gpu.memory))
    if gpu.reserve:
        parts.append(f"reserve {format_bytes(gpu.reserve)}")
    if gpu.foreign:
        parts.append(f"{format_bytes(gpu.foreign)} used by other processes")
    return " · ".join(parts)


def _same(before: tuple[GpuUse, ...], after: tuple[GpuUse, ...]) -> bool:
    return sorted(before, key=_use_key) == sorted(after, key=_use_key)


def _use_key(use: GpuUse) -> tuple[str, int, int]:
    return (use.model, use.replica, use.vram)


def _bar_line(label: str, gpu: GpuView, uses: tuple[GpuUse, ...], colours: dict[str, str]) -> Text:
    line = Text(f"      {label:<9} ▕")
    # Names cut to fit their cells are spelled out after the figures: "abbreviation = full name", once each.
    spelled: dict[str | tuple[str, str], None] = {}
    # Cells too narrow to keep the index: one legend entry per abbreviation and model, with the replicas it stands for.
    indexless: dict[tuple[str, str], list[int]] = {}
    for seg in segments(gpu, uses, BAR_WIDTH):
        if seg.kind is CellKind.REPLICA:
            assert seg.use is not None
            cell = _cell_label(seg.use.model, seg.use.replica, seg.width)
            line.append(cell, colours[seg.use.model])
            shown = cell[:-1].rstrip()
            if shown != replica_name(seg.use.model, seg.use.replica):
                index = f"[{seg.use.replica}]"
                if shown.endswith(f"…{index}"):
                    spelled[f"{shown[: -len(index)]} = {seg.use.model}"] = None
                else:
                    key = (shown or "│", seg.use.model)
                    spelled[key] = None  # its place among the others; the text is written once all are known
                    indexless.setdefault(key, []).append(seg.use.replica)
        else:
            char, style = CELLS[seg.kind]
            line.append(char * seg.width, style)
    line.append("▏ ")
    remaining = free(gpu, uses)
    figures = f"{format_bytes(used(uses))} placed, "
    figures += f"{format_bytes(remaining)} free" if remaining >= 0 else f"over capacity by {format_bytes(-remaining)}"
    line.append(figures, "red" if remaining < 0 else "")
    if spelled:
        legend = [e if isinstance(e, str) else f"{e[0]} = {_replica_set(e[1], indexless[e])}" for e in spelled]
        line.append(" · " + ", ".join(legend), "dim")
    return line


def _replica_set(model: str, replicas: list[int]) -> str:
    """`bge-embed[3]`, `bge-embed[8-14]` for a run of indices, `bge-embed[1,4,7]` otherwise."""
    replicas = sorted(replicas)
    if len(replicas) == 1:
        return replica_name(model, replicas[0])
    if replicas == list(range(replicas[0], replicas[-1] + 1)):
        return f"{model}[{replicas[0]}-{replicas[-1]}]"
    return f"{model}[{','.join(map(str, replicas))}]"


def _cell_label(model: str, replica: int, width: int) -> str:
    """A replica's cells: its name, cut to fit (the model's name first, so the index stays), and a bar that ends it."""
    inner = width - 1
    if inner <= 0:
        return "│"
    name = replica_name(model, replica)
    if len(name) > inner:
        index = f"[{replica}]"
        keep = inner - len(index) - 1
        name = f"{model[:keep]}…{index}" if keep >= 2 else name[: inner - 1] + "…" if inner >= 2 else name[:inner]
    return f"{name:<{inner}}│"


def _unplaced_lines(plan: Plan) -> list[Text]:
    names = [replica_name(u.model, u.replica) for u in plan.unplaced]
    width = max(map(len, names))
    lines = [Text("Replicas that cannot be placed:")]
    for unplaced, name in zip(plan.unplaced, names, strict=True):
        line = Text("  ")
        line.append("✗", "bold red")
        line.append(f" {name:<{width}}", "bold")
        line.append(f"  # {unplaced.reason}", "dim")
        lines.append(line)
    return lines
