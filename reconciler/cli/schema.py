"""`reconciler schema [--check] [--out DIR]`: regenerate the JSON Schemas, or check the committed ones are current."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from reconciler import schemas as schema

    out = Path(args.out)
    if args.check:
        stale = schema.stale(out)
        for name in stale:
            print(f"{out / name}: stale: run `reconciler schema --out {out}` and commit the result")
        if stale:
            return 1
        print(f"{out}: all {len(schema.generate())} schemas are current")
        return 0
    changed = schema.write(out)
    for name in changed:
        print(f"wrote {out / name}")
    print(f"{out}: {len(changed)} of {len(schema.generate())} schemas changed")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "schema",
        help="regenerate the JSON Schemas (or check they are current)",
        description="Write the JSON Schemas of the spec documents (one per kind and document.schema.json for any "
        "document), the observed-state snapshot and the plan into DIR. With --check, write nothing and exit 1 "
        "naming each file that is missing or differs.",
    )
    parser.add_argument("--check", action="store_true", help="exit 1 when a committed schema is stale")
    parser.add_argument("--out", default="schemas", metavar="DIR", help="schema directory (default: schemas)")
    parser.set_defaults(handler=run)
