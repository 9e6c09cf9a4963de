"""Spec documents as Python data, and loading them through the real loader without touching the disk."""

from __future__ import annotations

import io
from typing import Any

from ruamel.yaml import YAML

from reconciler.spec import LoadResult, load_spec_files


def dump(*documents: dict[str, Any]) -> bytes:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    stream = io.StringIO()
    yaml.dump_all(list(documents), stream)
    return stream.getvalue().encode()


def load(files: dict[str, list[dict[str, Any]] | str]) -> LoadResult:
    return load_spec_files(
        {path: (docs.encode() if isinstance(docs, str) else dump(*docs)) for path, docs in files.items()}
    )


def pool(name: str = "lab", **spec: Any) -> dict[str, Any]:
    spec.setdefault("inventory", [{"node": f"{name}-a", "gpus": [{"name": "RTX 3090", "memory": "24Gi"}] * 2}])
    return {"apiVersion": "reconciler/v1", "kind": "ResourcePool", "metadata": {"name": name}, "spec": spec}


def klass(name: str, value: int, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "reconciler/v1",
        "kind": "PriorityClass",
        "metadata": {"name": name},
        "spec": {"value": value, **spec},
    }


def model(name: str, labels: dict[str, str] | None = None, **spec: Any) -> dict[str, Any]:
    spec.setdefault("source", f"org/{name}")
    spec.setdefault("vram", "4Gi")
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "reconciler/v1", "kind": "Model", "metadata": metadata, "spec": spec}


def messages(result: LoadResult) -> list[str]:
    return [str(d) for d in result.diagnostics]


def job(name: str, **spec: Any) -> dict[str, Any]:
    spec.setdefault("vram", "4Gi")
    spec.setdefault("entrypoint", "python run.py")
    return {"apiVersion": "reconciler/v1", "kind": "Job", "metadata": {"name": name}, "spec": spec}
