"""Capacity advice for people and programs: the nodes to buy or rent, what they cost per hour and per month, whether
that is proven cheapest, the runner-up, and the placement on them with the plan renderers' VRAM bars.

The JSON keys `cost`, `bound`, `proven` and `nodes` (`[{type, count}]`) are the interface; costs are per hour in the
catalogue's currency."""

from __future__ import annotations

import json
from dataclasses import dataclass

from rich.text import Text

from reconciler.advise import PRICE_UNIT, Advice, Choice
from reconciler.packer import Item
from reconciler.plan import GpuUse, GpuView
from reconciler.quantity import format_bytes
from reconciler.render import markdown, text
from reconciler.render._common import free


@dataclass(frozen=True, slots=True)
class AdviceView:
    """An advice with what rendering it needs from the question."""

    advice: Advice
    pool: str
    items: tuple[Item, ...]  # the request's items, in the order of `advice.placement`
    reserve: int
    hours_per_month: int
    left_out: tuple[str, ...] = ()  # models below --min-priority: not sized for
    tolerate: int = 0

    def gpus(self) -> list[GpuView]:
        uses: dict[tuple[int, int], list[GpuUse]] = {}
        for item, (node, gpus) in zip(self.items, self.advice.placement, strict=True):
            for g in gpus:
                uses.setdefault((node, g), []).append(GpuUse(item.model, item.replica, item.vram))
        out = []
        for n, node in enumerate(self.advice.nodes):
            for g, gpu in enumerate(node.gpus):
                placed = tuple(sorted(uses.get((n, g), []), key=lambda u: (u.model, u.replica)))
                out.append(GpuView(pool=self.pool, node=node.name, index=g, name=gpu.name, memory=gpu.memory,
                                   reserve=self.reserve, foreign=0, before=(), after=placed))
        return out


def money(units: int) -> str:
    return f"{units / PRICE_UNIT:,.2f}"


def _nodes(choice: Choice) -> str:
    return ", ".join(f"{n} × {name}" for name, n in choice.counts) or "nothing"


def summary(view: AdviceView) -> list[str]:
    a = view.advice
    verb = "Add" if any(n.kept for n in a.nodes) else "Buy or rent"
    month = a.choice.cost * view.hours_per_month
    lines = [f"{verb}: {_nodes(a.choice)}.",
             f"Cost: {money(a.choice.cost)} per hour, {money(month)} per month ({view.hours_per_month} hours)."]
    if a.proven:
        lines.append("Proven cheapest: no choice of the catalogue costs less.")
    else:
        gap = a.choice.cost - a.bound
        lines.append(f"Not proven cheapest: no choice costs less than {money(a.bound)} per hour; this one may be up "
                     f"to {money(gap)} per hour ({100 * gap / max(a.choice.cost, 1):.1f}%) above the cheapest.")
    if a.runner_up is not None:
        extra = a.runner_up.cost - a.choice.cost
        lines.append(f"Runner-up: {_nodes(a.runner_up)}, {money(a.runner_up.cost)} per hour "
                     f"({money(extra)} more).")
    else:
        lines.append("Runner-up: none found.")
    if view.tolerate:
        lines.append(f"Every replica still has a place after any {view.tolerate} node(s) fail.")
    if view.left_out:
        lines.append(f"Not sized for (below --min-priority): {', '.join(view.left_out)}.")
    kept = [n.name for n in a.nodes if n.kept]
    if kept:
        lines.append(f"Kept (already paid for): {', '.join(kept)}.")
    return lines


def render_text(view: AdviceView, *, color: bool = False) -> str:
    lines = [Text(f"Capacity advice for pool {view.pool}", "bold"), Text()]
    lines += [Text(line) for line in summary(view)]
    gpus = view.gpus()
    if gpus:
        lines += [Text(), Text("Placement, VRAM per GPU (name│ a replica, · free):")]
        models = sorted({u.model for g in gpus for u in g.after})
        colours = {m: text._PALETTE[i % len(text._PALETTE)] for i, m in enumerate(models)}
        for node in view.advice.nodes:
            kind = "kept" if node.kept else node.type
            lines.append(Text(f"  {node.name} ({kind})"))
            for gpu in (g for g in gpus if g.node == node.name):
                lines.append(Text(f"    {text._gpu_title(gpu)}"))
                lines.append(text._bar_line("placed", gpu, gpu.after, colours))
        free_total = sum(max(0, free(g, g.after)) for g in gpus)
        lines += [Text(), Text(f"Free after placement: {format_bytes(free_total)} over {len(gpus)} GPUs.")]
    return text.to_str(lines, color=color)


def render_markdown(view: AdviceView) -> str:
    out = [f"### Capacity advice for pool `{markdown.escape(view.pool)}`", ""]
    out += [f"- {markdown.escape(line)}" for line in summary(view)]
    gpus = view.gpus()
    if gpus:
        out += ["", "| Node | Type | GPU | Memory | Placement |", "|---|---|---|---|---|"]
        types = {n.name: ("kept" if n.kept else n.type) for n in view.advice.nodes}
        for gpu in gpus:
            out.append(f"| {markdown.escape(gpu.node)} | {markdown.escape(types[gpu.node])} | gpu{gpu.index} "
                       f"| {format_bytes(gpu.memory)} | {markdown._usage(gpu, gpu.after)} |")
        out += ["", f"Free after placement: {format_bytes(sum(max(0, free(g, g.after)) for g in gpus))}."]
    return "\n".join(out) + "\n"


def to_json(view: AdviceView) -> dict:
    a = view.advice

    def choice(c: Choice) -> dict:
        return {"cost": c.cost / PRICE_UNIT, "costPerMonth": c.cost * view.hours_per_month / PRICE_UNIT,
                "nodes": [{"type": name, "count": n} for name, n in c.counts]}

    gpus = view.gpus()
    return {
        **choice(a.choice),
        "bound": a.bound / PRICE_UNIT,
        "proven": a.proven,
        "runnerUp": None if a.runner_up is None else choice(a.runner_up),
        "pool": view.pool,
        "tolerate": view.tolerate,
        "kept": [n.name for n in a.nodes if n.kept],
        "leftOut": list(view.left_out),
        "method": a.method,
        "placement": [{"model": item.model, "replica": item.replica, "node": a.nodes[node].name, "gpus": list(g)}
                      for item, (node, g) in zip(view.items, a.placement, strict=True)],
        "inventory": [{"node": n.name, "type": n.type or None,
                       "gpus": [{"name": g.name, "memory": g.memory} for g in n.gpus]} for n in a.nodes],
        "free": [{"node": g.node, "gpu": g.index, "free": max(0, free(g, g.after))} for g in gpus],
    }


def render_json(view: AdviceView) -> str:
    return json.dumps(to_json(view), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
