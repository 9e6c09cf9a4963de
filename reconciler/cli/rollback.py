"""`reconciler rollback N`: apply a recorded revision's desired state again, planned against the cluster now."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.cli import _cluster
from reconciler.errors import UserError
from reconciler.settings import DEFAULTS

DESCRIPTION = """\
Plan revision N's desired state (the specs as they were then, kept in the cluster) against the cluster as it is
now, show the plan, ask, and apply it like any apply: under the cluster's apply lock, waiting for each replica. It is
recorded as a new revision, "rollback to N".

While `reconciler watch` holds the lock, rollback is refused: watch would put its own specs back at its next cycle.
Revert the change in git (or in the watched directory) so watch applies the old specs, or stop watch first."""

EPILOG = """\
exit codes:
  0  applied (or nothing to do, or --dry-run)
  1  error, unknown revision, the lock held, or at least one action failed

examples:
  reconciler history
  reconciler rollback 6 --dry-run
  reconciler rollback 6 --yes"""

WATCH_HOLDS = ("a running `reconciler watch` would put its own specs back at its next cycle. Revert the change in "
               "git (or in the directory it watches) so watch applies the old specs, or stop watch and run "
               "`reconciler rollback` again")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("rollback", help="apply a recorded revision's specs again",
                                   description=DESCRIPTION, epilog=EPILOG,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("revision", type=int, metavar="N", help="the revision to go back to (`reconciler history`)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("--yes", "-y", action="store_true", help="do not ask")
    _cluster.add_address_argument(parser)
    parser.add_argument("--timeout", type=float, default=DEFAULTS.apply.replica_timeout, metavar="SECONDS",
                        help="how long one replica may take to start, model load included (default: %(default)g)")
    parser.add_argument("--pending-grace", type=float, default=DEFAULTS.apply.pending_grace, metavar="SECONDS",
                        help="how long Ray may leave a replica unscheduled before it is reported pending "
                        "(default: %(default)g)")
    _cluster.add_max_starting_argument(parser)
    parser.set_defaults(handler=run, wait_for_lock=False, plan=None)


def run(args: argparse.Namespace) -> int:
    import time

    from reconciler.adapter import revisions
    from reconciler.adapter.kv import RayKV
    from reconciler.adapter.lease import describe
    from reconciler.cli import _planning
    from reconciler.cli.apply import carry_out

    with _cluster.connect(args.address, connect_timeout=args.connect_timeout) as cluster:
        cluster.ray_nodes()  # connects the driver: the revisions live in the cluster's GCS
        kv = RayKV()
        now = time.time()
        lock = describe(kv)
        if lock is not None and not lock.free(now) and lock.holder.command.startswith("reconciler watch"):
            raise UserError(f"rollback refused: the cluster's apply lock is {lock.describe(now)}, and {WATCH_HOLDS}")
        revision = revisions.get(kv, args.revision, now=now)
        if revision is None:
            raise UserError(f"revision {args.revision} is not in this cluster's history: `reconciler history` "
                            "lists the revisions kept")
        if revision.desired is None:
            raise UserError(f"revision {args.revision} applied a saved plan without its specs, so there is no "
                            "desired state to go back to: apply that plan's specs, or pick another revision")
        desired = revision.desired
        # The recorded specs' own directory, for jobs' workingDirs, when it is still here.
        directory = Path(revision.source.directory) if revision.source.directory else None
        args.directory = directory if directory is not None and directory.is_dir() else None
        observed = cluster.observe(desired)
        plan = _planning.plan_against(desired, observed)
        print(f"Rolling back to revision {revision.number} ({revision.cause}, specs {desired.fingerprint}).")
        return carry_out(args, cluster, plan=plan, observed=observed, desired=desired,
                         cause=f"rollback to {revision.number}", command=f"reconciler rollback {revision.number}",
                         refuse_watch=WATCH_HOLDS, source=revision.source)
