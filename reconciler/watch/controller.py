"""The watch loop: level-based reconcile, run on spec changes and on a drift timer, one cycle at a time.

Each cycle reads everything fresh (specs, cluster), plans, and acts on the whole plan: nothing depends on which file
changed or what the previous cycle did, except three pieces of memory that only decide *whether* to act:
- the last good desired state, enforced while the spec directory is invalid;
- the desired fingerprint last applied: a non-empty plan for the same fingerprint is drift (``--no-heal`` reports it
  without acting);
- crash-loop backoff per replica.

Every dependency that touches the world (load, observe, plan, apply, the lease) is injected, so the loop runs in tests
against plain data, and against a real cluster through the adapter.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from reconciler.desired import DesiredState
from reconciler.errors import TransientError, UserError
from reconciler.watch.metrics import Metrics, snapshot
from reconciler.observed import ObservedState
from reconciler.plan import Action, ActionKind, Plan, action_to_json, replica_id, scale_decision_to_json
from reconciler.revision import Outcome
from reconciler.settings import WatchSettings
from reconciler.watch.backoff import Backoff, Held
from reconciler.watch.decision import decide
from reconciler.watch.debounce import Cause, Debouncer, Schedule
from reconciler.watch.events import EventLog, Kind, action_line
from reconciler.planner.memory import overruns
from reconciler.render.memory import overrun_line
from reconciler.render.status import engine_death_line


class LoadResult(Protocol):
    """What ``reconciler.spec.load_specs`` returns."""

    @property
    def ok(self) -> bool: ...
    @property
    def desired(self) -> DesiredState | None: ...
    @property
    def diagnostics(self) -> Sequence[Any]: ...


@dataclass(frozen=True, slots=True)
class ActionResult:
    action: Action
    ok: bool
    error: str = ""


class Recording(Protocol):
    """Where each apply is recorded as a revision (``executor.record``): before it starts, and when it ends."""

    def begin(self, plan: Plan, desired: DesiredState, *, cause: str) -> Any: ...
    def end(self, revision: Any, *, results: Sequence[tuple[bool, str]] = (), outcome: Any = None,
            reason: str = "") -> Any: ...


class Guard(Protocol):
    """The apply lock as the loop sees it (a LeaseKeeper): ``confirm`` raises LeaseLost when it's no longer ours."""

    def confirm(self) -> None: ...


# Engine deaths recorded this long before the controller started are still announced: a replica whose engine died
# while watch was restarting is worth an event; older ones are history (status names them for an hour).
DEATHS_BEFORE_START_S = 300.0

Load = Callable[[], LoadResult]
Observe = Callable[[DesiredState], ObservedState]
PlanFn = Callable[[DesiredState, ObservedState], Plan]
Apply = Callable[[Plan, DesiredState, ObservedState], Sequence[ActionResult]]


@dataclass(frozen=True, slots=True)
class CycleResult:
    cause: Cause
    plan: Plan | None = None
    acted: bool = False
    drift: bool = False
    failed: bool = False
    retry_in: float | None = None
    results: tuple[ActionResult, ...] = ()


class Declined(UserError):
    pass


class Controller:
    def __init__(
        self,
        *,
        load: Load,
        observe: Observe,
        plan: PlanFn,
        apply: Apply,
        events: EventLog,
        settings: WatchSettings = WatchSettings(),
        metrics: Metrics | None = None,
        backoff: Backoff | None = None,
        guard: Guard | None = None,
        confirm_first: Callable[[Plan], bool] | None = None,
        clock: Callable[[], float] = time.time,
        recording: Recording | None = None,
    ) -> None:
        self.load = load
        self.observe = observe
        self.plan = plan
        self.apply = apply
        self.events = events
        self.settings = settings
        self.metrics = metrics
        self.backoff = backoff if backoff is not None else Backoff()
        self.guard = guard
        self.confirm_first = confirm_first
        self.clock = clock
        self.recording = recording
        # The last cycle's picture (desired, observed, plan), and the last plan that had actions with when it was
        # made: what watch's status page shows. Replaced whole, so another thread reads a consistent one.
        self.last_state: tuple[DesiredState, ObservedState, Plan] | None = None
        self.last_actions: tuple[float, Plan] | None = None
        self.last_good: DesiredState | None = None
        self.applied: str | None = None  # desired fingerprint of the last apply (or the --no-heal baseline)
        self.spec_errors: tuple[str, ...] = ()
        self.failures_in_a_row = 0
        self._status: dict[str, Any] = {}
        self._last_plan: Any = None
        self._was_in_sync = False
        self._stages: dict[str, float] = {}
        self._deaths_seen: set[tuple[str, float]] = set()
        self._started_at = self.clock() - DEATHS_BEFORE_START_S
        self._overrunning: frozenset[tuple[str, int, str]] = frozenset()  # replicas an overrun event was logged for

    # -- one cycle -------------------------------------------------------------------------------------------------

    def cycle(self, cause: Cause, changes: int = 0) -> CycleResult:
        started = time.perf_counter()
        self._stages = {}
        stage = "load"
        try:
            desired = self._timed("load", lambda: self._desired(cause))
            if desired is None:
                return self._finish(CycleResult(cause=cause), started)
            stage = "observe"
            observed = self._timed("observe", lambda: self.observe(desired))
            stage = "plan"
            plan = self._timed("plan", lambda: self.plan(desired, observed))
            now = self.clock()
            self.last_state = (desired, observed, plan)
            if not plan.empty:
                self.last_actions = (now, plan)
            self._emit_overruns(observed)
            self._emit_deaths(observed)
            self.backoff.observe(desired=desired, observed=observed, plan=plan, now=now)
            held = self.backoff.held(now)
            if self.metrics is not None:
                self.metrics.update_state(snapshot(desired=desired, observed=observed, plan=plan,
                                                   backoff=[(h.model, h.replica) for h in held]))
            stage = "apply"
            result = self._act(cause=cause, changes=changes, desired=desired, observed=observed, plan=plan,
                               held=held)
        except (Declined, KeyboardInterrupt):
            raise
        except Exception as exc:  # noqa: BLE001 - one failed cycle must not end the controller
            return self._finish(self._failed(cause, stage, exc), started)
        return self._finish(result, started)

    def _timed(self, stage: str, step: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        try:
            return step()
        finally:
            self._stages[stage] = round((time.perf_counter() - t0) * 1000, 1)

    def _desired(self, cause: Cause) -> DesiredState | None:
        loaded = self.load()
        if loaded.ok and loaded.desired is not None:
            if self.metrics is not None:
                self.metrics.spec_valid.set(1)
            desired = loaded.desired
            if self.spec_errors or self.last_good is None or desired.fingerprint != self.last_good.fingerprint:
                self.events.emit(
                    Kind.SPEC_LOADED,
                    f"specs loaded: {_count(len(desired.models), 'model')}, {_count(len(desired.pools), 'pool')} "
                    f"(desired {desired.fingerprint})",
                    detail=[str(d) for d in loaded.diagnostics],  # warnings: the load succeeded
                    fingerprint=desired.fingerprint,
                    models=[m.name for m in desired.models],
                    warnings=[str(d) for d in loaded.diagnostics],
                )
            self.spec_errors = ()
            self.last_good = desired
            return desired
        if self.metrics is not None:
            self.metrics.spec_valid.set(0)
        errors = tuple(str(d) for d in loaded.diagnostics)
        if errors != self.spec_errors or cause is not Cause.DRIFT_TIMER:
            keeping = self.last_good.fingerprint if self.last_good is not None else None
            then = (f"keeping the last good desired state ({keeping}); nothing from this change is applied"
                    if keeping else "no valid desired state yet: nothing will be applied until the specs are fixed")
            self.events.emit(Kind.SPEC_INVALID, f"specs invalid ({_count(len(errors), 'error')}): {then}",
                             detail=list(errors), diagnostics=list(errors), keeping=keeping)
        self.spec_errors = errors
        return self.last_good

    def _act(self, *, cause: Cause, changes: int, desired: DesiredState, observed: ObservedState, plan: Plan,
             held: tuple[Held, ...]) -> CycleResult:
        d = decide(plan=plan, desired=desired.fingerprint, applied=self.applied, settings=self.settings, held=held)
        self.applied = d.applied
        drift = d.drift
        self._emit_plan(cause, changes, plan)
        if drift:
            if self.metrics is not None:
                self.metrics.drift_detected.inc()
            self.events.emit(Kind.DRIFT, f"drift: the cluster differs from the applied specs ({len(plan.actions)} "
                             f"actions to converge)", actions=[action_to_json(a) for a in plan.actions])
        if plan.empty:
            return CycleResult(cause=cause, plan=plan)
        if d.skip is not None:
            self.events.emit(Kind.SKIPPED, f"not acting (--{d.skip}): {len(plan.actions)} actions left undone",
                             why=d.skip, actions=[action_to_json(a) for a in plan.actions])
            return CycleResult(cause=cause, plan=plan, drift=drift)
        for h in d.backing_off:
            self.events.emit(
                Kind.BACKOFF,
                f"{replica_id(h.model, h.replica)} is crash-looping ({h.failures} failures, last: {h.reason}); "
                f"next try in {max(0.0, h.retry_at - self.clock()):.0f} s",
                **h.to_json(),
            )
        run, deferred = d.run, d.deferred
        if not run:
            return CycleResult(cause=cause, plan=plan, drift=drift)
        self._emit_scaling(plan)
        if self.confirm_first is not None:
            if not self.confirm_first(plan):
                raise Declined("not confirmed: watch did not start acting on the cluster")
            self.confirm_first = None
        if self.guard is not None:
            self.guard.confirm()  # LeaseLost propagates: the loop stops without acting
        to_apply = hold_back(plan, deferred)
        self.events.emit(Kind.APPLY, f"applying {len(run)} actions", detail=[action_line(a) for a in run],
                         actions=[action_to_json(a) for a in run])
        t0 = time.perf_counter()
        for action in run:
            if action.kind in (ActionKind.DELETE, ActionKind.EVICT):
                self.backoff.forget((action.model, action.replica))
            if action.kind in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.MOVE):
                model = _model(desired, action.model)
                if model is not None:
                    self.backoff.note_started((action.model, action.replica), restart_hash=model.restart_hash)
        results = self._recorded(cause, to_apply, desired,
                                 lambda: tuple(self._timed("apply", lambda: self.apply(to_apply, desired, observed))))
        # Only after apply returned: an apply that raised is retried as the spec change it was, even with --no-heal.
        self.applied = desired.fingerprint
        now = self.clock()
        for r in results:
            a = r.action
            if self.metrics is not None:
                self.metrics.action(str(a.kind), ok=r.ok)
            line = ("done " if r.ok else "FAILED ") + action_line(a) + ("" if r.ok else f": {r.error}")
            self.events.emit(Kind.ACTION, line, ok=r.ok, error=r.error or None, **action_to_json(a))
            model = _model(desired, a.model)
            if not r.ok and model is not None and a.kind in (ActionKind.CREATE, ActionKind.REPLACE, ActionKind.MOVE):
                self.backoff.note_failure((a.model, a.replica), restart_hash=model.restart_hash, reason=r.error,
                                          now=now)
        failed = sum(not r.ok for r in results)
        self.events.emit(Kind.APPLIED, f"applied: {len(results) - failed} ok, {failed} failed "
                         f"in {time.perf_counter() - t0:.1f} s", ok=len(results) - failed, failed=failed,
                         seconds=round(time.perf_counter() - t0, 3))
        return CycleResult(cause=cause, plan=plan, acted=True, drift=drift, failed=failed > 0, results=results)

    def _recorded(self, cause: Cause, plan: Plan, desired: DesiredState,
                  apply: Callable[[], tuple[ActionResult, ...]]) -> tuple[ActionResult, ...]:
        """Apply, recorded as a revision (when a recording is given) however the apply ends."""
        if self.recording is None:
            return apply()
        revision = self.recording.begin(plan, desired, cause=f"watch: {cause}")
        if self.metrics is not None:
            self.metrics.revision.set(revision.number)
        try:
            results = apply()
        except KeyboardInterrupt:
            self._end_unless_gone(revision, outcome=Outcome.INTERRUPTED, reason="interrupted (a second signal)")
            raise
        except Exception as exc:
            self._end_unless_gone(revision, outcome=Outcome.FAILED, reason=f"{type(exc).__name__}: {exc}"[:500])
            raise
        self.recording.end(revision, results=[(r.ok, r.error) for r in results])
        return results

    def _end_unless_gone(self, revision: Any, **ended: Any) -> None:
        """Record how a failed apply ended; where the store does not answer either (the cluster went with it), the
        apply's own error is the one to report: the revision stays unfinished, and reads as interrupted once this
        watcher's lock is gone."""
        assert self.recording is not None
        try:
            self.recording.end(revision, **ended)
        except TransientError:
            pass

    def _emit_deaths(self, observed: ObservedState) -> None:
        """One event (and a count) per engine death the replicas recorded since this controller started."""
        for death in observed.engine_deaths:
            if death.key in self._deaths_seen or death.at < self._started_at:
                continue
            self._deaths_seen.add(death.key)
            self.events.emit(Kind.ENGINE_DIED, engine_death_line(death, None), model=death.model,
                             replica=death.replica, app=death.app, node=death.node, gpus=list(death.gpus),
                             reason=death.reason, at=death.at)
            if self.metrics is not None:
                self.metrics.engine_died(model=death.model, reason=death.reason)

    def _emit_overruns(self, observed: ObservedState) -> None:
        """One event when a replica is first measured above its planned VRAM; again only after it was back within."""
        found = overruns(observed)
        for o in found:
            if o.key not in self._overrunning:
                self.events.emit(Kind.OVERRUN, overrun_line(o), model=o.model, replica=o.replica, app=o.app,
                                 node=o.node, gpus=list(o.gpus), planned=o.planned, measured=o.measured,
                                 source=o.source, neighbours=list(o.neighbours))
        self._overrunning = frozenset(o.key for o in found)

    def _emit_scaling(self, plan: Plan) -> None:
        """One event per on-demand model whose count this apply changes: the decision and its reason."""
        for d in plan.scaling:
            if not d.changes:
                continue
            if self.metrics is not None:
                self.metrics.scaled(model=d.model, rule=d.rule)
            self.events.emit(Kind.SCALE, f"scale {d.model} {d.running} → {d.wanted}: {d.reason}",
                             **scale_decision_to_json(d))

    def _emit_plan(self, cause: Cause, changes: int, plan: Plan) -> None:
        if plan.empty and not plan.unplaced:
            self._last_plan = None
            return
        counts = ", ".join(f"{v} {k}" for k, v in plan.summary.items() if v)
        what = f" after {_count(changes, 'file change')}" if changes else ""
        # The human log lists the actions when they change, not on every tick of an unchanged plan.
        same = (plan.actions, plan.unplaced) == self._last_plan
        self._last_plan = (plan.actions, plan.unplaced)
        self.events.emit(
            Kind.PLAN, f"plan ({cause}{what}): {counts or 'nothing to do'}" + (" (unchanged)" if same else ""),
            detail=[] if same else [action_line(a) for a in plan.actions]
            + [f"unplaced {replica_id(u.model, u.replica)}: {u.reason}" for u in plan.unplaced],
            cause=str(cause), summary=plan.summary, actions=[action_to_json(a) for a in plan.actions],
            unplaced=[{"model": u.model, "replica": u.replica, "reason": u.reason} for u in plan.unplaced],
            fingerprint=plan.fingerprint, desiredFingerprint=plan.desired_fingerprint,
        )

    def _failed(self, cause: Cause, stage: str, exc: Exception) -> CycleResult:
        from reconciler.adapter.lease import LeaseLost

        if isinstance(exc, LeaseLost):
            raise exc
        self.failures_in_a_row += 1
        # Only what says it is temporary is retried soon; a bug (any other exception) would fail the same way again,
        # so it is reported with its traceback and tried again only on a spec change or the drift timer.
        temporary = isinstance(exc, TransientError)
        retry_in = (min(self.settings.interval, self.settings.retry_base * 2 ** (self.failures_in_a_row - 1))
                    if temporary else None)
        detail = [] if isinstance(exc, UserError) else traceback.format_exception(exc)
        then = f"retrying in {retry_in:.0f} s" if retry_in is not None else "waiting for a spec change or the timer"
        self.events.emit(Kind.FAILURE, f"{stage} failed: {exc}; {then}", detail=detail, stage=stage,
                         error=str(exc) or type(exc).__name__, temporary=temporary, retryIn=retry_in)
        return CycleResult(cause=cause, failed=True, retry_in=retry_in)

    def _finish(self, result: CycleResult, started: float) -> CycleResult:
        seconds = time.perf_counter() - started
        if self.metrics is not None:
            self.metrics.reconcile_duration.observe(seconds)
            if not result.failed and not self.spec_errors and self.last_good is not None:
                self.metrics.last_success.set(self.clock())
        if not result.failed:
            self.failures_in_a_row = 0
        in_sync = result.plan is not None and result.plan.empty
        # The human log says "in sync" when it becomes so, not on every tick of a quiet cluster.
        routine = in_sync and self._was_in_sync and result.cause in (Cause.DRIFT_TIMER, Cause.CLUSTER_CHANGE)
        self._was_in_sync = in_sync
        self.events.emit(
            Kind.CYCLE,
            f"{result.cause}: " + ("in sync" if in_sync else "acted" if result.acted else "done")
            + f" ({seconds * 1000:.0f} ms)",
            cause=str(result.cause), seconds=round(seconds, 4), acted=result.acted, drift=result.drift,
            failed=result.failed, inSync=in_sync, stagesMs=dict(self._stages), human=not routine,
        )
        self._status = {
            "time": self.clock(),
            "specValid": not self.spec_errors,
            "desiredFingerprint": self.last_good.fingerprint if self.last_good else None,
            "inSync": in_sync,
            "backoff": [h.to_json() for h in self.backoff.failing()],
        }
        return result

    def status(self) -> dict[str, Any]:
        """What the lease publishes for `reconciler status`; safe to read from another thread."""
        return dict(self._status)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _model(desired: DesiredState, name: str) -> Any:
    try:
        return desired.model(name)
    except KeyError:
        return None


def hold_back(plan: Plan, deferred: Sequence[Action]) -> Plan:
    """The plan without the deferred starts: their replicas keep running where they are, or stay absent."""
    if not deferred:
        return plan
    keys = {(a.model, a.replica) for a in deferred}
    placement = []
    for p in plan.placement:
        action = next((a for a in deferred if (a.model, a.replica) == (p.model, p.replica)), None)
        if action is None:
            placement.append(p)
        elif action.source is not None:  # move or replace held back: it stays at its current location
            placement.append(replace(p, node=action.source.node, gpus=action.source.gpus))
    return replace(plan, actions=tuple(a for a in plan.actions if (a.model, a.replica) not in keys),
                   placement=tuple(placement))


class Loop:
    """Runs ``Controller.cycle`` whenever the schedule says so, until ``stop()``; one cycle at a time.

    File changes arriving during a cycle (an apply can take minutes) only touch the debouncer; the next cycle picks
    them up after the current one ends, so applies never overlap.
    """

    def __init__(self, controller: Controller, settings: WatchSettings,
                 monotonic: Callable[[], float] = time.monotonic, probe: Callable[[], bool] | None = None) -> None:
        self.controller = controller
        self.monotonic = monotonic
        self.probe = probe
        self.schedule = Schedule(Debouncer(quiet=settings.debounce, max_wait=settings.max_debounce),
                                 interval=settings.interval, poll=settings.poll if probe is not None else 0.0)
        self._cond = threading.Condition()
        self._stopping = False
        self.why_stopped = ""

    def changed(self, count: int = 1) -> None:
        with self._cond:
            self.schedule.debouncer.touch(self.monotonic(), count)
            self._cond.notify_all()

    def demand(self) -> None:
        """A gateway holds requests for a model with no replica: run a cycle now, not at the next poll."""
        with self._cond:
            self.schedule.demand = True
            self._cond.notify_all()

    def stop(self, why: str = "stop requested") -> None:
        with self._cond:
            if not self._stopping:
                self.why_stopped = why
            self._stopping = True
            self._cond.notify_all()

    @property
    def stopping(self) -> bool:
        return self._stopping

    def run(self, max_cycles: int | None = None) -> None:
        cycles = 0
        while max_cycles is None or cycles < max_cycles:
            with self._cond:
                while not self._stopping:
                    now = self.monotonic()
                    taken = self.schedule.take(now)
                    if taken is not None or self.schedule.poll_due(now):
                        break
                    self._cond.wait(timeout=max(0.0, self.schedule.next_wakeup() - now))
                if self._stopping:
                    return
            if taken is None:
                changed = self._probe()
                with self._cond:
                    self.schedule.polled(self.monotonic(), changed)
                continue
            cause, changes = taken
            result = self.controller.cycle(cause, changes)
            cycles += 1
            if result.retry_in is not None:
                with self._cond:
                    self.schedule.retry_after(self.monotonic(), result.retry_in)

    def _probe(self) -> bool:
        """Runs in the loop's thread, between cycles, so it never races one. A probe that fails says nothing: the
        drift timer's full observation reports what is wrong."""
        assert self.probe is not None
        try:
            return self.probe()
        except Exception:  # noqa: BLE001
            return False
