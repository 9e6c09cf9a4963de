"""What the loader reports: one located sentence per problem, errors and warnings alike."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Severity(StrEnum):
    ERROR = "error"
    WARNING = "warning"


@dataclass(frozen=True, slots=True, order=True)
class Position:
    line: int  # 1-based; 0 when the problem concerns the whole file or directory
    col: int  # 1-based; 0 likewise


FILE_START = Position(1, 1)
NOWHERE = Position(0, 0)


@dataclass(frozen=True, slots=True)
class Diagnostic:
    path: str  # relative to the spec directory, with forward slashes
    line: int
    col: int
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = self.path if self.line == 0 else f"{self.path}:{self.line}:{self.col}"
        return f"{where}: {self.severity}: {self.message}"

    @property
    def sort_key(self) -> tuple[str, int, int, str, str]:
        return (self.path, self.line, self.col, str(self.severity), self.message)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "line": self.line,
            "col": self.col,
            "severity": str(self.severity),
            "message": self.message,
        }


def error(path: str, at: Position, message: str) -> Diagnostic:
    return Diagnostic(path=path, line=at.line, col=at.col, severity=Severity.ERROR, message=message)


def warning(path: str, at: Position, message: str) -> Diagnostic:
    return Diagnostic(path=path, line=at.line, col=at.col, severity=Severity.WARNING, message=message)
