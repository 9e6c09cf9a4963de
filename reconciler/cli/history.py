"""`reconciler history [N]`: the applies recorded in the cluster, or one of them with its plan and spec changes."""

from __future__ import annotations

import argparse
import sys

from reconciler.cli import _cluster, _planning
from reconciler.errors import UserError

DESCRIPTION = """\
List the revisions recorded in the cluster: every apply that changed something, by `apply`, `watch` or `rollback`,
with when, who, where its specs came from (and their git commit), how many actions, and how it ended (converged,
failed and why, interrupted). The cluster keeps the last revisions.keep (50).

With N: that revision's plan, what each action came to, and its spec changes against the revision before."""

EPILOG = """\
examples:
  reconciler history
  reconciler history --format json
  reconciler history 7
  reconciler rollback 6 --dry-run"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("history", help="the applies recorded in the cluster (revisions)",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", nargs="?", type=int, metavar="N", help="show this revision in full")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help='json: {"revisions": [{"revision", "at", "by", "source", "commit", "actions", '
                        '"outcome", "reason", ...}]}, or the one revision in full')
    _cluster.add_address_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import time

    from reconciler.adapter import revisions
    from reconciler.adapter.kv import RayKV
    from reconciler.render import history

    color = _planning.use_color(sys.stdout)
    with _cluster.connect(args.address, connect_timeout=args.connect_timeout) as cluster:
        cluster.ray_nodes()  # connects the driver: the revisions live in the cluster's GCS
        kv = RayKV()
        now = time.time()
        if args.revision is None:
            found = revisions.history(kv, now=now)
            sys.stdout.write(history.history_json(found) if args.format == "json"
                             else history.render_history(found, color=color))
            return 0
        revision = revisions.get(kv, args.revision, now=now)
        if revision is None:
            kept = revisions.numbers(kv)
            raise UserError(f"revision {args.revision} is not in this cluster's history (kept: "
                            f"{_span(kept)}); `reconciler history` lists them")
        earlier = [n for n in revisions.numbers(kv) if n < revision.number]
        previous = revisions.get(kv, earlier[-1], now=now) if earlier else None
    sys.stdout.write(history.revision_json(revision, previous) if args.format == "json"
                     else history.render_revision(revision, previous, color=color))
    return 0


def _span(numbers: list[int]) -> str:
    if not numbers:
        return "none"
    return f"{numbers[0]} to {numbers[-1]}" if len(numbers) > 1 else str(numbers[0])
