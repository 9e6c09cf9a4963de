"""A whole placement from the configuration model: what each GPU of each node holds, chosen for the pool at once.

The plan's searches move a few replicas or re-solve a few GPUs at a time; in a pool of 30 to 64 GPUs asked for more
than it holds, the first level left short can end several percent below what a placement of the whole pool reaches,
because the higher levels' replicas settled where they block it. Here the configuration LP (`relaxation.Master`,
priced with sizes rounded up so that every pattern really fits) is made integer for each level in turn, highest
first, with the levels above keeping what they got: how many GPUs of each node hold each pattern, each node holding
its gang kinds' members in multiples of their size and no GPU more of a kind's members than the node forms gangs of
it (a gang's GPUs are distinct). Each gang is then formed from the members on its node, on the GPUs holding most of
them first, which those two rules make always possible; a replica left out of the patterns, or a member of a
`spread: node` model beyond one a node, waits, and what waits is placed as the construction would, higher levels
evicting lower ones (`greedy.place_waiting`).

In a plan (pools of 17-64 GPUs leaving replicas out, before the regroup search) each level's integer model is solved
by CP-SAT within a share of `PackSettings.pattern_time`, a level the caller's placement already holds whole is not
solved, and the result is kept only where it scores better and keeps every rule. For the middle-scale bench's
references the same model is solved by HiGHS given hundreds of branch-and-bound nodes (seconds a pool, most of them
at the root: no measure of work bounds it there, so it stays out of plans); from first-fit decreasing it places
more than CP-SAT given 20 deterministic s on the whole exact model on 11 of the bench's 12 pools. Only for a pool
where nothing runs yet (the model knows nothing of stability or moves). Deterministic: one thread, budgets in pricing
rounds and CP-SAT's deterministic time or HiGHS's nodes; HiGHS's wall-clock cap is a safety net, far above what the
bench needs.
"""

from __future__ import annotations

from collections import defaultdict
from functools import reduce
from math import gcd

import highspy
import numpy as np
from ortools.sat.python import cp_model

from reconciler.desired import Spread
from reconciler.packer.greedy import place_waiting
from reconciler.packer.objective import level_keys, score, violations
from reconciler.packer.problem import Problem
from reconciler.packer.relaxation import SCALE, Counts, Kind, Master, gpu_patterns, kind_of, kinds_of, signature
from reconciler.packer.state import State

# CP-SAT's deterministic time is charged at this many times, plus a fixed charge per solve for building the model.
# Measured on bench middle (12 pools, from first-fit decreasing, `time` 1.2): the whole of `place` took 0.08-1.68 CPU
# s; on this model CP-SAT's CPU time is 3 to 5 times what it reports, so the CPU seconds spent were up to about 1.4
# times the budget.
_DETERMINISTIC = 3.2
_PER_SOLVE = 0.01
_GAP = 1e-3  # a level's integer solve stops within this share of its LP value (far inside the 0.5% aimed at)


def place(problem: Problem, assignment, *, fits_somewhere, rounds: int, time: float = 0.0, seed: int = 0,
          nodes: int | None = None, seconds: float = 600.0) -> tuple[tuple[int, ...] | None, ...] | None:
    """A placement of the whole pool from integer patterns, or None where nothing better than `assignment` was
    found (or something runs already). `assignment`'s GPUs are the first patterns and each level's start.

    A plan solves the integer models with CP-SAT within `time` deterministic seconds for all levels together
    (charged at `_DETERMINISTIC` times what CP-SAT reports); a reference, with HiGHS, `nodes` branch-and-bound nodes
    a level (stronger given minutes, not bounded by a deterministic measure at its root; `seconds` is its safety
    cap)."""
    return _place(problem, assignment, fits_somewhere=fits_somewhere, rounds=rounds, time=time, seed=seed,
                  nodes=nodes, seconds=seconds)[0]


def place_from(problem: Problem, assignment, others, *, fits_somewhere, rounds: int, time: float,
               seed: int = 0) -> tuple[tuple[int, ...] | None, ...] | None:
    """`place` for a plan: from `assignment`, then, with what budget that leaves, from `assignment` again with the
    GPUs of `others` (other constructions) among the first patterns too; the better, or None where neither beats
    `assignment`. The integer model is solved over the patterns the LP's pricing found, and the patterns an integer
    optimum needs are not always among them: measured on bench middle, another construction's GPUs gave one pool
    the best known placement its own patterns missed by 0.7%."""
    found, spent = _place(problem, assignment, fits_somewhere=fits_somewhere, rounds=rounds, time=time, seed=seed)
    if not others or time - spent < time / 2:
        return found
    again, _ = _place(problem, assignment, fits_somewhere=fits_somewhere, rounds=rounds, time=time - spent,
                      seed=seed, also=others)
    if again is None or violations(problem, again):
        return found
    return found if found is not None and score(problem, found) >= score(problem, again) else again


def _place(problem: Problem, assignment, *, fits_somewhere, rounds: int, time: float = 0.0, seed: int = 0,
           nodes: int | None = None, seconds: float = 600.0, also=()) -> tuple[tuple | None, float]:
    """`place`, with the work spent (as charged) and `also`: placements whose GPUs are patterns from the start."""
    if not applies(problem):
        return None, 0.0
    bins = problem.bins
    kinds = kinds_of(problem, fits_somewhere)
    caps: dict[int, int] = defaultdict(int)
    for gpu in bins:
        caps[gpu.capacity] += 1
    keys = level_keys(problem)
    given = [(bins[b].node, c, counts, 1) for b, (c, counts) in enumerate(gpu_patterns(problem, assignment, kinds))]
    given_levels = {key: _bytes(given, key) for key in keys}
    whole = {key: sum(n * t[1] for t, (n, _) in kinds.items() if t[0] == key) for key in keys}
    chosen = given
    placed: dict = {}
    used = 0.0
    for k, key in enumerate(keys):
        members = [t for t in kinds if t[0] in keys[: k + 1]]
        if chosen is given and given_levels[key] == whole[key]:
            placed[key] = whole[key]  # the caller's placement holds all of this level: nothing to solve
            continue
        master = Master(members=members, kinds=kinds, caps=dict(caps), above=keys[:k], key=key, placed=placed,
                        round_up=True)
        # Where the levels above hold no more than the caller's placement gives them, its GPUs are a start that
        # also places this level; else the patterns chosen for the levels above are.
        start = given if all(placed[lv] <= given_levels[lv] for lv in keys[:k]) else chosen
        for _, c, counts, _ in start:
            master.add(c, counts)
        for other in also:
            for c, counts in gpu_patterns(problem, other, kinds):
                master.add(c, counts)
        master.price(rounds)
        if nodes is None:
            found, spent = _integer_cp(problem, master, start, placed=placed, budget=time - used, seed=seed)
            used += spent
        else:
            found = _integer(problem, master, start, placed=placed, nodes=nodes, seconds=seconds)
        if found is None:
            break  # out of budget: what the levels above found stands, the rest is placed as the construction would
        chosen = found
        placed[key] = _bytes(found, key)
    if tuple(placed.get(key, 0) for key in keys) <= tuple(given_levels[key] for key in keys):
        return None, used  # nothing to gain over the caller's placement
    # What the patterns leave out (a kind the solve used less of, a `spread: node` replica beyond one a node) waits:
    # placed as the construction would, higher levels evicting lower ones.
    state = State.of(problem, _realise(problem, chosen, fits_somewhere))
    place_waiting(state, problem)
    return state.assignment(), used


def applies(problem: Problem) -> bool:
    """Whether the model can place this pool: nothing runs in it yet (the model knows nothing of stability)."""
    return all(item.current is None for item in problem.items)


def _bytes(patterns, key) -> int:
    return sum(m * n * t[1] for _, _, counts, m in patterns for t, n in counts.items() if t[0] == key)


def _cells(problem: Problem, master: Master) -> tuple[dict[tuple[str, int], int], list[tuple[int, str]]]:
    """GPUs per (node, card size); the integer models' variables: (column, node) for each node with GPUs of the
    column's card size, each the number of that node's GPUs holding the column's pattern."""
    gpus: dict[tuple[str, int], int] = defaultdict(int)
    for gpu in problem.bins:
        gpus[(gpu.node, gpu.capacity)] += 1
    on = defaultdict(list)
    for node, c in sorted(gpus):
        on[c].append(node)
    return gpus, [(j, node) for j, (c, _) in enumerate(master.columns) for node in on[c]]


def _level_bytes(counts: Counts, level) -> int:
    return sum(n * t[1] for t, n in counts.items() if t[0] == level)


def _start_values(master: Master, cells, start) -> list[int]:
    """`start` as values of the cells (its patterns restricted to the master's kinds)."""
    index = {(node, master.columns[j][0], signature(master.columns[j][1])): k for k, (j, node) in enumerate(cells)}
    value = [0] * len(cells)
    for node, c, counts, m in start:
        k = index.get((node, c, signature({t: n for t, n in counts.items() if t in master.rows_kind})))
        if k is not None:
            value[k] += m
    return value


def _integer(problem: Problem, master: Master, start, *, placed: dict, nodes: int,
             seconds: float) -> list[tuple[str, int, Counts, int]] | None:
    """The master's patterns in integer numbers per node, started from `start`: each node's GPUs of a card size
    hold at most that many, and each node holds its gang kinds' members in multiples of their size (HiGHS, the
    reference's path). None when no integer solution was found within the budget."""
    gpus, cells = _cells(problem, master)
    gangs = [(node, t) for node in sorted({node for node, _ in gpus}) for t in master.members if t[2] > 1]
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    inf = highspy.kHighsInf
    count = len(cells) + len(gangs)
    cost = [-_level_bytes(master.columns[j][1], master.key) / SCALE for j, _ in cells] + [0.0] * len(gangs)
    h.addVars(count, np.zeros(count), np.full(count, inf))
    h.changeColsCost(count, np.arange(count, dtype=np.int32), np.array(cost))
    h.changeColsIntegrality(count, np.arange(count, dtype=np.int32),
                            np.array([highspy.HighsVarType.kInteger] * count))
    rows: list[tuple[float, float, list[int], list[float]]] = []
    by_gpus = defaultdict(list)
    for x, (j, node) in enumerate(cells):
        by_gpus[(node, master.columns[j][0])].append(x)
    for key, xs in by_gpus.items():
        rows.append((-inf, float(gpus[key]), xs, [1.0] * len(xs)))
    for t in master.members:
        xs = [x for x, (j, _) in enumerate(cells) if master.columns[j][1].get(t)]
        rows.append((-inf, float(master.kinds[t][0]), xs, [float(master.columns[cells[x][0]][1][t]) for x in xs]))
    for lv in master.rows_above:
        xs = [x for x, (j, _) in enumerate(cells) if _level_bytes(master.columns[j][1], lv)]
        rows.append((placed.get(lv, 0) / SCALE * (1 - 1e-9), inf, xs,
                     [_level_bytes(master.columns[cells[x][0]][1], lv) / SCALE for x in xs]))
    binaries: list[int] = []  # the cell each added binary column is about
    for g, (node, t) in enumerate(gangs):
        xs = [x for x, (j, n) in enumerate(cells) if n == node and master.columns[j][1].get(t)]
        rows.append((0.0, 0.0, xs + [len(cells) + g],
                     [float(master.columns[cells[x][0]][1][t]) for x in xs] + [-float(t[2])]))
        for x in xs:
            n = master.columns[cells[x][0]][1][t]
            if n > 1:  # a GPU holding n members of the kind needs n gangs there: each gang's GPUs are distinct
                used = h.getNumCol()
                binaries.append(x)
                h.addVar(0.0, 1.0)
                h.changeColIntegrality(used, highspy.HighsVarType.kInteger)
                rows.append((-inf, 0.0, [x, used], [1.0, -float(gpus[(node, master.columns[cells[x][0]][0])])]))
                rows.append((-inf, 0.0, [used, len(cells) + g], [float(n), -1.0]))
    for lower, upper, xs, values in rows:
        h.addRow(lower, upper, len(xs), np.array(xs, dtype=np.int32), np.array(values, dtype=float))
    value = [float(v) for v in _start_values(master, cells, start)]
    for node, t in gangs:  # the gang columns: what the start's members make
        value.append(sum(value[x] * master.columns[j][1].get(t, 0) for x, (j, n) in enumerate(cells)
                         if n == node) / t[2])
    value += [float(value[x] > 0) for x in binaries]
    h.setSolution(len(value), np.arange(len(value), dtype=np.int32), np.array(value))
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


def _integer_cp(problem: Problem, master: Master, start, *, placed: dict, budget: float,
                seed: int) -> tuple[list[tuple[str, int, Counts, int]] | None, float]:
    """`_integer`'s model solved by CP-SAT within `budget` deterministic seconds (the plan's path: reproducible on
    every machine); the work spent, as charged."""
    if budget <= 0:
        return None, 0.0
    unit = reduce(gcd, (t[1] for t in master.members), 0) or 1
    gpus, cells = _cells(problem, master)
    m = cp_model.CpModel()
    x = [m.new_int_var(0, gpus[(node, master.columns[j][0])], "") for j, node in cells]
    on_gpus, of_kind, on_node = defaultdict(list), defaultdict(list), defaultdict(list)
    of_level: dict = {lv: [] for lv in [*master.rows_above, master.key]}
    for k, (j, node) in enumerate(cells):
        counts = master.columns[j][1]
        on_gpus[(node, master.columns[j][0])].append(x[k])
        for t, n in counts.items():
            of_kind[t].append(n * x[k])
            of_level[t[0]].append((n * t[1] // unit) * x[k])
            if t[2] > 1:
                on_node[(node, t)].append((n, k))
    for key, xs in on_gpus.items():
        m.add(sum(xs) <= gpus[key])
    for t, terms in of_kind.items():
        m.add(sum(terms) <= master.kinds[t][0])
    for lv in master.rows_above:
        m.add(sum(of_level[lv]) >= placed.get(lv, 0) // unit)
    for (node, t), terms in sorted(on_node.items()):
        gangs = m.new_int_var(0, master.kinds[t][0] // t[2], "")
        m.add(sum(n * x[k] for n, k in terms) == t[2] * gangs)
        for n, k in terms:
            if n > 1:  # a GPU holding n members of the kind needs n gangs there: each gang's GPUs are distinct
                used = m.new_bool_var("")
                m.add(x[k] == 0).only_enforce_if(~used)
                m.add(gangs >= n).only_enforce_if(used)
    m.maximize(sum(of_level[master.key]))
    for k, value in enumerate(_start_values(master, cells, start)):
        m.add_hint(x[k], int(value))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = budget / _DETERMINISTIC
    solver.parameters.linearization_level = 2  # measured on bench middle: far better solutions in the same time
    status = solver.solve(m)
    spent = _DETERMINISTIC * solver.deterministic_time + _PER_SOLVE
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None, spent
    return [(node, master.columns[j][0], master.columns[j][1], solver.value(x[k]))
            for k, (j, node) in enumerate(cells) if solver.value(x[k]) > 0], spent
