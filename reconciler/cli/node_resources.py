"""`reconciler node-resources`: the `ray start` arguments that let reconciler place replicas exactly on this node.

Every GPU becomes one Ray resource, ``vram_mb_<node>_gpu<i>`` = its memory in MiB (less --reserve), and the node is
labelled with its spec name (and the pool's selector labels). A replica then asks for its VRAM on exactly the GPU it
was planned on, and Ray refuses over-commit GPU by GPU.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
from pathlib import Path

from reconciler.errors import UserError

EPILOG = """\
examples:
  ray start --address HEAD:6379 $(reconciler node-resources --node node-a --label pool=homelab --reserve 1Gi)
  reconciler node-resources --node node-b --inventory specs/      # no NVML here: the GPUs the specs list
  reconciler node-resources --format json                          # for scripts"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "node-resources",
        help="print the `ray start` arguments for this node's GPUs",
        description=__doc__.split("\n\n", 1)[1].strip() + "\n\nThe GPUs are those NVML sees on this machine; where "
        "there is no NVML (a CPU box, a container without the driver), --inventory DIR takes them from the pools' "
        "inventory entry for --node.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--node", metavar="NAME", help="the node's name in the specs (default: the host name)")
    parser.add_argument("--reserve", metavar="QUANTITY", default="0",
                        help="VRAM per GPU left out of the resource, e.g. 1Gi (default: 0; the pool's reserve "
                        "with --inventory)")
    parser.add_argument("--label", metavar="KEY=VALUE", action="append", default=[],
                        help="another node label, e.g. the pool's selector pool=homelab (repeatable)")
    parser.add_argument("--inventory", metavar="DIR", type=Path,
                        help="take the GPUs from this spec directory's inventory instead of NVML")
    parser.add_argument("--format", choices=("args", "json"), default="args",
                        help="args: `ray start` flags (default); json: resources and labels")
    parser.set_defaults(handler=run)


def _from_nvml() -> list[int]:
    from reconciler.adapter.nvml import NvmlUnavailable, read_gpus

    try:
        gpus = read_gpus()
    except NvmlUnavailable as exc:
        raise UserError(
            f"{exc}. On a machine without NVML, name the node and take its GPUs from the specs: "
            "reconciler node-resources --node NAME --inventory DIR"
        ) from exc
    if not gpus:
        raise UserError("NVML sees no GPU on this machine; use --inventory DIR --node NAME to describe one")
    return [g["memory"] for g in gpus]


def _from_inventory(directory: Path, node: str) -> tuple[list[int], int, dict[str, str]]:
    from reconciler.cli._planning import load_directory

    desired = load_directory(directory)
    for pool in desired.pools:
        for inv in pool.inventory:
            if inv.node == node:
                return [g.memory for g in inv.gpus], pool.reserve, dict(pool.selector or ())
    known = sorted(inv.node for pool in desired.pools for inv in pool.inventory)
    raise UserError(f"no inventory node {node!r} in {directory}; known: {', '.join(known) or 'none'}")


def run(args: argparse.Namespace) -> int:
    from reconciler.naming import node_resources, ray_start_args
    from reconciler.observed import NODE_NAME_LABEL
    from reconciler.quantity import parse_quantity

    node = args.node or socket.gethostname()
    labels: dict[str, str] = {}
    reserve = _quantity(parse_quantity, args.reserve)
    if args.inventory is not None:
        if not args.node:
            raise UserError("--inventory needs --node: which inventory entry this machine is")
        memories, pool_reserve, selector = _from_inventory(args.inventory, node)
        labels.update(selector)
        if args.reserve == "0":
            reserve = pool_reserve
    else:
        memories = _from_nvml()
    for item in args.label:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--label {item!r}: expected KEY=VALUE")
        labels[key] = value
    labels[NODE_NAME_LABEL] = node
    resources = {k: int(v) for k, v in node_resources(node, memories, reserve).items()}
    if args.format == "json":
        json.dump({"node": node, "num_gpus": len(memories), "resources": resources, "labels": labels}, sys.stdout,
                  indent=2)
        sys.stdout.write("\n")
        return 0
    # Unquoted on purpose: meant for `ray start ... $(reconciler node-resources ...)`, where the shell splits the
    # output on spaces and none of the arguments contains one.
    print(" ".join(ray_start_args(node, memories, reserve=reserve, labels=labels)))
    return 0


def _quantity(parse, text: str) -> int:
    try:
        return int(parse(text)) if text not in ("0", "") else 0
    except Exception as exc:  # the quantity parser's own message says what is wrong with the spelling
        raise UserError(f"--reserve {text!r}: {exc}") from exc
