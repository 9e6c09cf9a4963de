"""`reconciler up`: start the local Ray cluster (the embedded default) shaped like the pools' inventory."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.cli import _cluster, _planning
from reconciler.errors import UserError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "up",
        help="start a local Ray cluster shaped like the pools' inventory",
        description="Start a local Ray cluster that outlives this command: one Ray node per inventory node of the "
        "pools, labelled like the pool selects it, with one VRAM resource per simulated GPU (or, when NVML sees GPUs "
        "here, one node with the real ones); Serve's HTTP proxy and "
        "the dashboard on 127.0.0.1, free ports, token auth on. Its state lives in .reconciler/cluster.json; "
        "`reconciler down` stops it.",
    )
    parser.add_argument("directory", nargs="?", default=Path("specs"), type=Path, metavar="DIR",
                        help="the spec directory (default: specs)")
    parser.add_argument("--simulate", action="store_true",
                        help="simulate the inventory's GPUs even when NVML sees real ones here")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.adapter import localcluster

    desired = _planning.load_directory(args.directory)
    path = localcluster.default_state_file()
    state = localcluster.read_state(path)
    if state is not None:
        print(f"A local cluster is already running: Ray {state['address']}, models at {state['http_url']}.")
        return 0
    running = localcluster.supervisors(path)
    if running:
        raise UserError(
            f"a local cluster started from here is still running (supervisor pid {', '.join(map(str, running))}) "
            f"though {path} does not describe it; stop it with `reconciler down`, then run `reconciler up` again"
        )
    _cluster.start_local(desired, path, simulate=args.simulate)
    return 0
