"""The exact method: CP-SAT on the choice of nodes and the placement on them at once.

Each kind of node has `limit` candidate slots; slot i is bought when `y[k][i]`. Slots of one kind are alike, so
bought slots come first and carry no less VRAM than the next one: each choice has one representative, which is what
lets the solver prove a choice cheapest instead of trying its permutations. The replicas of one model are counted,
not named (`n`: replicas of a group on one GPU, `c`: its gangs on one node), as in the packer's exact model; counts
per GPU of at most `c` that add up to gpus x c always split into c gangs of distinct GPUs.

`--tolerate N` adds one placement per failure scenario: a vector of how many nodes of each kind fail. The slots of a
kind left in a scenario are its first ones (the failed ones are taken from the end), so scenario f may use slot i of
kind k exactly when slot i + f[k] is bought. Deterministic: one worker, a fixed seed and a budget of CP-SAT's own
deterministic time.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

from ortools.sat.python import cp_model

from reconciler.advise.kinds import Group, Kind, scenarios
from reconciler.desired import Spread

Counts = tuple[int, ...]
SAFETY_SECONDS_PER_BUDGET = 3.0
# Per item of a group: (kind, slot, GPU indices) in the first scenario's placement.
Spot = tuple[int, int, tuple[int, ...]]


@dataclass(frozen=True, slots=True)
class ExactResult:
    counts: Counts | None  # None: no choice found within the budget (or none exists: see `infeasible`)
    cost: int
    bound: int  # CP-SAT's bound on the cheapest cost
    optimal: bool
    infeasible: bool  # proven: no choice within the limits fits
    spots: dict[int, list[Spot]]  # group index -> one spot per replica (first scenario)
    work: float = 0.0  # CP-SAT's deterministic time spent


def size(kinds: tuple[Kind, ...], groups: tuple[Group, ...], limits: Counts, tolerate: int) -> int:
    """Count variables the model would have: what decides whether it is built at all."""
    per_scenario = sum(
        limit * sum(1 for cap in kind.caps if cap >= g.vram)
        for kind, limit in zip(kinds, limits) for g in groups if g.hosts(kind.caps)
    )
    return per_scenario * len(scenarios(limits, tolerate))


def solve(*, kinds: tuple[Kind, ...], groups: tuple[Group, ...], limits: Counts, tolerate: int, budget: float,
          seed: int = 0, upper: int | None = None, hint: Counts | None = None, bought: bool = False) -> ExactResult:
    """The cheapest choice within `limits` slots per kind; with `bought`, whether every slot bought (`limits` as
    the counts) holds it all."""
    unit = reduce(math.gcd, (g.vram for g in groups), 0) or 1
    m = cp_model.CpModel()
    y: list[list[cp_model.IntVar]] = []
    for k, (kind, limit) in enumerate(zip(kinds, limits)):
        slots = [m.new_bool_var(f"y{k}_{i}") for i in range(limit)]
        for a, b in zip(slots, slots[1:]):
            m.add(a >= b)
        if kind.fixed or bought:
            for v in slots:
                m.add(v == 1)
        y.append(slots)
    count = [sum(slots) for slots in y]
    cost = sum(kind.price * v for kind, slots in zip(kinds, y) for v in slots)
    if upper is not None:
        m.add(cost <= upper)
    for g in groups:  # a spread: node model needs as many nodes as replicas, and `tolerate` more
        if g.spread == Spread.NODE:
            m.add(sum(c for kind, c in zip(kinds, count) if g.hosts(kind.caps)) >= g.count + tolerate)
    # (group, kind, slot) -> (its gangs there, its replicas per GPU there), in the first scenario.
    first: dict[tuple[int, int, int], tuple] = {}
    for s, failed in enumerate(scenarios(limits, tolerate)):
        gangs: list[list] = [[] for _ in groups]
        slot_loads: list[list] = [[] for _ in kinds]
        for k, kind in enumerate(kinds):
            for i in range(limits[k] - failed[k]):
                alive = y[k][i + failed[k]]
                on_gpu: list[list] = [[] for _ in kind.caps]
                load = []
                for gi, g in enumerate(groups):
                    hosts = g.hosts(kind.caps)
                    if not hosts:
                        continue
                    per = []
                    for j, cap in enumerate(kind.caps):
                        if cap < g.vram:
                            continue
                        top = 1 if g.spread != Spread.NONE else min(g.count, cap // g.vram)
                        n = m.new_int_var(0, top, f"n{s}_{gi}_{k}_{i}_{j}")
                        per.append((j, n))
                        on_gpu[j].append((g.vram // unit, n))
                    if g.gpus == 1:
                        c = sum(n for _, n in per)
                    else:
                        c = m.new_int_var(0, hosts, f"c{s}_{gi}_{k}_{i}")
                        m.add(sum(n for _, n in per) == g.gpus * c)
                        for _, n in per:
                            m.add(n <= c)
                    m.add(c <= hosts * alive)
                    gangs[gi].append(c)
                    load.append(g.vram // unit * g.gpus * c)
                    if s == 0:
                        first[(gi, k, i)] = (c, per)
                for j, cap in enumerate(kind.caps):
                    if on_gpu[j]:
                        m.add(sum(w * n for w, n in on_gpu[j]) <= (cap // unit) * alive)
                slot_loads[k].append(sum(load))
        # Alike slots of a kind carry no less VRAM than the next one (symmetry), in every scenario.
        for loads in slot_loads:
            for a, b in zip(loads, loads[1:]):
                m.add(a >= b)
        for gi, g in enumerate(groups):
            m.add(sum(gangs[gi]) == g.count)
    m.minimize(cost)
    if hint is not None:
        for k, slots in enumerate(y):
            for i, v in enumerate(slots):
                m.add_hint(v, i < hint[k])
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = budget
    # A safety cap against presolves that outrun their deterministic budget; hitting it leaves the choice undecided.
    solver.parameters.max_time_in_seconds = SAFETY_SECONDS_PER_BUDGET * budget + 1.0
    solver.parameters.linearization_level = 2  # the cuts of a packing's relaxation: proofs come sooner
    status = solver.solve(m)
    work = solver.response_proto.deterministic_time
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return ExactResult(counts=None, cost=0, bound=int(math.ceil(solver.best_objective_bound - 1e-6))
                           if status == cp_model.UNKNOWN else 0,
                           optimal=False, infeasible=status == cp_model.INFEASIBLE, spots={}, work=work)
    counts = tuple(sum(solver.value(v) for v in slots) for slots in y)
    spots: dict[int, list[Spot]] = {gi: [] for gi in range(len(groups))}
    for (gi, k, i), (c, per) in sorted(first.items(), key=lambda e: e[0]):
        gangs_here = solver.value(c)
        left = {j: solver.value(n) for j, n in per}
        for _ in range(gangs_here):
            chosen = sorted(left, key=lambda j: (-left[j], j))[: groups[gi].gpus]
            for j in chosen:
                left[j] -= 1
            spots[gi].append((k, i, tuple(sorted(chosen))))
    value = int(round(solver.objective_value))
    return ExactResult(counts=counts, cost=value, bound=int(math.ceil(solver.best_objective_bound - 1e-6)),
                       optimal=status == cp_model.OPTIMAL, infeasible=False, spots=spots, work=work)
