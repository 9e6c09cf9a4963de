"""Orchestration: construct, repack exactly (arc-flow), improve, prove or solve exactly (CP-SAT)."""

from __future__ import annotations

from reconciler.desired import Placement
from reconciler.packer.arcflow import eligible, repack
from reconciler.packer.bounds import gpus_needed
from reconciler.packer.exact import levels_of, solve_exact
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
        if _used(state) > bound and _arcflow_applies(problem, settings):
            state, method, bound = _arcflow(problem, state, settings, bound=bound)
        if _used(state) > bound and len(problem.items) <= settings.improve_max_items:
            consolidate(state, budget=settings.improve_steps, seed=settings.seed, lower_bound=bound)
            method += "+search"
    proven = problem.policy == Placement.BINPACK and _used(state) <= bound and _all_placed_in_place(state)
    assignment = state.assignment()
    if not proven and _exact_applies(problem, settings):
        exact = solve_exact(problem, time_per_solve=settings.exact_time, seed=settings.seed, hint=assignment)
        if exact is not None:
            mine = (levels_of(problem, assignment), -_used(state))
            if (exact.levels, -exact.gpus) > mine:
                assignment, method = exact.assignment, "cp-sat"
            proven = exact.optimal
    return Solution(assignment=assignment, lower_bound=bound, proven_optimal=proven, method=method)


def _arcflow_applies(problem: Problem, settings: PackSettings) -> bool:
    return settings.arcflow_node_budget > 0 and 0 < len(problem.items) <= settings.arcflow_max_items


def _arcflow(problem: Problem, state: State, settings: PackSettings, *, bound: int) -> tuple[State, str, int]:
    """Repack the replicas this plan places on one GPU (no spread) with the arc-flow model. Its bound holds for
    the whole pool when every other placed replica is a running one that stays: then only stability fixed them."""
    assignment = state.assignment()
    free = eligible(problem, assignment)
    if not free:
        return state, "greedy", bound
    result = repack(
        problem,
        assignment,
        free=free,
        max_nodes=settings.arcflow_max_nodes,
        max_arcs=settings.arcflow_max_arcs,
        node_budget=settings.arcflow_node_budget,
        seed=settings.seed,
        safety_seconds=settings.arcflow_safety_seconds,
    )
    method = "greedy" if result.status != "time cap" else "greedy (arc-flow hit its time cap)"
    if result.gpus < _used(state):
        state = _state_of(problem, result.assignment)
        method = "arc-flow"
    free_set = set(free)
    pinned_only = all(
        i in free_set or bins is None or bins == problem.items[i].current for i, bins in enumerate(assignment)
    )
    if pinned_only:
        bound = max(bound, result.lower_bound)
    return state, method, bound


def _state_of(problem: Problem, assignment) -> State:
    state = State(problem)
    for i, bins in enumerate(assignment):
        if bins:
            state.place(i, bins)
    return state


def _exact_applies(problem: Problem, settings: PackSettings) -> bool:
    """Small pools of new replicas only: CP-SAT stays fast there, and stability is the heuristic's job."""
    return (
        settings.exact_time > 0
        and 0 < len(problem.items) <= settings.exact_max_items
        and len(problem.bins) <= settings.exact_max_bins
        and all(item.current is None for item in problem.items)
    )


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
