"""Carrying a plan out on a cluster, phase by phase (see `steps`), and reporting what each action came to."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.adapter import gateway as gateways
from reconciler.adapter.observation import foreign_configs, our_configs, pending_apps, replica_state
from reconciler.errors import PermanentError, TransientError
from reconciler.executor import jobs as job_steps
from reconciler.executor import serveconfig, steps, waiting
from reconciler.executor.progress import Progress
from reconciler.executor.waiting import AppResult
from reconciler.gateway.exposure import refusal
from reconciler.gateway.table import RouteTable, build_table
from reconciler.desired import Gateway
from reconciler.plan import Action, ActionKind, ModelRuntime, Plan, is_job
from reconciler.settings import DEFAULTS, ApplySettings, GatewaySettings

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
    revision: int | None = None  # the revision this apply was recorded as (`reconciler history`)

    @property
    def ok(self) -> bool:
        return all(o.ok for o in self.outcomes) and not self.router_errors

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.ok]


class Executor:
    def __init__(self, cluster: Any, *, settings: ApplySettings = DEFAULTS.apply,
                 progress: Progress | None = None, spec_dir: Any = None,
                 wakes: Callable[[], Plan | None] | None = None) -> None:
        self.cluster = cluster
        # Asked while this apply waits (a drain, an engine start): a fresh plan when a gateway woke the controller
        # meanwhile, else None. The woken models' replicas it can start at once (``steps.wake_apps``) join every
        # later Serve config, and the gateways' table once they run. None: wakes wait for the next plan.
        self.wakes = wakes
        self._woken = steps.Woken()
        self._woken_running: set[str] = set()  # woken replica applications seen running
        self._put: tuple[dict[str, Any], list[dict[str, Any]], dict[str, dict[str, Any]]] | None = None
        self._routes: dict[str, dict[str, Any]] = {}  # the applications the gateways' table was last built from
        self.spec_dir = spec_dir  # where the specs' job workingDirs are; None when no spec directory is at hand
        self.settings = settings
        self.progress = progress or Progress()
        self.router_errors: list[str] = []
        self.last_serve: dict[str, Any] = {}  # the last Serve details this executor read (watch's probe baseline)
        self._plan: Plan | None = None  # the plan being applied: the gateways' route table is built from it
        self._gateway_urls: list[str] = []
        self._gateway_errors: list[str] = []

    def _serve(self) -> dict[str, Any]:
        self.last_serve = self.cluster.serve_details()
        return self.last_serve

    def in_sync(self, plan: Plan) -> bool:
        """True when applying `plan` would change nothing (it is empty and our applications are its end state)."""
        if not plan.empty:
            return False
        tgt = steps.target(plan)
        if not steps.in_sync(our_configs(self._serve()), tgt):
            return False
        # The gateways' route table is part of the end state: a gateway that lacks it is not in sync.
        if not self.settings.gateway.enabled:
            return True
        wanted = route_table(plan, tgt.apps)
        return gateways.stored_table(self.cluster).same_routes(wanted) and bool(gateways.urls(self.cluster))

    def apply(self, plan: Plan) -> Report:
        """Carry out a plan; it is self-contained (see ``reconciler.plan``), so nothing else is needed."""
        try:
            return self._apply(plan)
        finally:
            self.progress.close()

    def _apply(self, plan: Plan) -> Report:
        started = time.monotonic()
        details = self._serve()
        foreign = foreign_configs(details)
        current = our_configs(details)
        tgt = steps.target(plan)
        results: dict[str, AppResult] = {}
        report = Report()
        named = set(tgt.old_app.values())
        self._plan = plan
        self._put = (details, foreign, current)  # what Serve was last given: woken replicas are added to it
        self._routes = current
        # Jobs that are preempted or stopped give their VRAM back before any replica needs it.
        job_results = job_steps.stop_all(self.cluster.jobs, plan, self.settings) if job_steps.stops(plan) else []

        free = steps.phase_free(plan, tgt, current)
        report.cleaned = sorted(
            n
            for n, config in current.items()
            if n not in free.apps and n not in named and config.get("args", {}).get("kind") == steps.REPLICA_KIND
        )
        self._run(free, details, foreign, current, results, what={n: f"stop {n}" for n in free.wait_gone})

        start = steps.phase_start(plan, tgt, free)
        self._run(start, details, foreign, free.apps, results, what=self._what(plan, tgt, start.wait_running))
        running = {n for n in start.wait_running if results.get(n, AppResult(False, "")).ok}

        switch = steps.phase_switch(plan, tgt, start, running)
        self._run(switch, details, foreign, start.apps, results, what={n: f"stop {n}" for n in switch.wait_gone})
        failed_replacements = steps.failed_replacements(plan, tgt, running)

        create = steps.phase_create(plan, tgt, switch, failed_replacements)
        self._run(create, details, foreign, switch.apps, results, what=self._what(plan, tgt, create.wait_running))

        if job_steps.submits(plan):
            job_results += job_steps.submit_all(self.cluster.jobs, plan, spec_dir=self.spec_dir)
        self._settle_woken()
        by_index = {r.index: Outcome(plan.actions[r.index], r.ok, r.message) for r in job_results}
        replicas = iter(self._outcomes(plan, tgt, results, failed_replacements))
        report.outcomes = [by_index[i] if is_job(a.model) else next(replicas) for i, a in enumerate(plan.actions)]
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
            out[app] = plan.actions[indexes[0]].describe() if indexes else f"start {app}"
        return out

    def _run(
        self,
        phase: steps.Phase,
        details: dict[str, Any],
        foreign: list[dict[str, Any]],
        previous: dict[str, dict[str, Any]],
        results: dict[str, AppResult],
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
                self._drain([n for n in before if n not in apps], apps)
                self._put = (details, foreign, apps)
                self.cluster.put_serve_config(serveconfig.whole_config(details, foreign, {**apps, **self._woken.apps}))
            before = apps
            self._wait(phase.wait_gone if i == 0 else [], starting, results, configs=apps)
        routers = [
            name
            for name, config in phase.apps.items()
            if config["args"].get("kind") == steps.ROUTER_KIND and previous.get(name) != config
        ]
        if routers:
            self._wait_routers(routers)
            self._publish(phase.apps)  # the gateways switch with the routers (make-before-break)

    def _drain(self, leaving: list[str], apps: dict[str, dict[str, Any]]) -> None:
        """Before replicas stop: the gateways stop sending them requests, and those in flight finish (up to
        ``drain_timeout``), so scaling down or making room loses no request the gateway took. A gateway that does
        not answer may be using them: it counts as busy until it answers or the time is up."""
        if not leaving or self._plan is None or not self.settings.gateway.enabled:
            return
        self._publish(apps)
        deadline = time.monotonic() + self.settings.drain_timeout
        while True:
            try:
                seen = gateways.in_flight(self.cluster)
            except Exception:  # noqa: BLE001 - the cluster itself did not answer: the stop below will say so
                return
            self._start_woken()
            if self._gateway_errors and not seen.silent:
                return  # the gateways answer but did not take the table: their requests would not end
            busy = {app: n for app, n in seen.counts.items() if app in leaving and n}
            if not (busy or seen.silent) or time.monotonic() >= deadline:
                if busy or seen.silent:
                    self.progress.note(f"stopping after {self.settings.drain_timeout:.0f} s with "
                                       + ", ".join([f"{app} ({n} in flight)" for app, n in sorted(busy.items())]
                                                   + [_silent(seen.silent)] * bool(seen.silent)))
                return
            time.sleep(self.settings.poll)

    def _publish(self, apps: dict[str, dict[str, Any]]) -> None:
        if self._plan is None or not self.settings.gateway.enabled:
            return
        self._routes = apps
        try:
            self._gateway_urls = gateways.publish(self.cluster, self._table(apps),
                                                  gateway_settings(self._plan.gateway, self.settings.gateway))
            self._gateway_errors = []
        except Exception as exc:  # noqa: BLE001 - the per-model routes still serve: report, don't fail the apply
            self._gateway_errors = [f"the gateway did not take the route table: {type(exc).__name__}: {exc}"[:500]]

    def _table(self, apps: dict[str, dict[str, Any]]) -> RouteTable:
        """The route table at this point of the apply: the plan's, and each woken model as the fresh plan has it
        (the count its demand asked for) with the router of its woken replicas that run, so the plan being applied,
        which wants none of it, does not take its route away."""
        assert self._plan is not None
        routers = {}
        for name, config in self._woken.apps.items():
            if config["args"].get("kind") == steps.ROUTER_KIND:
                running = [b for b in steps.router_backends(config) if b in self._woken_running]
                if running:
                    routers[name] = serveconfig.with_backends(config, running)
        routed = {str(c["args"]["model"]) for c in routers.values()}
        models = [m for m in self._woken.models if m.name in routed]
        return route_table(self._plan, {**apps, **routers}, models=models)

    def _start_woken(self, details: dict[str, Any] | None = None) -> None:
        """While this apply waits: start the replicas of models woken meanwhile, and route to them once they run."""
        if self.wakes is None or self._plan is None or self._put is None:
            return
        try:
            fresh = self.wakes()
            woken = (steps.wake_apps(fresh, self._plan, submitted=set(self._put[2])) if fresh is not None
                     else steps.Woken())
        except Exception as exc:  # noqa: BLE001 - only a head start: the next plan starts them all the same
            self._wake_failed(exc)
            woken = steps.Woken()
        put_details, foreign, apps = self._put
        extra = {n: c for n, c in woken.apps.items() if n not in self._woken.apps and n not in apps}
        if extra:
            models = {m.name: m for m in (*self._woken.models, *woken.models)}
            grown = steps.Woken(apps={**self._woken.apps, **woken.apps},
                                models=tuple(models[n] for n in sorted(models)))
            try:
                self.cluster.put_serve_config(serveconfig.whole_config(put_details, foreign, {**apps, **grown.apps}))
            except Exception as exc:  # noqa: BLE001 - the apply under way goes on; the next plan starts them
                self._wake_failed(exc)
            else:
                self._woken = grown
                self.progress.note("woken while this apply waits: starting " + ", ".join(m.name for m in woken.models))
        starting = [n for n, c in self._woken.apps.items()
                    if c["args"].get("kind") == steps.REPLICA_KIND and n not in self._woken_running]
        if not starting:
            return
        try:
            states = (details if details is not None else self._serve()).get("applications") or {}
        except TransientError:
            return  # Serve too busy to answer: asked again at the next poll
        started = [n for n in starting if (states.get(n) or {}).get("status") == "RUNNING"]
        if started:
            self._woken_running.update(started)
            self._publish(self._routes)  # the same routes as before (a drain keeps its replicas out), and these

    def _wake_failed(self, exc: Exception) -> None:
        self.progress.note(f"could not start woken models during this apply: {type(exc).__name__}: {exc}"[:300])

    def _settle_woken(self) -> None:
        """Before the apply returns: the woken replicas still starting run (or are given up on), so the next cycle
        sees them as they are and the last table routes to them."""
        lane, self.wakes = self.wakes, None  # a wake from now on is the next cycle's
        try:
            starting = sorted(n for n, c in self._woken.apps.items()
                              if c["args"].get("kind") == steps.REPLICA_KIND and n not in self._woken_running)
            if not starting:
                return
            results: dict[str, AppResult] = {}
            self._wait([], starting, results, configs=self._woken.apps)
            self._woken_running.update(n for n, r in results.items() if r.ok)
            for name, result in sorted(results.items()):
                if not result.ok:
                    self.progress.note(f"woken replica {name} did not start: {result.message}"[:300])
        finally:
            self.wakes = lane

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

        details = self.cluster.wait_serve(settled, timeout=self.settings.replica_timeout, interval=self.settings.poll)
        self.last_serve = details
        if not settled(details):
            apps = details.get("applications") or {}
            for name in routers:
                status = (apps.get(name) or {}).get("status", "missing")
                if status != "RUNNING":
                    self.router_errors.append(f"router {name} is {status}: {(apps.get(name) or {}).get('message', '')}")

    def _wait(self, wait_gone: list[str], wait_running: list[str], results: dict[str, AppResult], *,
              configs: dict[str, dict[str, Any]]) -> None:
        """Poll Serve until each application is running, gone, or given up on; ``waiting.step`` decides which."""
        s = self.settings
        w = waiting.start(gone=wait_gone, running=wait_running, now=time.monotonic())
        last_pending_check = 0.0
        demands: list = []
        while not w.done:
            try:
                details = self._serve()
            except TransientError:
                # A dashboard too busy to answer (many replicas starting on few cores) is not a failed apply: what
                # was submitted goes on, and the timeouts still bound the wait.
                if waiting.give_up_unreachable(w, now=time.monotonic(), settings=s, gone=self.cluster.gone()):
                    raise
                time.sleep(s.poll)
                continue
            self._start_woken(details)
            apps = details.get("applications") or {}
            now = time.monotonic()
            if w.running and now - last_pending_check > s.pending_check:
                last_pending_check = now
                demands = self.cluster.pending_demands()
            pending = pending_apps(details, demands)
            seen = {name: None if name not in apps else replica_state(apps[name], name in pending)
                    for name in w.gone | w.running}
            w, updates = waiting.step(w, seen=seen, configs=configs, now=now, settings=s)
            for update in updates:
                self.progress.update(update.app, update.progress)
                if update.result is not None:
                    results[update.app] = update.result
            self.progress.tick()
            if not w.done:
                time.sleep(s.poll)

    def _outcomes(
        self,
        plan: Plan,
        tgt: steps.Target,
        results: dict[str, AppResult],
        failed_replacements: dict[str, str],
    ) -> list[Outcome]:
        outcomes = []
        for i, action in enumerate(plan.actions):
            if is_job(action.model):
                continue  # carried out by executor.jobs
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


def _silent(n: int) -> str:
    return f"{n} gateway{'' if n == 1 else 's'} not answering"


def route_table(plan: Plan, apps: dict[str, dict[str, Any]], *,
                models: Sequence[ModelRuntime] = ()) -> RouteTable:
    """The gateways' table for a plan, given our Serve application configs at this point of its apply; ``models``
    stand in for the plan's own of the same name (woken models, as a fresher plan has them)."""
    fresher = {m.name: m for m in models}
    return build_table(models=[fresher.get(m.name, m) for m in plan.models], apps=apps,
                       unplaced=[u.model for u in plan.unplaced], created=int(time.time()), gateway=plan.gateway)


def gateway_settings(spec: Gateway | None, settings: GatewaySettings) -> GatewaySettings:
    """The Gateway spec's listen address wins over the defaults; an address beyond loopback without keys (and
    without ``allowAnonymous``) is refused here too, for plans made elsewhere (`apply --plan`)."""
    if spec is not None:
        settings = replace(settings, host=spec.host or settings.host, port=spec.port or settings.port)
    if (why := refusal(settings.host, spec)) is not None:
        raise PermanentError(why)
    return settings


def sync_gateway(cluster: Any, *, models: Sequence[ModelRuntime], gateway: Gateway | None,
                 settings: GatewaySettings = DEFAULTS.apply.gateway) -> bool:
    """Publish the route table of these models and the applications running now, when the gateways' differs.

    For loops that apply only plans with actions (watch): a changed key, limit or replica-less model changes no
    replica, so no apply would carry it to the gateways. True when it published."""
    if not settings.enabled:
        return False
    table = build_table(models=models, apps=our_configs(cluster.serve_details()), created=int(time.time()),
                        gateway=gateway)
    if gateways.stored_table(cluster).same_routes(table) and gateways.urls(cluster):
        return False
    gateways.publish(cluster, table, gateway_settings(gateway, settings))
    return True
