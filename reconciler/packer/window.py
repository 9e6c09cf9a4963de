"""Exact search in a window of a large pool, for the replicas the heuristic left out.

A pool too large for the exact model keeps the heuristic's placement everywhere but on a few whole nodes: those with
the most free room. There, every replica already placed and every replica left out (highest levels first) become the
variables of the exact model, with the rules of `objective.py`; outside, nothing changes. Whole nodes keep the
spread and gang constraints local to the window. When the window is the whole pool, what the exact model proves
holds for the pool.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace

from reconciler.packer.exact import solve_exact
from reconciler.packer.objective import score
from reconciler.packer.problem import PackSettings, Problem


@dataclass(frozen=True, slots=True)
class Completion:
    assignment: tuple[tuple[int, ...] | None, ...]
    whole_pool: bool  # the window was the whole pool
    levels_optimal: bool  # the exact model proved that no level can hold more in the window


def complete(problem: Problem, assignment, *, settings: PackSettings, forced: Collection[int]) -> Completion:
    items, bins = problem.items, problem.bins
    load = [0] * len(bins)
    for item, where in zip(items, assignment):
        for b in where or ():
            load[b] += item.vram
    by_node: dict[str, list[int]] = {}
    for b, gpu in enumerate(bins):
        by_node.setdefault(gpu.node, []).append(b)
    room = {node: sum(bins[b].capacity - load[b] for b in members) for node, members in by_node.items()}
    # A node is only taken whole and closed: no running replica moved onto it from elsewhere or off it to elsewhere,
    # so the rules for every replica (why it moved, why it was evicted) stay inside the window or outside it.
    crossing = set()
    for i, item in enumerate(items):
        where = assignment[i]
        if item.current is not None and i not in forced and where is not None and where != item.current:
            here, there = bins[item.current[0]].node, bins[where[0]].node
            if here != there:
                crossing.update((here, there))
    held = {node: 0 for node in by_node}
    for where in assignment:
        if where:
            held[bins[where[0]].node] += 1
    chosen: list[int] = []
    count = 0
    for node in sorted((n for n in by_node if n not in crossing), key=lambda n: (-room[n], n)):
        if chosen and (len(chosen) + len(by_node[node]) > settings.window_max_bins
                       or count + held[node] > settings.window_max_items):
            break
        chosen.extend(by_node[node])
        count += held[node]
    inside = set(chosen)
    if not inside:
        return Completion(tuple(assignment), False, False)
    members = [i for i, where in enumerate(assignment) if where and where[0] in inside]
    left_out = sorted(
        (
            i
            for i, where in enumerate(assignment)
            if where is None
            and (items[i].current is None or i in forced or items[i].current[0] in inside)
        ),
        key=lambda i: (items[i].level, items[i].replica if items[i].elastic else 0, -items[i].size, items[i].key),
    )
    # Replicas evicted from the window's GPUs must take part: the window decides again whether they are preempted.
    evicted = [i for i in left_out if items[i].current is not None and items[i].current[0] in inside]
    others = [i for i in left_out if i not in set(evicted)]
    room_for = max(0, settings.window_max_items - len(members) - len(evicted))
    picked = sorted(members + evicted + others[:room_for])
    local = {b: k for k, b in enumerate(sorted(inside))}
    outside_moves = sum(
        1
        for i, item in enumerate(items)
        if item.current is not None
        and i not in forced
        and item.current[0] not in inside
        and assignment[i] is not None
        and assignment[i] != item.current
    )
    sub_items = []
    for i in picked:
        item = items[i]
        current = None
        if item.current is not None and item.current[0] in inside:
            current = tuple(local[b] for b in item.current)
        sub_items.append(replace(item, current=current))
    sub = Problem(
        bins=tuple(bins[b] for b in sorted(inside)),
        items=tuple(sub_items),
        policy=problem.policy,
        max_moves=max(0, problem.max_moves - outside_moves),
    )
    sub_forced = {k for k, i in enumerate(picked) if i in forced}
    back = sorted(inside)
    hint = tuple(None if assignment[i] is None else tuple(local[b] for b in assignment[i]) for i in picked)
    if len(bins) <= settings.window_time_max_bins:
        result = solve_exact(sub, budget=settings.window_time, seed=settings.seed, hint=hint, forced=sub_forced,
                             first=settings.window_first, search=settings.window_search)
    else:  # a fleet: its plan takes seconds anyway, and the window gets the exact model's budget and shares
        result = solve_exact(sub, budget=settings.exact_time, seed=settings.seed, hint=hint, forced=sub_forced)
    whole = len(inside) == len(bins) and len(picked) == len(items)
    if result is None or result.score <= score(sub, hint):
        return Completion(tuple(assignment), whole, bool(result and result.levels_optimal))
    out = list(assignment)
    for k, i in enumerate(picked):
        where = result.assignment[k]
        out[i] = None if where is None else tuple(back[b] for b in where)
    return Completion(tuple(out), whole, result.levels_optimal)
