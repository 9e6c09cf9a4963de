"""`reconciler advise`: the cheapest nodes from a catalogue on which a pool's replicas fit; changes nothing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from reconciler.errors import UserError

DESCRIPTION = """\
Find the cheapest multiset of node types from a catalogue (NodeType documents) on which every replica of a pool's
models fits: fixed counts as written, {min, max} ranges at max, `max` as one replica, with the pool's reserve,
spread rules and tensor-parallel gangs. Prints the nodes, the cost per hour and per month, whether the choice is
proven cheapest (or how far it may be from a bound), the runner-up, and the placement on the nodes."""

EPILOG = """\
examples:
  reconciler advise specs --catalog examples/advise/catalog.yaml
  reconciler advise specs --catalog catalog/ --tolerate 1 --min-priority 100 --format json
  reconciler advise specs --catalog catalog/ --keep          # the inventory is paid for: what to add"""


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("advise", help="the cheapest nodes from a catalogue that hold the specs",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("directory", nargs="?", default=Path("specs"), type=Path, metavar="DIR",
                        help="the spec directory (default: specs)")
    parser.add_argument("--catalog", required=True, type=Path, metavar="PATH",
                        help="a file or directory of NodeType documents")
    parser.add_argument("--pool", metavar="NAME", help="the pool to advise for (required with several pools)")
    parser.add_argument("--min-priority", type=int, metavar="V",
                        help="only models of priority classes of value >= V must fit")
    parser.add_argument("--tolerate", type=int, default=0, metavar="N",
                        help="every replica that must fit still fits after any N nodes fail (default: 0)")
    parser.add_argument("--keep", action="store_true",
                        help="the pool's inventory is already paid for: advise what to add")
    parser.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                        help="how to print the advice (default: text)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.advise import AdviseSettings, Infeasible, advise, request_for
    from reconciler.cli import _planning
    from reconciler.render import advise as render
    from reconciler.spec.catalog import load_catalog

    if args.tolerate < 0:
        raise UserError("--tolerate must be 0 or more")
    # A pool too small for its models is the question advise answers, not a mistake in the specs.
    desired = _planning.load_directory(args.directory, capacity=False)
    catalog = load_catalog(args.catalog)
    _planning.print_diagnostics(catalog.diagnostics)
    if not catalog.ok:
        raise UserError(f"{args.catalog}: the catalogue has errors (listed above)")
    pools = [p.name for p in desired.pools]
    pool = args.pool or (pools[0] if len(pools) == 1 else None)
    if pool is None:
        raise UserError(f"the specs have {len(pools)} pools: name one with --pool ({', '.join(sorted(pools))})")
    if pool not in pools:
        raise UserError(f"pool {pool!r} is not in the specs: use one of {', '.join(sorted(pools))}")
    request = request_for(desired, pool=pool, types=catalog.types, min_priority=args.min_priority,
                          tolerate=args.tolerate, keep=args.keep)
    settings = AdviseSettings()
    try:
        with _planning.solver_notices_to_stderr():
            advice = advise(request, settings)
    except Infeasible as exc:
        raise UserError(str(exc)) from None
    left_out = tuple(m.name for m in desired.models_in(pool)
                     if args.min_priority is not None and m.priority < args.min_priority)
    view = render.AdviceView(advice=advice, pool=pool, items=request.items, reserve=request.reserve,
                             hours_per_month=settings.hours_per_month, left_out=left_out, tolerate=args.tolerate)
    if args.format == "json":
        sys.stdout.write(render.render_json(view))
    elif args.format == "markdown":
        sys.stdout.write(render.render_markdown(view))
    else:
        sys.stdout.write(render.render_text(view, color=_planning.use_color(sys.stdout)))
    return 0
