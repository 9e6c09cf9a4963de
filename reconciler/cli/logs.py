"""`reconciler logs job/NAME [-f] [--run N]`: the log of a job's run (the latest by default)."""

from __future__ import annotations

import argparse
import sys

from reconciler.cli import _cluster


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "logs",
        help="print a job run's log",
        description="Print the log of a job's latest run (or of --run N); -f follows it until the run ends.",
    )
    parser.add_argument("target", metavar="job/NAME", help="the job, written job/NAME")
    parser.add_argument("-f", "--follow", action="store_true", help="follow the log until the run ends")
    parser.add_argument("--run", type=int, default=None, help="the run number (default: the latest)")
    _cluster.add_address_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.errors import UserError
    from reconciler.naming import job_submission_id
    from reconciler.plan import is_job, job_name

    if not is_job(args.target):
        raise UserError(f"{args.target}: name a job as job/NAME, e.g. reconciler logs job/nightly-embeddings")
    name = job_name(args.target)
    with _cluster.connect(args.address) as cluster:
        runs = [r for r in cluster.jobs.runs() if r.job == name]
        if not runs:
            raise UserError(f"job {name} has no runs on this cluster")
        chosen = runs[-1] if args.run is None else next((r for r in runs if r.run == args.run), None)
        if chosen is None:
            raise UserError(f"job {name} has no run {args.run}; its runs: {', '.join(str(r.run) for r in runs)}")
        sid = job_submission_id(name, chosen.run)
        if args.follow:
            for chunk in cluster.jobs.follow(sid):
                sys.stdout.write(chunk)
                sys.stdout.flush()
        else:
            sys.stdout.write(cluster.jobs.logs(sid))
    return 0
