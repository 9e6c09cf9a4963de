"""The exact method: CP-SAT on the whole objective of `objective.py`, one stage at a time.

Stages in order: each level's placed bytes (the levels above held at what was found), then stability, then the
pool's policy. Running replicas, displaced ones, preemption, moves and `maxMoves` are modelled with the rules of
`objective.py`, so a proven optimum here is the optimum of the objective. Deterministic: one worker, a fixed seed
and a budget of CP-SAT's deterministic time (never the wall clock), so the same problem gives the same answer on
every machine. When a stage runs out of budget, the gap to its bound is kept for the plan to report.
"""

from __future__ import annotations

import math
from collections.abc import Collection
from dataclasses import dataclass
from functools import reduce

from ortools.sat.python import cp_model

from reconciler.desired import Placement, Spread
from reconciler.packer.objective import PER_MILLE, Assignment, Score, displaced, level_keys, may_move, may_preempt
from reconciler.packer.objective import score as score_of
from reconciler.packer.problem import Problem


@dataclass(frozen=True, slots=True)
class ExactResult:
    assignment: tuple[tuple[int, ...] | None, ...]
    score: Score
    optimal: bool  # every stage proved its optimum within the budget
    levels_optimal: bool  # every level stage did: no more VRAM of any level can be placed
    gap_bytes: int  # sum over level stages of (bound - found), bytes
    gap_gpus: int  # binpack: GPUs in use above the bound
    gap_stays: int  # running replicas that might stay beyond those that do
    finished: bool = True  # every stage ran; the gaps are only meaningful then


def levels_of(problem: Problem, assignment: Assignment) -> tuple[int, ...]:
    return score_of(problem, assignment).levels


class _Model:
    """The CP-SAT model of one problem; `x[(i, b)]` is true when item i uses bin b."""

    def __init__(self, problem: Problem, forced: Collection[int]) -> None:
        self.problem = problem
        items, bins = problem.items, problem.bins
        # VRAM in units of the sizes' common divisor: the same constraints with smaller coefficients.
        self.unit = unit = reduce(math.gcd, (item.vram for item in items), 0) or 1
        m = self.model = cp_model.CpModel()
        nodes: dict[str, list[int]] = {}
        for b, gpu in enumerate(bins):
            nodes.setdefault(gpu.node, []).append(b)
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        on_bin: list[list[tuple[int, cp_model.IntVar]]] = [[] for _ in bins]
        on_node: dict[tuple[int, str], cp_model.IntVar] = {}
        self.placed: list = []
        for i, item in enumerate(items):
            choices = []
            for node, members in sorted(nodes.items()):
                eligible = [b for b in members if bins[b].capacity >= item.vram]
                if len(eligible) < item.gpus:
                    continue
                if item.gpus == 1:
                    for b in eligible:
                        v = self.x[(i, b)] = m.new_bool_var(f"x{i}_{b}")
                        on_bin[b].append((i, v))
                        choices.append(v)
                    if item.spread == Spread.NODE:
                        y = m.new_bool_var(f"y{i}_{node}")
                        m.add(sum(self.x[(i, b)] for b in eligible) == y)
                        on_node[(i, node)] = y
                    continue
                y = m.new_bool_var(f"y{i}_{node}")
                for b in eligible:
                    v = self.x[(i, b)] = m.new_bool_var(f"x{i}_{b}")
                    on_bin[b].append((i, v))
                m.add(sum(self.x[(i, b)] for b in eligible) == item.gpus * y)
                on_node[(i, node)] = y
                choices.append(y)
            p = m.new_bool_var(f"p{i}")
            m.add(sum(choices) == p)
            self.placed.append(p)
        for b, gpu in enumerate(bins):
            room = gpu.capacity // unit
            if on_bin[b] and sum(items[i].vram // unit for i, _ in on_bin[b]) > room:
                m.add(sum(items[i].vram // unit * v for i, v in on_bin[b]) <= room)
        self.on_bin = on_bin
        by_model: dict[str, list[int]] = {}
        for i, item in enumerate(items):
            by_model.setdefault(item.model, []).append(i)
        for members in by_model.values():
            spread = items[members[0]].spread
            if spread == Spread.GPU:
                for b in range(len(bins)):
                    vs = [self.x[(i, b)] for i in members if (i, b) in self.x]
                    if len(vs) > 1:
                        m.add(sum(vs) <= 1)
            elif spread == Spread.NODE:
                for node in nodes:
                    vs = [on_node[(i, node)] for i in members if (i, node) in on_node]
                    if len(vs) > 1:
                        m.add(sum(vs) <= 1)
            # New replicas of one model are interchangeable: lower indices first (no symmetric twins to explore,
            # and `replicas: max` stays dense).
            new = [i for i in members if items[i].current is None]
            for a, b in zip(new, new[1:]):
                m.add(self.placed[a] >= self.placed[b])
        self.stay: dict[int, cp_model.IntVar] = {}
        counted = []
        for i, item in enumerate(items):
            cur = item.current
            if cur is None or any((i, b) not in self.x for b in cur) or len(set(cur)) != item.gpus:
                continue
            if item.gpus == 1:
                stay = self.x[(i, cur[0])]
            else:
                stay = m.new_bool_var(f"s{i}")
                for b in cur:
                    m.add_implication(stay, self.x[(i, b)])
                m.add(sum(self.x[(i, b)] for b in cur) - (item.gpus - 1) <= stay)
            self.stay[i] = stay
            if i in forced:
                continue
            came = [(j, v) for b in cur for j, v in on_bin[b] if j != i and b not in (items[j].current or ())]
            pre_terms = [v for j, v in came if may_preempt(items[j], item)]
            move_terms = [v for j, v in came if may_move(items[j], item)]
            pre = m.new_bool_var(f"pre{i}") if pre_terms else 0
            if pre_terms:
                m.add(pre <= sum(pre_terms))
            moved = self.placed[i] - stay
            m.add(self.placed[i] + pre >= 1)  # evicted only when preempted
            m.add(moved <= pre + sum(move_terms))  # moved only to make room for a newcomer
            c = m.new_bool_var(f"c{i}")
            m.add(c >= moved - pre)
            counted.append(c)
        if counted:
            m.add(sum(counted) <= problem.max_moves)

    def hint(self, assignment: Assignment) -> None:
        self.model.clear_hints()
        for (i, b), v in self.x.items():
            self.model.add_hint(v, int(bool(assignment[i]) and b in assignment[i]))

    def read(self, solver: cp_model.CpSolver) -> tuple[tuple[int, ...] | None, ...]:
        chosen: list[list[int]] = [[] for _ in self.problem.items]
        for (i, b), v in self.x.items():
            if solver.value(v):
                chosen[i].append(b)
        return tuple(tuple(sorted(c)) or None for c in chosen)


def solve_exact(
    problem: Problem,
    *,
    budget: float,
    seed: int = 0,
    hint: Assignment | None = None,
    forced: Collection[int] | None = None,
) -> ExactResult | None:
    """Solve `problem` stage by stage within `budget` deterministic seconds in all; None when no solution was found
    (only possible without a hint). `forced`: the displaced running replicas (computed when not given)."""
    items = problem.items
    if forced is None:
        forced = displaced(problem)
    built = _Model(problem, forced)
    model = built.model
    if hint is not None:
        built.hint(hint)
    stages: list[tuple[str, object]] = []
    for key in level_keys(problem):
        stages.append(("level", sum(item.size // built.unit * built.placed[i] for i, item in enumerate(items) if item.level == key)))
    if built.stay:
        stages.append(("stays", sum(built.stay.values())))
    if problem.policy == Placement.BINPACK:
        used = []
        for b, members in enumerate(built.on_bin):
            if members:
                u = model.new_bool_var(f"u{b}")
                for _, v in members:
                    model.add_implication(v, u)
                used.append(u)
        stages.append(("gpus", -sum(used) if used else 0))
    else:
        top = model.new_int_var(0, PER_MILLE, "fullest")
        for b, members in enumerate(built.on_bin):
            cap = problem.bins[b].capacity
            if members and cap > 0:
                model.add(PER_MILLE * sum(items[i].vram // built.unit * v for i, v in members) * built.unit <= top * cap)
        stages.append(("fill", -top))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    left = budget
    optimal = levels_optimal = True
    gap_bytes = gap_gpus = gap_stays = 0
    assignment = None
    finished = True
    for n, (kind, expr) in enumerate(stages):
        if isinstance(expr, int):
            continue  # nothing to decide at this stage
        # Early stages may keep what later ones leave; every stage gets at least an equal share of what is left.
        solver.parameters.max_deterministic_time = max(left / (len(stages) - n), 1e-3)
        model.maximize(expr)
        status = solver.solve(model)
        left -= solver.deterministic_time
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            if assignment is None and hint is None:
                return None
            optimal = finished = False
            levels_optimal = levels_optimal and kind != "level"
            break
        value = round(solver.objective_value)
        assignment = built.read(solver)
        if status != cp_model.OPTIMAL:
            optimal = False
            slack = max(0, math.floor(solver.best_objective_bound + 1e-6) - value)
            if kind == "level":
                levels_optimal = False
                gap_bytes += slack * built.unit
            elif kind == "gpus":
                gap_gpus = slack
            elif kind == "stays":
                gap_stays = slack
        model.add(expr >= value)
        built.hint(assignment)
    if assignment is None:
        assert hint is not None
        assignment = tuple(hint)
        optimal = levels_optimal = finished = False
    return ExactResult(
        assignment=assignment,
        score=score_of(problem, assignment),
        optimal=optimal,
        levels_optimal=levels_optimal,
        gap_bytes=gap_bytes,
        gap_gpus=gap_gpus,
        gap_stays=gap_stays,
        finished=finished,
    )
