"""`reconciler watch [DIR]`: keep the cluster at the specs, continuously."""

from __future__ import annotations

import argparse
from pathlib import Path

from reconciler.cli import _cluster, _planning
from reconciler.settings import DEFAULTS

DESCRIPTION = """\
Watch the spec directory and keep the cluster at it. A burst of file changes (an editor's save, a git pull) becomes
one reconcile after --debounce seconds of quiet; every --interval seconds the cluster is checked for drift (a replica
that died, an application deleted by hand, foreign VRAM use) and healed. Each cycle is level-based: it reads every
spec and the whole cluster, plans, and applies the plan; cycles never overlap. Between drift checks, every --poll
seconds, one cheap call asks Serve whether any application or replica changed since the last cycle; if so, a cycle
runs at once, so a deleted application or a dead replica is healed within about a second, not at the next check.

An invalid spec never changes the cluster: watch prints the diagnostics (path:line:col), keeps enforcing the last
good desired state, and resumes when the files are fixed. A replica that keeps failing is retried with exponential
backoff (its reason is published for `reconciler status`) while the others carry on.

With --git URL the specs come from a branch of a remote repository (any URL git accepts: https, ssh, file://):
it is fetched every --git-poll seconds and each new head commit is applied. A commit whose specs are invalid is
never applied: watch names it, keeps enforcing the last good revision, and `reconciler status` shows both.

Only one reconciler applies to a cluster at a time: watch takes the cluster's apply lock (a lease in Ray's GCS that
expires --lease-ttl seconds after its holder dies) and is refused, with who holds it, when another has it.
Ctrl-C or SIGTERM finishes the current step and releases the lock; a second one abandons the step."""

EPILOG = """\
events (--events FILE, or --log-format json on stdout): one JSON object per line with time, event, message and
fields: started, lease, lease-lost, spec-loaded, spec-invalid, revision, revision-invalid, plan, drift, skipped,
backoff, apply, action, applied, failure, cycle, reconnected, stopped. A cycle's cause is startup, spec-change,
drift-timer, cluster-change (the --poll probe saw Serve change) or retry. When the cluster stops answering (stopped,
restarted), watch says so (a failure with stage connect), connects again with backoff (a restarted local cluster at
its new address), takes the lock again and carries on.

metrics (--metrics-port P, on 127.0.0.1): reconciler_gpu_vram_{total,reserved,planned,used,foreign}_bytes,
reconciler_replicas{model,state}, reconciler_replicas_desired, reconciler_replicas_unplaced,
reconciler_nodes{state}, reconciler_node_dead_since_timestamp_seconds{node},
reconciler_actions_applied_total, reconciler_actions_failed_total, reconciler_reconcile_duration_seconds,
reconciler_drift_detected_total, reconciler_last_successful_reconcile_timestamp_seconds, reconciler_spec_valid;
with --git also reconciler_git_revision_info{commit,subject,branch,state} and
reconciler_git_last_fetch_timestamp_seconds.

exit codes: 0 stopped by a signal; 1 error (lock held by another reconciler, bad options); 4 the lock was lost
(taken over after this process stalled past its lease); 130 interrupted twice."""


def positive(value: str) -> float:
    number = float(value)
    if number <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0, got {value}")
    return number


def non_negative(value: str) -> float:
    number = float(value)
    if number < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value}")
    return number


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser(
        "watch",
        help="keep the cluster at the specs: apply on change, heal drift, export metrics",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", nargs="?", metavar="DIR", help="spec directory (default: specs)")
    git = parser.add_argument_group("GitOps: follow a branch of a remote repository instead of DIR")
    git.add_argument("--git", metavar="URL", help="the repository to follow (any URL git accepts)")
    git.add_argument("--branch", metavar="B", help="the branch to follow (default: the remote's default branch)")
    git.add_argument("--path", metavar="P", help="the spec directory inside the repository (default: specs)")
    git.add_argument("--git-poll", type=positive, default=30.0, metavar="S",
                     help="seconds between fetches (default: 30)")
    git.add_argument("--git-cache", type=Path, metavar="DIR",
                     help="keep the local bare copy here across restarts (default: a temporary one)")
    parser.add_argument("--address", metavar="ADDR", help="the Ray cluster (default: RAY_ADDRESS, or the local one "
                        "`reconciler up` started)")
    _cluster.add_connect_timeout_argument(parser)
    _planning.add_observed_arguments(parser)
    parser.add_argument("--interval", type=positive, default=DEFAULTS.watch.interval, metavar="S",
                        help="seconds between drift checks (default: %(default)g)")
    parser.add_argument("--poll", type=non_negative, default=DEFAULTS.watch.poll, metavar="S",
                        help="seconds between the cheap checks of Serve's state between drift checks; 0 turns them "
                        "off (default: %(default)g)")
    parser.add_argument("--debounce", type=positive, default=DEFAULTS.watch.debounce, metavar="S",
                        help="quiet seconds after a file change before reconciling (default: %(default)g)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--no-heal", action="store_true",
                      help="report drift without acting on it; spec changes are still applied")
    mode.add_argument("--plan-only", action="store_true", help="never act: print what each change would do")
    parser.add_argument("--events", type=Path, metavar="FILE", help="append the events to FILE as JSON lines")
    parser.add_argument("--log-format", choices=("text", "json"), default="text",
                        help="stdout: a human log (text, default) or the events as JSON lines (json)")
    parser.add_argument("--metrics-port", type=int, metavar="P",
                        help="serve Prometheus metrics on 127.0.0.1:P (/metrics) and a health check (/healthz)")
    parser.add_argument("--metrics-host", default=DEFAULTS.watch.metrics_host, metavar="HOST",
                        help="the address to serve them on, e.g. 0.0.0.0 in a pod (default: %(default)s)")
    parser.add_argument("--yes", action="store_true",
                        help="act without asking first (needed when stdin is not a terminal)")
    parser.add_argument("--lease-ttl", type=positive, default=DEFAULTS.lease.ttl, metavar="S",
                        help="seconds after which the apply lock of a dead watcher may be taken over "
                        "(default: %(default)g)")
    parser.add_argument("--wait-for-lock", action="store_true",
                        help="when another reconciler holds the lock, wait for it instead of exiting (a standby)")
    _cluster.add_max_starting_argument(parser)
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from reconciler.errors import UserError
    from reconciler.watch.gitfollow import GitOptions
    from reconciler.watch.session import WatchOptions
    from reconciler.watch.session import run as run_watch

    git = None
    if args.git is not None:
        if args.directory is not None:
            raise UserError("--git reads the specs from the repository: name their folder with --path, not DIR")
        git = GitOptions(url=args.git, branch=args.branch, path=args.path or "specs", poll=args.git_poll,
                         cache=args.git_cache)
    elif args.branch is not None or args.path is not None or args.git_cache is not None:
        raise UserError("--branch, --path and --git-cache belong to --git URL")
    directory = args.directory or "specs"

    settings = dataclasses.replace(DEFAULTS.watch, interval=args.interval, debounce=args.debounce,
                                   heal=not args.no_heal, plan_only=args.plan_only, poll=args.poll)
    options = WatchOptions(
        directory=Path(directory), settings=settings, address=args.address,
        connect_timeout=args.connect_timeout, observed=args.observed,
        offline=args.offline, events_file=args.events, log_format=args.log_format, metrics_port=args.metrics_port,
        metrics_host=args.metrics_host, yes=args.yes, lease_ttl=args.lease_ttl, wait_for_lock=args.wait_for_lock,
        apply=dataclasses.replace(DEFAULTS.apply, max_starting=args.max_starting),
        command=f"reconciler watch --git {args.git}" if git else f"reconciler watch {directory}", git=git,
    )
    return run_watch(options)
