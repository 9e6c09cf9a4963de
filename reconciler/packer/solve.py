"""Orchestration: construct, improve, prove or solve exactly."""

from __future__ import annotations

from reconciler.desired import Placement
from reconciler.packer.bounds import gpus_needed
from reconciler.packer.greedy import construct
from reconciler.packer.improve import consolidate
from reconciler.packer.problem import PackSettings, Problem, Solution
from reconciler.packer.state import State


def pack(problem: Problem, settings: PackSettings = PackSettings()) -> Solution:
    state = construct(problem)
    method = "greedy"
    bound = 0
    if problem.policy == Placement.BINPACK:
        bound = _bound(state)
        if _used(state) > bound:
            consolidate(state, budget=settings.improve_steps, seed=settings.seed, lower_bound=bound)
            method = "greedy+search"
    proven = problem.policy == Placement.BINPACK and _used(state) <= bound and _all_placed_in_place(state)
    return Solution(assignment=state.assignment(), lower_bound=bound, proven_optimal=proven, method=method)


def _used(state: State) -> int:
    return sum(1 for occ in state.occupants if occ)


def _bound(state: State) -> int:
    placed = [state.items[i] for i, bins in enumerate(state.where) if bins]
    sizes = [item.vram for item in placed for _ in range(item.gpus)]
    pinned = {b for i, bins in enumerate(state.where) if bins and state.items[i].current == bins for b in bins}
    return max(len(pinned), gpus_needed(state.caps, sizes))


def _all_placed_in_place(state: State) -> bool:
    return all(
        bins is not None and (item.current is None or bins == item.current)
        for item, bins in zip(state.items, state.where)
    )
