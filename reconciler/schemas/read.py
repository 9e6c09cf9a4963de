"""Reading the files that have a schema: an observed-state snapshot and a saved plan.

Each is checked against its JSON Schema before it is turned into data, so a mistake is named by its JSON path, and
every refusal is a ``UserError`` of one or a few lines, never a traceback.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from reconciler.errors import UserError
from reconciler.observed import ObservedFormatError, ObservedState, from_json
from reconciler.plan import Plan, digest
from reconciler.plan import from_json as plan_from_json
from reconciler.schemas import observed as observed_schema
from reconciler.schemas import plan as plan_schema

MAX_ERRORS = 20


def json_path(parts: Iterable[str | int]) -> str:
    out = "$"
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else f".{part}"
    return out


def read_json(path: Path, *, what: str) -> Any:
    try:
        raw = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UserError(f"cannot read the {what} {path}: {reason}") from exc
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise UserError(f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}") from exc
    except RecursionError as exc:
        raise UserError(f"{path}: not a {what}: nested too deeply") from exc


def check_schema(path: Path, data: Any, schema: dict[str, Any], *, what: str, filename: str) -> None:
    validator = Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (list(map(str, e.absolute_path)), e.message))
    if errors:
        lines = [f"{path}: not {what} ({filename}):"]
        lines += [f"  {json_path(e.absolute_path)}: {e.message}" for e in errors[:MAX_ERRORS]]
        if len(errors) > MAX_ERRORS:
            lines.append(f"  … and {len(errors) - MAX_ERRORS} more")
        raise UserError("\n".join(lines))


def read_snapshot(path: Path) -> ObservedState:
    """A recorded observed state (`reconciler observe`), checked against its schema first."""
    data = read_json(path, what="observed state")
    check_schema(path, data, observed_schema.schema(), what="an observed-state snapshot",
                 filename=observed_schema.FILENAME)
    try:
        return from_json(data)
    except ObservedFormatError as exc:
        raise UserError(f"{path}: {exc}") from exc


def read_plan(path: Path) -> Plan:
    """A saved plan (`reconciler plan --out`): checked against its schema, then against its own digest, so a plan
    that anyone edited after it was written is refused, as Terraform refuses a plan file it did not write."""
    data = read_json(path, what="plan")
    check_schema(path, data, plan_schema.schema(), what="a saved plan", filename=plan_schema.FILENAME)
    if data["digest"] != digest(data):
        raise UserError(f"{path} was edited after `reconciler plan --out` wrote it (its content no longer matches "
                        "its digest): nothing was applied; make a new plan with `reconciler plan --out`.")
    return plan_from_json(data)
