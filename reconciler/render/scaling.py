"""On-demand models (`replicas: {min, max}`) in plans: their count, what demand asked for, and why. Renders only."""

from __future__ import annotations

from reconciler.plan import Plan, ScaleDecision


def _line(plan: Plan, d: ScaleDecision) -> str:
    s = plan.model(d.model).scaling
    bounds = f"min {s.min}, max {s.max}" if s is not None else ""
    count = f"{d.running} → {d.wanted}" if d.changes else f"{d.wanted}"
    demand = f"{d.in_flight} in flight, {d.queued} waiting"
    why = d.reason or ("unloaded: the first request loads it" if d.wanted == 0 else "steady")
    return f"{d.model}: {count} replica{'s' if d.wanted != 1 else ''} ({bounds}; {demand}): {why}"


def scaling_lines(plan: Plan) -> list[str]:
    if not plan.scaling:
        return []
    return ["On demand:"] + [f"  {_line(plan, d)}" for d in plan.scaling]


def scaling_markdown(plan: Plan, *, code, escape) -> list[str]:
    if not plan.scaling:
        return []
    lines = ["#### On-demand models", ""]
    for d in plan.scaling:
        name, _, rest = _line(plan, d).partition(": ")
        lines.append(f"- {code(name)}: {escape(rest)}")
    return lines + [""]
