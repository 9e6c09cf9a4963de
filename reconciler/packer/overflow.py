"""Placing what best-fit decreasing left out of a full pool, with the machinery that frees GPUs.

When a binpack pool holds every replica only in a tight packing, best-fit decreasing may run out of GPUs while a
placement of all of them exists. Packing into the pool plus a few virtual GPUs, then freeing GPUs with arc-flow
and the local search, is the same problem as using the fewest GPUs; if the virtual GPUs in use then fit into the
real GPUs left empty, every replica has a place. Virtual GPUs have the smallest real capacity and a node each, so
what lands on them (single-GPU replicas) fits on any empty real GPU.
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.desired import Placement, Spread
from reconciler.packer.objective import Assignment
from reconciler.packer.problem import Bin, Problem
from reconciler.packer.state import State

Improve = Callable[[Problem, State], State]


def place_left_out(problem: Problem, assignment: Assignment, *, improve: Improve) -> Assignment | None:
    """A placement of every replica found this way, or None."""
    items, bins = problem.items, problem.bins
    left = [i for i, where in enumerate(assignment) if where is None]
    if (
        problem.policy != Placement.BINPACK
        or not left
        or not bins
        or any(item.elastic for item in items)
        or sum(item.size for item in items) > sum(b.capacity for b in bins)
    ):
        return None
    smallest = min(b.capacity for b in bins)
    virtual = tuple(Bin(f"virtual-{k}", 0, smallest) for k in range(len(left)))
    wider = Problem(bins + virtual, items, problem.policy, problem.max_moves)
    state = State.of(wider, assignment)
    for i in sorted(left, key=lambda i: (-items[i].size, items[i].key)):
        target = state.find(items[i])
        if target is None:
            return None
        state.place(i, target)
    state = improve(wider, state)
    real = len(bins)
    empty = [b for b in range(real) if not state.occupants[b]]
    on_virtual = [b for b in range(real, len(wider.bins)) if state.occupants[b]]
    if len(on_virtual) > len(empty):
        return None
    where = dict(zip(on_virtual, empty))
    out = []
    for i, placed in enumerate(state.assignment()):
        if placed is None:
            return None
        if placed[0] >= real:
            if items[i].gpus != 1 or items[i].spread == Spread.NODE:
                return None
            placed = (where[placed[0]],)
        out.append(placed)
    return tuple(out)
