"""`reconciler down`: stop the local Ray cluster `reconciler up` started."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "down",
        help="stop the local Ray cluster",
        description="Stop the local Ray cluster started by `reconciler up` (or by `apply --yes`) from this directory, "
        "found by its state file, by .reconciler/cluster.pid, or by its supervisor's command line: whichever is "
        "still there.",
    )
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.adapter import localcluster

    path = localcluster.default_state_file()
    if localcluster.stop(path):
        print("Local cluster stopped.")
    else:
        print("No local cluster was running.")
    return 0
