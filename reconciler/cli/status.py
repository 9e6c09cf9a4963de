"""`reconciler status`: the cluster for people: VRAM per GPU with its replicas, foreign use, free; what is not
running and why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconciler.cli import _cluster, _planning
from reconciler.cli.observe import load_optional
from reconciler.settings import DEFAULTS


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "status",
        help="VRAM per GPU, replicas and their state",
        description="Per node and GPU: a VRAM bar with the replicas on it, foreign use and free memory; then every "
        "replica that is pending, failed or starting, with what the cluster says about it. With a spec "
        "directory, also the replicas the specs want that have no place.",
    )
    parser.add_argument("directory", nargs="?", default=Path("specs"), type=Path, metavar="DIR",
                        help="the spec directory (default: specs; optional)")
    parser.add_argument("--format", choices=("text", "json"), default="text",
                        help="json: one document for scripts (schema: schemas/status.schema.json)")
    _cluster.add_address_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import time

    from reconciler.adapter.kv import RayKV
    from reconciler.adapter.lease import describe
    from reconciler.desired import DesiredState
    from reconciler.adapter import revisions
    from reconciler.render.history import current_line
    from reconciler.render.jobs import job_lines
    from reconciler.render.scaling import scaling_lines
    from reconciler.render.status import lock_lines, render_status

    from reconciler.adapter import gateway as gateways
    from reconciler.gateway.exposure import open_endpoint_warning

    desired = load_optional(args.directory)

    with _cluster.connect(args.address, connect_timeout=args.connect_timeout) as cluster:
        observed = cluster.observe(desired)
        http_url = cluster.http_url
        gateway_urls = gateways.urls(cluster)
        # Who holds the apply lock, and the crash-looping replicas a watcher is backing off (it publishes them there).
        lock = lock_lines(describe(RayKV()), time.time())
        recent = revisions.history(RayKV(), now=time.time(), last=DEFAULTS.revisions.shown)
    unplaced, reserves = (), {}
    # Jobs' states come from the plan (their runs, retries and schedules are decided there); ad-hoc jobs recorded in
    # the cluster are part of it even without a spec directory.
    plan = _planning.plan_against(desired if desired is not None else DesiredState(), observed)
    if desired is not None:
        unplaced, reserves = plan.unplaced, {(g.node, g.index): g.reserve for g in plan.gpus}
    routes = [m.route_path for m in desired.models] if desired is not None else []
    warning = open_endpoint_warning(gateway_urls, desired.gateway if desired is not None else None)
    if args.format == "json":
        import json

        from reconciler.render.overview import status_report

        document = status_report(observed=observed, plan=plan, desired=desired, gateway_urls=gateway_urls,
                                 http_url=http_url, warnings=[w for w in (warning,) if w], revisions=recent)
        print(json.dumps(document, indent=2))
        return 0
    sys.stdout.write(render_status(observed, routes=routes, color=_planning.use_color(sys.stdout),
                                   http_url=http_url, unplaced=unplaced, reserves=reserves,
                                   gateway_url=gateway_urls[0] if gateway_urls else None))
    print(current_line(recent[-1] if recent else None))
    for line in lock:
        print(line)
    for line in job_lines(plan):
        print(line)
    for line in scaling_lines(plan):
        print(line)
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    return 0
