"""`reconciler doctor [DIR]`: the setup check, node by node: NVML and the driver (or simulated GPUs), the GPUs
against the vram_mb resources Ray advertises, versions, the engine, /dev/shm, clocks, token auth, the gateway."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconciler.cli import _cluster, _planning
from reconciler.settings import DEFAULTS

EPILOG = """\
examples:
  reconciler doctor                    the local cluster of `reconciler up`, against specs/
  reconciler doctor specs/ --address head:6379
  reconciler doctor --format json      for scripts; exit status 1 when any check fails"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the cluster's setup, node by node, and say what to fix",
        description="Run a probe task on every node and check: NVML and the driver (or simulated GPUs from the "
        "pool inventory), the GPUs against the vram_mb resources Ray advertises (a mismatch prints the `ray start` "
        "arguments that fix it), Ray, Python and vLLM versions against the other nodes and the controller, vLLM "
        "importable with the backend the node's GPUs need, /dev/shm where vLLM runs, clock skew, token auth and "
        "the gateway. Each check passes, warns or fails with one sentence saying what to do; the exit status is 1 "
        "when any fails.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", nargs="?", default=Path("specs"), type=Path, metavar="DIR",
                        help="the spec directory: the pool inventory of simulated nodes, the engines each pool needs "
                        "(default: specs; optional)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="json: one document for scripts (schema: schemas/doctor.schema.json)")
    parser.add_argument("--probe-timeout", type=float, default=DEFAULTS.doctor.probe_timeout, metavar="S",
                        help="seconds each node's probe task may take (default: %(default)g)")
    _cluster.add_address_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from reconciler.adapter.doctor import gather
    from reconciler.cli.observe import load_optional
    from reconciler.doctor.judge import judge
    from reconciler.render.doctor import render_json, render_text

    desired = load_optional(args.directory)
    settings = dataclasses.replace(DEFAULTS.doctor, probe_timeout=args.probe_timeout)
    with _cluster.connect(args.address, connect_timeout=args.connect_timeout) as cluster:
        facts = gather(cluster, desired, settings=settings)
    report = judge(facts, desired, settings)
    if args.format == "json":
        sys.stdout.write(render_json(report))
    else:
        sys.stdout.write(render_text(report, color=_planning.use_color(sys.stdout)))
    return 0 if report.ok else 1
