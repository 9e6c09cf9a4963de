"""The exact method: CP-SAT on the whole objective of `objective.py`, one stage at a time.

Stages in order: each level's placed bytes (the levels above held at what was found), then stability, then the
pool's policy. Running replicas, displaced ones, preemption, moves and `maxMoves` are modelled with the rules of
`objective.py`, so a proven optimum here is the optimum of the objective. Deterministic: one worker, a fixed seed
and a budget of CP-SAT's deterministic time (never the wall clock), so the same problem gives the same answer on
every machine. When a stage runs out of budget, the gap to its bound is kept for the plan to report.

Three things make a level's optimum found and proven sooner: replicas alike in all the rules mention are counted
together (`_twins`), a subset-sum bound the relaxation does not see caps each level (`_LevelBound`), and a level not
proven in half its budget is improved by a neighbourhood search (`_Search`) before the rest goes to the proof. The
spread policy's stage (the fullest GPU's fill) gets the same search, around the fullest GPUs only.
(Symmetry breaking between identical GPUs was measured too: ordering their loads slowed the search for good
placements more than it pruned, so the model has none.)
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass
from functools import reduce
from itertools import combinations

from ortools.sat.python import cp_model

from reconciler.desired import Placement, Spread
from reconciler.packer.bounds import SUBSET_SUM_LIMIT, reachable
from reconciler.packer.objective import (
    PER_MILLE,
    Assignment,
    Score,
    displaced,
    fill,
    gpu_loads,
    level_keys,
    may_move,
    may_preempt,
)
from reconciler.packer.objective import score as score_of
from reconciler.packer.problem import Problem

# Each solve of a neighbourhood costs setup work its deterministic time does not count (copying and presolving the
# model); charged at this much, many small solves cannot take more of one core than the budget says.
_PER_SOLVE = 0.015


@dataclass(frozen=True, slots=True)
class ExactResult:
    assignment: tuple[tuple[int, ...] | None, ...]
    score: Score
    optimal: bool  # every stage proved its optimum within the budget
    levels_optimal: bool  # every level stage did: no more VRAM of any level can be placed
    gap_bytes: int  # sum over level stages of (bound - found), bytes
    gap_gpus: int  # binpack: GPUs in use above the bound
    gap_stays: int  # running replicas that might stay beyond those that do
    gap_fill: int = 0  # spread: per mille the fullest GPU may be above the bound of its stage
    finished: bool = True  # every stage ran; the gaps are only meaningful then


def levels_of(problem: Problem, assignment: Assignment) -> tuple[int, ...]:
    return score_of(problem, assignment).levels


class _Model:
    """The CP-SAT model of one problem.

    Running replicas are variables of their own (`x[(i, b)]`: item i uses bin b), since where each one ends matters
    for stability. The new replicas of one model are interchangeable, so they are counted, not named: `n[(g, b)]`
    of group g on bin b (and `c[(g, node)]` gangs on a node for tensor parallelism). This removes the symmetric
    twins that make a per-replica model slow to prove. A node's per-GPU counts, each at most its gang count and
    summing to gpus x gangs, always split into that many gangs of distinct GPUs, so counting loses nothing.
    """

    def __init__(self, problem: Problem, forced: Collection[int]) -> None:
        self.problem = problem
        items, bins = problem.items, problem.bins
        # VRAM in units of the sizes' common divisor: the same constraints with smaller coefficients.
        self.unit = unit = reduce(math.gcd, (item.vram for item in items), 0) or 1
        m = self.model = cp_model.CpModel()
        self.nodes: dict[str, list[int]] = {}
        for b, gpu in enumerate(bins):
            self.nodes.setdefault(gpu.node, []).append(b)
        self.x: dict[tuple[int, int], cp_model.IntVar] = {}
        self.n: dict[tuple[int, int], cp_model.IntVar] = {}  # (group, bin) -> replicas of the group there
        self.c: dict[tuple[int, str], cp_model.IntVar] = {}  # (group, node) -> gangs of the group there
        # Per bin: (vram, count or 0/1 variable, owner) where owner is ("item", i) or ("group", g).
        on_bin: list[list[tuple[int, object, tuple[str, int]]]] = [[] for _ in bins]
        node_use: dict[tuple[str, str], list] = {}  # (model, node) -> replicas of the model on the node
        self.placed_terms: list[tuple[tuple[int, bool], int, object]] = []  # (level, size, count or 0/1)
        self.groups: list[list[int]] = []
        grouped: dict[tuple, int] = {}
        individual = []
        for i, item in enumerate(items):
            if item.current is None:
                key = _twins(item)
                if key not in grouped:
                    grouped[key] = len(self.groups)
                    self.groups.append([])
                self.groups[grouped[key]].append(i)
            else:
                individual.append(i)
        self.placed: dict[int, object] = {}
        self.copies: list[tuple[tuple[int, bool], int, int]] = []  # (level, size in units, replicas that may fit)
        self.top: dict[int, int] = {}  # upper bounds of the count variables, by id
        for i in individual:
            item = items[i]
            choices = []
            for node, members in sorted(self.nodes.items()):
                eligible = [b for b in members if bins[b].capacity >= item.vram]
                if len(eligible) < item.gpus:
                    continue
                vs = []
                for b in eligible:
                    v = self.x[(i, b)] = m.new_bool_var(f"x{i}_{b}")
                    on_bin[b].append((item.vram, v, ("item", i)))
                    vs.append(v)
                if item.gpus == 1:
                    choices += vs
                    node_use.setdefault((item.model, node), []).extend(vs)
                else:
                    y = m.new_bool_var(f"y{i}_{node}")
                    m.add(sum(vs) == item.gpus * y)
                    choices.append(y)
                    node_use.setdefault((item.model, node), []).append(y)
            p = m.new_bool_var(f"p{i}")
            m.add(sum(choices) == p)
            self.placed[i] = p
            self.placed_terms.append((item.level, item.size, p))
            if choices:
                self.copies.append((item.level, item.size // unit, 1))
        for g, members in enumerate(self.groups):
            item = items[members[0]]
            count = len(members)
            total = []
            for node, node_bins in sorted(self.nodes.items()):
                eligible = [b for b in node_bins if bins[b].capacity >= item.vram]
                if len(eligible) < item.gpus:
                    continue
                per_bin = []
                for b in eligible:
                    top = min(count, bins[b].capacity // item.vram)
                    if item.spread == Spread.GPU:
                        top = min(top, 1)
                    v = self.n[(g, b)] = m.new_int_var(0, top, f"n{g}_{b}")
                    self.top[id(v)] = top
                    on_bin[b].append((item.vram, v, ("group", g)))
                    per_bin.append(v)
                if item.gpus == 1:
                    total += per_bin
                    node_use.setdefault((item.model, node), []).extend(per_bin)
                    continue
                gangs = self.c[(g, node)] = m.new_int_var(0, count, f"c{g}_{node}")
                m.add(sum(per_bin) == item.gpus * gangs)
                for v in per_bin:
                    m.add(v <= gangs)
                total.append(gangs)
                node_use.setdefault((item.model, node), []).append(gangs)
            placed = m.new_int_var(0, count, f"P{g}")
            m.add(sum(total) == placed)
            self.placed_terms.append((item.level, item.size, placed))
            if total:
                self.copies.append((item.level, item.size // unit, count))
        self.used: dict[int, cp_model.IntVar] = {}
        self.room = 0  # units all GPUs together can hold
        binpack = problem.policy == Placement.BINPACK
        for b, gpu in enumerate(bins):
            terms = on_bin[b]
            if not terms:
                continue
            # No GPU holds more than the largest subset sum of what may go on it: as its capacity, that tightens
            # the model's bound.
            sizes: Counter[int] = Counter()
            for vram, v, _ in terms:
                sizes[vram // unit] += self.top.get(id(v), 1)
            room = reachable(sizes, gpu.capacity // unit)
            self.room += room
            load = sum(vram // unit * v for vram, v, _ in terms)
            if binpack:
                # A GPU is in use when anything is on it: its load times the flag bounds both (a tighter bound on
                # GPUs than one implication per replica).
                u = self.used[b] = m.new_bool_var(f"u{b}")
                m.add(load <= room * u)
                for _, v, _ in terms:
                    m.add(v <= self.top.get(id(v), 1) * u)
            elif sum(sizes) > room:
                m.add(load <= room)
        self.on_bin = on_bin
        spread = {item.model: item.spread for item in items}
        for b in range(len(bins)):
            by_model: dict[str, list] = {}
            for _, v, (kind, k) in on_bin[b]:
                name = items[k].model if kind == "item" else items[self.groups[k][0]].model
                by_model.setdefault(name, []).append(v)
            for name, vs in by_model.items():
                if spread[name] == Spread.GPU and len(vs) > 1:
                    m.add(sum(vs) <= 1)
        for (name, _node), vs in node_use.items():
            if spread[name] == Spread.NODE:
                m.add(sum(vs) <= 1)
        self.stay: dict[int, object] = {}
        counted = []
        for i in individual:
            item = items[i]
            cur = item.current
            assert cur is not None
            if any((i, b) not in self.x for b in cur) or len(set(cur)) != item.gpus:
                continue
            if len({bins[b].node for b in cur}) != 1:
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
            came = []
            for b in cur:
                for _, v, (kind, k) in on_bin[b]:
                    if kind == "group":
                        came.append((items[self.groups[k][0]], v))
                    elif k != i and b not in (items[k].current or ()):
                        came.append((items[k], v))
            pre_terms = [v for other, v in came if may_preempt(other, item)]
            move_terms = [v for other, v in came if may_move(other, item)]
            pre = m.new_bool_var(f"pre{i}") if pre_terms else 0
            if pre_terms:
                m.add(pre <= sum(pre_terms))
            moved = self.placed[i] - stay
            m.add(self.placed[i] + pre >= 1)  # evicted only when preempted
            m.add(moved <= pre + sum(move_terms))  # moved only to make room for a newcomer
            counted_move = m.new_bool_var(f"c{i}")
            m.add(counted_move >= moved - pre)
            counted.append(counted_move)
        if counted:
            m.add(sum(counted) <= problem.max_moves)

    def hint(self, assignment: Assignment) -> None:
        model = self.model
        model.clear_hints()
        for (i, b), v in self.x.items():
            model.add_hint(v, int(bool(assignment[i]) and b in assignment[i]))
        per_bin: dict[tuple[int, int], int] = {}
        per_node: dict[tuple[int, str], int] = {}
        for g, members in enumerate(self.groups):
            for i in members:
                for b in assignment[i] or ():
                    per_bin[(g, b)] = per_bin.get((g, b), 0) + 1
                if assignment[i]:
                    node = self.problem.bins[assignment[i][0]].node
                    per_node[(g, node)] = per_node.get((g, node), 0) + 1
        for key, v in self.n.items():
            model.add_hint(v, per_bin.get(key, 0))
        for key, v in self.c.items():
            model.add_hint(v, per_node.get(key, 0))

    def read(self, solver: cp_model.CpSolver) -> tuple[tuple[int, ...] | None, ...]:
        items = self.problem.items
        chosen: list[tuple[int, ...] | None] = [None] * len(items)
        for i in self.placed:
            where = tuple(b for b in range(len(self.problem.bins)) if (i, b) in self.x and solver.value(self.x[(i, b)]))
            chosen[i] = where or None
        for g, members in enumerate(self.groups):
            item = items[members[0]]
            slots: list[tuple[int, ...]] = []
            for node, node_bins in sorted(self.nodes.items()):
                counts = [(b, solver.value(self.n[(g, b)])) for b in node_bins if (g, b) in self.n]
                if item.gpus == 1:
                    slots += [(b,) for b, k in counts for _ in range(k)]
                    continue
                gangs = solver.value(self.c[(g, node)]) if (g, node) in self.c else 0
                # Each GPU's uses are consecutive and at most `gangs` long, so taking every gangs-th use gives
                # every gang distinct GPUs.
                uses = [b for b, k in counts for _ in range(k)]
                slots += [tuple(sorted(uses[k :: gangs])) for k in range(gangs)]
            slots.sort()
            for i, where in zip(members, slots):
                chosen[i] = where
        return tuple(chosen)


def _twins(item) -> tuple:
    """New replicas with one key are interchangeable: those of one model, and, without spread (the only rule that
    names the model), those of any models alike in size, gang, level and preemption."""
    if item.spread != Spread.NONE:
        return ("model", item.model)
    return ("alike", item.vram, item.gpus, item.level, item.preempts, item.preemptible)


@dataclass(frozen=True, slots=True)
class _Found:
    value: int
    assignment: tuple[tuple[int, ...] | None, ...] | None
    spent: float


class _Search:
    """Large neighbourhood search around a placement: everything outside two nodes (two GPUs, in a pool of fewer
    than three nodes), then outside three nodes (in a pool of more than three), is held as it is, and the model,
    that small, is solved to its optimum; a better placement becomes the one searched around. Rounds over every
    such part, in a fixed order, until one brings nothing or the budget (deterministic time) is spent."""

    def __init__(self, built: _Model, *, seed: int) -> None:
        self.built = built
        self.solver = cp_model.CpSolver()
        self.solver.parameters.num_workers = 1
        self.solver.parameters.random_seed = seed
        nodes = [members for _, members in sorted(built.nodes.items())]
        if len(nodes) < 3:
            nodes = [[b] for b in range(len(built.problem.bins))]
        self.parts = [a + b for a, b in combinations(nodes, 2)]
        if len(nodes) > 3:  # then three nodes are still a part of the pool: measured, they find more than pairs
            self.parts += [a + b + c for a, b, c in combinations(nodes, 3)]

    def run(self, first: cp_model.CpSolver, *, budget: float, fullest: bool = False) -> _Found:
        """`fullest`: the objective is the fullest GPU's fill, so only parts holding a fullest GPU can lower it."""
        built = self.built
        held = self._values(first)
        best = _Found(round(first.objective_value), None, 0.0)
        spent, improved = 0.0, True
        top = self._fullest(built.read(first)) if fullest else None
        while improved and spent < budget:
            improved = False
            for part in self.parts:
                if spent >= budget:
                    break
                if top is not None and top.isdisjoint(part):
                    continue
                sub = built.model.clone()
                inside = set(part)
                for b, values in held.items():
                    if b not in inside:
                        for index, value in values:
                            sub.add(sub.get_int_var_from_proto_index(index) == value)
                self.solver.parameters.max_deterministic_time = min(budget - spent, budget / 8)
                status = self.solver.solve(sub)
                spent += self.solver.deterministic_time + _PER_SOLVE
                if status in (cp_model.OPTIMAL, cp_model.FEASIBLE) and round(self.solver.objective_value) > best.value:
                    best = _Found(round(self.solver.objective_value), built.read(self.solver), spent)
                    held = self._values(self.solver)
                    built.hint(best.assignment)
                    improved = True
                    top = self._fullest(best.assignment) if fullest else None
        return _Found(best.value, best.assignment, spent)

    def _fullest(self, assignment) -> set[int]:
        problem = self.built.problem
        fills = [fill(load, gpu.capacity) for load, gpu in zip(gpu_loads(problem, assignment), problem.bins)]
        return {b for b, f in enumerate(fills) if f == max(fills)}

    def _values(self, solver: cp_model.CpSolver) -> dict[int, list[tuple[int, int]]]:
        """Per GPU, (variable index, value) of every variable of the GPU: what holding it as it is fixes."""
        built = self.built
        out: dict[int, list[tuple[int, int]]] = {}
        for b, terms in enumerate(built.on_bin):
            variables = [v for _, v, _ in terms if not isinstance(v, int)]
            if b in built.used:
                variables.append(built.used[b])
            out[b] = [(v.index, solver.value(v)) for v in variables]
        return out


class _LevelBound:
    """An upper bound on each level's placed VRAM beyond what the model's relaxation sees: a level places a subset
    sum of its replicas' sizes, into the room the GPUs hold less a subset sum of the levels above that is at least
    what those were held to. Subset sums are bitsets (bit k: k units reachable), kept while the room is small enough."""

    def __init__(self, built: _Model) -> None:
        self.room = built.room
        self.usable = built.room <= SUBSET_SUM_LIMIT * 4
        self.sizes: dict[tuple[int, bool], list[int]] = {}
        for level, size, count in built.copies:
            self.sizes.setdefault(level, []).extend([size] * count)
        self.above = 1  # subset sums of the levels solved so far

    def next(self, level: tuple[int, bool], held: int) -> int | None:
        """The bound for `level`, when the levels above hold at least `held` units; None when not computed."""
        if not self.usable:
            return None
        mask = (1 << (self.room + 1)) - 1
        here = _subset_sums(self.sizes.get(level, []), mask)
        above = self.above >> held
        lowest = held + (above & -above).bit_length() - 1 if above else self.room
        self.above = _subset_sums(self.sizes.get(level, []), mask, start=self.above)
        return (here & ((1 << max(0, self.room - lowest + 1)) - 1)).bit_length() - 1


def _fill_at_floor(problem: Problem, assignment) -> bool:
    """Whether the fullest GPU's fill equals the least any placement of the same VRAM can have: the average fill."""
    loads = gpu_loads(problem, assignment)
    fullest = max((fill(load, gpu.capacity) for load, gpu in zip(loads, problem.bins)), default=0)
    return fullest <= fill(sum(loads), sum(gpu.capacity for gpu in problem.bins))


def _subset_sums(sizes: list[int], mask: int, start: int = 1) -> int:
    sums = start
    for size in sizes:
        sums = (sums | (sums << size)) & mask
    return sums


def solve_exact(
    problem: Problem,
    *,
    budget: float,
    seed: int = 0,
    hint: Assignment | None = None,
    forced: Collection[int] | None = None,
    first: float = 0.5,
    search: float = 0.25,
) -> ExactResult | None:
    """Solve `problem` stage by stage within `budget` deterministic seconds in all; None when no solution was found
    (only possible without a hint). `forced`: the displaced running replicas (computed when not given). `first` and
    `search`: the shares of a level's allowance for the first solve and for the neighbourhood search after it."""
    if forced is None:
        forced = displaced(problem)
    built = _Model(problem, forced)
    model = built.model
    if hint is not None:
        built.hint(hint)
    stages: list[tuple[str, object, tuple[int, bool] | None]] = []
    for key in level_keys(problem):
        terms = [size // built.unit * v for level, size, v in built.placed_terms if level == key]
        stages.append(("level", sum(terms), key))
    if built.stay:
        stages.append(("stays", sum(built.stay.values()), None))
    if problem.policy == Placement.BINPACK:
        stages.append(("gpus", -sum(built.used.values()) if built.used else 0, None))
    else:
        top = model.new_int_var(0, PER_MILLE, "fullest")
        for b, members in enumerate(built.on_bin):
            cap = problem.bins[b].capacity
            if members and cap > 0:
                load = sum(vram // built.unit * v for vram, v, _ in members)
                model.add(PER_MILLE * built.unit * load <= top * cap)
        stages.append(("fill", -top, None))
    kept = [problem.items[i].keep * v for i, v in built.stay.items() if problem.items[i].keep]
    if kept:  # a tie-break beyond the objective: replicas worth keeping (recently used) stay first
        stages.append(("keep", sum(kept), None))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.random_seed = seed
    left = budget
    bounds = _LevelBound(built)
    held = 0  # units the levels above hold at least
    optimal = levels_optimal = True
    gap_bytes = gap_gpus = gap_stays = gap_fill = 0
    assignment = None
    finished = True
    for n, (kind, expr, level) in enumerate(stages):
        if isinstance(expr, int):
            if kind == "level":
                bounds.next(level, held)  # a level with nothing to place still counts among those above
            continue  # nothing to decide at this stage
        if kind == "fill" and assignment is not None and _fill_at_floor(problem, assignment):
            # The fullest GPU is as full as the average (every GPU full, say): no placement of as much VRAM does
            # better, so the search is not run.
            model.add(expr >= -max(fill(load, gpu.capacity) for load, gpu in zip(gpu_loads(problem, assignment),
                                                                                  problem.bins)))
            continue
        # Most stages are proven at once; the hard one may use all but a tenth of the budget per stage still to come.
        later = len(stages) - n - 1
        if kind == "level":
            cap = bounds.next(level, held)
            if cap is not None:
                model.add(expr <= cap)
        model.maximize(expr)
        allowance = max(left - budget * later / 10, budget / 20, 1e-3)
        # A level (or the spread policy's fill) the first share of its allowance does not prove is searched around its
        # best placement (`_Search`), which finds better ones far sooner than the tree search; what is left then goes
        # to the proof.
        searched = kind in ("level", "fill")
        solver.parameters.max_deterministic_time = allowance * first if searched else allowance
        status = solver.solve(model)
        left -= solver.deterministic_time
        if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
            if assignment is None and hint is None:
                return None
            if kind == "keep":
                break  # the placement found is as good by the objective: the tie-break alone ran out of budget
            optimal = finished = False
            levels_optimal = levels_optimal and kind != "level"
            break
        value, bound, assignment = round(solver.objective_value), solver.best_objective_bound, built.read(solver)
        if searched and status == cp_model.FEASIBLE:
            found = _Search(built, seed=seed).run(solver, budget=allowance * search, fullest=kind == "fill")
            left -= found.spent
            if found.value > value and found.assignment is not None:
                value, assignment = found.value, found.assignment
            model.add(expr >= value)
            built.hint(assignment)
            solver.parameters.max_deterministic_time = max(allowance * (1 - first) - found.spent, 1e-3)
            again = solver.solve(model)
            left -= solver.deterministic_time
            if again in (cp_model.OPTIMAL, cp_model.FEASIBLE):
                status, value, assignment = again, round(solver.objective_value), built.read(solver)
                bound = min(bound, solver.best_objective_bound)
        if status != cp_model.OPTIMAL and kind != "keep":
            optimal = False
            slack = max(0, math.floor(bound + 1e-6) - value)
            if kind == "level":
                levels_optimal = False
                gap_bytes += slack * built.unit
            elif kind == "gpus":
                gap_gpus = slack
            elif kind == "stays":
                gap_stays = slack
            elif kind == "fill":
                gap_fill = slack
        model.add(expr >= value)
        if kind == "level":
            held += value
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
        gap_fill=gap_fill,
        finished=finished,
    )
