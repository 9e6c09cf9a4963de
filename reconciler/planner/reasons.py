"""Sentences for people: why a replica is evicted, moved or left unplaced. Nothing branches on them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from reconciler.desired import Spread
from reconciler.packer import Item, Problem
from reconciler.plan import Location, replica_id
from reconciler.quantity import format_bytes


# Appended when the packer could not prove that no placement holds every replica (a pool too large to search
# exactly): the plan then does not claim the replica cannot be placed, only that this plan does not place it.
UNPROVEN = "; not proven impossible: the search found no room for it within its budget"


def needs(item: Item) -> str:
    if item.gpus == 1:
        return f"needs {format_bytes(item.vram)} on one GPU"
    return f"needs {format_bytes(item.vram)} on each of {item.gpus} GPUs of one node"


def evicted(*, victim: Item, by: Item, where: Location) -> str:
    return (
        f"evicted: priority {victim.priority} < {by.priority} of {by.model}, "
        f"which needs {format_bytes(by.vram)} on {where}"
    )


def evicted_for_demand(*, victim: Item, by: Item, where: Location, victim_note: str | None,
                       by_note: str | None) -> str:
    """An eviction where one side scales with demand: who gives way, how busy each is, and for how many requests."""
    about = f"priority {victim.priority}" + (f", {victim_note}" if victim_note else "")
    wanted = f" {by_note}" if by_note else ""
    return (f"evict {replica_id(victim.model, victim.replica)} ({about}) to load {replica_id(by.model, by.replica)} "
            f"(priority {by.priority}){wanted}: it needs {format_bytes(by.vram)} on {where}")


def unplaced(
    *, item: Item, problem: Problem, pool: str, occupants: Sequence[Sequence[int]], cache: dict | None = None
) -> str:
    """Why `item` found no place in the final placement (`occupants`: item ids per bin). `cache` keeps what one
    plan's calls share (the room each GPU offers depends only on the priority and whether it may evict), so that
    explaining many replicas stays linear."""
    head = ("no more replicas fit: " if item.elastic else "") + needs(item)
    if not problem.bins:
        return f"{head}; pool {pool} has no alive GPU nodes"
    items = problem.items
    can_evict = item.preempts and not item.elastic

    def blocking(j: int) -> bool:
        other = items[j]
        return not (can_evict and other.preemptible and other.priority < item.priority)

    def conflict(b: int) -> bool:
        if item.spread == Spread.GPU:
            return any(items[j].model == item.model for j in occupants[b])
        if item.spread == Spread.NODE:
            return item.model in _models_by_node(problem, occupants, cache)[problem.bins[b].node]
        return False

    key = (can_evict, item.priority)
    offers = None if cache is None else cache.get(key)
    if offers is None:
        offers = [
            gpu.capacity - sum(items[j].vram for j in occupants[b] if blocking(j))
            for b, gpu in enumerate(problem.bins)
        ]
        if cache is not None:
            cache[key] = offers
    offer_key = ("best offer", key, item.gpus)
    found = None if cache is None else cache.get(offer_key)
    if found is None:
        found = _best_offer(item=item, problem=problem, offers=offers, skip=lambda b: False)
        if cache is not None:
            cache[offer_key] = found
    best, where = found
    if not where:
        return f"{head}; no node of pool {pool} has {item.gpus} GPUs"
    verb = "could offer after evicting lower priorities" if can_evict else "has free"
    if best < item.vram:
        text = f"{head}; the most any GPU of pool {pool} {verb} is {format_bytes(max(0, best))} ({where})"
        if item.elastic:
            text += "; replicas: max never evicts"
        elif not item.preempts:
            text += "; its priority class does not preempt"
        return text
    spread_key = ("spread offer", key, item.gpus, item.model, item.spread)
    spread_best = None if cache is None else cache.get(spread_key)
    if spread_best is None:
        spread_best, _ = _best_offer(item=item, problem=problem, offers=offers, skip=conflict)
        if cache is not None:
            cache[spread_key] = spread_best
    if spread_best < item.vram:
        unit = "GPU" if item.spread == Spread.GPU else "node"
        return f"{head}; spread: {item.spread} allows one replica of {item.model} per {unit} and every {unit} of pool {pool} with room already holds one"
    return (
        f"{head}; the room on GPUs of pool {pool} went to replicas of priority {item.priority} or higher "
        f"(largest first) and to running replicas that may not be moved (maxMoves)"
    )


def _models_by_node(problem: Problem, occupants: Sequence[Sequence[int]], cache: dict | None) -> dict[str, set[str]]:
    found = None if cache is None else cache.get("models by node")
    if found is None:
        found = {gpu.node: set() for gpu in problem.bins}
        for b, gpu in enumerate(problem.bins):
            found[gpu.node].update(problem.items[j].model for j in occupants[b])
        if cache is not None:
            cache["models by node"] = found
    return found


def _best_offer(*, item: Item, problem: Problem, offers: Sequence[int], skip) -> tuple[int, str]:
    """The most VRAM the best placement could get per GPU, and where."""
    by_node: Mapping[str, list[int]] = {}
    for b, gpu in enumerate(problem.bins):
        if not skip(b):
            by_node.setdefault(gpu.node, []).append(b)  # type: ignore[attr-defined]
    best, where = -1, ""
    for node in sorted(by_node):
        ranked = sorted(by_node[node], key=lambda b: (-offers[b], b))
        if len(ranked) < item.gpus:
            continue
        chosen = ranked[: item.gpus]
        offer = offers[chosen[-1]]
        if offer > best:
            best = offer
            gpus = " ".join(f"gpu{problem.bins[b].index}" for b in sorted(chosen))
            where = f"{node} {gpus}"
    return best, where
