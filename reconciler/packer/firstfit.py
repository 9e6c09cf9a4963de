"""First-fit decreasing: the floor every placement the packer returns is held to.

Running replicas stay where they run (those their GPUs no longer hold are placed like new ones); then, level by level
in the objective's order, the largest replica first, each takes the first GPU in pool order with room (a gang: the
first node with enough such GPUs). It never evicts nor moves anything, so it keeps every rule of `objective.py`, and
the packer keeps it when it places more of some level than its own search did at the first level where they differ.
"""

from __future__ import annotations

from reconciler.packer.objective import displaced
from reconciler.packer.problem import Item, Problem
from reconciler.packer.state import State


def first_fit_decreasing(problem: Problem) -> tuple[tuple[int, ...] | None, ...]:
    items = problem.items
    state = State(problem)
    forced = displaced(problem)
    for i, item in enumerate(items):
        if item.current is not None and i not in forced:
            state.place(i, item.current, indexed=False)
    pending = sorted(
        (i for i, item in enumerate(items) if item.current is None or i in forced),
        key=lambda i: (items[i].level, items[i].replica if items[i].elastic else 0, -items[i].size, items[i].key),
    )
    order = list(dict.fromkeys(state.node_of))  # nodes in pool order
    full: set[str] = set()  # elastic models one replica of which found no room: the next ones find none either
    for i in pending:
        item = items[i]
        if item.elastic and item.model in full:
            continue
        bins = _first(state, item, order)
        if bins is not None:
            state.place(i, bins, indexed=False)
        elif item.elastic:
            full.add(item.model)
    return state.assignment()


def _first(state: State, item: Item, order: list[str]) -> tuple[int, ...] | None:
    free, need = state.free, item.vram
    for node in order:
        ok = []
        for b in state.node_bins[node]:
            if free[b] >= need and state.allowed(item, b):
                ok.append(b)
                if len(ok) == item.gpus:
                    return tuple(ok)
    return None

