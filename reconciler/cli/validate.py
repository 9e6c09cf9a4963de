"""`reconciler validate [DIR]`: check every spec file and report every mistake at once."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.spec import LoadResult


def _count(n: int, noun: str, plural: str | None = None) -> str:
    return f"{n} {noun if n == 1 else (plural or noun + 's')}"


def summary(directory: Path, result: LoadResult) -> str:
    read = f"{_count(len(result.files), 'file')}, {_count(result.documents, 'document')}"
    warnings = f", {_count(len(result.warnings), 'warning')}" if result.warnings else ""
    if result.desired is None:
        return f"{directory}: {_count(len(result.errors), 'error')}{warnings} in {read}"
    desired = result.desired
    kinds = ", ".join(
        (
            _count(len(desired.pools), "pool"),
            _count(len(desired.priority_classes), "priority class", "priority classes"),
            _count(len(desired.models), "model"),
        )
        # Only when there are jobs: the summary of a directory without them reads as it always did.
        + ((_count(len(desired.jobs), "job"),) if desired.jobs else ())
    )
    return f"{directory}: valid: {read} ({kinds}){warnings}"


def as_json(directory: Path, result: LoadResult) -> str:
    return json.dumps(
        {
            "directory": str(directory),
            "ok": result.ok,
            "files": len(result.files),
            "documents": result.documents,
            "errors": len(result.errors),
            "warnings": len(result.warnings),
            "diagnostics": [d.to_json() for d in result.diagnostics],
            "fingerprint": result.desired.fingerprint if result.desired is not None else None,
        },
        indent=2,
        sort_keys=True,
    )


def run(args: argparse.Namespace) -> int:
    from reconciler.spec import load_specs  # pydantic and ruamel: only when the command runs

    directory = Path(args.directory)
    result = load_specs(directory)
    if args.format == "json":
        print(as_json(directory, result))
    else:
        for diagnostic in result.diagnostics:
            print(diagnostic)
        print(summary(directory, result))
    return 0 if result.ok else 1


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "validate",
        help="check every spec file and report every mistake at once",
        description="Check every *.yaml/*.yml spec under DIR: YAML syntax, each document's fields, and the rules "
        "between documents. Prints each problem as path:line:col: error: message, then a summary; "
        "exits 1 when there is an error (warnings alone exit 0).",
    )
    parser.add_argument("directory", nargs="?", default="specs", metavar="DIR", help="spec directory (default: specs)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    parser.set_defaults(handler=run)
