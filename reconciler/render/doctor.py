"""`reconciler doctor`'s report for people (text) and for scripts (JSON). Only renders: the checks are judged in
``doctor.judge``."""

from __future__ import annotations

import json
from typing import Any

from reconciler.doctor.judge import CLUSTER, Report, Status

_COLOURS = {Status.PASS: "32", Status.WARN: "33", Status.FAIL: "31"}


def to_json(report: Report) -> dict[str, Any]:
    return {
        "address": report.address,
        "ok": report.ok,
        "counts": {status.value: report.count(status) for status in Status},
        "checks": [
            {"scope": c.scope, "check": c.name, "status": c.status.value, "message": c.message, "fix": list(c.fix)}
            for c in report.checks
        ],
    }


def render_json(report: Report) -> str:
    return json.dumps(to_json(report), indent=2, ensure_ascii=False) + "\n"


def render_text(report: Report, *, color: bool = False) -> str:
    lines = [f"reconciler doctor: the Ray cluster at {report.address}"]
    scope = None
    width = max((len(c.name) for c in report.checks), default=0)
    for check in report.checks:
        if check.scope != scope:
            scope = check.scope
            lines.extend(["", "cluster" if scope == CLUSTER else f"node {scope}"])
        mark = check.status.value
        if color:
            mark = f"\x1b[{_COLOURS[check.status]}m{mark}\x1b[0m"
        lines.append(f"  {mark}  {check.name:<{width}}  {check.message}")
        lines.extend(f"        {'':<{width}}  {command}" for command in check.fix)
    counts = [f"{report.count(Status.PASS)} passed",
              _plural(report.count(Status.WARN), "warning"),
              _plural(report.count(Status.FAIL), "failure")]
    lines.extend(["", ", ".join(counts) + "."])
    return "\n".join(lines) + "\n"


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"
