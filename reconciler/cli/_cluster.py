"""What the cluster commands share: connecting (offering the local cluster when there is none) and confirming."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reconciler.errors import UserError
from reconciler.settings import DEFAULTS

if TYPE_CHECKING:
    from reconciler.desired import DesiredState


def add_address_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address",
        metavar="ADDR",
        help="the Ray cluster's GCS address HOST:PORT (default: RAY_ADDRESS, else the local cluster of `reconciler up`)",
    )
    add_connect_timeout_argument(parser)


def add_connect_timeout_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connect-timeout", type=float, default=DEFAULTS.cluster.connect_timeout, metavar="S",
                        help="seconds to wait for the cluster to answer before giving up (default: %(default)g)")


def confirm(question: str) -> bool:
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        return False
    return answer.strip().lower() in ("y", "yes")


def interactive() -> bool:
    return sys.stdin.isatty() and sys.stdout.isatty()


def local_spec(desired: DesiredState, *, simulate: bool = False) -> Any:
    """Real GPUs when NVML sees some on this machine (one node), else one simulated node per inventory node."""
    from reconciler.adapter import localcluster
    from reconciler.adapter.nvml import probe

    if not simulate:
        found = probe()
        if found["available"] and found["gpus"]:
            print(f"NVML sees {len(found['gpus'])} GPU(s) here: starting one node with them.", file=sys.stderr)
            return localcluster.spec_for_real_gpus(desired, [g["memory"] for g in found["gpus"]])
    return localcluster.spec_from_desired(desired)


def start_local(desired: DesiredState, state_file: Path | None = None, *, simulate: bool = False) -> dict[str, Any]:
    from reconciler.adapter import localcluster

    path = state_file or localcluster.default_state_file()
    spec = local_spec(desired, simulate=simulate)
    # Relative model sources (a locally built model directory) mean the directory the cluster was started from.
    spec = dataclasses.replace(spec, env={**spec.env, "RECONCILER_SOURCE_ROOT": str(Path.cwd())})
    if not spec.nodes:
        raise UserError("the pools list no inventory nodes: there is nothing to start a local cluster from")
    names = ", ".join(n.name for n in spec.nodes)
    print(f"Starting a local Ray cluster with {len(spec.nodes)} node(s): {names} …", file=sys.stderr, flush=True)
    try:
        state = localcluster.start(spec, path)
    except RuntimeError as exc:
        raise UserError(str(exc)) from exc
    print(
        f"Local cluster up: Ray {state['address']}, dashboard {state['dashboard_url']}, "
        f"models at {state['http_url']} (state in {path}; `reconciler down` stops it)",
        file=sys.stderr,
    )
    return state


def connect(address: str | None, *, desired: DesiredState | None = None, offer_local: bool = False,
            yes: bool = False, connect_timeout: float | None = None) -> Any:
    """A connected adapter Cluster. With `offer_local`, no address and no cluster running, offers to start the local
    one (starts it with `yes`)."""
    from reconciler import adapter
    from reconciler.adapter.cluster import find_local_cluster

    if offer_local and desired is not None and not address and not os.environ.get("RAY_ADDRESS"):
        if find_local_cluster() is None:
            if not (yes or (interactive() and confirm("No Ray cluster is running. Start the local one now?"))):
                raise UserError(
                    "no Ray cluster to apply to: start the local one with `reconciler up` (or pass --yes), or "
                    "point --address / RAY_ADDRESS at yours"
                )
            start_local(desired)
    return adapter.connect(address, connect_timeout=connect_timeout)


def add_max_starting_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--max-starting", type=int, default=DEFAULTS.apply.max_starting, metavar="N",
                        help="replicas started at once on one node; the others wait for them to run (model loads "
                        "compete for CPU, disk and network; 0: no limit; default: %(default)s)")
