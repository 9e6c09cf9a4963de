"""From specs and the observed cluster to one packing problem per pool.

Pool membership: a pool with a selector takes the alive GPU nodes whose labels match it (the first such pool by name
when several match); a node no selector takes belongs to the selector-less pool whose inventory names it, else to the
first selector-less pool by name. Nodes without GPUs or not alive belong to no pool.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from reconciler.desired import DesiredState, Model, Pool, Preemption, Spread
from reconciler.observed import NODE_NAME_LABEL, ObservedNode, ObservedReplica, ObservedState, ReplicaState
from reconciler.packer import Bin, Item, Problem

HOLDS_VRAM = (ReplicaState.RUNNING, ReplicaState.STARTING)


@dataclass(frozen=True, slots=True)
class PoolProblem:
    pool: Pool
    nodes: tuple[ObservedNode, ...]
    problem: Problem
    models: tuple[Model, ...]
    foreign: tuple[int, ...]  # per bin: bytes used by processes we don't manage


def pool_nodes(desired: DesiredState, observed: ObservedState) -> dict[str, tuple[ObservedNode, ...]]:
    pools = sorted(desired.pools, key=lambda p: p.name)
    selecting = [p for p in pools if p.selector is not None]
    catch_all = [p for p in pools if p.selector is None]
    members: dict[str, list[ObservedNode]] = {p.name: [] for p in pools}
    for node in sorted(observed.nodes, key=lambda n: n.name):
        if not node.alive or not node.gpus:
            continue
        labels = node.label_map
        owner = next((p for p in selecting if p.selects(labels)), None)
        if owner is None and catch_all:
            name = labels.get(NODE_NAME_LABEL, node.name)
            owner = next((p for p in catch_all if any(inv.node == name for inv in p.inventory)), catch_all[0])
        if owner is not None:
            members[owner.name].append(node)
    return {name: tuple(nodes) for name, nodes in members.items()}


def healthy_current(replica: ObservedReplica, model: Model) -> bool:
    """Running (or starting) from the spec the model has now: a candidate to stay where it is."""
    return (
        replica.state in HOLDS_VRAM
        and replica.restart_hash == model.restart_hash
        and len(replica.gpus) == model.tensor_parallel
    )


def primary_replicas(observed: ObservedState) -> dict[tuple[str, int], ObservedReplica]:
    """One observed replica per key: one holding VRAM first, then in the observed order."""
    chosen: dict[tuple[str, int], ObservedReplica] = {}
    for replica in observed.replicas:
        if replica.state == ReplicaState.STOPPING:
            continue
        old = chosen.get(replica.key)
        if old is None or (old.state not in HOLDS_VRAM and replica.state in HOLDS_VRAM):
            chosen[replica.key] = replica
    return chosen


def build(
    *, pool: Pool, nodes: tuple[ObservedNode, ...], desired: DesiredState, primary: dict[tuple[str, int], ObservedReplica],
    dead: frozenset[str] = frozenset(), keep: Mapping[str, int] | None = None,
) -> PoolProblem:
    """The pool's packing problem. A running replica on a ``dead`` node must move, and that move counts against the
    pool's maxMoves like any other: only what is left of the budget may move replicas that could have stayed."""
    bins: list[Bin] = []
    foreign: list[int] = []
    where: dict[tuple[str, int], int] = {}
    for node in nodes:
        for gpu in sorted(node.gpus, key=lambda g: g.index):
            where[(node.name, gpu.index)] = len(bins)
            bins.append(Bin(node=node.name, index=gpu.index, capacity=max(0, gpu.memory - pool.reserve - gpu.foreign)))
            foreign.append(gpu.foreign)
    models = desired.models_in(pool.name)
    items: list[Item] = []
    moved_off_dead = 0
    for model in models:
        count = model.replicas if model.replicas is not None else _elastic_bound(model, bins, primary)
        for r in range(count):
            current = None
            seen = primary.get((model.name, r))
            if seen is not None and healthy_current(seen, model):
                located = tuple(where.get((seen.node, g), -1) for g in seen.gpus)
                if -1 not in located:
                    current = located
                elif seen.node in dead:
                    moved_off_dead += 1
            items.append(
                Item(
                    model=model.name,
                    replica=r,
                    vram=model.vram,
                    gpus=model.tensor_parallel,
                    priority=model.priority,
                    preempts=model.preemption == Preemption.LOWER_PRIORITY and not model.is_max,
                    preemptible=model.preemptible,
                    spread=model.spread,
                    elastic=model.is_max,
                    current=current,
                    keep=(keep or {}).get(model.name, 0),
                )
            )
    problem = Problem(bins=tuple(bins), items=tuple(items), policy=pool.placement,
                      max_moves=max(0, pool.max_moves - moved_off_dead))
    return PoolProblem(pool=pool, nodes=nodes, problem=problem, models=models, foreign=tuple(foreign))


def _elastic_bound(model: Model, bins: list[Bin], primary: dict[tuple[str, int], ObservedReplica]) -> int:
    """More replicas than could ever fit in the pool, so `max` is as many as fit; the packer stops at the first
    that doesn't. Indices of running replicas are kept in range so they are not deleted and re-created."""
    vram = max(1, model.vram)
    tp = model.tensor_parallel
    per_node: dict[str, int] = {}
    for gpu in bins:
        slots = gpu.capacity // vram
        if model.spread != Spread.NONE:
            slots = min(1, slots)
        per_node[gpu.node] = per_node.get(gpu.node, 0) + slots
    if model.spread == Spread.NODE:
        bound = sum(1 for slots in per_node.values() if slots >= tp)
    else:
        bound = sum(slots // tp for slots in per_node.values())
    running = [r for (name, r) in primary if name == model.name]
    return max(bound, max(running, default=-1) + 1)
