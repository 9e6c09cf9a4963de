"""`plan(desired, observed, settings) -> Plan`: pack every pool, then diff the packing against what runs.

Pure: no Ray, no clock, no environment, no files. The same inputs give the same plan, byte for byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from reconciler.desired import DesiredState, Model, Spread
from reconciler.observed import ObservedReplica, ObservedState, ReplicaState, normalised
from reconciler.packer import Item, PackSettings
from reconciler.plan import (
    APPLY_ORDER,
    Action,
    ActionKind,
    GpuUse,
    GpuView,
    Location,
    PlacedReplica,
    Plan,
    PoolQuality,
    Unplaced,
    is_job,
    job_item,
)
from reconciler.planner import jobplace, reasons, runtime, scaling, sizes
from reconciler.planner.jobs import JobSettings
from reconciler.planner.pools import HOLDS_VRAM, PoolProblem, build, healthy_current, pool_nodes, primary_replicas
from reconciler.quantity import format_bytes
from reconciler.settings import SizingSettings

_ORDER = {kind: n for n, kind in enumerate(APPLY_ORDER)}


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """Tunables of planning; budgets are deterministic work so that a plan is reproducible."""

    packing: PackSettings = field(default_factory=PackSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    sizing: SizingSettings = field(default_factory=SizingSettings)


@dataclass(frozen=True, slots=True)
class _Outcome:
    """One desired replica after packing: where it goes, or why not; why it left its GPU if it did."""

    item: Item
    pool: PoolProblem
    target: PlacedReplica | None
    why_not: str  # for unplaced replicas
    why_left: str  # for running replicas that leave their GPU (evicted or moved)


def plan(desired: DesiredState, observed: ObservedState, settings: PlanSettings = PlanSettings()) -> Plan:
    observed = normalised(observed)
    specs, desired = desired, sizes.resolve(desired, observed, settings.sizing)  # sizes from the models
    scaled = scaling.decisions(desired, observed)
    desired = jobplace.with_recorded(scaling.resolve(desired, scaled), observed)
    notes = scaling.notes(scaled, now=observed.at)
    keep = scaling.keep_ranks(scaled)
    primary = primary_replicas(observed)
    members = pool_nodes(desired, observed)
    dead = frozenset(n.name for n in observed.nodes if not n.alive)
    outcomes: dict[tuple[str, int], _Outcome] = {}
    views: list[GpuView] = []
    unplaced: list[Unplaced] = []
    chosen = jobplace.decisions(desired, observed, settings.jobs)
    job_outcomes: dict[tuple[str, int], _Outcome] = {}
    quality: list[PoolQuality] = []
    for pool in sorted(desired.pools, key=lambda p: p.name):
        pp = build(pool=pool, nodes=members[pool.name], desired=desired, primary=primary, dead=dead, keep=keep)
        pp = jobplace.with_jobs(pp, desired, chosen)
        solution = jobplace.pack_pinned(pp.problem, settings.packing)
        q = solution.quality
        quality.append(PoolQuality(pool.name, q.proven_optimal, q.gap_bytes, q.gap_gpus, q.gap_stays, q.gap_fill))
        pool_outcomes = _outcomes(pp, solution.assignment, proven=q.unplaced_proven, notes=notes)
        job_outcomes.update({k: o for k, o in pool_outcomes.items() if is_job(k[0])})
        pool_outcomes = {k: o for k, o in pool_outcomes.items() if not is_job(k[0])}
        outcomes.update(pool_outcomes)
        unplaced.extend(scaling.with_waiting(_unplaced(pool_outcomes), scaled, desired))
        views.extend(_views(pp, observed, solution.assignment))
    targets = {k: (o.target.location if o.target else None) for k, o in job_outcomes.items()}
    placement = tuple(sorted((o.target for o in outcomes.values() if o.target), key=lambda p: (p.model, p.replica)))
    actions = scaling.with_reasons(
        _actions(desired=desired, observed=observed, primary=primary, outcomes=outcomes, views=views), scaled)
    job_actions = jobplace.actions(desired=desired, observed=observed, chosen=chosen, targets=targets,
                                   why_left={k: o.why_left for k, o in job_outcomes.items()}, settings=settings.jobs)
    found = Plan(
        actions=_in_order([*actions, *job_actions]),
        placement=placement,
        unplaced=tuple(sorted(unplaced, key=lambda u: (u.model, u.replica))),
        gpus=tuple(views),
        fingerprint=observed.fingerprint,
        desired_fingerprint=specs.fingerprint,
        quality=tuple(quality),
        jobs=jobplace.planned(desired=desired, chosen=chosen, targets=targets,
                              why_not={k: o.why_not for k, o in job_outcomes.items()}),
        scaling=scaled,
    )
    return runtime.self_contained(found, desired=desired, observed=observed)


def apply_to_observed(plan: Plan, observed: ObservedState, desired: DesiredState) -> ObservedState:
    """The cluster as it will be once `plan` is applied and every replica runs: for idempotence checks and
    what-if chains (plan, apply, plan again)."""
    apps = {r.key: r.app for r in observed.replicas if r.state != ReplicaState.STOPPING}
    replicas = []
    runtimes = {m.name: m for m in plan.models}  # as the plan sized them (a measured `vram: auto` differs from the spec)
    for p in plan.placement:
        model = runtimes[p.model]
        replicas.append(
            ObservedReplica(
                model=p.model,
                replica=p.replica,
                node=p.node,
                gpus=p.gpus,
                vram=p.vram,
                restart_hash=model.restart_hash,
                config_hash=model.config_hash,
                state=ReplicaState.RUNNING,
                app=apps.get((p.model, p.replica), ""),
            )
        )
    return normalised(ObservedState(nodes=observed.nodes, replicas=tuple(replicas), source=observed.source,
                                    jobs=jobplace.runs_after(plan.jobs, plan.actions, observed), at=observed.at,
                                    recorded=observed.recorded, memory_peaks=observed.memory_peaks))


# -- packing results -------------------------------------------------------------------------------------------
def _occupants(pp: PoolProblem, assignment) -> list[list[int]]:
    occupants: list[list[int]] = [[] for _ in pp.problem.bins]
    for i, bins in enumerate(assignment):
        for b in bins or ():
            occupants[b].append(i)
    return occupants


def _outcomes(pp: PoolProblem, assignment, *, proven: bool,
              notes: Mapping[str, tuple[str, str]] = {}) -> dict[tuple[str, int], _Outcome]:
    problem = pp.problem
    items = problem.items
    occupants = _occupants(pp, assignment)
    explained: dict = {}
    out: dict[tuple[str, int], _Outcome] = {}
    for i, item in enumerate(items):
        bins = assignment[i]
        target = None
        if bins:
            node = problem.bins[bins[0]].node
            target = PlacedReplica(
                model=item.model,
                replica=item.replica,
                node=node,
                gpus=tuple(problem.bins[b].index for b in bins),
                vram=item.vram,
            )
        why_not = ""
        if not bins:
            why_not = reasons.unplaced(item=item, problem=problem, pool=pp.pool.name, occupants=occupants,
                                       cache=explained)
            if not proven and not item.elastic:
                why_not += reasons.UNPROVEN
        why_left = ""
        if item.current is not None and bins != item.current:
            why_left = _why_left(pp=pp, i=i, assignment=assignment, occupants=occupants, notes=notes)
        out[item.key] = _Outcome(item=item, pool=pp, target=target, why_not=why_not, why_left=why_left)
    return out


def _why_left(*, pp: PoolProblem, i: int, assignment, occupants, notes: Mapping[str, tuple[str, str]] = {}) -> str:
    problem = pp.problem
    items = problem.items
    item = items[i]
    current = item.current
    assert current is not None
    here = Location(problem.bins[current[0]].node, tuple(problem.bins[b].index for b in current))
    newcomers = [
        j
        for b in current
        for j in occupants[b]
        if j != i and items[j].priority >= item.priority and (items[j].current is None or b not in items[j].current)
    ]
    if newcomers:
        j = min(newcomers, key=lambda j: (-items[j].priority, -items[j].size, items[j].key))
        by = items[j]
        where = Location(problem.bins[assignment[j][0]].node, tuple(problem.bins[b].index for b in assignment[j]))
        if assignment[i] is None and by.priority > item.priority:
            if item.model in notes or by.model in notes:
                return reasons.evicted_for_demand(victim=item, by=by, where=where,
                                                  victim_note=notes.get(item.model, ("", ""))[0],
                                                  by_note=notes.get(by.model, ("", ""))[1])
            return reasons.evicted(victim=item, by=by, where=where)
        return f"makes room for {by.model} (priority {by.priority}), which needs {format_bytes(by.vram)} on {where}"
    for b in current:
        held = sum(items[j].vram for j in range(len(items)) if items[j].current and b in items[j].current)
        if held > problem.bins[b].capacity:
            gpu = problem.bins[b]
            return (
                f"no longer fits on {here}: gpu{gpu.index} offers {format_bytes(gpu.capacity)} after the pool's "
                f"reserve and {format_bytes(pp.foreign[b])} of foreign use, and its running replicas hold "
                f"{format_bytes(held)}"
            )
    if item.spread is not Spread.NONE:
        return f"spread: {item.spread} allows one replica of {item.model} per {item.spread}"
    return f"re-placed to serve higher-priority demand in pool {pp.pool.name}"


def _unplaced(outcomes: dict[tuple[str, int], _Outcome]) -> list[Unplaced]:
    out: list[Unplaced] = []
    reported_max: set[str] = set()
    for key in sorted(outcomes):
        o = outcomes[key]
        if o.target is not None:
            continue
        if o.item.elastic:
            if o.item.model in reported_max:
                continue  # `replicas: max` is explained once, at the first index that does not fit
            reported_max.add(o.item.model)
        out.append(Unplaced(model=o.item.model, replica=o.item.replica, reason=o.why_not))
    return out


def _views(pp: PoolProblem, observed: ObservedState, assignment) -> list[GpuView]:
    problem = pp.problem
    before: dict[tuple[str, int], list[GpuUse]] = {}
    for r in observed.replicas:
        if r.state in HOLDS_VRAM:
            for g in r.gpus:
                before.setdefault((r.node, g), []).append(GpuUse(model=r.model, replica=r.replica, vram=r.vram))
    for run in observed.jobs:
        if run.active:
            for g in run.gpus:
                before.setdefault((run.node, g), []).append(GpuUse(model=job_item(run.job), replica=run.run,
                                                                   vram=run.vram))
    occupants = _occupants(pp, assignment)
    views = []
    nodes = {n.name: n for n in pp.nodes}
    for b, gpu in enumerate(problem.bins):
        observed_gpu = nodes[gpu.node].gpu(gpu.index)
        after = [GpuUse(model=problem.items[i].model, replica=problem.items[i].replica, vram=problem.items[i].vram)
                 for i in occupants[b]]
        views.append(
            GpuView(
                pool=pp.pool.name,
                node=gpu.node,
                index=gpu.index,
                name=observed_gpu.name,
                memory=observed_gpu.memory,
                reserve=pp.pool.reserve,
                foreign=observed_gpu.foreign,
                before=tuple(sorted(before.get((gpu.node, gpu.index), []), key=lambda u: (u.model, u.replica))),
                after=tuple(sorted(after, key=lambda u: (u.model, u.replica))),
            )
        )
    return views


# -- the diff ----------------------------------------------------------------------------------------------------
def _actions(
    *,
    desired: DesiredState,
    observed: ObservedState,
    primary: dict[tuple[str, int], ObservedReplica],
    outcomes: dict[tuple[str, int], _Outcome],
    views: list[GpuView],
) -> tuple[Action, ...]:
    actions: list[Action] = []
    models = {m.name: m for m in desired.models}
    for replica in observed.replicas:
        if replica.state == ReplicaState.STOPPING:
            continue  # already going away
        if replica.key in outcomes and primary.get(replica.key) is replica:
            continue
        actions.append(
            Action(
                kind=ActionKind.DELETE,
                model=replica.model,
                replica=replica.replica,
                source=Location(replica.node, replica.gpus),
                target=None,
                vram=replica.vram,
                reason=_delete_reason(replica, models, primary),
            )
        )
    for key in sorted(outcomes):
        action = _replica_action(outcomes[key], models[key[0]], primary.get(key))
        if action is not None:
            actions.append(action)
    return _in_order(_with_make_before_break(actions, observed, views))


def _in_order(actions: list[Action]) -> tuple[Action, ...]:
    return tuple(sorted(actions, key=lambda a: (_ORDER[a.kind], a.model, a.replica, str(a.source), str(a.target))))


def _delete_reason(replica: ObservedReplica, models: dict[str, Model], primary) -> str:
    model = models.get(replica.model)
    if model is None:
        return f"{replica.model} is no longer desired"
    if primary.get(replica.key) is not replica and replica.key in primary:
        kept = primary[replica.key]
        return f"duplicate of replica {replica.replica} on {Location(kept.node, kept.gpus)}"
    if model.replicas is not None:
        return f"scale down: {model.name} wants {model.replicas} replica{'s' if model.replicas != 1 else ''}"
    return f"scale down: no room for replica {replica.replica} of {model.name} (replicas: max)"


def _size(model: Model) -> str:
    """A replica's memory as a reason says it: with its basis when it was sized from the model."""
    if model.vram_auto and model.sizing is not None:
        return f"{format_bytes(model.vram)} (vram: auto, from {model.sizing.basis})"
    return format_bytes(model.vram)


def _replica_action(o: _Outcome, model: Model, seen: ObservedReplica | None) -> Action | None:
    target = o.target.location if o.target else None
    if seen is None:
        if target is None:
            return None
        return Action(ActionKind.CREATE, model.name, o.item.replica, None, target, model.vram,
                      f"new replica: {_size(model)} on {target}")
    source = Location(seen.node, seen.gpus)

    def act(kind: ActionKind, reason: str) -> Action:
        return Action(kind, model.name, o.item.replica, source, target, model.vram, reason)

    if healthy_current(seen, model):
        if target is None:
            return act(ActionKind.EVICT, o.why_left or f"cannot stay: {o.why_not}")
        if target == source:
            if seen.config_hash != model.config_hash:
                return act(ActionKind.UPDATE, "route or labels changed: reconfigure without a restart")
            return None
        why = o.why_left or f"{source} is no longer a GPU of pool {model.pool}"
        return act(ActionKind.MOVE, why)
    if seen.restart_hash != model.restart_hash:
        change = (
            f"vram {format_bytes(seen.vram)} → {format_bytes(model.vram)}"
            if seen.vram != model.vram
            else "engine, source, tensorParallel or engineArgs"
        )
        if target is None:
            return act(ActionKind.EVICT, f"spec changed ({change}) and the new spec cannot be placed: {o.why_not}")
        return act(ActionKind.REPLACE, f"spec changed ({change}): restart")
    state = f"{seen.state}" + (f" ({seen.message})" if seen.message else "")
    if target is None:
        return act(ActionKind.EVICT, f"{state} and cannot be placed: {o.why_not}")
    if seen.state == ReplicaState.PENDING:
        if target == source:
            return None  # it starts as soon as the room this plan frees is free
        return act(ActionKind.MOVE, f"{state} on {source}: re-placed on {target}")
    return act(ActionKind.REPLACE, f"{state}: restart on {target}")


def _with_make_before_break(actions: list[Action], observed: ObservedState, views: list[GpuView]) -> list[Action]:
    """Flag a move or replace make-before-break when every target GPU has room for the new replica while the old
    one (and every other replica still to leave) holds its VRAM: the worst moment of the apply."""
    gone = {(a.model, a.replica, a.source) for a in actions if a.kind in (ActionKind.EVICT, ActionKind.DELETE)}
    changing = {(a.model, a.replica) for a in actions if a.kind in (ActionKind.MOVE, ActionKind.REPLACE)}
    peak: dict[tuple[str, int], int] = {}
    capacity: dict[tuple[str, int], int] = {}
    staying: dict[tuple[str, int], set[tuple[str, int]]] = {}
    for v in views:
        g = (v.node, v.index)
        capacity[g] = v.capacity
        peak[g] = sum(u.vram for u in v.after)
        staying[g] = {(u.model, u.replica) for u in v.after}
    holding = {}
    for r in observed.replicas:
        if r.state not in HOLDS_VRAM or (r.model, r.replica, Location(r.node, r.gpus)) in gone:
            continue
        holding[r.key] = r
        for index in r.gpus:
            g = (r.node, index)
            if g in peak and (r.key not in staying[g] or r.key in changing):
                peak[g] += r.vram
    out = []
    for a in actions:
        if a.kind in (ActionKind.MOVE, ActionKind.REPLACE) and a.target and (a.model, a.replica) in holding:
            if all(peak.get((a.target.node, g), 1) <= capacity.get((a.target.node, g), 0) for g in a.target.gpus):
                a = Action(a.kind, a.model, a.replica, a.source, a.target, a.vram, a.reason, make_before_break=True)
        out.append(a)
    return out
