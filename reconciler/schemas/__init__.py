"""The JSON Schemas in ``schemas/``: generated from the spec models, the observed-state snapshot (``observed``) and the
saved plan (``plan``), so editors, CI and the readers of those files agree on one format.

Output is deterministic (sorted keys, two-space indent, trailing newline): `reconciler schema --check` compares the
committed files byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter

from reconciler.schemas import doctor, observed, plan, status
from reconciler.spec.catalog import NodeTypeDocument
from reconciler.spec.models import (
    AnyDocument,
    GatewayDocument,
    JobDocument,
    ModelDocument,
    PriorityClassDocument,
    ResourcePoolDocument,
)

DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _spec_schema(target: Any, title: str, description: str) -> dict[str, Any]:
    schema = TypeAdapter(target).json_schema(by_alias=True)
    return {"$schema": DIALECT, **schema, "title": title, "description": description}


def spec_schemas() -> dict[str, dict[str, Any]]:
    return {
        "job.schema.json": _spec_schema(JobDocument, "Job", "A reconciler/v1 Job spec document."),
        "model.schema.json": _spec_schema(ModelDocument, "Model", "A reconciler/v1 Model spec document."),
        "priorityclass.schema.json": _spec_schema(
            PriorityClassDocument, "PriorityClass", "A reconciler/v1 PriorityClass spec document."
        ),
        "resourcepool.schema.json": _spec_schema(
            ResourcePoolDocument, "ResourcePool", "A reconciler/v1 ResourcePool spec document."
        ),
        "gateway.schema.json": _spec_schema(GatewayDocument, "Gateway", "A reconciler/v1 Gateway spec document."),
        "nodetype.schema.json": _spec_schema(
            NodeTypeDocument, "NodeType", "A reconciler/v1 NodeType document of a catalogue for `reconciler advise`."
        ),
        "document.schema.json": _spec_schema(
            AnyDocument,
            "reconciler/v1 document",
            "Any one reconciler/v1 spec document (Gateway, Job, Model, PriorityClass or ResourcePool), chosen by its kind.",
        ),
    }


def other_schemas() -> dict[str, dict[str, Any]]:
    return {module.FILENAME: module.schema() for module in (doctor, observed, plan, status)}


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def generate() -> dict[str, str]:
    """File name → exact file content, for every schema."""
    schemas = {**spec_schemas(), **other_schemas()}
    return {name: render(schemas[name]) for name in sorted(schemas)}


def write(out: Path) -> list[str]:
    """Writes every schema into ``out``; returns the names of the files that changed."""
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    for name, text in generate().items():
        path = out / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
            changed.append(name)
    return changed


def stale(out: Path) -> list[str]:
    """Names of the schema files in ``out`` that are missing or differ from what would be generated."""
    return [
        name
        for name, text in generate().items()
        if not (out / name).exists() or (out / name).read_text(encoding="utf-8") != text
    ]
