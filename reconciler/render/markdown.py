"""A plan as GitHub-flavoured Markdown for a pull-request comment: the summary first (what a reviewer reads), then
the actions, each GPU's VRAM before and after, what cannot be placed, and the full placement folded away."""

from __future__ import annotations

import re

from reconciler.plan import SYMBOLS, GpuUse, GpuView, Plan
from reconciler.quantity import format_bytes
from reconciler.render.jobs import job_markdown
from reconciler.render.scaling import scaling_markdown
from reconciler.render._common import (
    NONE,
    CellKind,
    closing_lines,
    free,
    reason,
    replica_name,
    segments,
    size,
)

BAR_WIDTH = 20
TITLE = "### reconciler plan"

_SPECIAL = re.compile(r"([\\`*_\[\]<>|#~])")
# Adjacent replicas alternate between two shades so that the bar still shows where one ends.
_REPLICA_CELLS = ("█", "▓")
_CELLS = {CellKind.FREE: "·", CellKind.FOREIGN: "░", CellKind.RESERVE: "▒"}


def escape(text: str) -> str:
    """Text that Markdown shows as written, table pipes included."""
    return _SPECIAL.sub(r"\\\1", text).replace("\n", " ")


def code(text: str) -> str:
    return f"`{text}`"



def render_plan(plan: Plan, *, title: str = TITLE) -> str:
    return "\n".join(plan_blocks(plan, title=title)) + "\n"


def plan_blocks(plan: Plan, *, title: str = TITLE) -> list[str]:
    """The plan as lines, for callers that put it after something else (`reconciler diff`)."""
    lines = [title, "", " ".join(_bold_first(closing_lines(plan))), ""]
    if plan.actions:
        lines += _actions(plan) + [""]
    if plan.gpus:
        lines += _gpus(plan) + [""]
    if plan.unplaced:
        lines += ["#### Replicas that cannot be placed", ""]
        lines += [f"- {code(replica_name(u.model, u.replica))}: {escape(u.reason)}" for u in plan.unplaced]
        lines.append("")
    if plan.quality:
        lines += [f"Placement in pool {code(q.pool)}: {escape(q.summary)}." for q in plan.quality] + [""]
    lines += job_markdown(plan)
    lines += scaling_markdown(plan, code=code, escape=escape)
    lines += _details(plan)
    return lines


def _bold_first(sentences: list[str]) -> list[str]:
    return [f"**{sentences[0]}**", *sentences[1:]]


def _actions(plan: Plan) -> list[str]:
    lines = [
        "| | Action | Replica | From | To | VRAM | Reason |",
        "|:-:|---|---|---|---|--:|---|",
    ]
    for action in plan.actions:
        cells = [
            code(SYMBOLS[action.kind]),
            str(action.kind),
            code(replica_name(action.model, action.replica)),
            NONE if action.source is None else code(str(action.source)),
            NONE if action.target is None else code(str(action.target)),
            size(action),
            escape(reason(action)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _gpus(plan: Plan) -> list[str]:
    lines = [
        "#### VRAM per GPU",
        "",
        f"{_CELLS[CellKind.FREE]} free, {_CELLS[CellKind.FOREIGN]} other processes, "
        f"{_CELLS[CellKind.RESERVE]} pool reserve, {_REPLICA_CELLS[0]}{_REPLICA_CELLS[1]} replicas.",
        "",
        "| Pool | Node | GPU | Memory | Before | After |",
        "|---|---|---|---|---|---|",
    ]
    for gpu in plan.gpus:
        memory = format_bytes(gpu.memory)
        if gpu.reserve:
            memory += f", reserve {format_bytes(gpu.reserve)}"
        if gpu.foreign:
            memory += f", {format_bytes(gpu.foreign)} other processes"
        name = f"gpu{gpu.index}" + (f" · {escape(gpu.name)}" if gpu.name else "")
        before = _usage(gpu, gpu.before)
        after = "unchanged" if _same(gpu.before, gpu.after) else _usage(gpu, gpu.after)
        lines.append(f"| {escape(gpu.pool)} | {escape(gpu.node)} | {name} | {memory} | {before} | {after} |")
    return lines


def _same(before: tuple[GpuUse, ...], after: tuple[GpuUse, ...]) -> bool:
    def key(use: GpuUse) -> tuple[str, int, int]:
        return (use.model, use.replica, use.vram)

    return sorted(before, key=key) == sorted(after, key=key)


def _usage(gpu: GpuView, uses: tuple[GpuUse, ...]) -> str:
    bar, shade = [], 0
    for seg in segments(gpu, uses, BAR_WIDTH):
        if seg.kind is CellKind.REPLICA:
            bar.append(_REPLICA_CELLS[shade] * seg.width)
            shade = 1 - shade
        else:
            bar.append(_CELLS[seg.kind] * seg.width)
    remaining = free(gpu, uses)
    parts = [f"{code(replica_name(u.model, u.replica))} {format_bytes(u.vram)}" for u in uses]
    if remaining >= 0:
        parts.append(f"{format_bytes(remaining)} free")
    else:
        parts.append(f"**over capacity by {format_bytes(-remaining)}**")
    return f"{code(''.join(bar))}<br>{', '.join(parts)}"


def _details(plan: Plan) -> list[str]:
    gpus = len({(p.node, g) for p in plan.placement for g in p.gpus})
    summary = (
        f"Placement after the plan: {len(plan.placement)} "
        f"{'replica' if len(plan.placement) == 1 else 'replicas'} on {gpus} {'GPU' if gpus == 1 else 'GPUs'}"
    )
    lines = ["<details>", f"<summary>{summary}</summary>", ""]
    if plan.placement:
        lines += ["| Model | Replica | Node | GPUs | VRAM per GPU |", "|---|--:|---|---|--:|"]
        for placed in plan.placement:
            gpu_list = ", ".join(f"gpu{i}" for i in placed.gpus)
            lines.append(
                f"| {code(placed.model)} | {placed.replica} | {escape(placed.node)} | {gpu_list} | "
                f"{format_bytes(placed.vram)} |"
            )
        lines.append("")
    lines += [
        f"Planned against observed state {code(plan.fingerprint)} and specs {code(plan.desired_fingerprint)}; "
        "`reconciler apply --plan` refuses the saved plan once the cluster has changed.",
        "",
        "</details>",
    ]
    return lines
