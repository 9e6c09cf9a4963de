"""JSON Schema (draft 2020-12) of `reconciler doctor --format json` (``reconciler.render.doctor``)."""

from __future__ import annotations

from typing import Any

from reconciler.doctor.judge import CLUSTER, Status

FILENAME = "doctor.schema.json"
CHECKS = ("nodes", "auth", "gateway", "probe", "nvml", "gpus", "versions", "engine", "shm", "clock")


def schema() -> dict[str, Any]:
    count = {"type": "integer", "minimum": 0}
    check = {
        "type": "object",
        "description": "One check: where, which, its verdict, one sentence saying what was found and what to do, and "
        "the commands that fix it (run in order on the node; empty when there are none).",
        "properties": {
            "scope": {"type": "string", "minLength": 1,
                      "description": f"a node's name, or {CLUSTER!r} for the checks of the whole cluster"},
            "check": {"enum": list(CHECKS)},
            "status": {"enum": [s.value for s in Status]},
            "message": {"type": "string", "minLength": 1},
            "fix": {"type": "array", "items": {"type": "string", "minLength": 1}},
        },
        "required": ["check", "fix", "message", "scope", "status"],
        "additionalProperties": False,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "reconciler doctor",
        "description": "The setup check of a Ray cluster, node by node; ok is false (and the exit status 1) when any "
        "check fails.",
        "type": "object",
        "properties": {
            "address": {"type": "string", "minLength": 1, "description": "the GCS address of the cluster checked"},
            "ok": {"type": "boolean"},
            "counts": {"type": "object", "properties": {s.value: count for s in Status},
                       "required": sorted(s.value for s in Status), "additionalProperties": False},
            "checks": {"type": "array", "items": check},
        },
        "required": ["address", "checks", "counts", "ok"],
        "additionalProperties": False,
    }
