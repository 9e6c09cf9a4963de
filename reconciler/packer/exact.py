"""The exact method: CP-SAT on the lexicographic objective, one level at a time, for pools of new replicas.

Each level (priority, then elastic after the rest of its priority) maximises its placed bytes with the levels above
held at their optimum; then binpack minimises the GPUs in use. Deterministic: one worker, a fixed seed and a
deterministic time limit per solve, so the same problem gives the same answer on every machine. Pools with running
replicas are left to the heuristic, which owns stability, moves and evictions.
"""

from __future__ import annotations

from dataclasses import dataclass

from ortools.sat.python import cp_model

from reconciler.desired import Placement, Spread
from reconciler.packer.problem import Problem


@dataclass(frozen=True, slots=True)
class ExactResult:
    assignment: tuple[tuple[int, ...] | None, ...]
    levels: tuple[int, ...]  # placed bytes per level, highest level first
    gpus: int  # GPUs in use
    optimal: bool  # every solve proved its optimum within the budget


def levels_of(problem: Problem, assignment) -> tuple[int, ...]:
    keys = sorted({item.level for item in problem.items})
    return tuple(
        sum(item.size for item, bins in zip(problem.items, assignment) if bins and item.level == key) for key in keys
    )


def solve_exact(problem: Problem, *, time_per_solve: float, seed: int = 0, hint=None) -> ExactResult | None:
    items, bins = problem.items, problem.bins
    model = cp_model.CpModel()
    nodes: dict[str, list[int]] = {}
    for b, gpu in enumerate(bins):
        nodes.setdefault(gpu.node, []).append(b)
    x: dict[tuple[int, int], cp_model.IntVar] = {}
    on_node: dict[tuple[int, str], cp_model.IntVar] = {}
    placed = []
    for i, item in enumerate(items):
        choices = []
        for node, members in sorted(nodes.items()):
            eligible = [b for b in members if bins[b].capacity >= item.vram]
            if len(eligible) < item.gpus:
                continue
            y = model.new_bool_var(f"y{i}_{node}")
            on_node[(i, node)] = y
            for b in eligible:
                x[(i, b)] = model.new_bool_var(f"x{i}_{b}")
            model.add(sum(x[(i, b)] for b in eligible) == item.gpus * y)
            choices.append(y)
        p = model.new_bool_var(f"p{i}")
        model.add(sum(choices) == p)
        placed.append(p)
    for b, gpu in enumerate(bins):
        terms = [items[i].vram * v for (i, c), v in x.items() if c == b]
        if terms:
            model.add(sum(terms) <= gpu.capacity)
    by_model: dict[str, list[int]] = {}
    for i, item in enumerate(items):
        by_model.setdefault(item.model, []).append(i)
    for name, members in by_model.items():
        spread = items[members[0]].spread
        if spread == Spread.GPU:
            for b in range(len(bins)):
                vs = [x[(i, b)] for i in members if (i, b) in x]
                if len(vs) > 1:
                    model.add(sum(vs) <= 1)
        elif spread == Spread.NODE:
            for node in nodes:
                vs = [on_node[(i, node)] for i in members if (i, node) in on_node]
                if len(vs) > 1:
                    model.add(sum(vs) <= 1)
    # Interchangeable replicas of one model: fill lower indices first (removes symmetry, keeps max models dense).
    for members in by_model.values():
        for a, b in zip(members, members[1:]):
            model.add(placed[a] >= placed[b])
    if hint is not None:
        for (i, b), v in x.items():
            model.add_hint(v, int(bool(hint[i]) and b in hint[i]))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    solver.parameters.max_deterministic_time = time_per_solve
    optimal = True
    keys = sorted({item.level for item in items})
    for key in keys:
        value = sum(item.size * placed[i] for i, item in enumerate(items) if item.level == key)
        model.maximize(value)
        status = solver.solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        optimal = optimal and status == cp_model.OPTIMAL
        model.add(value >= int(solver.objective_value))
        _hint_from(model, solver, x)
    if problem.policy == Placement.BINPACK:
        used = []
        for b in range(len(bins)):
            vs = [v for (i, c), v in x.items() if c == b]
            if vs:
                u = model.new_bool_var(f"u{b}")
                for v in vs:
                    model.add_implication(v, u)
                used.append(u)
        model.minimize(sum(used))
        status = solver.solve(model)
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            return None
        optimal = optimal and status == cp_model.OPTIMAL
    assignment = []
    for i, item in enumerate(items):
        chosen = tuple(b for b in range(len(bins)) if (i, b) in x and solver.value(x[(i, b)]))
        assignment.append(chosen or None)
    result = tuple(assignment)
    gpus = len({b for a in result if a for b in a})
    return ExactResult(assignment=result, levels=levels_of(problem, result), gpus=gpus, optimal=optimal)


def _hint_from(model: cp_model.CpModel, solver: cp_model.CpSolver, x) -> None:
    model.clear_hints()
    for v in x.values():
        model.add_hint(v, solver.value(v))
