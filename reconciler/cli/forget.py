"""`reconciler forget job/NAME`: an ad-hoc job (`reconciler run`) is no longer desired; the next `apply` or `watch`
cycle stops its run if one is active."""

from __future__ import annotations

import argparse

from reconciler.cli import _cluster


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "forget",
        help="remove an ad-hoc job recorded by `reconciler run`",
        description="Remove an ad-hoc job from the cluster's desired state; the next apply or watch cycle stops "
        "its active run and forgets its history. Jobs of the specs are removed by deleting their spec.",
    )
    parser.add_argument("target", metavar="job/NAME", help="the ad-hoc job, written job/NAME")
    _cluster.add_address_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.errors import UserError
    from reconciler.plan import is_job, job_name

    if not is_job(args.target):
        raise UserError(f"{args.target}: name a job as job/NAME, e.g. reconciler forget job/run-20261130-120000")
    name = job_name(args.target)
    with _cluster.connect(args.address) as cluster:
        recorded = [j.name for j in cluster.jobs.recorded()]
        if name not in recorded:
            listing = ", ".join(recorded) if recorded else "none"
            raise UserError(f"no ad-hoc job {name} is recorded on this cluster (recorded: {listing})")
        cluster.jobs.unrecord(name)
    print(f"job {name} forgotten: the next apply or watch cycle stops its run")
    return 0
