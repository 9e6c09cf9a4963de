"""A whole placement from the configuration model: what each GPU of each node holds, chosen for the pool at once.

The plan's searches move a few replicas or re-solve a few GPUs at a time; in a pool of 30 to 64 GPUs asked for more
than it holds, the first level left short can end several percent below what a placement of the whole pool reaches,
because the higher levels' replicas settled where they block it. Here the configuration LP (`relaxation.Master`,
priced with sizes rounded up so that every pattern really fits) is made integer for each level in turn, highest
first, with the levels above keeping what they got: how many GPUs of each node hold each pattern, each node holding
its gang kinds' members in multiples of their size. Each gang is then formed on distinct GPUs of its node from the
members there; a member that forms none (the model does not see which GPU of a node holds it) waits, and what waits
is placed as the construction would, higher levels evicting lower ones (`greedy.place_waiting`).

What it costs rules it out of the plan for now: on `bench/packing.py`'s middle pools the integer model of the lowest
level took 0.2 to 14 CPU s, most of it at the root (cuts, sub-MIP heuristics), whatever the node budget, where a plan
has 2 s. What it finds makes it the bench's reference: on the 48-GPU pools it places more than CP-SAT given
240 deterministic s. Only for a pool where nothing runs yet (the model knows nothing of stability or moves).
Deterministic: one thread, budgets in pricing rounds and branch-and-bound nodes; the wall-clock cap is a safety net
whose hitting the caller sees as a weaker result.
"""

from __future__ import annotations

from collections import defaultdict

import highspy
import numpy as np

from reconciler.desired import Spread
from reconciler.packer.greedy import place_waiting
from reconciler.packer.objective import level_keys
from reconciler.packer.problem import Problem
from reconciler.packer.relaxation import SCALE, Counts, Kind, Master, gpu_patterns, kind_of, kinds_of
from reconciler.packer.state import State

_GAP = 1e-3  # a level's integer solve stops within this share of its LP value (far inside the 0.5% aimed at)


def place(problem: Problem, assignment, *, fits_somewhere, rounds: int, nodes: int,
          seconds: float) -> tuple[tuple[int, ...] | None, ...] | None:
    """A placement of the whole pool from integer patterns, or None where nothing better than `assignment` was
    found (or something runs already). `assignment`'s GPUs are the first patterns and each level's start."""
    if any(item.current is not None for item in problem.items):
        return None
    bins = problem.bins
    kinds = kinds_of(problem, fits_somewhere)
    caps: dict[int, int] = defaultdict(int)
    for gpu in bins:
        caps[gpu.capacity] += 1
    keys = level_keys(problem)
    given = [(bins[b].node, c, counts, 1) for b, (c, counts) in enumerate(gpu_patterns(problem, assignment, kinds))]
    given_levels = {key: _bytes(given, key) for key in keys}
    chosen = given
    placed: dict = {}
    for k, key in enumerate(keys):
        members = [t for t in kinds if t[0] in keys[: k + 1]]
        if not any(t[0] == key for t in members):
            placed[key] = 0
            continue
        master = Master(members=members, kinds=kinds, caps=dict(caps), above=keys[:k], key=key, placed=placed,
                        round_up=True)
        # Where the levels above hold no more than the caller's placement gives them, its GPUs are a start that
        # also places this level; else the patterns chosen for the levels above are.
        start = given if all(placed[lv] <= given_levels[lv] for lv in keys[:k]) else chosen
        for _, c, counts, _ in start:
            master.add(c, counts)
        master.price(rounds)
        found = _integer(problem, master, start, placed=placed, nodes=nodes, seconds=seconds)
        if found is None:
            return None
        chosen = found
        placed[key] = _bytes(found, key)
    if tuple(placed.get(key, 0) for key in keys) <= tuple(given_levels[key] for key in keys):
        return None  # nothing to gain over the caller's placement
    # Members that formed no gang (on distinct GPUs, which the model does not see) wait: placed as the construction
    # would, higher levels evicting lower ones.
    state = State.of(problem, _realise(problem, chosen, fits_somewhere))
    place_waiting(state, problem)
    return state.assignment()


def _bytes(patterns, key) -> int:
    return sum(m * n * t[1] for _, _, counts, m in patterns for t, n in counts.items() if t[0] == key)


def _integer(problem: Problem, master: Master, start, *, placed: dict, nodes: int,
             seconds: float) -> list[tuple[str, int, Counts, int]] | None:
    """The master's patterns in integer numbers per node, started from `start`: each node's GPUs of a card size
    hold at most that many, and each node holds its gang kinds' members in multiples of their size. None when no
    integer solution was found within the budget."""
    gpus: dict[tuple[str, int], int] = defaultdict(int)
    for gpu in problem.bins:
        gpus[(gpu.node, gpu.capacity)] += 1
    on = defaultdict(list)
    for node, c in sorted(gpus):
        on[c].append(node)
    cells = [(j, node) for j, (c, _) in enumerate(master.columns) for node in on[c]]
    gangs = [(node, t) for node in sorted({node for node, _ in gpus}) for t in master.members if t[2] > 1]
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    inf = highspy.kHighsInf
    count = len(cells) + len(gangs)
    cost = [-sum(n * t[1] for t, n in master.columns[j][1].items() if t[0] == master.key) / SCALE
            for j, _ in cells] + [0.0] * len(gangs)
    h.addVars(count, np.zeros(count), np.full(count, inf))
    h.changeColsCost(count, np.arange(count, dtype=np.int32), np.array(cost))
    h.changeColsIntegrality(count, np.arange(count, dtype=np.int32),
                            np.array([highspy.HighsVarType.kInteger] * count))
    rows: list[tuple[float, float, list[int], list[float]]] = []
    by_cell = defaultdict(list)
    for x, (j, node) in enumerate(cells):
        by_cell[(node, master.columns[j][0])].append(x)
    for (node, c), xs in by_cell.items():
        rows.append((-inf, float(gpus[(node, c)]), xs, [1.0] * len(xs)))
    for t in master.members:
        xs = [x for x, (j, _) in enumerate(cells) if master.columns[j][1].get(t)]
        rows.append((-inf, float(master.kinds[t][0]), xs, [float(master.columns[cells[x][0]][1][t]) for x in xs]))
    for lv in master.rows_above:
        xs = [x for x, (j, _) in enumerate(cells) if any(t[0] == lv for t in master.columns[j][1])]
        rows.append((placed.get(lv, 0) / SCALE * (1 - 1e-9), inf, xs,
                     [sum(n * t[1] for t, n in master.columns[cells[x][0]][1].items() if t[0] == lv) / SCALE
                      for x in xs]))
    for g, (node, t) in enumerate(gangs):
        xs = [x for x, (j, n) in enumerate(cells) if n == node and master.columns[j][1].get(t)]
        rows.append((0.0, 0.0, xs + [len(cells) + g],
                     [float(master.columns[cells[x][0]][1][t]) for x in xs] + [-float(t[2])]))
    for lower, upper, xs, values in rows:
        h.addRow(lower, upper, len(xs), np.array(xs, dtype=np.int32), np.array(values, dtype=float))
    index = {(node, c, tuple(sorted(counts.items()))): x for x, (j, node) in enumerate(cells)
             for c, counts in [master.columns[j]]}
    value = np.zeros(count)
    for node, c, counts, m in start:
        x = index.get((node, c, tuple(sorted((t, n) for t, n in counts.items() if t in master.rows_kind))))
        if x is not None:
            value[x] += m
    for g, (node, t) in enumerate(gangs):
        value[len(cells) + g] = sum(value[x] * master.columns[j][1].get(t, 0) for x, (j, n) in enumerate(cells)
                                    if n == node) / t[2]
    h.setSolution(count, np.arange(count, dtype=np.int32), value)
    h.setOptionValue("mip_max_nodes", nodes)
    h.setOptionValue("time_limit", seconds)
    h.setOptionValue("mip_rel_gap", _GAP)
    h.run()
    solution = h.getSolution()
    if not solution.value_valid:
        return None
    x = solution.col_value
    return [(node, master.columns[j][0], master.columns[j][1], round(x[k]))
            for k, (j, node) in enumerate(cells) if round(x[k]) > 0]


def _realise(problem: Problem, chosen, fits_somewhere) -> tuple[tuple[int, ...] | None, ...]:
    """Each node's patterns onto its GPUs of their card size, then replicas onto patterns; gangs formed on each node
    from the members there, each on distinct GPUs (the GPUs with the most members first)."""
    bins = problem.bins
    free: dict[tuple[str, int], list[int]] = defaultdict(list)
    for b, gpu in enumerate(bins):
        free[(gpu.node, gpu.capacity)].append(b)
    holds: dict[int, Counts] = {}
    for node, c, counts, m in chosen:
        for _ in range(m):
            holds[free[(node, c)].pop(0)] = counts
    waiting: dict[Kind, list[int]] = defaultdict(list)
    for i, item in enumerate(problem.items):
        if fits_somewhere(item):
            waiting[kind_of(item)].append(i)
    for queue in waiting.values():
        queue.reverse()  # popped from the end: the problem's order
    where: list[tuple[int, ...] | None] = [None] * len(problem.items)
    on_node: set[tuple[str, str]] = set()
    members: dict[tuple[str, Kind], dict[int, int]] = defaultdict(dict)
    for b, counts in sorted(holds.items()):
        for t, n in counts.items():
            if t[2] > 1:
                members[(bins[b].node, t)][b] = n
                continue
            for _ in range(n):
                i = _next(problem, waiting[t], bins[b].node, on_node)
                if i is not None:
                    where[i] = (b,)
    for (node, t), counts in sorted(members.items(), key=lambda entry: (entry[0][1], entry[0][0])):
        while True:
            holding = sorted((b for b in counts if counts[b] > 0), key=lambda b: (-counts[b], b))
            if len(holding) < t[2]:
                break
            i = _next(problem, waiting[t], node, on_node)
            if i is None:
                break
            gang = tuple(sorted(holding[: t[2]]))
            for b in gang:
                counts[b] -= 1
            where[i] = gang
    return tuple(where)


def _next(problem: Problem, queue: list[int], node: str, on_node: set[tuple[str, str]]) -> int | None:
    """The next waiting replica of a kind that may go on `node` (`spread: node` allows one of a model per node)."""
    for k in range(len(queue) - 1, -1, -1):
        item = problem.items[queue[k]]
        if item.spread == Spread.NODE:
            if (item.model, node) in on_node:
                continue
            on_node.add((item.model, node))
        return queue.pop(k)
    return None
