"""A few GPUs re-solved exactly, the higher levels' replicas among them: the search for the first level left short.

In a pool asked for more than it holds, the greedy constructions place level after level and never revisit one: the
small replicas of a high level settle on the large GPUs first, and the large replicas of the first level left short
(which fit nowhere else) find no room. The refill (`refill.py`) moves only that level's replicas and those below it.
Here a handful of GPUs at a time are emptied of the replicas this plan places new (one GPU each, no `spread: node`;
gangs whose GPUs are all among them) and solved again with CP-SAT together with every replica left out: the levels
above keep every replica they had there (they are full: nothing of theirs waits), the first level left short and
those below place the most VRAM they can, in the objective's order. A better placement of the GPUs is kept; the rest
of the pool is untouched, so every rule of `objective.py` that held still holds.

Which GPUs: one that a waiting replica of that level could use if it were empty (the largest waiting replicas half
the time), with others drawn from its node, from the GPUs holding nothing of the levels above, or from the whole pool
(a seeded generator, so the same problem gives the same plan). Of five such draws, the one whose levels could gain
most by a subset-sum bound is solved, and none where no level can gain (most of them, once the search has run a
while). Work is counted in CP-SAT's deterministic time plus a charge per draw, per solve and per variable built,
never in wall time.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from functools import reduce
from math import gcd

from ortools.sat.python import cp_model

from reconciler.desired import Spread
from reconciler.packer.bounds import reachable
from reconciler.packer.objective import Assignment, level_keys, score
from reconciler.packer.problem import Item, Problem

# A small solve's CPU time, measured: about twice CP-SAT's deterministic time, plus its setup and presolve, which that
# leaves out, and Python's share in building it. Charged at 1.75 times, the search's CPU time on bench middle is close
# to its budget in seconds of one core (the draws cost less than their charge).
_DETERMINISTIC = 1.75
_PER_SOLVE = 0.003
_PER_TERM = 1e-4  # per variable built
# After this many neighbourhoods in a row bring nothing, two GPUs more at a time, up to `_WIDER` more than asked
# (measured on bench middle: the search stalls at local optima of its size; back to the size asked after a gain).
_PATIENCE = 8
_DRAWS = 5  # neighbourhoods drawn per solve, the one that could gain most solved (measured: 3 and 8 did worse)
_PER_DRAW = 0.001  # the work of drawing one and bounding what it could gain
_WIDER = 4
_SOLVE_LIMIT = 0.02  # deterministic seconds of one solve: a neighbourhood not solved by then is left for others
_WEIGHT_LIMIT = 1 << 62  # lexicographic weights beyond this would overflow CP-SAT's integers: fewer levels weighed


def regroup(
    problem: Problem,
    assignment: Assignment,
    *,
    budget: float,
    seed: int,
    size: int,
    fits_somewhere: Callable[[Item], bool],
) -> tuple[tuple[int, ...] | None, ...]:
    """Search within `budget` deterministic seconds, `size` GPUs at a time (more while nothing is found); returns the
    best placement found."""
    items, bins = problem.items, problem.bins
    best = tuple(assignment)
    keys = level_keys(problem)
    movable = [_movable(item) for item in items]
    waiting = [i for i, where in enumerate(best) if where is None and movable[i] and fits_somewhere(items[i])]
    if not waiting:
        return best
    level = min(items[i].level for i in waiting)
    below = keys[keys.index(level):]
    # GPUs that a running replica left: what came there justifies its leaving, so they are not touched.
    left_by_running = {b for item, where in zip(items, best)
                       if item.current is not None and where != item.current for b in item.current}
    open_bins = [b for b in range(len(bins)) if b not in left_by_running]
    if len(open_bins) < 2:
        return best
    unit = reduce(gcd, (item.vram for item in items), 0) or 1
    rng = random.Random(seed)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.linearization_level = 2  # measured: more neighbourhoods improved in the same budget
    spent = 0.0
    mine = score(problem, best)
    wider, failed = size, 0
    while spent < budget:
        waiting = [i for i, where in enumerate(best) if where is None and movable[i] and fits_somewhere(items[i])]
        if not waiting or items[min(waiting, key=lambda i: items[i].level)].level != level:
            break
        drawn = []
        for _ in range(_DRAWS):
            short = [i for i in waiting if items[i].level == level]
            if rng.random() < 0.5:  # the largest waiting replicas, half the time: they gain most, fit the fewest GPUs
                largest = max(items[i].size for i in short)
                short = [i for i in short if items[i].size == largest]
            wanted = items[rng.choice(short)]
            targets = [b for b in open_bins if bins[b].capacity >= wanted.vram]
            if not targets:
                return best
            chosen = _neighbourhood(problem, best, target=rng.choice(targets), open_bins=open_bins, size=wider,
                                    rng=rng, level=level)
            here = _contents(problem, best, chosen=chosen, waiting=waiting, movable=movable, below=below, unit=unit)
            gain = _potential(best, here=here, below=below, unit=unit)
            spent += _PER_DRAW
            if gain is not None:
                drawn.append((gain, chosen, here))
        found = None
        if drawn:
            # The neighbourhood that could gain the most, at the highest level: hopeless ones are never solved.
            _, chosen, here = max(drawn, key=lambda d: d[0])
            found, cost = _solve(problem, best, chosen=chosen, here=here, below=below, unit=unit, solver=solver,
                                 limit=min(max(0.0, budget - spent), _SOLVE_LIMIT))
            spent += cost
        mark = score(problem, found) if found is not None else mine
        if mark > mine:
            best, mine, wider, failed = found, mark, size, 0
        else:
            failed += 1
            if failed >= _PATIENCE:
                wider, failed = min(wider + 2, size + _WIDER), 0
    return best


def _neighbourhood(problem: Problem, assignment, *, target: int, open_bins: list[int], size: int, rng: random.Random,
                   level: tuple[int, bool]) -> list[int]:
    """`target` and other GPUs up to about `size`, each with the GPUs its gangs also hold (so they can move), drawn
    from the target's node, from the GPUs that hold nothing of the levels above `level` (where those can go), or
    from the whole pool, a third of the time each."""
    bins = problem.bins
    partners: dict[int, set[int]] = {}
    upper: set[int] = set()
    for item, where in zip(problem.items, assignment):
        if where and len(where) > 1:
            for b in where:
                partners.setdefault(b, set()).update(where)
        if where and item.level < level:
            upper.update(where)
    allowed = set(open_bins)
    chosen: set[int] = set()

    def add(b: int) -> None:
        chosen.add(b)
        chosen.update(p for p in partners.get(b, ()) if p in allowed)

    add(target)
    draw = rng.randrange(3)
    node = bins[target].node
    keep = [lambda b: bins[b].node == node, lambda b: b not in upper, lambda b: True][draw]
    pool = [b for b in open_bins if b not in chosen and keep(b)]
    while len(chosen) < size:
        if not pool:
            if draw == 2:
                break
            draw = 2
            pool = [b for b in open_bins if b not in chosen]
            continue
        b = pool.pop(rng.randrange(len(pool)))
        if b not in chosen:
            add(b)
    return sorted(chosen)


def _movable(item: Item) -> bool:
    return item.current is None and item.spread != Spread.NODE


def _contents(problem: Problem, assignment, *, chosen: list[int], waiting: list[int], movable: list[bool], below,
              unit: int) -> tuple[dict[tuple, list[int]], dict[str, list[int]], dict[int, int], dict[int, set[str]]]:
    """What the `chosen` GPUs are solved with: the replicas that may be placed there, in groups of alike ones; the
    chosen GPUs by node; each one's room (in units) beside what stays on it; the models of what stays on it."""
    items, bins = problem.items, problem.bins
    inside = set(chosen)
    fixed = [0] * len(bins)  # bytes of what stays on each chosen GPU
    fixed_models: dict[int, set[str]] = {b: set() for b in chosen}
    free_items: list[int] = []
    for i, where in enumerate(assignment):
        if not where or not inside.intersection(where):
            continue
        if movable[i] and inside.issuperset(where):
            free_items.append(i)
            continue
        for b in where:
            if b in inside:
                fixed[b] += items[i].vram
                fixed_models[b].add(items[i].model)
    candidates = free_items + [i for i in waiting if items[i].level in below]
    # Alike replicas are counted, not named: one group per (level, size, gang, spread model).
    groups: dict[tuple, list[int]] = {}
    for i in candidates:
        item = items[i]
        key = (item.level, item.vram, item.gpus, item.model if item.spread == Spread.GPU else "")
        groups.setdefault(key, []).append(i)
    nodes: dict[str, list[int]] = {}
    for b in chosen:
        nodes.setdefault(bins[b].node, []).append(b)
    room = {b: max(0, bins[b].capacity - fixed[b]) // unit for b in chosen}
    return groups, nodes, room, fixed_models


def _solve(problem: Problem, assignment, *, chosen: list[int], here, below, unit: int, solver: cp_model.CpSolver,
           limit: float):
    """The best placement of `chosen` GPUs, or None when none better was proven or found; and the work spent."""
    items = problem.items
    groups, nodes, room, fixed_models = here
    total_room = sum(room.values())
    # Lexicographic by weights: a unit of a level outweighs all the room below it. The lowest levels go unweighed
    # where the weights would overflow (what they lose is then taken back by the refill and settling after).
    weighed = 1
    while weighed < len(below) and (total_room + 1) ** weighed * total_room <= _WEIGHT_LIMIT:
        weighed += 1
    weights = {key: (total_room + 1) ** (weighed - 1 - k) for k, key in enumerate(below[:weighed])}
    m = cp_model.CpModel()
    n: dict[tuple[tuple, int], cp_model.IntVar] = {}
    c: dict[tuple[tuple, str], cp_model.IntVar] = {}
    load: dict[int, list] = {b: [] for b in chosen}
    sizes_on: dict[int, Counter] = {b: Counter() for b in chosen}
    objective = []
    terms = 0
    for key, members in groups.items():
        level, vram, gpus, spread_model = key
        size = vram // unit
        count = len(members)
        mandatory = sum(1 for i in members if assignment[i] is not None and items[i].level not in below)
        placed = []
        for node, node_bins in nodes.items():
            per_bin = []
            for b in node_bins:
                top = min(count, room[b] // size) if size else count
                if spread_model:
                    top = 0 if spread_model in fixed_models[b] else min(top, 1)
                if top <= 0:
                    continue
                v = n[(key, b)] = m.new_int_var(0, top, "")
                load[b].append(size * v)
                sizes_on[b][size] += top
                per_bin.append(v)
                terms += 1
            if gpus == 1:
                placed += per_bin
            elif len(per_bin) >= gpus:
                gangs = c[(key, node)] = m.new_int_var(0, count, "")
                m.add(sum(per_bin) == gpus * gangs)
                for v in per_bin:
                    m.add(v <= gangs)
                placed.append(gangs)
                terms += 1
            else:
                for v in per_bin:
                    m.add(v == 0)
        total = sum(placed) if placed else 0
        if mandatory:
            if not placed:
                return None, _PER_SOLVE + terms * _PER_TERM
            m.add(total >= mandatory)
        if placed:
            m.add(total <= count)
            if level in weights:
                objective.append(weights[level] * size * gpus * total)
    for b in chosen:
        if load[b]:
            # No GPU holds more than the largest subset sum of what may go on it: a tighter capacity, sooner proofs.
            m.add(sum(load[b]) <= reachable(sizes_on[b], room[b]))
    if not objective:
        return None, _PER_SOLVE + terms * _PER_TERM
    m.maximize(sum(objective))
    # The placement there now, as the hint and the value to beat.
    current = 0
    for key, members in groups.items():
        here = [i for i in members if assignment[i] is not None]
        if key[0] in weights:
            current += weights[key[0]] * (key[1] // unit) * key[2] * len(here)
        per_bin: dict[int, int] = {}
        for i in here:
            for b in assignment[i]:
                per_bin[b] = per_bin.get(b, 0) + 1
        for b in _bins_of(nodes):
            if (key, b) in n:
                m.add_hint(n[(key, b)], per_bin.get(b, 0))
        for node, node_bins in nodes.items():
            if (key, node) in c:
                m.add_hint(c[(key, node)], sum(1 for i in here if assignment[i][0] in node_bins))
    m.add(sum(objective) >= current + 1)
    solver.parameters.max_deterministic_time = max(limit, 1e-3)
    status = solver.solve(m)
    cost = _DETERMINISTIC * solver.deterministic_time + terms * _PER_TERM + _PER_SOLVE
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, cost
    out = list(assignment)
    for key, members in groups.items():
        gpus = key[2]
        slots: list[tuple[int, ...]] = []
        for node, node_bins in nodes.items():
            counts = [(b, solver.value(n[(key, b)])) for b in node_bins if (key, b) in n]
            if gpus == 1:
                slots += [(b,) for b, k in counts for _ in range(k)]
                continue
            gangs = solver.value(c[(key, node)]) if (key, node) in c else 0
            uses = [b for b, k in counts for _ in range(k)]
            slots += [tuple(sorted(uses[k::gangs])) for k in range(gangs)]
        # Replicas placed before keep a place first, so the levels above lose none.
        ordered = sorted(members, key=lambda i: (assignment[i] is None, i))
        for k, i in enumerate(ordered):
            out[i] = slots[k] if k < len(slots) else None
    return tuple(out), cost


def _potential(assignment, *, here, below, unit: int) -> tuple[int, int] | None:
    """What the chosen GPUs could gain, as (levels below the first that could, units it could gain), or None when no
    level can: with the levels above `below` keeping what they hold here, a level places at most a subset sum of its
    sizes that fit here, within the room the levels before it leave. Most neighbourhoods CP-SAT would prove hopeless
    are known so at once."""
    groups, nodes, room, fixed_models = here
    fitting: dict[tuple, bool] = {}
    for key in groups:
        _, vram, gpus, spread_model = key
        size = vram // unit
        fitting[key] = any(
            sum(1 for b in node_bins if room[b] >= size and spread_model not in fixed_models[b]) >= gpus
            for node_bins in nodes.values())
    left = sum(room.values()) - sum(
        key[1] // unit * key[2] * len(members) for key, members in groups.items() if key[0] not in below)
    for k, level in enumerate(below):
        sizes: Counter = Counter()
        now = 0
        for key, members in groups.items():
            if key[0] != level:
                continue
            size = key[1] // unit * key[2]
            now += size * sum(1 for i in members if assignment[i] is not None)
            if fitting[key]:
                sizes[size] += len(members)
        most = reachable(sizes, left)
        if most > now:
            return len(below) - k, most - now
        left -= now
    return None


def _bins_of(nodes: dict[str, list[int]]) -> list[int]:
    return [b for node_bins in nodes.values() for b in node_bins]
