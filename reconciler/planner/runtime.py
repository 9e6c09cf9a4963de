"""What a plan carries so that it applies on its own: each model's runtime, the GPU memory under each placed
replica, the application each action stops, and the inventory the observation assumed. Pure."""

from __future__ import annotations

from dataclasses import replace

from reconciler.desired import DesiredState, Model
from reconciler.observed import ObservedReplica, ObservedState
from reconciler.plan import Action, AssumedGpu, Location, ModelRuntime, PlacedReplica, Plan


def model_runtime(model: Model) -> ModelRuntime:
    return ModelRuntime(
        name=model.name,
        engine=str(model.engine),
        source=model.source,
        vram=model.vram,
        tensor_parallel=model.tensor_parallel,
        engine_args_json=model.engine_args_json,
        route=model.route_path,
        restart_hash=model.restart_hash,
        config_hash=model.config_hash,
        replicas=model.replicas,
        scaling=model.scaling,
        vram_auto=model.vram_auto,
        sizing=model.sizing,
    )


def assumed_gpus(desired: DesiredState) -> tuple[AssumedGpu, ...]:
    """The pools' inventory: the GPUs observation takes for a node it cannot ask NVML about. The first pool that
    lists a node wins, as in observation."""
    seen: dict[str, tuple[AssumedGpu, ...]] = {}
    for pool in desired.pools:
        for inv in pool.inventory:
            seen.setdefault(inv.node, tuple(
                AssumedGpu(node=inv.node, index=i, name=g.name, memory=g.memory) for i, g in enumerate(inv.gpus)))
    return tuple(sorted((g for gpus in seen.values() for g in gpus), key=lambda g: (g.node, g.index)))


def _gpu_memory(memory: dict[tuple[str, int], int], placed: PlacedReplica) -> int:
    try:
        return min(memory[(placed.node, i)] for i in placed.gpus)
    except KeyError:
        return 0


def _source_app(replicas: dict[tuple[str, int], list[ObservedReplica]], action: Action) -> str:
    """The application of the replica an action stops: the one at the action's source, else any of that replica."""
    if action.source is None:
        return ""
    candidates = replicas.get((action.model, action.replica), [])
    exact = [r for r in candidates if Location(r.node, tuple(r.gpus)) == action.source]
    found = exact or candidates
    return found[0].app if found else ""


def self_contained(plan: Plan, *, desired: DesiredState, observed: ObservedState) -> Plan:
    # Indexed once: a fleet's plan has as many actions and placements as there are replicas.
    replicas: dict[tuple[str, int], list[ObservedReplica]] = {}
    for r in observed.replicas:
        if r.app:
            replicas.setdefault((r.model, r.replica), []).append(r)
    memory: dict[tuple[str, int], int] = {}
    seen: set[str] = set()
    for node in observed.nodes:
        if node.name not in seen:  # the first node of a name, and its first GPU of an index, as lookups find them
            seen.add(node.name)
            for gpu in node.gpus:
                memory.setdefault((node.name, gpu.index), gpu.memory)
    return replace(
        plan,
        actions=tuple(replace(a, source_app=_source_app(replicas, a)) for a in plan.actions),
        placement=tuple(replace(p, gpu_memory=_gpu_memory(memory, p)) for p in plan.placement),
        models=tuple(model_runtime(m) for m in sorted(desired.models, key=lambda m: m.name)),
        assumed=assumed_gpus(desired),
        gateway=desired.gateway,
    )
