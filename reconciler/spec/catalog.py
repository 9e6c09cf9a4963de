"""The NodeType kind: a catalogue of nodes one may buy or rent, read from a file or a directory for `advise`.

A catalogue is not part of a spec directory's desired state: it is read on its own, with the same YAML reading,
the same `file:line:col` diagnostics and the same message translation as every other kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

from pydantic import BeforeValidator, Field, ValidationError, WithJsonSchema

from reconciler.advise import PRICE_UNIT, NodeType
from reconciler.desired import GpuSpec
from reconciler.spec.diagnostics import NOWHERE, Diagnostic, Severity, error
from reconciler.spec.fields import describe, integer
from reconciler.spec.messages import translate
from reconciler.spec.models import API_VERSION, Gpu, _Document, _Spec
from reconciler.spec.source import read_documents, too_large

KIND = "NodeType"


def _price(value: Any) -> int:
    """A price per hour as written (5, 5.00, "2.45") in PRICE_UNIT: exact, at most four decimals."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise ValueError(f"must be a price per hour such as 2.45, not {describe(value)}")
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise ValueError(f"must be a price per hour such as 2.45, not {describe(value)}") from None
    if not amount.is_finite() or amount < 0:
        raise ValueError(f"must be a price of 0 or more per hour, not {describe(value)}")
    units = amount * PRICE_UNIT
    if units != units.to_integral_value():
        raise ValueError(f"{value} has more than four decimals: round it to at most four")
    return int(units)


Price = Annotated[int, BeforeValidator(_price), WithJsonSchema({"type": "number", "minimum": 0})]


class NodeTypeSpec(_Spec):
    label: ClassVar[str] = "a NodeType spec"
    gpus: list[Gpu] = Field(min_length=1, description="The node's GPUs, in device-index order.")
    price_per_hour: Price = Field(description="What one node costs per hour, in any one currency for all types.")
    max: integer(minimum=0) | None = Field(  # type: ignore[valid-type]
        default=None, description="At most this many nodes of this type; omitted: no limit."
    )


class NodeTypeDocument(_Document):
    """A reconciler/v1 NodeType: a node one may buy or rent, for `reconciler advise --catalog`."""

    label: ClassVar[str] = "a NodeType document"
    kind: Literal["NodeType"]
    spec: NodeTypeSpec


@dataclass(frozen=True, slots=True)
class CatalogResult:
    types: tuple[NodeType, ...]  # in file order, then document order; empty when there is any error
    diagnostics: tuple[Diagnostic, ...]

    @property
    def ok(self) -> bool:
        return not any(d.severity is Severity.ERROR for d in self.diagnostics)


def load_catalog_files(files: Mapping[str, bytes]) -> CatalogResult:
    diagnostics: list[Diagnostic] = []
    found: list[tuple[NodeType, str]] = []
    seen: dict[str, str] = {}
    for path in sorted(files):
        read = read_documents(path, files[path])
        diagnostics.extend(read.diagnostics)
        for doc in read.documents:
            data = doc.data
            if not isinstance(data, dict):
                diagnostics.append(error(path, doc.start, f"a document must be a NodeType mapping, not {describe(data)}"))
                continue
            if data.get("kind") != KIND:
                at = doc.positions.value(("kind",)) if "kind" in data else doc.start
                diagnostics.append(error(path, at, f"a catalogue holds only `kind: {KIND}` documents, not "
                                                   f"{describe(data.get('kind'))}; keep other kinds in the spec directory"))
                continue
            if data.get("apiVersion") != API_VERSION:
                at = doc.positions.value(("apiVersion",)) if "apiVersion" in data else doc.start
                diagnostics.append(error(path, at, f"apiVersion {describe(data.get('apiVersion'))} is not supported: "
                                                   f"write {API_VERSION}"))
                continue
            try:
                document = NodeTypeDocument.model_validate(data)
            except ValidationError as exc:
                for detail in exc.errors():
                    problem = translate(NodeTypeDocument, detail)
                    at = doc.positions.key(problem.path) if problem.at_key else doc.positions.value(problem.path)
                    diagnostics.append(error(path, at, problem.message))
                continue
            name = document.metadata.name
            where = doc.positions.value(("metadata", "name"))
            if name in seen:
                diagnostics.append(error(path, where, f"NodeType `{name}` is defined twice (first at {seen[name]}); "
                                                      "rename or remove one"))
                continue
            seen[name] = f"{path}:{where.line}:{where.col}"
            spec = document.spec
            found.append((NodeType(name=name, gpus=tuple(GpuSpec(g.name, g.memory) for g in spec.gpus),
                                   price=spec.price_per_hour, max=spec.max), path))
    if not files:
        diagnostics.append(error(".", NOWHERE, "no catalogue files found: write NodeType documents in *.yaml files"))
    elif not found and not diagnostics:
        diagnostics.append(error(".", NOWHERE, "the catalogue holds no NodeType documents"))
    ordered = tuple(sorted(set(diagnostics), key=lambda d: d.sort_key))
    has_errors = any(d.severity is Severity.ERROR for d in ordered)
    return CatalogResult(types=() if has_errors else tuple(t for t, _ in found), diagnostics=ordered)


def load_catalog(path: Path) -> CatalogResult:
    """A catalogue file, or every *.yaml/*.yml file under a directory."""
    path = Path(path)
    if path.is_file():
        files = {path.name: path}
    elif path.is_dir():
        files = {p.relative_to(path).as_posix(): p for p in sorted(path.rglob("*"))
                 if p.suffix in (".yaml", ".yml") and p.is_file() and not any(x.startswith(".") for x in p.parts)}
    else:
        return CatalogResult(types=(), diagnostics=(error(str(path), NOWHERE, "the catalogue does not exist"),))
    contents: dict[str, bytes] = {}
    unreadable: list[Diagnostic] = []
    for relative, file in files.items():
        big = too_large(relative, file.stat().st_size)
        if big is not None:
            unreadable.append(big)
            continue
        contents[relative] = file.read_bytes()
    result = load_catalog_files(contents)
    if unreadable:
        return CatalogResult(types=(), diagnostics=tuple(sorted({*result.diagnostics, *unreadable},
                                                                 key=lambda d: d.sort_key)))
    return result
