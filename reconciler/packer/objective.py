"""The one definition of a good placement: the rules every placement keeps and the score that ranks them.

The heuristic, the exact model and the tests all answer to this module, so none of them can disagree with the
objective. The score is lexicographic, higher is better:

1. placed bytes of each level, highest level first (a priority; a priority's `replicas: max` demand after the rest);
2. stability: running replicas that stay where they run;
3. the pool's policy: binpack uses the fewest GPUs, spread keeps the fullest GPU as empty as it can (per mille).

The rules beyond capacity, gangs and spread are about running replicas. A running replica whose GPUs no longer hold
it (capacity shrank, spread tightened) is displaced: it is placed like a new one. Any other running replica that
leaves its GPUs must have been made to by a replica new to one of them: it is preempted when that newcomer preempts,
has a higher priority and is not `replicas: max` (it may then be evicted or restart elsewhere, and that is not a
move), else it is moved, which needs a newcomer of no lower priority that is not `replicas: max`, and counts against
`maxMoves`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from reconciler.desired import Placement, Spread
from reconciler.packer.problem import Item, Problem

Assignment = Sequence[tuple[int, ...] | None]

PER_MILLE = 1000


@dataclass(frozen=True, slots=True, order=True)
class Score:
    levels: tuple[int, ...]  # placed bytes per level, highest level first
    stays: int  # running replicas that stay on their GPUs
    policy: int  # binpack: minus the GPUs in use; spread: minus the fullest GPU's fill in per mille


def level_keys(problem: Problem) -> tuple[tuple[int, bool], ...]:
    return tuple(sorted({item.level for item in problem.items}))


def fill(load: int, capacity: int) -> int:
    """A GPU's fill in per mille, rounded up (the exact model bounds it the same way)."""
    if load <= 0:
        return 0
    return PER_MILLE if capacity <= 0 else -(-load * PER_MILLE // capacity)


def score(problem: Problem, assignment: Assignment) -> Score:
    items = problem.items
    levels = tuple(
        sum(item.size for item, bins in zip(items, assignment) if bins and item.level == key)
        for key in level_keys(problem)
    )
    stays = sum(1 for item, bins in zip(items, assignment) if item.current is not None and bins == item.current)
    loads = gpu_loads(problem, assignment)
    if problem.policy == Placement.BINPACK:
        policy = -sum(1 for load in loads if load)
    else:
        policy = -max((fill(load, gpu.capacity) for load, gpu in zip(loads, problem.bins)), default=0)
    return Score(levels=levels, stays=stays, policy=policy)


def gpu_loads(problem: Problem, assignment: Assignment) -> list[int]:
    """Bytes placed on each GPU."""
    loads = [0] * len(problem.bins)
    for item, bins in zip(problem.items, assignment):
        for b in bins or ():
            loads[b] += item.vram
    return loads


def displaced(problem: Problem) -> frozenset[int]:
    """Running replicas whose GPUs no longer hold them: kept in order of level, then size, the first that do not
    fit beside those already kept (capacity, spread) are displaced and placed like new ones."""
    items = problem.items
    free = [b.capacity for b in problem.bins]
    on_gpu: set[tuple[str, int]] = set()
    on_node: set[tuple[str, str]] = set()
    out = set()
    running = sorted(
        (i for i, it in enumerate(items) if it.current is not None),
        key=lambda i: (items[i].level, -items[i].size, items[i].model, items[i].replica),
    )
    for i in running:
        item, cur = items[i], items[i].current
        assert cur is not None
        node = problem.bins[cur[0]].node
        ok = (
            len(set(cur)) == item.gpus
            and len({problem.bins[b].node for b in cur}) == 1
            and all(free[b] >= item.vram for b in cur)
            and not (item.spread == Spread.GPU and any((item.model, b) in on_gpu for b in cur))
            and not (item.spread == Spread.NODE and (item.model, node) in on_node)
        )
        if not ok:
            out.add(i)
            continue
        for b in cur:
            free[b] -= item.vram
            on_gpu.add((item.model, b))
        on_node.add((item.model, node))
    return frozenset(out)


def newcomers(problem: Problem, assignment: Assignment, i: int) -> list[int]:
    """Replicas other than i placed on one of i's current GPUs where they did not run before."""
    items = problem.items
    cur = items[i].current or ()
    return [
        j
        for j, bins in enumerate(assignment)
        if j != i and bins and any(b in cur and b not in (items[j].current or ()) for b in bins)
    ]


def may_preempt(by: Item, victim: Item) -> bool:
    return victim.preemptible and by.preempts and not by.elastic and by.priority > victim.priority


def may_move(by: Item, moved: Item) -> bool:
    return not by.elastic and by.priority >= moved.priority


def violations(problem: Problem, assignment: Assignment) -> list[str]:
    """Every rule the placement breaks, in words (empty when it keeps them all)."""
    items, bins_ = problem.items, problem.bins
    out: list[str] = []
    loads = [0] * len(bins_)
    per_gpu: set[tuple[str, int]] = set()
    per_node: set[tuple[str, str]] = set()
    for item, bins in zip(items, assignment):
        if not bins:
            continue
        if len(set(bins)) != item.gpus or len({bins_[b].node for b in bins}) != 1:
            out.append(f"{item.key}: a gang needs {item.gpus} distinct GPUs of one node, got {bins}")
            continue
        node = bins_[bins[0]].node
        for b in bins:
            loads[b] += item.vram
            if item.spread == Spread.GPU and (item.model, b) in per_gpu:
                out.append(f"{item.key}: spread gpu broken on bin {b}")
            per_gpu.add((item.model, b))
        if item.spread == Spread.NODE and (item.model, node) in per_node:
            out.append(f"{item.key}: spread node broken on {node}")
        per_node.add((item.model, node))
    out += [f"bin {b} over capacity" for b, gpu in enumerate(bins_) if loads[b] > gpu.capacity]
    forced = displaced(problem)
    moves = 0
    for i, item in enumerate(items):
        if item.current is None or i in forced or assignment[i] == item.current:
            continue
        came = [items[j] for j in newcomers(problem, assignment, i)]
        if any(may_preempt(j, item) for j in came):
            continue
        if assignment[i] is None:
            out.append(f"{item.key}: evicted without a preempting newcomer on its GPUs")
            continue
        moves += 1
        if not any(may_move(j, item) for j in came):
            out.append(f"{item.key}: moved without a newcomer of no lower priority on its GPUs")
    if moves > problem.max_moves:
        out.append(f"{moves} moves > maxMoves {problem.max_moves}")
    return out
