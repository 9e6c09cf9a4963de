"""The `reconciler` command line.

Each module of this package is one command: it defines ``register(subparsers)``, which adds its sub-parser and sets
``handler`` (a function taking the parsed arguments and returning an exit code). Commands import heavy libraries
(Ray, vLLM, rich) inside their handlers so that `reconciler --help` and `validate` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from reconciler import __version__
from reconciler.errors import UserError

DESCRIPTION = """\
Declarative reconciliation of GPU model serving on Ray.

Keep Models, PriorityClasses and ResourcePools as YAML in git; reconciler validates them, packs every replica onto a
specific GPU by its VRAM, shows the plan, and applies it through Ray Serve."""

EPILOG = """\
typical session:
  reconciler validate specs/           check every spec file, report every mistake at once
  reconciler plan specs/ --offline     what would run where, on the pools' inventory
  reconciler up specs/                 start a local Ray cluster shaped like the inventory
  reconciler apply specs/              plan against the cluster and apply after confirmation
  reconciler status                    VRAM per GPU, replicas and their state"""

# The order commands are listed in `--help`; modules not named here follow alphabetically.
ORDER = (
    "validate", "plan", "diff", "apply", "watch", "observe", "status", "probe", "doctor",
    "up", "down", "node_resources", "schema",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"reconciler {__version__}")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    found = {m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")}
    for name in [n for n in ORDER if n in found] + sorted(found - set(ORDER)):
        importlib.import_module(f"{__name__}.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 2
    try:
        return int(handler(args) or 0)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
