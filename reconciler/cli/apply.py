"""`reconciler apply`: plan against the live cluster, show the plan, and carry it out through Ray Serve."""

from __future__ import annotations

import argparse
import dataclasses
import sys
import threading
import time
from contextlib import suppress
from pathlib import Path

from reconciler.cli import _cluster, _planning
from reconciler.errors import TransientError, UserError
from reconciler.settings import DEFAULTS

DESCRIPTION = """\
Plan the specs against the live cluster, show the plan, ask, and apply it through Ray Serve's declarative API in the
plan's order: evictions and deletions first, moves and replaces (make-before-break where the plan says so), updates,
creates last. Waits until every replica runs, fails, or stays pending, and reports each action.

Applications reconciler did not create are never touched. Re-running after an interrupted apply converges: whatever
of reconciler's is not in the plan's end state is removed."""

EPILOG = """\
exit codes:
  0  applied (or nothing to do, or --dry-run)
  1  error, a refused stale plan, or at least one action failed

examples:
  reconciler apply specs --dry-run
  reconciler apply specs --yes
  reconciler plan specs --out plan.json && reconciler apply --plan plan.json"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "apply",
        help="apply the specs to the cluster through Ray Serve",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", nargs="?", default=None, type=Path, metavar="DIR",
                        help="the spec directory (default: specs; with --plan, only checked when given)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and change nothing")
    parser.add_argument("--yes", "-y", action="store_true",
                        help="do not ask; also start the local cluster when no cluster is running")
    parser.add_argument("--plan", metavar="FILE", type=Path,
                        help="apply exactly this saved plan (`reconciler plan --out`); it carries all it needs, so no "
                        "spec directory is read unless DIR is given. Refused when the cluster (or the specs in DIR) "
                        "changed since it was made, or when the file was edited")
    _cluster.add_address_argument(parser)
    parser.add_argument("--timeout", type=float, default=DEFAULTS.apply.replica_timeout, metavar="SECONDS",
                        help="how long one replica may take to start, model load included (default: %(default)g)")
    parser.add_argument("--pending-grace", type=float, default=DEFAULTS.apply.pending_grace, metavar="SECONDS",
                        help="how long Ray may leave a replica unscheduled before it is reported pending "
                        "(default: %(default)g)")
    _cluster.add_max_starting_argument(parser)
    parser.add_argument("--wait-for-lock", action="store_true",
                        help="when another reconciler holds the cluster's apply lock, wait for it instead of exiting")
    parser.set_defaults(handler=run)


def apply_holding_lock(args: argparse.Namespace, cluster, *, executor, plan, observed, desired=None,
                       cause: str = "apply", command: str | None = None, refuse_watch: str | None = None,
                       source=None):
    """Apply while holding the cluster's apply lock, so no watcher or second `apply` acts at the same time, and
    record it as a revision in the cluster (`reconciler history`).

    The plan was computed before the lock was taken; when the cluster changed in between (another reconciler applied
    meanwhile), the plan is stale and nothing is applied. ``refuse_watch``: the sentence to refuse with when a
    `watch` holds the lock (a rollback it would undo), instead of the usual one. ``source``: where the specs came
    from (by default: the spec directory and its git commit, or the saved plan).
    """
    from reconciler.adapter.keeper import LeaseKeeper
    from reconciler.adapter.kv import RayKV
    from reconciler.adapter.lease import Holder, LeaseHeld, acquire, wait_acquire

    what = f"--plan {args.plan}" if args.plan is not None else str(args.directory)
    holder = Holder.current(command or f"reconciler apply {what}")
    if args.wait_for_lock:
        # Ctrl-C or SIGTERM ends the wait like any other: nothing has been applied yet.
        lease = wait_acquire(RayKV(), holder=holder, ttl=DEFAULTS.lease.ttl, stop=threading.Event(),
                             on_wait=lambda held: print(f"Waiting: {held}", file=sys.stderr, flush=True))
    else:
        try:
            lease = acquire(RayKV(), holder=holder, ttl=DEFAULTS.lease.ttl)
        except LeaseHeld as held:
            if refuse_watch is not None and held.record.holder.command.startswith("reconciler watch"):
                raise UserError(f"{held.record.describe(time.time())}: {refuse_watch}") from held
            raise UserError(f"{held} (or pass --wait-for-lock to wait for it)") from held
    lost: list[Exception] = []
    keeper = LeaseKeeper(lease, on_lost=lost.append).start()
    try:
        now = cluster.observe(assumed=plan.assumed)
        if now.fingerprint != observed.fingerprint:
            raise UserError(
                "the cluster changed while this plan waited for confirmation (another reconciler applied?). "
                "Nothing was applied; run `reconciler apply` again to plan against what runs now."
            )
        keeper.confirm()
        return _recorded(args, lease.kv, executor=executor, plan=plan, desired=desired, cause=cause,
                         command=holder.command, token=holder.token, source=source)
    finally:
        # A store that does not answer (the cluster went away) leaves the lock to run out by its ttl: what the apply
        # did, or its own error, is what to report.
        with suppress(TransientError):
            keeper.stop(release=True)


def _recorded(args: argparse.Namespace, kv, *, executor, plan, desired, cause: str, command: str, token: str,
              source=None):
    """Apply the plan, recorded as a revision before it starts and again when it ends (however it ends)."""
    from reconciler.executor.record import Recorder, directory_source
    from reconciler.revision import Outcome, Source

    if source is None and args.plan is not None and desired is None:
        source = Source(plan_file=str(args.plan))
    elif source is None:
        source = directory_source(args.directory) if args.directory is not None else Source()
    recorder = Recorder(kv, command=command, source=lambda: source)
    revision = recorder.begin(plan, desired, cause=cause, token=token)
    # Where the store does not answer either (the cluster went with the apply), the apply's own error is the one to
    # report: the revision stays unfinished, and reads as interrupted once this command's lock is gone.
    try:
        report = executor.apply(plan)
    except KeyboardInterrupt:
        with suppress(TransientError):
            recorder.end(revision, outcome=Outcome.INTERRUPTED, reason="interrupted (Ctrl-C or a signal)")
        raise
    except Exception as exc:
        with suppress(TransientError):
            recorder.end(revision, outcome=Outcome.FAILED, reason=f"{type(exc).__name__}: {exc}"[:500])
        raise
    results = [(o.ok, o.message) for o in report.outcomes]
    if report.ok or not report.router_errors:
        done = recorder.end(revision, results=results)
    else:  # every action ran, but a model's router does not serve
        done = recorder.end(revision, results=results, outcome=Outcome.FAILED,
                            reason="; ".join(report.router_errors)[:500])
    report.revision = done.number
    return report


def run(args: argparse.Namespace) -> int:
    if args.plan is not None:
        return run_saved(args)
    args.directory = args.directory or Path("specs")
    desired = _planning.load_directory(args.directory)
    cluster = _cluster.connect(args.address, desired=desired, offer_local=not args.dry_run, yes=args.yes,
                               connect_timeout=args.connect_timeout)
    with cluster:
        observed = cluster.observe(desired)
        plan = _planning.plan_against(desired, observed)
        return carry_out(args, cluster, plan=plan, observed=observed, desired=desired)


def run_saved(args: argparse.Namespace) -> int:
    """`apply --plan FILE`: the plan alone says what to do; specs are read only to check they did not change."""
    from reconciler.schemas.read import read_plan

    plan = read_plan(args.plan)
    desired = _planning.load_directory(args.directory) if args.directory is not None else None
    if desired is not None and desired.fingerprint != plan.desired_fingerprint:
        raise UserError(
            f"Saved plan is stale: the specs in {args.directory} changed after {args.plan} was made. "
            "Nothing was applied; make a new plan with `reconciler plan --out`."
        )
    with _cluster.connect(args.address, connect_timeout=args.connect_timeout) as cluster:
        observed = cluster.observe(assumed=plan.assumed)
        if plan.fingerprint != observed.fingerprint:
            raise UserError(
                f"Saved plan is stale: the cluster changed after {args.plan} was made (observed state "
                f"{observed.fingerprint}, the plan was computed from {plan.fingerprint}). Nothing was applied; "
                "make a new plan with `reconciler plan --out`."
            )
        return carry_out(args, cluster, plan=plan, observed=observed, desired=desired)


def carry_out(args: argparse.Namespace, cluster, *, plan, observed, desired=None, **recording) -> int:
    """Show the plan, ask, apply it under the cluster's lock, and report what came of it. ``recording``: how the
    revision is recorded (``cause``, ``command``, ``refuse_watch``; see ``apply_holding_lock``)."""
    from reconciler.executor.progress import Progress
    from reconciler.executor.run import Executor
    from reconciler.render.status import render_report, render_status
    from reconciler.render.text import render_plan

    color = _planning.use_color(sys.stdout)
    sys.stdout.write(render_plan(plan, color=color))
    settings = dataclasses.replace(DEFAULTS.apply, replica_timeout=args.timeout,
                                   pending_grace=args.pending_grace, max_starting=args.max_starting)
    executor = Executor(cluster, settings=settings, progress=Progress(sys.stderr), spec_dir=args.directory)
    if executor.in_sync(plan):
        print("Nothing to apply: the cluster matches the specs.")
        return 0
    if plan.empty:
        print("No replica changes; reconciler's routers and leftovers need tidying.")
    if args.dry_run:
        print("Dry run: nothing was changed.")
        return 0
    if not args.yes:
        if not _cluster.interactive():
            raise UserError("not a terminal: pass --yes to apply without confirmation")
        if not _cluster.confirm(f"Apply these {len(plan.actions)} action(s)?" if plan.actions else "Tidy up?"):
            print("Nothing was applied.")
            return 1
    report = apply_holding_lock(args, cluster, executor=executor, plan=plan, observed=observed, desired=desired,
                                **recording)
    after = cluster.observe(assumed=plan.assumed)
    sys.stdout.write(render_report(report, color=color))
    print(f"Recorded as revision {report.revision} (`reconciler history {report.revision}`).")
    reserves = {(g.node, g.index): g.reserve for g in plan.gpus}
    sys.stdout.write(render_status(after, routes=[m.route for m in plan.models], color=color,
                                   http_url=cluster.http_url, reserves=reserves,
                                   gateway_url=report.gateway_urls[0] if report.gateway_urls else None))
    from reconciler.gateway.exposure import open_endpoint_warning

    if warning := open_endpoint_warning(report.gateway_urls, plan.gateway):
        print(f"warning: {warning}", file=sys.stderr)
    return 0 if report.ok else 1
