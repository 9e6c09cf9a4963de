"""`reconciler observe`: record the live cluster as an observed-state snapshot (what `plan --observed` reads)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconciler.cli import _cluster, _planning
from reconciler.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "observe",
        help="record the live cluster as an observed-state snapshot (JSON)",
        description="Observe the cluster (nodes, GPUs through NVML or the inventory, foreign VRAM use, replicas) "
        "and print it as JSON (schemas/observed.schema.json), or write it with --out.",
    )
    parser.add_argument("directory", nargs="?", default=Path("specs"), type=Path, metavar="DIR",
                        help="the spec directory, for the pools' inventory of simulated nodes (default: specs; "
                        "optional)")
    parser.add_argument("--out", metavar="FILE", type=Path, help="write the snapshot here instead of stdout")
    _cluster.add_address_argument(parser)
    parser.set_defaults(handler=run)


def load_optional(directory: Path):
    return _planning.load_directory(directory) if directory.is_dir() else None


def run(args: argparse.Namespace) -> int:
    import json

    from reconciler.observed import to_json

    desired = load_optional(args.directory)
    with _cluster.connect(args.address, connect_timeout=args.connect_timeout) as cluster:
        observed = cluster.observe(desired)
    text = json.dumps(to_json(observed), indent=2, sort_keys=False) + "\n"
    if args.out is None:
        sys.stdout.write(text)
        return 0
    try:
        args.out.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write {args.out}: {exc.strerror or exc}") from exc
    print(f"Wrote the observed state to {args.out} (fingerprint {observed.fingerprint}).", file=sys.stderr)
    return 0
