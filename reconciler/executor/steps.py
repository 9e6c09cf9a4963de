"""How a plan becomes a short sequence of whole-config Serve updates. Pure: no Ray, no clock.

The executor puts the whole Serve config several times, each a *phase* of the plan's order:

1. free: evictions and deletions, the old replicas of moves/replaces that are not make-before-break, and anything
   of ours the end state does not contain (stale generations left by an interrupted apply, routers of models that are
   gone). Routers stop naming what goes. Waits until those applications are gone, so their VRAM is free.
2. start: the new replicas of moves and replaces. Waits until they run.
3. switch: the old replicas of make-before-break moves/replaces go, but only those whose new replica runs (a failed
   replacement leaves the old one serving); updates (route, config hash: no restarts).
4. create: new replicas; routers name their final backends. Waits until the new replicas run.

Phases with nothing to do are skipped. Phase 3 depends on how phase 2 went, so it is computed from that outcome.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Any

from reconciler.executor import serveconfig
from reconciler.naming import AppKind
from reconciler.plan import ActionKind, ModelRuntime, Plan

ROUTER_KIND = AppKind.ROUTER
REPLICA_KIND = AppKind.REPLICA


@dataclass(frozen=True)
class Target:
    """The end state of our applications, and where each action's applications are."""

    apps: dict[str, dict[str, Any]]  # every application of ours at the end, by name (replicas and routers)
    replica_of: dict[tuple[str, int], str]  # (model, replica) -> its end-state application
    old_app: dict[int, str]  # index of an action in plan.actions -> the application it stops/moves/replaces
    new_app: dict[int, str]  # index of an action -> the application it starts (create, move, replace)


@dataclass
class Phase:
    name: str
    apps: dict[str, dict[str, Any]]  # all our applications after this phase
    wait_running: list[str] = field(default_factory=list)
    wait_gone: list[str] = field(default_factory=list)
    actions: list[int] = field(default_factory=list)  # indexes into plan.actions this phase carries out

    @property
    def empty(self) -> bool:
        return not (self.wait_running or self.wait_gone or self.actions)


def target(plan: Plan) -> Target:
    apps: dict[str, dict[str, Any]] = {}
    replica_of: dict[tuple[str, int], str] = {}
    for placed in plan.placement:
        config = serveconfig.replica_app(
            model=plan.model(placed.model),
            replica=placed.replica,
            location=placed.location,
            gpu_memory=placed.gpu_memory,
        )
        apps[config["name"]] = config
        replica_of[(placed.model, placed.replica)] = config["name"]
    for model in plan.models:
        backends = [name for (m, _), name in replica_of.items() if m == model.name]
        router = serveconfig.router_app(model=model, backends=backends)
        apps[router["name"]] = router
    old_app: dict[int, str] = {}
    new_app: dict[int, str] = {}
    for index, action in enumerate(plan.actions):
        if action.source_app:
            old_app[index] = action.source_app
        if action.target is not None and (action.model, action.replica) in replica_of:
            new_app[index] = replica_of[(action.model, action.replica)]
    return Target(apps=apps, replica_of=replica_of, old_app=old_app, new_app=new_app)


def _kind(config: dict[str, Any]) -> str:
    return (config.get("args") or {}).get("kind", "")


def router_backends(router: dict[str, Any]) -> list[str]:
    return [b for d in router["deployments"] for b in (d.get("user_config") or {}).get("backends", [])]


def _routers_naming(
    apps: dict[str, dict[str, Any]], tgt: Target, before: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Each router in `apps` naming the replica applications of its model that `apps` contains, and keeping the ones
    it named `before` that the end state brings back under the same name (see `_routers_dropping`)."""
    out = dict(apps)
    by_model: dict[str, list[str]] = {}
    for name, config in apps.items():
        if _kind(config) == REPLICA_KIND:
            by_model.setdefault(config["args"]["engine_config"]["model"], []).append(name)
    for name, config in apps.items():
        if _kind(config) == ROUTER_KIND:
            returning = [b for b in router_backends(before.get(name, config)) if b not in apps and b in tgt.apps]
            out[name] = serveconfig.with_backends(config, by_model.get(config["args"]["model"], []) + returning)
    return out


def _routers_dropping(apps: dict[str, dict[str, Any]], going: set[str]) -> dict[str, dict[str, Any]]:
    """Each router in `apps` without the backends that are going, and otherwise as it is.

    A backend whose application is already gone (deleted by hand, lost with its node) stays named: the router skips
    applications Serve does not report running, and leaving it saves a router reconfiguration (and the wait for it)
    when the create phase brings it back under the same name, which is how drift is healed."""
    out = dict(apps)
    for name, config in apps.items():
        if _kind(config) != ROUTER_KIND or not going:
            continue
        backends = router_backends(config)
        if going & set(backends):
            out[name] = serveconfig.with_backends(config, [b for b in backends if b not in going])
    return out


def restarting_in_place(plan: Plan, tgt: Target) -> set[str]:
    """Applications a replace starts again under their own name: same spec, same GPU (a replica Serve gave up on).
    Serve would keep a failed application as it is, so it is deleted first and created again."""
    return {
        tgt.old_app[i]
        for i, a in enumerate(plan.actions)
        if a.kind in (ActionKind.MOVE, ActionKind.REPLACE) and i in tgt.old_app and tgt.old_app[i] == tgt.new_app.get(i)
    }


def phase_free(plan: Plan, tgt: Target, current: dict[str, dict[str, Any]]) -> Phase:
    restarting = restarting_in_place(plan, tgt)
    keep_for_switch = {
        tgt.old_app[i]
        for i, a in enumerate(plan.actions)
        if a.kind in (ActionKind.MOVE, ActionKind.REPLACE) and a.make_before_break and i in tgt.old_app
    } - restarting
    going = sorted(
        name
        for name, config in current.items()
        if (name not in tgt.apps and name not in keep_for_switch) or name in restarting
    )
    apps = {name: config for name, config in current.items() if name not in going}
    actions = [
        i
        for i, a in enumerate(plan.actions)
        if a.kind in (ActionKind.EVICT, ActionKind.DELETE)
    ]
    return Phase(name="free", apps=_routers_dropping(apps, set(going)), wait_gone=going, actions=actions)


def phase_start(plan: Plan, tgt: Target, before: Phase) -> Phase:
    indexes = [i for i, a in enumerate(plan.actions) if a.kind in (ActionKind.MOVE, ActionKind.REPLACE)]
    starting = sorted({tgt.new_app[i] for i in indexes if i in tgt.new_app} - set(before.apps))
    apps = dict(before.apps)
    for name in starting:
        apps[name] = tgt.apps[name]
    # Routers are left as they are: new replicas join them once they run (phase switch).
    return Phase(name="start", apps=apps, wait_running=starting, actions=indexes)


def phase_switch(plan: Plan, tgt: Target, before: Phase, running: set[str]) -> Phase:
    """Make-before-break: drop an old replica only where its successor runs; apply updates."""
    dropping = []
    for i, action in enumerate(plan.actions):
        if action.kind in (ActionKind.MOVE, ActionKind.REPLACE) and action.make_before_break:
            old, new = tgt.old_app.get(i), tgt.new_app.get(i)
            if old and old in before.apps and old not in tgt.apps and new in running:
                dropping.append(old)
    apps = {name: config for name, config in before.apps.items() if name not in dropping}
    for name in apps:
        if name in tgt.apps and _kind(tgt.apps[name]) == REPLICA_KIND:
            apps[name] = tgt.apps[name]  # updates: new config_hash through user_config, no restart
    for name, config in tgt.apps.items():
        if _kind(config) == ROUTER_KIND and name in before.apps:
            apps[name] = config  # new routes, new config hashes; new routers start with the new replicas (create)
    apps = _routers_naming(apps, tgt, before.apps)
    updates = [i for i, a in enumerate(plan.actions) if a.kind == ActionKind.UPDATE]
    return Phase(name="switch", apps=apps, wait_gone=sorted(dropping), actions=updates)


def failed_replacements(plan: Plan, tgt: Target, running: set[str]) -> dict[str, str]:
    """Old application -> its make-before-break successor that did not come up: the old one keeps serving."""
    return {
        tgt.old_app[i]: tgt.new_app[i]
        for i, a in enumerate(plan.actions)
        if a.kind in (ActionKind.MOVE, ActionKind.REPLACE)
        and a.make_before_break
        and i in tgt.old_app
        and tgt.new_app.get(i) not in running
        and tgt.old_app[i] != tgt.new_app.get(i)  # restarted in place: the old one was deleted first
    }


def phase_create(plan: Plan, tgt: Target, before: Phase, failed_replacements: dict[str, str]) -> Phase:
    """Everything of the end state; old replicas whose replacement failed stay and keep serving."""
    creating = sorted(
        name for name, config in tgt.apps.items() if _kind(config) == REPLICA_KIND and name not in before.apps
    )
    apps = dict(tgt.apps)
    for old in failed_replacements:
        if old in before.apps:
            apps[old] = before.apps[old]
    apps = _routers_naming(apps, tgt, before.apps)
    indexes = [i for i, a in enumerate(plan.actions) if a.kind == ActionKind.CREATE]
    return Phase(name="create", apps=apps, wait_running=creating, actions=indexes)


def batches(
    phase: Phase, previous: dict[str, dict[str, Any]], per_node: int
) -> list[tuple[dict[str, dict[str, Any]], list[str]]]:
    """The phase as successive whole configs, each starting at most `per_node` new replicas on any one node.

    Starting many replicas at once on one node makes them all slow: the raylet starts a worker process for each,
    every one imports Serve and loads its model, and they contend for CPU, disk and the network. Each config is the
    phase's end state less the replicas of later batches; routers keep their previous config until the last batch
    (new routers start with the first), so they are reconfigured once. `per_node` 0: one batch."""
    starting = list(phase.wait_running)
    if per_node <= 0 or not starting:
        return [(phase.apps, starting)]
    by_node: dict[str, list[str]] = {}
    for name in starting:
        node = (phase.apps[name].get("args") or {}).get("engine_config", {}).get("node", "")
        by_node.setdefault(node, []).append(name)
    rounds = max(-(-len(names) // per_node) for names in by_node.values())
    if rounds <= 1:
        return [(phase.apps, starting)]
    out = []
    for k in range(rounds):
        later = {n for names in by_node.values() for n in names[(k + 1) * per_node:]}
        if k == rounds - 1:
            apps = phase.apps
        else:
            apps = {
                name: previous.get(name, config) if _kind(config) == ROUTER_KIND else config
                for name, config in phase.apps.items()
                if name not in later
            }
        out.append((apps, [n for names in by_node.values() for n in names[k * per_node:(k + 1) * per_node]]))
    return out


def actions_by_app(plan: Plan, tgt: Target) -> dict[str, list[int]]:
    """Which actions succeed when an application runs (or goes): for the report."""
    out: dict[str, list[int]] = {}
    for i, action in enumerate(plan.actions):
        if action.kind in (ActionKind.CREATE, ActionKind.MOVE, ActionKind.REPLACE) and i in tgt.new_app:
            out.setdefault(tgt.new_app[i], []).append(i)
    return out


def in_sync(current: dict[str, dict[str, Any]], tgt: Target) -> bool:
    """Whether our applications already are the end state: the same applications, routers configured alike.

    An empty plan can still leave something to tidy: a router of a model that left the specs with no replica
    running, a router whose backend list an interrupted apply never updated."""
    if set(current) != set(tgt.apps):
        return False
    return all(current[name] == config for name, config in tgt.apps.items() if _kind(config) == ROUTER_KIND)


@dataclass(frozen=True)
class Woken:
    """What an apply in progress may start at once for models woken meanwhile (see ``wake_apps``)."""

    apps: dict[str, dict[str, Any]] = field(default_factory=dict)  # replicas, and each model's router naming them
    models: tuple[ModelRuntime, ...] = ()  # as the fresh plan has them: the count their demand asked for

    def __bool__(self) -> bool:
        return bool(self.apps)


def wake_apps(fresh: Plan, running: Plan, *, submitted: Collection[str] = ()) -> Woken:
    """The replica applications a fresh plan creates for woken models (requests held, no replica) on GPUs that the
    plan being applied is not about to fill and the fresh plan does not have to free first, with each such model's
    router naming them: what can start at once, while that apply still waits (a drain, an engine start), without
    racing it for VRAM. All the models woken by then start together.

    A GPU the running apply only frees is fine (Ray's VRAM resources hold a woken replica back until what leaves is
    gone). So is one it fills with applications already ``submitted`` to Serve (an engine still starting): the
    fresh observation counts them. One it has yet to fill is fine only where the fresh plan places the same replica
    there too, so that its packing counts that VRAM; elsewhere the woken replica could take what the running apply
    is about to start. A model the running apply acts on itself is left to it."""
    woken = {d.model for d in fresh.scaling if d.rule == "wake"} - {a.model for a in running.actions}
    if not woken:
        return Woken()
    started = target(running).new_app
    agreed = {(p.model, p.replica, p.node, p.gpus) for p in fresh.placement}
    touched = {(a.target.node, g) for i, a in enumerate(running.actions)
               if a.target is not None and started.get(i) not in submitted
               and (a.model, a.replica, a.target.node, a.target.gpus) not in agreed
               for g in a.target.gpus}
    # The fresh plan's own stops would have to run first, unless the running apply is already doing them.
    doing = {(a.kind, a.model, a.replica) for a in running.actions}
    stops = [a for a in fresh.actions
             if a.kind is not ActionKind.CREATE and a.source is not None and (a.kind, a.model, a.replica) not in doing]
    touched |= {(a.source.node, g) for a in stops if a.source is not None for g in a.source.gpus}
    tgt = target(fresh)
    replicas: dict[str, list[str]] = {}
    for i, a in enumerate(fresh.actions):
        if a.kind is not ActionKind.CREATE or a.model not in woken or a.target is None or i not in tgt.new_app:
            continue
        if touched & {(a.target.node, g) for g in a.target.gpus}:
            continue
        replicas.setdefault(a.model, []).append(tgt.new_app[i])
    apps: dict[str, dict[str, Any]] = {}
    for model, names in sorted(replicas.items()):
        apps.update({name: tgt.apps[name] for name in names})
        router = serveconfig.router_app(model=fresh.model(model), backends=names)
        apps[router["name"]] = router
    return Woken(apps=apps, models=tuple(fresh.model(m) for m in sorted(replicas)))
