"""`reconciler run --vram 4Gi [--priority-class C] [--pool P] [--name N] -- cmd...`: an ad-hoc job in the same
VRAM ledger as the models. Recorded in the cluster, so `apply`, `status` and `watch` treat it as desired state."""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

from reconciler.cli import _cluster, _planning


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "run",
        help="submit an ad-hoc job into the VRAM ledger",
        description="Record a one-off job in the cluster and submit it where the planner places it among the models "
        "(by priority, on specific GPUs). The current directory is shipped as its working directory. A job with no "
        "room now waits, and `reconciler apply` or `watch` submits it when room returns.",
    )
    parser.add_argument("--vram", required=True, help="VRAM per GPU, e.g. 4Gi")
    parser.add_argument("--priority-class", default=None, help="a PriorityClass of the specs (default: the default)")
    parser.add_argument("--pool", default=None, help="a ResourcePool of the specs (needed when there are several)")
    parser.add_argument("--name", default=None, help="the job's name (default: run-<time>)")
    parser.add_argument("--gpus", type=int, default=1, help="GPUs of one node (default: 1)")
    parser.add_argument("--retries", type=int, default=0, help="failed runs retried with backoff (default: 0)")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE", help="environment variable")
    parser.add_argument("--specs", type=Path, default=Path("specs"), metavar="DIR",
                        help="the spec directory that defines the pools and classes (default: specs)")
    parser.add_argument("--wait-for-lock", action="store_true",
                        help="when another reconciler holds the cluster's apply lock, wait for it instead of exiting")
    _cluster.add_address_argument(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command to run")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.errors import UserError
    from reconciler.executor.adhoc import submit
    from reconciler.spec.adhoc import adhoc_job

    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    env = {}
    for pair in args.env:
        key, sep, value = pair.partition("=")
        if not sep:
            raise UserError(f"--env {pair}: write KEY=VALUE")
        env[key] = value
    desired = _planning.load_directory(args.specs)
    name = args.name or time.strftime("run-%Y%m%d-%H%M%S", time.gmtime())
    job = adhoc_job(desired, name=name, vram=args.vram, entrypoint=shlex.join(command),
                    priority_class=args.priority_class, pool=args.pool, gpus=args.gpus,
                    working_dir=os.getcwd(), env=env, retries=args.retries)
    with _cluster.connect(args.address) as cluster:
        done = submit(cluster, desired=desired, job=job, wait_for_lock=args.wait_for_lock,
                      on_wait=lambda why: print(f"Waiting: {why}", file=sys.stderr, flush=True))
    if done.submitted:
        print(f"job {job.name} run {done.job.run} on {done.job.location}: {done.message}; "
              f"follow it with `reconciler logs job/{job.name} -f`")
    else:
        print(f"job {job.name} {done.message}")
    return 0
