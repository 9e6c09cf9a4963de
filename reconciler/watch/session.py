"""One `reconciler watch` run: assembles the loop from its parts, runs it until a signal, and tears it down.

The CLI parses arguments into ``WatchOptions`` and calls ``run``; the benchmark calls the same. Everything that
touches Ray is reached through a ``WatchTarget`` (the adapter and the executor), and only when a live cluster is
watched.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from reconciler.adapter import revisions
from reconciler.adapter.keeper import LeaseKeeper
from reconciler.adapter.kv import MemoryKV
from reconciler.adapter.lease import Holder, Lease, LeaseHeld, LeaseLost, acquire, wait_acquire
from reconciler.desired import DesiredState
from reconciler.errors import TransientError, UserError
from reconciler.watch.metrics import Metrics
from reconciler.observed import ObservedState
from reconciler.plan import Plan
from reconciler.watch.backoff import Backoff
from reconciler.executor.record import Recorder, directory_source
from reconciler.revision import Revision, Source
from reconciler.settings import DEFAULTS, ApplySettings, WatchSettings
from reconciler.watch.controller import Controller, Loop
from reconciler.watch.debounce import SpecWatcher
from reconciler.watch.events import EventLog, Kind
from reconciler.watch.gitfollow import GitOptions, GitSpecs
from reconciler.watch.health import Health, HealthServer, Phase, judge
from reconciler.watch.page import StatusPage
from reconciler.watch.specload import SpecLoader
from reconciler.watch.target import WatchTarget

EXIT_LEASE_LOST = 4
CLUSTER_LOST = "cluster lost"
WAIT_STOPPED = "stopped while waiting for the lock"


@dataclass(frozen=True, slots=True)
class WatchOptions:
    directory: Path
    settings: WatchSettings
    address: str | None = None
    connect_timeout: float = DEFAULTS.cluster.connect_timeout
    observed: Path | None = None  # plan against this snapshot (plan-only)
    offline: bool = False  # plan against the pools' inventory (plan-only)
    events_file: Path | None = None
    log_format: str = "text"  # text | json (JSON lines on stdout)
    metrics_port: int | None = None
    metrics_host: str = DEFAULTS.watch.metrics_host
    yes: bool = False
    lease_ttl: float = DEFAULTS.lease.ttl
    wait_for_lock: bool = False
    apply: ApplySettings = DEFAULTS.apply  # how each apply waits, and how many replicas it starts at once per node
    command: str = "reconciler watch"
    git: GitOptions | None = None  # follow a branch of a remote repository instead of watching ``directory``


def connect(options: WatchOptions, *, spec_dir: Callable[[], Path | None] | None = None) -> WatchTarget:
    """The target the controller observes and acts on. ``spec_dir``: where the enforced specs are on disk when a job
    ships its workingDir (under --git, the checked-out revision); the watched directory by default."""
    if options.offline or options.observed is not None:
        from reconciler.observed import from_inventory
        from reconciler.schemas.read import read_snapshot

        snapshot = None if options.observed is None else read_snapshot(options.observed)

        def observe(desired: DesiredState) -> ObservedState:
            return snapshot if snapshot is not None else from_inventory(desired)

        what = f"the snapshot {options.observed}" if snapshot is not None else "the pools' inventory (--offline)"
        return WatchTarget(observe=observe, apply=None, kv=MemoryKV(), describe=what)
    from reconciler.watch.live import connect_live

    # The executor's progress lines join the human log; with JSON on stdout they go to stderr.
    return connect_live(options.address, connect_timeout=options.connect_timeout,
                        progress=sys.stderr if options.log_format == "json" else sys.stdout, apply_settings=options.apply,
                        spec_dir=spec_dir or (lambda: options.directory if options.git is None else None))


def _sinks(options: WatchOptions, stack: ExitStack) -> EventLog:
    json_sink: TextIO | None = None
    text_sink: TextIO | None = sys.stdout
    if options.log_format == "json":
        json_sink, text_sink = sys.stdout, None
    if options.events_file is not None:
        if json_sink is not None:
            raise UserError("--events FILE and --log-format json both take the JSON events: choose one")
        try:
            json_sink = stack.enter_context(options.events_file.open("a", encoding="utf-8", buffering=1))
        except OSError as exc:
            raise UserError(f"cannot open the events file {options.events_file}: {exc.strerror or exc}") from exc
    return EventLog(json_sink=json_sink, text_sink=text_sink)


def _confirm_on_terminal(plan: Plan) -> bool:
    from reconciler.render import text

    sys.stdout.write(text.render_plan(plan, color=sys.stdout.isatty()))
    answer = input("\nwatch applies this plan now, and every later change automatically. Continue? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def run(options: WatchOptions, *, ready: Callable[[Loop], None] | None = None) -> int:
    """Watch until SIGINT/SIGTERM (exit 0) or until the lease is lost (exit 4). ``ready`` is for in-process use."""
    confirm = _check(options, acting=not options.settings.plan_only)
    with ExitStack() as stack:
        events = _sinks(options, stack)
        liveness = Liveness()
        page = StatusPage(title=f"reconciler watch {options.git.url if options.git else options.directory}")
        metrics = _metrics(options, stack, liveness, page)
        git = stack.enter_context(GitSpecs(options.git, events=events, metrics=metrics)) if options.git else None
        watching = git.describe if git is not None else str(options.directory)
        spec_dir = git.spec_dir if git is not None else None
        first = connect(options, spec_dir=spec_dir)  # a signal meanwhile ends the command at once
        signals = _Signals()
        stack.callback(_restore_signals, signals.install())
        around = dict(options=options, events=events, liveness=liveness, metrics=metrics, git=git, watching=watching,
                      page=page, signals=signals)
        why = _watch_connected(first, **around, confirm=confirm, ready=ready)
        while why == CLUSTER_LOST:  # the cluster stopped answering: connect again, and carry on as before
            target = _reconnect(options, events, signals, spec_dir=spec_dir)
            if target is None:
                why = "signal received while reconnecting"
                break
            why = _watch_connected(target, **around, confirm=None, ready=None)
        if why == WAIT_STOPPED:
            events.emit(Kind.STOPPED, why, why="signal")
            return 0
        events.emit(Kind.STOPPED, f"stopped: {why}", why=why)
        return EXIT_LEASE_LOST if why == "lease lost" else 0


def _watch_connected(target: WatchTarget, *, options: WatchOptions, events: EventLog, liveness: Liveness,
                     metrics: Metrics | None, git: GitSpecs | None, watching: str, page: StatusPage,
                     signals: "_Signals",
                     confirm: Callable[[Plan], bool] | None, ready: Callable[[Loop], None] | None) -> str:
    """Watch through one connection to the cluster; returns why it ended: a signal, the lease lost, the lock waited
    for in vain, or the cluster lost (then the caller connects again)."""
    settings = options.settings
    acting = not settings.plan_only
    signals.arm()  # a driver has just connected (and perhaps another let go before it)
    with ExitStack() as stack:
        stack.callback(signals.arm)  # after the driver is let go, below
        stack.callback(target.close)
        lease = None
        if acting:
            if options.wait_for_lock:
                liveness.enter(Phase.STANDBY)
            lease = _take_lease(options, target, events, signals)
            if lease is None:
                return WAIT_STOPPED
        controller = Controller(
            load=git if git is not None else SpecLoader(options.directory), observe=target.observe, plan=_plan,
            apply=target.apply or _never_apply, events=events,
            settings=settings, metrics=metrics, backoff=Backoff(), confirm_first=confirm,
            recording=_recording(options, target, lease, git) if lease is not None else None,
        )
        loop = Loop(controller, settings, probe=target.probe)
        liveness.watch(loop, controller)
        page.bind(controller, target)
        if metrics is not None and lease is not None:
            metrics.revision.set(revisions.latest_number(target.kv) or 0)

        reported = threading.Lock()  # the lock's keeper and a failed call can both find the cluster lost: say it once

        def cluster_lost(why: str) -> None:
            signals.arm()  # the driver may just have been let go (in this thread)
            if not reported.acquire(blocking=False):
                return
            events.emit(Kind.FAILURE, f"lost the cluster: {why}; connecting again", stage="connect",
                        error=why, temporary=True, retryIn=settings.retry_base)
            loop.stop(CLUSTER_LOST)

        target.on_lost(cluster_lost)
        if lease is not None:
            keeper = _keeper(lease, events=events, loop=loop, controller=controller, git=git,
                             cluster_lost=lambda why: cluster_lost(why) if not target.reachable() else None)
            controller.guard = keeper
            keeper.start()
            # A lost cluster took the lock's store with it: there is nothing left to release.
            stack.callback(_stop_keeper, keeper, loop)
        if target.wake is not None and not settings.plan_only:
            threading.Thread(target=_wake_on_demand, args=(target.wake, loop, settings.wake_wait),
                             name="reconciler-demand",
                             daemon=True).start()
        watcher = git.follower(loop.changed) if git is not None else SpecWatcher(options.directory, loop.changed)
        watcher.start()
        stack.callback(watcher.stop)
        stack.enter_context(signals.to(loop.stop))
        events.emit(
            Kind.STARTED,
            f"watching {watching} against {target.describe}: drift check every {settings.interval:g} s, "
            + ("plan only" if settings.plan_only else "self-heal off (--no-heal)" if not settings.heal
               else "self-heal on")
            + (f", metrics on http://{options.metrics_host}:{options.metrics_port}/metrics, /healthz and a status "
               "page on /"
               if options.metrics_port is not None else ""),
            directory=None if git is not None else str(options.directory), git=git.status()["git"] if git else None,
            cluster=target.describe, interval=settings.interval, heal=settings.heal,
            planOnly=settings.plan_only, pid=os.getpid(),
        )
        if ready is not None:
            ready(loop)
        try:
            loop.run()
        except LeaseLost as exc:
            events.emit(Kind.LEASE_LOST, str(exc))
            loop.why_stopped = "lease lost"
        return loop.why_stopped


class _Recording:
    """The controller's revisions: every apply recorded in the cluster, with this watcher's lock token, so an apply
    this process does not live to finish reads as interrupted."""

    def __init__(self, recorder: Recorder, token: str) -> None:
        self.recorder, self.token = recorder, token

    def begin(self, plan: Plan, desired: DesiredState, *, cause: str) -> Revision:
        return self.recorder.begin(plan, desired, cause=cause, token=self.token)

    def end(self, revision: Revision, **ended: Any) -> Revision:
        return self.recorder.end(revision, **ended)


def _recording(options: WatchOptions, target: WatchTarget, lease: Lease, git: GitSpecs | None) -> _Recording:
    def source() -> Source:
        if git is None:
            return directory_source(options.directory)
        assert options.git is not None
        applied = git.state.applied
        return Source(directory=options.git.path, repository=options.git.url,
                      commit=applied.commit if applied else None, subject=applied.subject if applied else None)

    return _Recording(Recorder(target.kv, command=options.command, source=source), lease.record.holder.token)


def _stop_keeper(keeper: LeaseKeeper, loop: Loop) -> None:
    """Stop renewing and give the lock up, unless the cluster was lost (its store went with it); a store that does
    not answer now leaves the lock to run out by its ttl."""
    with suppress(TransientError):
        keeper.stop(release=loop.why_stopped != CLUSTER_LOST)


def _wake_on_demand(wake: Callable[[float], bool], loop: Loop, wait: float) -> None:
    """Runs a cycle as soon as a gateway holds a request for a model with no replica: the poll would find it too,
    but a client is waiting for its answer. Ends with the loop."""
    while not loop.stopping:
        try:
            woke = wake(wait)
        except Exception:  # noqa: BLE001 - no gateway (yet), or the cluster is going away: the poll still finds it
            time.sleep(wait)
            continue
        if woke and not loop.stopping:
            loop.demand()


def _check(options: WatchOptions, *, acting: bool) -> Callable[[Plan], bool] | None:
    """Refuse contradictory options; the confirmation to ask before the first apply, if any."""
    if (options.offline or options.observed is not None) and acting:
        raise UserError("--offline and --observed plan against a picture of the cluster, never the cluster: add "
                        "--plan-only")
    if options.git is None and not options.directory.is_dir():
        raise UserError(f"{options.directory} is not a directory of specs")
    if not acting or options.yes:
        return None
    if not sys.stdin.isatty():
        raise UserError("watch applies every change to the cluster unattended: pass --yes to allow it, or "
                        "--plan-only to only report")
    return _confirm_on_terminal


class Liveness:
    """What /healthz judges (``health.judge``): this watcher's phase and since when, and its loop's last cycle."""

    def __init__(self) -> None:
        self.phase, self.since = Phase.STARTING, time.time()
        self.loop: Loop | None = None
        self.controller: Controller | None = None

    def enter(self, phase: Phase) -> None:
        self.phase, self.since = phase, time.time()

    def watch(self, loop: Loop, controller: Controller) -> None:
        self.loop, self.controller = loop, controller
        self.enter(Phase.RUNNING)

    def __call__(self) -> Health:
        stopping = self.loop is not None and self.loop.stopping
        last = self.controller.status().get("time") if self.controller is not None else None
        return judge(phase=Phase.STOPPING if stopping else self.phase, since=self.since, now=time.time(),
                     last_cycle=last)


def _metrics(options: WatchOptions, stack: ExitStack, health: Callable[[], Health],
             page: StatusPage) -> Metrics | None:
    """Prometheus metrics on /metrics, the health check on /healthz and the status page on /, when a port is
    given."""
    if options.metrics_port is None:
        return None
    metrics = Metrics()
    try:
        server = HealthServer(metrics.registry, health, port=options.metrics_port, host=options.metrics_host,
                              page=page)
    except OSError as exc:
        raise UserError(f"cannot serve metrics on {options.metrics_host}:{options.metrics_port}: "
                        f"{exc.strerror or exc}") from exc
    stack.callback(server.close)
    return metrics


def _take_lease(options: WatchOptions, target: WatchTarget, events: EventLog, signals: "_Signals") -> Lease | None:
    """The cluster's apply lock: taken at once, or (--wait-for-lock) once free; None when a signal ended the wait."""
    holder = Holder.current(options.command)
    if options.wait_for_lock:
        stop_waiting = threading.Event()
        with signals.to(lambda why: stop_waiting.set()):
            lease = wait_acquire(target.kv, holder=holder, ttl=options.lease_ttl, stop=stop_waiting,
                                 on_wait=lambda held: events.emit(Kind.LEASE, f"waiting: {held}", waiting=True))
        if lease is None:
            return None
    else:
        try:
            lease = acquire(target.kv, holder=holder, ttl=options.lease_ttl)
        except LeaseHeld as held:
            raise UserError(f"{held} (or pass --wait-for-lock to stand by)") from held
    events.emit(Kind.LEASE, f"holding the cluster's apply lock (generation {lease.generation}, ttl "
                f"{options.lease_ttl:g} s)", generation=lease.generation, host=holder.host, pid=holder.pid)
    return lease


def _keeper(lease: Lease, *, events: EventLog, loop: Loop, controller: Controller,
            git: GitSpecs | None, cluster_lost: Callable[[str], None] = lambda _: None) -> LeaseKeeper:
    """Renews the lease, publishes the controller's status (and the git revision) with it, and stops the loop when
    it is lost. ``cluster_lost`` is asked first: a lease lost with its whole cluster means reconnecting, not that
    another reconciler took over."""
    holder = lease.record.holder

    def lost(exc: LeaseLost) -> None:
        cluster_lost(str(exc))
        if loop.stopping:
            return
        events.emit(Kind.LEASE_LOST, str(exc))
        loop.stop("lease lost")

    def retaken(fresh: Lease) -> None:
        events.emit(Kind.LEASE, f"the apply lock ran out while this watcher (or the cluster's GCS) stalled, "
                    f"and nobody took it: taken again (generation {fresh.generation})",
                    generation=fresh.generation, host=holder.host, pid=holder.pid, retaken=True)

    def published() -> dict[str, Any]:
        return {**controller.status(), **(git.status() if git is not None else {})}

    return LeaseKeeper(lease, on_lost=lost, on_retaken=retaken, status=published)


def _reconnect(options: WatchOptions, events: EventLog, signals: "_Signals", *,
               spec_dir: Callable[[], Path | None] | None = None) -> WatchTarget | None:
    """Connect again, backing off from ``retry_base`` doubling up to the drift interval, until the cluster answers
    (a restarted local cluster is found at its new address) or a signal comes (None)."""
    stop = threading.Event()
    with signals.to(lambda why: stop.set()):
        delay = options.settings.retry_base
        while not stop.is_set():
            try:
                target = connect(options, spec_dir=spec_dir)
            except UserError as exc:  # nothing answers yet, or no local cluster is running right now
                events.emit(Kind.FAILURE, f"connecting again failed: {exc}; retrying in {delay:.0f} s",
                            stage="connect", error=str(exc), temporary=True, retryIn=delay)
            else:
                events.emit(Kind.RECONNECTED, f"connected again to {target.describe}", cluster=target.describe)
                return target
            stop.wait(delay)
            delay = min(options.settings.interval, delay * 2)
        return None


def _plan(desired: DesiredState, observed: ObservedState) -> Plan:
    from reconciler.planner import plan

    return plan(desired, observed)


def _never_apply(plan: Plan, desired: DesiredState, observed: ObservedState) -> list[Any]:
    raise AssertionError("a plan-only watch never applies")


class _Signals:
    """SIGINT/SIGTERM across a whole watch: the step running now (a connection's loop, a wait for the lock, a
    reconnect) is told; a signal that comes between two steps (a connection dropped, the next not yet begun) is kept,
    and the next step stops at once instead of the signal ending the process unclean."""

    def __init__(self) -> None:
        self.why: str | None = None
        self._stop: Callable[[str], None] | None = None
        self._handlers: dict[int, Any] = {}

    def install(self) -> dict[int, Any]:
        """Take SIGINT/SIGTERM over (in the main thread); returns the handlers to restore."""
        previous = _stop_on_signals(self.received)
        self._handlers = {sig: signal.getsignal(sig) for sig in previous}
        return previous

    def arm(self) -> None:
        """Set the handlers again: Ray's driver puts SIGTERM back to its default (the process ends at once) behind
        Python's back; seen once a watch had let its driver go and connected again."""
        if threading.current_thread() is threading.main_thread():
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)

    def received(self, why: str) -> None:
        self.why = self.why or why
        if self._stop is not None:
            self._stop(why)

    @contextmanager
    def to(self, stop: Callable[[str], None]) -> Iterator[None]:
        before, self._stop = self._stop, stop
        self.arm()
        try:
            if self.why is not None:
                stop(self.why)
            yield
        finally:
            self._stop = before


def _stop_on_signals(stop: Callable[[str], None]) -> dict[int, Any]:
    """First SIGINT/SIGTERM: finish the current step and stop. Second: abandon it (KeyboardInterrupt).

    Abandoning is safe because an apply hands Serve one whole declarative config: what was submitted stays
    consistent, and the next reconciler converges the rest.
    """
    if threading.current_thread() is not threading.main_thread():
        return {}
    asked = []

    def handler(signum: int, frame: Any) -> None:
        if asked:
            raise KeyboardInterrupt
        asked.append(signum)
        stop(f"{signal.Signals(signum).name} received")

    return {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}


def _restore_signals(previous: dict[int, Any]) -> None:
    for sig, handler in previous.items():
        signal.signal(sig, handler)
