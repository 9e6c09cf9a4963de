"""`reconciler estimate [DIR]`: each model's memory per GPU, term by term, and the basis it rests on."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from reconciler.cli._planning import print_diagnostics, read_snapshot
    from reconciler.planner.sizes import resolve
    from reconciler.render.estimate import as_json, as_text
    from reconciler.spec import load_specs

    result = load_specs(Path(args.directory))
    if result.desired is None:
        print_diagnostics(result.diagnostics)
        return 1
    desired = result.desired
    if args.observed is not None:  # the peaks a cluster kept: `basis: measured` where one matches
        desired = resolve(desired, read_snapshot(args.observed))
    unsized = dict(result.unsized)
    if args.format == "json":
        print(as_json(desired.models, unsized))
    else:
        if result.warnings:
            print_diagnostics(result.warnings)
        print(as_text(desired.models, unsized))
    sys.stdout.flush()
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "estimate",
        help="each model's memory per GPU from its files, term by term",
        description="Size every vLLM model of DIR from its files: weights (safetensors headers, else config.json), "
        "KV cache (bytes per token x kvCacheTokens), activations and overhead per GPU. `vram: auto` models take "
        "this figure; for a fixed vram the estimate is shown beside it. With --observed, a peak the cluster kept "
        "for a model's kind replaces the activation and overhead terms (basis: measured).",
    )
    parser.add_argument("directory", nargs="?", default="specs", metavar="DIR", help="spec directory (default: specs)")
    parser.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: text)")
    parser.add_argument("--observed", type=Path, default=None, metavar="FILE",
                        help="an observed-state snapshot whose memory peaks to use (reconciler observe --out)")
    parser.set_defaults(handler=run)
