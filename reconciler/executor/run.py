"""Carrying a plan out on a cluster, phase by phase (see `steps`), and reporting what each action came to."""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.adapter import gateway as gateways
from reconciler.adapter.observation import foreign_configs, our_configs, pending_apps, replica_state
from reconciler.desired import DesiredState
from reconciler.errors import TransientError
from reconciler.executor import serveconfig, steps
from reconciler.executor.progress import Progress
from reconciler.gateway.settings import GatewaySettings
from reconciler.gateway.table import RouteTable, build_table
from reconciler.observed import ObservedState, ReplicaState
from reconciler.plan import Action, ActionKind, Plan

POLL_S = 0.25  # a replica that starts in 3 s is seen running within a quarter second
PENDING_CHECK_S = 1.0


@dataclass(frozen=True)
class Settings:
    replica_timeout: float = 600.0  # seconds one replica may take to start (model load included)
    stop_timeout: float = 120.0  # seconds a replica may take to stop
    pending_grace: float = 20.0  # seconds Ray may leave a replica unscheduled before apply reports it pending
    max_starting: int = 4  # replicas starting at once on one node (0: no limit); see steps.batches
    gateway: GatewaySettings = GatewaySettings()


@dataclass(frozen=True)
class Outcome:
    action: Action
    ok: bool
    message: str = ""


@dataclass
class Report:
    outcomes: list[Outcome] = field(default_factory=list)
    elapsed: float = 0.0
    cleaned: list[str] = field(default_factory=list)  # applications of ours removed that no action named
    router_errors: list[str] = field(default_factory=list)
    gateway_urls: list[str] = field(default_factory=list)  # the OpenAI base URLs, one per gateway
    gateway_errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and not self.router_errors

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


@dataclass
class _AppResult:
    ok: bool
    message: str


class Executor:
    def __init__(self, cluster: Any, *, settings: Settings = Settings(), progress: Progress | None = None) -> None:
        self.cluster = cluster
        self.settings = settings
        self.progress = progress or Progress()
        self.router_errors: list[str] = []
        self._table_for: Any = None  # apps -> RouteTable, for this apply's desired state
        self._gateway_spec: Any = None
        self._gateway_urls: list[str] = []
        self._gateway_errors: list[str] = []

    def in_sync(self, plan: Plan, desired: DesiredState, observed: ObservedState) -> bool:
        """True when applying `plan` would change nothing (it is empty and our applications are its end state)."""
        if not plan.empty:
            return False
        tgt = steps.target(plan, desired, observed)
        if not steps.in_sync(our_configs(self.cluster.serve_details()), tgt):
            return False
        # The gateways' route table is part of the end state: a gateway that lacks it is not in sync.
        if not self.settings.gateway.enabled:
            return True
        wanted = self._table(plan, desired, tgt.apps)
        return gateways.stored_table(self.cluster).same_routes(wanted) and bool(gateways.urls(self.cluster))

    def apply(self, plan: Plan, desired: DesiredState, observed: ObservedState) -> Report:
        try:
            return self._apply(plan, desired, observed)
        finally:
            self.progress.close()

    def _apply(self, plan: Plan, desired: DesiredState, observed: ObservedState) -> Report:
        started = time.monotonic()
        details = self.cluster.serve_details()
        foreign = foreign_configs(details)
        current = our_configs(details)
        tgt = steps.target(plan, desired, observed)
        results: dict[str, _AppResult] = {}
        report = Report()
        named = set(tgt.old_app.values())
        self._table_for = lambda apps: self._table(plan, desired, apps)
        self._gateway_spec = desired.gateway

        free = steps.phase_free(plan, tgt, current)
        report.cleaned = sorted(
            n
            for n, config in current.items()
            if n not in free.apps and n not in named and config.get("args", {}).get("kind") == steps.REPLICA_KIND
        )
        self._run(free, details, foreign, current, results, what={n: f"stop {n}" for n in free.wait_gone})

        start = steps.phase_start(plan, tgt, free)
        self._run(start, details, foreign, free.apps, results, what=self._what(plan, tgt, start.wait_running))
        running = {n for n in start.wait_running if results.get(n, _AppResult(False, "")).ok}

        switch = steps.phase_switch(plan, tgt, start, running)
        self._run(switch, details, foreign, start.apps, results, what={n: f"stop {n}" for n in switch.wait_gone})
        failed_replacements = {
            tgt.old_app[i]: tgt.new_app[i]
            for i, a in enumerate(plan.actions)
            if a.kind in (ActionKind.MOVE, ActionKind.REPLACE)
            and a.make_before_break
            and i in tgt.old_app
            and tgt.new_app.get(i) not in running
            and tgt.old_app[i] != tgt.new_app.get(i)  # restarted in place: the old one was deleted first
        }

        create = steps.phase_create(plan, tgt, switch, failed_replacements)
        self._run(create, details, foreign, switch.apps, results, what=self._what(plan, tgt, create.wait_running))

        report.outcomes = self._outcomes(plan, tgt, results, failed_replacements)
        self._publish(create.apps)
        report.router_errors = list(self.router_errors)
        report.gateway_urls = list(self._gateway_urls)
        report.gateway_errors = list(self._gateway_errors)
        report.elapsed = time.monotonic() - started
        return report

    def _what(self, plan: Plan, tgt: steps.Target, apps: list[str]) -> dict[str, str]:
        by_app = steps.actions_by_app(plan, tgt)
        out = {}
        for app in apps:
            indexes = by_app.get(app)
            out[app] = steps.describe(plan.actions[indexes[0]]) if indexes else f"start {app}"
        return out

    def _run(
        self,
        phase: steps.Phase,
        details: dict[str, Any],
        foreign: list[dict[str, Any]],
        previous: dict[str, dict[str, Any]],
        results: dict[str, _AppResult],
        *,
        what: dict[str, str],
    ) -> None:
        if phase.apps == previous and not phase.wait_running and not phase.wait_gone:
            return
        detail = []
        if phase.wait_gone:
            detail.append(f"stopping {len(phase.wait_gone)}")
        if phase.wait_running:
            detail.append(f"starting {len(phase.wait_running)}")
        self.progress.phase(phase.name, ", ".join(detail) or "reconfiguring")
        for app in [*phase.wait_gone, *phase.wait_running]:
            self.progress.track(app, what.get(app, app))
        before = previous
        for i, (apps, starting) in enumerate(steps.batches(phase, previous, self.settings.max_starting)):
            if apps != before:
                self.cluster.put_serve_config(serveconfig.whole_config(details, foreign, apps))
            before = apps
            self._wait(phase.wait_gone if i == 0 else [], starting, results)
        routers = [
            name
            for name, config in phase.apps.items()
            if config["args"].get("kind") == steps.ROUTER_KIND and previous.get(name) != config
        ]
        if routers:
            self._wait_routers(routers)
            self._publish(phase.apps)  # the gateways switch with the routers (make-before-break)

    def _table(self, plan: Plan, desired: DesiredState, apps: dict[str, dict[str, Any]]) -> RouteTable:
        return build_table(models=desired.models, apps=apps, unplaced=[u.model for u in plan.unplaced],
                           created=int(time.time()), gateway=desired.gateway)

    def _publish(self, apps: dict[str, dict[str, Any]]) -> None:
        if self._table_for is None:
            return
        settings = self.settings.gateway
        spec = self._gateway_spec
        if spec is not None:  # the Gateway spec's listen address wins over the defaults
            settings = replace(settings, host=spec.host or settings.host, port=spec.port or settings.port)
        try:
            self._gateway_urls = gateways.publish(self.cluster, self._table_for(apps), settings)
            self._gateway_errors = []
        except Exception as exc:  # the per-model routes still serve: report, don't fail the apply
            self._gateway_errors = [f"the gateway did not take the route table: {type(exc).__name__}: {exc}"[:500]]

    def _wait_routers(self, routers: list[str]) -> None:
        """Until reconfigured or new routers serve: when apply returns, every route answers with its new backends."""

        def settled(details: dict[str, Any]) -> bool:
            apps = details.get("applications") or {}
            for name in routers:
                app = apps.get(name)
                if app is None or app.get("status") != "RUNNING":
                    return False
                replicas = [r for d in app["deployments"].values() for r in d.get("replicas", [])]
                if not replicas or any(r.get("state") != "RUNNING" for r in replicas):
                    return False
            return True

        details = self.cluster.wait_serve(settled, timeout=self.settings.replica_timeout, interval=POLL_S)
        if not settled(details):
            apps = details.get("applications") or {}
            for name in routers:
                status = (apps.get(name) or {}).get("status", "missing")
                if status != "RUNNING":
                    self.router_errors.append(f"router {name} is {status}: {(apps.get(name) or {}).get('message', '')}")

    def _wait(self, wait_gone: list[str], wait_running: list[str], results: dict[str, _AppResult]) -> None:
        s = self.settings
        begun = time.monotonic()
        open_running = set(wait_running)
        open_gone = set(wait_gone)
        pending_since: dict[str, float] = {}
        last_pending_check = 0.0
        demands: list = []
        while open_running or open_gone:
            try:
                details = self.cluster.serve_details()
            except TransientError:
                # A dashboard too busy to answer (many replicas starting on few cores) is not a failed apply: what
                # was submitted goes on, and the timeouts below still bound the wait.
                if time.monotonic() - begun > max(s.replica_timeout, s.stop_timeout):
                    raise
                time.sleep(POLL_S)
                continue
            apps = details.get("applications") or {}
            now = time.monotonic()
            for name in sorted(open_gone):
                if name not in apps:
                    open_gone.discard(name)
                    results[name] = _AppResult(True, "stopped")
                    self.progress.update(name, "stopped")
                elif now - begun > s.stop_timeout:
                    open_gone.discard(name)
                    results[name] = _AppResult(False, f"still stopping after {s.stop_timeout:.0f}s")
                    self.progress.update(name, "stop timed out")
                else:
                    self.progress.update(name, "stopping")
            if open_running and now - last_pending_check > PENDING_CHECK_S:
                last_pending_check = now
                demands = self.cluster.pending_demands()
            pending = pending_apps(details, demands)
            for name in sorted(open_running):
                app = apps.get(name)
                if app is None:
                    self.progress.update(name, "submitted")
                    continue
                state, message = replica_state(app, name in pending)
                if state == ReplicaState.RUNNING:
                    open_running.discard(name)
                    results[name] = _AppResult(True, "running")
                    self.progress.update(name, "running")
                elif state == ReplicaState.FAILED:
                    open_running.discard(name)
                    results[name] = _AppResult(False, f"failed: {message or 'Serve reported the deployment failed'}")
                    self.progress.update(name, "FAILED")
                elif state == ReplicaState.PENDING:
                    first = pending_since.setdefault(name, now)
                    self.progress.update(name, "pending (no room on its GPU)")
                    if now - first > s.pending_grace:
                        open_running.discard(name)
                        results[name] = _AppResult(False, _pending_message(app, s.pending_grace))
                        self.progress.update(name, "PENDING")
                else:
                    pending_since.pop(name, None)
                    self.progress.update(name, "starting")
                    if now - begun > s.replica_timeout:
                        open_running.discard(name)
                        results[name] = _AppResult(
                            False, f"not running after {s.replica_timeout:.0f}s: {message or 'still starting'}"
                        )
                        self.progress.update(name, "TIMED OUT")
            self.progress.tick()
            if open_running or open_gone:
                time.sleep(POLL_S)

    def _outcomes(
        self,
        plan: Plan,
        tgt: steps.Target,
        results: dict[str, _AppResult],
        failed_replacements: dict[str, str],
    ) -> list[Outcome]:
        outcomes = []
        for i, action in enumerate(plan.actions):
            new, old = tgt.new_app.get(i), tgt.old_app.get(i)
            if action.kind in (ActionKind.CREATE, ActionKind.MOVE, ActionKind.REPLACE):
                result = results.get(new) if new else None
                if new is None:
                    outcomes.append(Outcome(action, False, "the plan's end state has no place for it"))
                elif result is None:
                    outcomes.append(Outcome(action, True, "already running"))
                elif not result.ok:
                    kept = " (the old replica keeps serving)" if old in failed_replacements else ""
                    outcomes.append(Outcome(action, False, result.message + kept))
                else:
                    outcomes.append(Outcome(action, True, result.message))
            elif action.kind in (ActionKind.EVICT, ActionKind.DELETE):
                result = results.get(old) if old else None
                if result is None:
                    outcomes.append(Outcome(action, True, "already gone"))
                else:
                    outcomes.append(Outcome(action, result.ok, result.message))
            else:
                outcomes.append(Outcome(action, True, "reconfigured"))
        return outcomes


def sync_gateway(cluster: Any, desired: DesiredState, settings: GatewaySettings = GatewaySettings()) -> bool:
    """Publish the route table for `desired` and the applications running now, when the gateways' differs.

    For loops that apply only plans with actions (watch): a changed key, limit or replica-less model changes no
    replica, so no apply would carry it to the gateways. True when it published."""
    if not settings.enabled:
        return False
    table = build_table(models=desired.models, apps=our_configs(cluster.last_serve or cluster.serve_details()),
                        created=int(time.time()), gateway=desired.gateway)
    if gateways.stored_table(cluster).same_routes(table) and gateways.urls(cluster):
        return False
    if desired.gateway is not None:
        settings = replace(settings, host=desired.gateway.host or settings.host,
                           port=desired.gateway.port or settings.port)
    gateways.publish(cluster, table, settings)
    return True


def _pending_message(app: dict[str, Any], grace: float) -> str:
    config = app.get("deployed_app_config") or {}
    deployments = config.get("deployments") or [{}]
    resources = (deployments[0].get("ray_actor_options") or {}).get("resources") or {}
    node = ((config.get("args") or {}).get("engine_config") or {}).get("node", "?")
    need = ", ".join(f"{k}={v}" for k, v in sorted(resources.items()))
    return (
        f"pending: Ray has not placed it after {grace:.0f}s; it needs {need} MiB on {node} and that GPU has no room "
        "for it (over-committed, or held by replicas still stopping)"
    )
