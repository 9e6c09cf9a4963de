"""Orchestration: construct, repack exactly (arc-flow), improve, then prove or solve exactly (CP-SAT).

Pools up to `exact_max_items` replicas on `exact_max_bins` GPUs are solved exactly on the whole objective, with the
heuristic's placement as the starting point. Larger pools keep the heuristic's placement, with bounds computed in
linear time; when it leaves replicas out and the bounds cannot prove that nothing more fits, the GPU-freeing search
is run on the pool plus virtual GPUs (`overflow.py`), then, in pools up to `window_time_max_bins` GPUs, the pattern
model (`patterns.py`: the whole pool at once, where nothing runs yet) and the regroup search (`regroup.py`: a few
GPUs at a time, the higher levels' replicas among them); in a fleet, an exact solve over a window of the emptiest
nodes (`window.py`) looks for their place. A replica left out without proof is reported as such, never as
unplaceable.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from functools import reduce
from math import gcd

from reconciler.desired import Placement, Spread
from reconciler.packer import patterns, window
from reconciler.packer.arcflow import eligible, repack
from reconciler.packer.bounds import fullest_fill, gpus_needed, level_rooms, reachable
from reconciler.packer.firstfit import first_fit_decreasing
from reconciler.packer.exact import solve_exact
from reconciler.packer.greedy import construct, keep_rules
from reconciler.packer.improve import consolidate
from reconciler.packer.objective import displaced, fill, gpu_loads, level_keys, score, violations
from reconciler.packer.overflow import place_left_out
from reconciler.packer.problem import PackSettings, Problem, Quality, Solution
from reconciler.packer.refill import refill
from reconciler.packer.regroup import regroup
from reconciler.packer.relaxation import level_bounds
from reconciler.packer.squeeze import squeeze
from reconciler.packer.state import State


RELAX_MAX_ITEMS = 2_000  # up to this many replicas, a plan's level gaps are also measured against the LP's bound


def pack(problem: Problem, settings: PackSettings = PackSettings()) -> Solution:
    floor = first_fit_decreasing(problem) if len(problem.items) <= settings.floor_max_items else None
    memo: dict = {}  # the configuration LP's bounds, by level and what the levels above hold
    solution = _pack(problem, settings, floor, memo)
    if floor is not None and score(problem, floor) > score(problem, solution.assignment):
        quality = bounds_quality(problem, floor, gpu_bound=solution.lower_bound, memo=memo)
        return _solution(floor, solution.lower_bound, "first-fit", quality)
    return solution


def _pack(problem: Problem, settings: PackSettings, floor, memo: dict) -> Solution:
    state = construct(problem)
    constructions = [state.assignment()] + ([floor] if floor is not None else [])  # the pattern model's columns
    method = "greedy"
    exactly = settings.exact_time > 0 and _exact_applies(problem, settings)
    # Beyond the exact model's range the searches start from the better of the two constructions; within it, CP-SAT
    # starts from best-fit decreasing and first-fit decreasing is only the floor of what it returns.
    if floor is not None and not exactly and score(problem, floor) > score(problem, state.assignment()):
        state, method = State.of(problem, floor), "first-fit"
    bound = 0
    if problem.policy == Placement.BINPACK:
        bound = _bound(state)
    forced = displaced(problem)
    oversubscribed = _oversubscribed(problem)
    # Where CP-SAT will solve the pool, the arc-flow model and the local search would only spend its time twice. A
    # pool asked for more VRAM than it has uses every GPU it can fill: freeing one cannot improve the objective.
    if problem.policy == Placement.BINPACK and not exactly and not oversubscribed:
        state, how, bound = _free_gpus(problem, state, settings, bound=bound)
        method = how.replace("greedy", method, 1)
        keep_rules(state, forced)
    assignment = state.assignment()
    # An oversubscribed pool is refilled at once; in one that could hold everything, freeing GPUs for what is left
    # out (`overflow.py`) comes first, and the refill only after it.
    if not exactly and oversubscribed:
        assignment, method = _refill(problem, assignment, settings, method)
    # Where CP-SAT solves the pool its own bounds come with it: the configuration LP would only add time.
    quality = bounds_quality(problem, assignment, gpu_bound=bound, relax=not exactly, memo=memo)
    if quality.proven_optimal or settings.exact_time <= 0 or not problem.items:
        return _solution(assignment, bound, method, quality)
    if exactly:
        exact = solve_exact(problem, budget=settings.exact_time, seed=settings.seed, hint=assignment, forced=forced)
        assert exact is not None  # a hint is given
        mine = score(problem, assignment)
        if exact.score > mine or violations(problem, assignment):
            assignment, method = exact.assignment, "cp-sat"
        if not exact.finished:
            return _solution(assignment, bound, method, bounds_quality(problem, assignment, gpu_bound=bound,
                                                                       relax=False, memo=memo))
        final = score(problem, assignment)
        gap_gpus, gap_fill = quality.gap_gpus, 0
        if problem.policy == Placement.BINPACK:
            gap_gpus = min(gap_gpus, exact.gap_gpus + (-final.policy + exact.score.policy))
        else:  # the fill stage's own gap, or the bound's on the placement kept, whichever is smaller
            gap_fill = min(_fill_gap(problem, assignment), exact.gap_fill + max(0, exact.score.policy - final.policy))
        quality = Quality(
            proven_optimal=exact.optimal and final == exact.score,
            gap_bytes=min(quality.gap_bytes, exact.gap_bytes + _shortfall(problem, assignment, exact.score)),
            gap_gpus=max(0, gap_gpus),
            gap_stays=min(quality.gap_stays, exact.gap_stays),
            gap_fill=gap_fill,
            unplaced_proven=exact.levels_optimal or quality.unplaced_proven,
        )
        return _solution(assignment, bound, method, quality)
    if not quality.unplaced_proven and _left_out(problem, assignment):
        full = place_left_out(problem, assignment, improve=lambda wider, state: _free_gpus(wider, state, settings)[0])
        if full is not None and not violations(problem, full) and score(problem, full) > score(problem, assignment):
            assignment, method = full, method + "+overflow"
            bound = max(bound, _bound(State.of(problem, assignment)))
            quality = bounds_quality(problem, assignment, gpu_bound=bound, memo=memo)
    if not quality.unplaced_proven and _left_out(problem, assignment) and _middle_range(problem, settings):
        fits_somewhere = fits_on_a_node(problem)
        # One budget for the middle range: where the pattern model cannot run (something runs already), the regroup
        # search has all of it.
        regroup_time = settings.regroup_time
        if settings.pattern_time > 0 and not patterns.applies(problem):
            regroup_time += settings.pattern_time
        elif settings.pattern_time > 0:
            others = [other for other in constructions if other != assignment]
            found = patterns.place_from(problem, assignment, others, fits_somewhere=fits_somewhere,
                                        rounds=settings.pattern_rounds, time=settings.pattern_time, seed=settings.seed)
            if found is not None and score(problem, found) > score(problem, assignment) \
                    and not violations(problem, found):
                assignment, method = _refill(problem, found, settings, method + "+patterns")
        if regroup_time > 0:
            found = regroup(problem, assignment, budget=regroup_time, seed=settings.seed,
                            size=settings.regroup_gpus, fits_somewhere=fits_somewhere)
            if score(problem, found) > score(problem, assignment) and not violations(problem, found):
                assignment, method = found, method + "+regroup"
        if problem.policy == Placement.BINPACK:
            bound = max(bound, _bound(State.of(problem, assignment)))
        assignment, method = _refill(problem, assignment, settings, method)
        quality = bounds_quality(problem, assignment, gpu_bound=bound, memo=memo)
    elif not quality.unplaced_proven and _left_out(problem, assignment):
        found = window.complete(problem, assignment, settings=settings, forced=forced)
        if found.assignment != assignment:
            assignment, method = found.assignment, method + "+window"
            if problem.policy == Placement.BINPACK:
                bound = max(bound, _bound(State.of(problem, assignment)))
        assignment, method = _refill(problem, assignment, settings, method)
        quality = bounds_quality(problem, assignment, gpu_bound=bound, memo=memo)
        if found.whole_pool and found.levels_optimal:
            quality = replace(quality, unplaced_proven=True)
    return _solution(assignment, bound, method, quality)


def _free_gpus(problem: Problem, state: State, settings: PackSettings, *, bound: int = 0) -> tuple[State, str, int]:
    """Fewer GPUs in use (binpack): the arc-flow model, then the local search, while above the lower bound."""
    bound = max(bound, _bound(state))
    method = "greedy"
    if _used(state) > bound and _arcflow_applies(problem, settings):
        state, method, bound = _arcflow(problem, state, settings, bound=bound)
    if _used(state) > bound and len(problem.items) <= settings.improve_max_items:
        consolidate(state, budget=settings.improve_steps, seed=settings.seed, lower_bound=bound)
        method += "+search"
    if _used(state) > bound and settings.squeeze_budget > 0:
        before = _used(state)
        squeeze(state, budget=settings.squeeze_budget, seed=settings.seed, lower_bound=bound,
                max_cells=settings.squeeze_max_cells)
        method += "+squeeze" if _used(state) < before else ""
    return state, method, bound


def _refill(problem: Problem, assignment, settings: PackSettings, method: str):
    """The refill search (`refill.py`) where replicas are left out; kept when it scores better."""
    if settings.refill_budget <= 0 or len(problem.items) > settings.floor_max_items \
            or not _left_out(problem, assignment):
        return assignment, method
    state = State.of(problem, assignment)
    refill(state, budget=settings.refill_budget, fits_somewhere=fits_on_a_node(problem))
    found = state.assignment()
    if score(problem, found) > score(problem, assignment) and not violations(problem, found):
        return found, method + "+refill"
    return assignment, method


def _solution(assignment, bound: int, method: str, quality: Quality) -> Solution:
    return Solution(
        assignment=tuple(assignment),
        lower_bound=bound,
        proven_optimal=quality.proven_optimal,
        method=method,
        quality=quality,
    )


def _shortfall(problem: Problem, assignment, best) -> int:
    """Bytes the chosen placement has below the exact solution's, at the first level where they differ."""
    mine = score(problem, assignment).levels
    for a, b in zip(mine, best.levels):
        if a != b:
            return max(0, b - a)
    return 0


def _left_out(problem: Problem, assignment) -> bool:
    return any(bins is None and not item.elastic for item, bins in zip(problem.items, assignment))


def bounds_quality(problem: Problem, assignment, *, gpu_bound: int, relax: bool = True,
                   memo: dict | None = None) -> Quality:
    """Gaps to bounds: per level, `level_gaps` (with `relax`, the configuration LP in pools up to `RELAX_MAX_ITEMS`
    replicas); the GPU bound of the packing; every running replica staying."""
    items = problem.items
    gap_bytes = sum(level_gaps(problem, assignment, relax=relax and len(items) <= RELAX_MAX_ITEMS, memo=memo))
    running = [i for i, item in enumerate(items) if item.current is not None]
    stays = sum(1 for i in running if assignment[i] == items[i].current)
    gap_gpus = 0
    if problem.policy == Placement.BINPACK:
        used = len({b for where in assignment if where for b in where})
        gap_gpus = max(0, used - gpu_bound)
    gap_stays = len(running) - stays
    gap_fill = 0 if problem.policy == Placement.BINPACK else _fill_gap(problem, assignment)
    proven = gap_bytes == gap_gpus == gap_stays == gap_fill == 0
    return Quality(
        proven_optimal=proven,
        gap_bytes=gap_bytes,
        gap_gpus=gap_gpus,
        gap_stays=gap_stays,
        gap_fill=gap_fill,
        unplaced_proven=gap_bytes == 0,
    )


def level_gaps(problem: Problem, assignment, *, relax: bool, memo: dict | None = None) -> list[int]:
    """Per level, how much more VRAM it could place when the levels above hold at least what `assignment` gives
    them: below the VRAM of its replicas that fit some node and the room the levels above leave (each GPU's room as
    the largest subset sum of what may go on it, the level's share a subset sum of its sizes), and, with `relax`,
    the configuration LP's bound (`relaxation.py`), whichever is lowest."""
    items, bins = problem.items, problem.bins
    total = sum(b.capacity for b in bins)
    fits_somewhere = fits_on_a_node(problem)
    demand: dict[tuple[int, bool], int] = {}
    placed: dict[tuple[int, bool], int] = {}
    for item, where in zip(items, assignment):
        if fits_somewhere(item):
            demand[item.level] = demand.get(item.level, 0) + item.size
        if where:
            placed[item.level] = placed.get(item.level, 0) + item.size
    keys = level_keys(problem)
    above, gaps = 0, []
    for key in keys:
        got = placed.get(key, 0)
        gaps.append(max(0, min(demand.get(key, 0), total - above) - got))
        above += got
    if any(gaps):
        unit, rooms, sizes = _level_sums(problem, keys, fits_somewhere)
        above = 0
        for k, (key, room) in enumerate(zip(keys, rooms)):
            got = placed.get(key, 0)
            limit = min(demand.get(key, 0), total - above, room * unit - above)
            gaps[k] = min(gaps[k], max(0, reachable(sizes[key], max(0, limit) // unit) * unit - got))
            above += got
    if any(gaps) and relax:
        # Free room split into pieces too small for what is left out: the configuration LP sees it.
        lp = level_bounds(problem, assignment, keys, fits_somewhere, memo)
        gaps = [min(gap, max(0, bound - placed.get(key, 0))) for gap, bound, key in zip(gaps, lp, keys)]
    return gaps


def _level_sums(problem: Problem, keys, fits_somewhere) -> tuple[int, list[int], dict[tuple[int, bool], Counter]]:
    """The unit of VRAM (the sizes' common divisor); per level, the room it and the levels above have together
    (`bounds.level_rooms`), in units; per level, the sizes of its replicas that fit some node, in units."""
    unit = reduce(gcd, (item.vram for item in problem.items), 0) or 1
    per_gpu: dict[tuple[int, bool], Counter] = {key: Counter() for key in keys}
    sizes: dict[tuple[int, bool], Counter] = {key: Counter() for key in keys}
    spread_seen: set[str] = set()
    for item in problem.items:
        if item.spread != Spread.GPU or item.model not in spread_seen:  # spread: gpu puts one of them on a GPU
            per_gpu[item.level][item.vram // unit] += 1
            spread_seen.add(item.model)
        if fits_somewhere(item):
            sizes[item.level][item.size // unit] += 1
    rooms = level_rooms([b.capacity for b in problem.bins], [list(per_gpu[key].items()) for key in keys], unit)
    return unit, rooms, sizes


def _fill_gap(problem: Problem, assignment) -> int:
    """Spread: per mille the fullest GPU is above what it must reach in any placement that places as much VRAM of
    every level: at least the average fill (placed VRAM over all memory) and, when every replica is placed (then
    all such placements place the same ones), the least fill their sizes allow (`bounds.fullest_fill`)."""
    bins = problem.bins
    loads = gpu_loads(problem, assignment)
    if not any(loads):
        return 0
    fullest = max(fill(load, gpu.capacity) for load, gpu in zip(loads, bins))
    bound = fill(sum(loads), sum(gpu.capacity for gpu in bins))
    if all(assignment):
        sizes = [item.vram for item in problem.items for _ in range(item.gpus)]
        bound = max(bound, fullest_fill([gpu.capacity for gpu in bins], sizes))
    return max(0, fullest - bound)


def fits_on_a_node(problem: Problem):
    """Whether an item alone fits on some node (its gang on distinct GPUs of one node)."""
    by_node: dict[str, list[int]] = {}
    for b in problem.bins:
        by_node.setdefault(b.node, []).append(b.capacity)
    # For g GPUs, the largest capacity that g GPUs of one node all have.
    best: dict[int, int] = {}
    for caps in by_node.values():
        caps.sort(reverse=True)
        for g in range(1, len(caps) + 1):
            best[g] = max(best.get(g, 0), caps[g - 1])
    return lambda item: item.vram <= best.get(item.gpus, -1)


def _oversubscribed(problem: Problem) -> bool:
    """More VRAM asked for (by replicas that fit some node, `replicas: max` apart) than the pool has."""
    fits_somewhere = fits_on_a_node(problem)
    asked = sum(item.size for item in problem.items if not item.elastic and fits_somewhere(item))
    return asked > sum(b.capacity for b in problem.bins)


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
        state = State.of(problem, result.assignment)
        method = "arc-flow"
    free_set = set(free)
    pinned_only = all(
        i in free_set or bins is None or bins == problem.items[i].current for i, bins in enumerate(assignment)
    )
    if pinned_only:
        bound = max(bound, result.lower_bound)
    return state, method, bound


def _middle_range(problem: Problem, settings: PackSettings) -> bool:
    """The middle range: pools up to `window_time_max_bins` GPUs (a fleet's plan keeps the window), where the
    pattern model or the regroup search has a budget."""
    budgeted = settings.pattern_time > 0 or settings.regroup_time > 0
    return budgeted and len(problem.bins) <= settings.window_time_max_bins


def _exact_applies(problem: Problem, settings: PackSettings) -> bool:
    return len(problem.items) <= settings.exact_max_items and len(problem.bins) <= settings.exact_max_bins


def _used(state: State) -> int:
    return sum(1 for occ in state.occupants if occ)


def _bound(state: State) -> int:
    placed = [state.items[i] for i, bins in enumerate(state.where) if bins]
    sizes = [item.vram for item in placed for _ in range(item.gpus)]
    pinned = {b for i, bins in enumerate(state.where) if bins and state.items[i].current == bins for b in bins}
    return max(len(pinned), gpus_needed(state.caps, sizes))
