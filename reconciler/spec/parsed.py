"""A document that passed its own validation, with the way back to where each of its values was written."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reconciler.spec.diagnostics import Diagnostic, Position, error, warning
from reconciler.spec.source import SourceDocument


@dataclass(frozen=True, slots=True)
class Parsed:
    kind: str
    name: str
    document: Any  # the kind's pydantic document model
    source: SourceDocument

    @property
    def spec(self) -> Any:
        return self.document.spec

    def at(self, *path: str | int) -> Position:
        return self.source.positions.value(path)

    def key(self, *path: str | int) -> Position:
        return self.source.positions.key(path)

    def where(self, *path: str | int) -> str:
        """`file:line:col` of a value, for messages that point at a second place."""
        position = self.at(*path)
        return f"{self.source.path}:{position.line}:{position.col}"

    def error(self, at: Position, message: str) -> Diagnostic:
        return error(self.source.path, at, message)

    def warning(self, at: Position, message: str) -> Diagnostic:
        return warning(self.source.path, at, message)
