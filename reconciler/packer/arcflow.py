"""The exact arc-flow model (Valério de Carvalho) for repacking single-GPU replicas, solved as a MILP with HiGHS.

A GPU's contents are a path through a graph whose nodes are filled amounts (in units of the sizes' greatest common
divisor): an item arc adds one replica of a size, a loss arc skips to the next node, and an exit arc closes a GPU of
one kind (a capacity and a cost) and returns to node 0. Integer flows that cover each size's demand are a packing;
the objective counts GPUs put into use. Item arcs leave a node only for sizes no larger than those that can reach it
(the classic symmetry reduction), and a size is chained at most as many times as it has replicas.

Which replicas take part (`free`) is the caller's choice; the others stay where they are and their GPUs offer what
they leave, at no cost (already in use). Deterministic: one thread, a fixed seed, and a budget in branch-and-bound
nodes. A wall-clock safety cap exists only against pathological solves; hitting it discards the result and is
reported, so a plan never depends on the machine's speed unless that rare report says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from math import ceil, floor, gcd

import highspy
import numpy as np

from reconciler.desired import Spread
from reconciler.packer.problem import Problem


@dataclass(frozen=True, slots=True)
class ArcflowResult:
    assignment: tuple[tuple[int, ...] | None, ...]
    gpus: int  # GPUs in use, counting those of the fixed replicas
    lower_bound: int  # GPUs any repacking of the free replicas needs, the fixed ones staying; 0 when not solved
    optimal: bool  # the MILP proved its optimum (for the free replicas, given the fixed ones)
    status: str  # "optimal", "proven by the LP bound", "budget", "time cap", "too large", "no improvement", ...


_EPS = 1e-6  # flows below this are numerical noise
_Pattern = tuple[int, tuple[int, ...]]  # one GPU's contents: (kind index, sizes in units, largest first)


@dataclass(frozen=True, slots=True)
class _Options:
    budget: int  # branch-and-bound nodes per MILP
    seed: int
    cap: float  # wall-clock safety cap per solve, seconds


@dataclass(frozen=True, slots=True)
class _Solved:
    flows: tuple[list[float], list[float], list[float]] | None  # item arcs, loss arcs, exits per kind
    objective: float
    status: str


@dataclass(frozen=True, slots=True)
class _Kind:
    room: int  # capacity in units
    cost: int  # 1 for a GPU that is empty without the free replicas, 0 for one already in use
    bins: tuple[int, ...]  # concrete bins of this kind, lowest index first


@dataclass(frozen=True, slots=True)
class _Graph:
    nodes: list[int]  # filled amounts, ascending
    item_arcs: list[tuple[int, int]]  # (size, tail amount), sizes descending then tails ascending
    loss_arcs: list[tuple[int, int]]  # (tail, head) between consecutive nodes


def repack(
    problem: Problem,
    assignment,
    *,
    free: list[int],
    max_nodes: int,
    max_arcs: int,
    node_budget: int,
    dive_tries: int = 4,
    seed: int = 0,
    safety_seconds: float = 60.0,
) -> ArcflowResult:
    """Repack the `free` replicas (placed, single-GPU) into the room the others leave, on as few GPUs as possible.

    The LP relaxation gives a bound (the arc-flow bound is famously tight). A dive on it finds the packing: the flow,
    decomposed into GPU contents, is rounded down (or, when no content has a whole GPU's worth, its heaviest one is
    taken), fixed, and the LP re-solved from its last basis for the rest. When every choice would miss the bound,
    the replicas left are solved as a MILP within the node budget. The heuristic's `assignment` comes back
    unchanged (with a status saying why) when the graph is over the limits or nothing better is found."""
    items, bins = problem.items, problem.bins
    current_gpus = len({b for where in assignment if where for b in where})
    if not free:
        return ArcflowResult(tuple(assignment), current_gpus, 0, False, "nothing to repack")
    free_set = set(free)
    unit = 0
    for i in free:
        unit = gcd(unit, items[i].vram)
    load = [0] * len(bins)
    for i, where in enumerate(assignment):
        if where and i not in free_set:
            for b in where:
                load[b] += items[i].vram
    used_fixed = {b for i, where in enumerate(assignment) if where and i not in free_set for b in where}
    kinds = _kinds(bins=[bin_.capacity for bin_ in bins], load=load, used=used_fixed, unit=unit)
    demand: dict[int, int] = {}
    for i in free:
        demand[items[i].vram // unit] = demand.get(items[i].vram // unit, 0) + 1
    current_cost = current_gpus - len(used_fixed)

    def unchanged(status: str, bound: int = 0, optimal: bool = False) -> ArcflowResult:
        return ArcflowResult(tuple(assignment), current_gpus, bound, optimal, status)

    graph = _build(demand=demand, exits=sorted({k.room for k in kinds}), max_nodes=max_nodes, max_arcs=max_arcs)
    if graph is None:
        return unchanged("too large")
    options = _Options(budget=node_budget, seed=seed, cap=safety_seconds)
    relaxation = _Model(graph, demand=demand, kinds=kinds, options=options)
    relaxed = relaxation.solve()
    if relaxed.flows is None:
        return unchanged(relaxed.status)
    bound = ceil(relaxed.objective - _EPS)
    gpus_bound = bound + len(used_fixed)
    if current_cost <= bound:
        return unchanged("proven by the LP bound", gpus_bound, optimal=True)
    fixed, complete = _dive(relaxation, first=relaxed, target=bound, tries=dive_tries)
    best, status = (fixed, "optimal") if complete else (None, "budget")
    if not complete:
        relaxation.make_integer()  # what the dive left is small: solve it exactly, within the node budget
        rest = relaxation.solve()
        status = rest.status
        if rest.flows is not None:
            best = fixed + [p for p, w in _paths(graph, kinds=kinds, flows=rest.flows) for _ in range(round(w))]
    if best is not None and _cost(best, kinds) >= current_cost:
        best = None
    if best is None:
        return unchanged(status if status == "time cap" else "no improvement", gpus_bound)
    out = _assign(assignment=assignment, free=free, unit=unit, items=items, kinds=kinds, patterns=best)
    gpus = len({b for where in out if where for b in where})
    optimal = _cost(best, kinds) <= bound
    return ArcflowResult(out, gpus, gpus_bound, optimal, "optimal" if optimal else status)


def _dive(model: _Model, *, first: _Solved, target: int, tries: int) -> tuple[list[_Pattern], bool]:
    """Fix GPU contents round by round while the re-solved LP's bound stays within `target`. A round takes every
    content the flow carries at least once, or the heaviest one when that would miss the target or there is none
    (the next heaviest, up to `tries`, when that misses too). Returns the fixed contents and whether they hold every
    replica; when not, the model is left at the last state whose bound meets the target."""
    patterns: list[_Pattern] = []
    solved = first
    while any(model.left.values()):
        assert solved.flows is not None
        paths = _paths(model.graph, kinds=model.kinds, flows=solved.flows)
        whole = [pattern for pattern, weight in paths for _ in range(floor(weight + _EPS))]
        ranked = sorted(range(len(paths)), key=lambda n: (-paths[n][1], n))
        for fixed in ([whole] if whole else []) + [[paths[n][0]] for n in ranked[:tries]]:
            model.fix(fixed)
            if not any(model.left.values()):
                return patterns + fixed, True
            attempt = model.solve()
            cost = _cost(patterns + fixed, model.kinds)
            if attempt.flows is not None and cost + ceil(attempt.objective - _EPS) <= target:
                solved = attempt
                break
            model.fix(fixed, undo=True)
        else:
            return patterns, False
        patterns.extend(fixed)
    return patterns, True


def _cost(patterns: list[_Pattern], kinds: list[_Kind]) -> int:
    return sum(kinds[k].cost for k, _ in patterns)


def _kinds(*, bins: list[int], load: list[int], used: set[int], unit: int) -> list[_Kind]:
    groups: dict[tuple[int, int], list[int]] = {}
    for b, capacity in enumerate(bins):
        room = (capacity - load[b]) // unit  # what a multiple of the unit can use of it
        if room > 0:
            groups.setdefault((room, 0 if b in used else 1), []).append(b)
    return [_Kind(room, cost, tuple(members)) for (room, cost), members in sorted(groups.items())]


def _build(*, demand: dict[int, int], exits: list[int], max_nodes: int, max_arcs: int) -> _Graph | None:
    """Nodes reachable by adding sizes in decreasing order (each at most its demand in a row), plus the exits."""
    top = exits[-1]
    reach = {0}
    item_arcs: list[tuple[int, int]] = []
    for size in sorted(demand, reverse=True):
        tails: set[int] = set()
        layer = {d for d in reach if d + size <= top}
        for _ in range(demand[size]):
            layer -= tails  # reached earlier in the chain: its successors are already on the way
            if not layer:
                break
            tails |= layer
            layer = {d + size for d in layer if d + 2 * size <= top}
        reach |= {d + size for d in tails}
        item_arcs.extend((size, d) for d in sorted(tails))
        if len(reach) > max_nodes or len(item_arcs) > max_arcs:
            return None
    nodes = sorted(reach | set(exits))
    if len(nodes) > max_nodes or len(item_arcs) + 2 * len(nodes) > max_arcs:
        return None
    loss_arcs = list(zip(nodes, nodes[1:]))
    return _Graph(nodes=nodes, item_arcs=item_arcs, loss_arcs=loss_arcs)


class _Model:
    """The arc-flow model of one graph in HiGHS. Columns: item arcs, loss arcs, one exit arc per kind (from its
    capacity node back to 0). Rows: flow conservation per node, then demand per size (covered at least). `fix`
    takes GPU contents out of the demand and the kinds' counts, so a re-solve starts from the last basis."""

    def __init__(self, graph: _Graph, *, demand: dict[int, int], kinds: list[_Kind], options: _Options) -> None:
        self.graph, self.kinds = graph, kinds
        self.demand = dict(demand)
        self.covered = dict.fromkeys(demand, 0)  # replicas per size in fixed contents (may exceed the demand)
        self.left = dict(demand)  # replicas per size not yet in fixed contents
        self.counts = [len(kind.bins) for kind in kinds]
        row_of = {d: r for r, d in enumerate(graph.nodes)}
        sizes = sorted(demand, reverse=True)
        self.demand_row = {s: len(graph.nodes) + k for k, s in enumerate(sizes)}
        self.arcs_of: dict[int, list[int]] = {}
        starts, index, value, upper, cost = [0], [], [], [], []

        def column(entries: list[tuple[int, float]], hi: float, c: float) -> None:
            for r, v in sorted(entries):
                index.append(r)
                value.append(v)
            starts.append(len(index))
            upper.append(hi)
            cost.append(c)

        for a, (size, tail) in enumerate(graph.item_arcs):
            self.arcs_of.setdefault(size, []).append(a)
            column([(row_of[tail], -1.0), (row_of[tail + size], 1.0), (self.demand_row[size], 1.0)], demand[size], 0)
        for tail, head in graph.loss_arcs:
            column([(row_of[tail], -1.0), (row_of[head], 1.0)], highspy.kHighsInf, 0.0)
        self.first_exit = len(cost)
        for kind, count in zip(kinds, self.counts):
            column([(row_of[kind.room], -1.0), (row_of[0], 1.0)], float(count), float(kind.cost))
        lp = highspy.HighsLp()
        lp.num_col_ = len(cost)
        lp.num_row_ = len(graph.nodes) + len(sizes)
        lp.col_cost_ = np.array(cost, dtype=float)
        lp.col_lower_ = np.zeros(len(cost))
        lp.col_upper_ = np.array(upper, dtype=float)
        lp.row_lower_ = np.array([0.0] * len(graph.nodes) + [float(demand[s]) for s in sizes])
        lp.row_upper_ = np.array([0.0] * len(graph.nodes) + [highspy.kHighsInf] * len(sizes))
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = np.array(starts, dtype=np.int32)
        lp.a_matrix_.index_ = np.array(index, dtype=np.int32)
        lp.a_matrix_.value_ = np.array(value, dtype=float)
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("random_seed", options.seed)
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.999)  # the objective is an integer: a gap under 1 is a proof
        h.setOptionValue("mip_max_nodes", options.budget)
        h.setOptionValue("time_limit", options.cap)
        h.passModel(lp)
        self.h = h

    def solve(self) -> _Solved:
        h = self.h
        h.run()
        status = h.getModelStatus()
        if status == highspy.HighsModelStatus.kTimeLimit:
            return _Solved(None, 0.0, "time cap")
        solution = h.getSolution()
        if not solution.value_valid:
            return _Solved(None, 0.0, "budget")
        x = list(solution.col_value)
        n_item = len(self.graph.item_arcs)
        flows = (x[:n_item], x[n_item : self.first_exit], x[self.first_exit :])
        optimal = status == highspy.HighsModelStatus.kOptimal
        return _Solved(flows, h.getInfo().objective_function_value, "optimal" if optimal else "budget")

    def make_integer(self) -> None:
        n = self.h.getNumCol()
        self.h.changeColsIntegrality(n, np.arange(n, dtype=np.int32), [highspy.HighsVarType.kInteger] * n)

    def fix(self, patterns: list[_Pattern], *, undo: bool = False) -> None:
        step = -1 if undo else 1
        for k, sizes in patterns:
            self.counts[k] -= step
            self.h.changeColBounds(self.first_exit + k, 0.0, float(self.counts[k]))
            for size in sizes:
                self.covered[size] += step
        self.left = {size: max(0, n - self.covered[size]) for size, n in self.demand.items()}
        for size, n in self.left.items():
            self.h.changeRowBounds(self.demand_row[size], float(n), highspy.kHighsInf)
            for a in self.arcs_of.get(size, ()):
                self.h.changeColBounds(a, 0.0, float(n))


def _paths(graph: _Graph, *, kinds: list[_Kind], flows) -> list[tuple[_Pattern, float]]:
    """Split a flow into weighted paths, each a GPU's contents: ((kind index, sizes), weight). Deterministic: at
    each node the largest item arc with flow left, else an exit, else the loss arc; each path takes the smallest
    flow along it, so every round empties at least one arc."""
    out_items: dict[int, list[int]] = {}  # node -> item arc indices, largest size first
    for a, (size, tail) in enumerate(graph.item_arcs):
        out_items.setdefault(tail, []).append(a)
    for arcs in out_items.values():
        arcs.sort(key=lambda a: -graph.item_arcs[a][0])
    loss_of = {tail: a for a, (tail, _) in enumerate(graph.loss_arcs)}
    exits_at: dict[int, list[int]] = {}
    for k, kind in enumerate(kinds):
        exits_at.setdefault(kind.room, []).append(k)
    item_flow, loss_flow, exit_flow = (list(f) for f in flows)
    paths: list[tuple[_Pattern, float]] = []
    while sum(exit_flow) > _EPS:
        node, sizes, used_items, used_loss = 0, [], [], []
        while True:
            arc = next((a for a in out_items.get(node, ()) if item_flow[a] > _EPS), None)
            if arc is not None:
                used_items.append(arc)
                sizes.append(graph.item_arcs[arc][0])
                node += graph.item_arcs[arc][0]
                continue
            k = next((k for k in exits_at.get(node, ()) if exit_flow[k] > _EPS), None)
            if k is not None:
                break
            arc = loss_of.get(node)
            if arc is None or loss_flow[arc] <= _EPS:
                return paths  # only numerical dust is left: what it would carry counts as uncovered
            used_loss.append(arc)
            node = graph.loss_arcs[arc][1]
        weight = min([item_flow[a] for a in used_items] + [loss_flow[a] for a in used_loss] + [exit_flow[k]])
        for a in used_items:
            item_flow[a] -= weight
        for a in used_loss:
            loss_flow[a] -= weight
        exit_flow[k] -= weight
        paths.append(((k, tuple(sizes)), weight))
    return paths


def _assign(*, assignment, free: list[int], unit: int, items, kinds: list[_Kind], patterns) -> tuple:
    """Concrete GPUs for the patterns (per kind, lowest index first, fullest pattern first) and concrete replicas
    for their sizes (per size, in problem order); surplus sizes (demand over-covered) are dropped."""
    waiting: dict[int, list[int]] = {}
    for i in sorted(free):
        waiting.setdefault(items[i].vram // unit, []).append(i)
    out = list(assignment)
    for i in free:
        out[i] = None
    by_kind: dict[int, list[tuple[int, ...]]] = {}
    for k, sizes in patterns:
        by_kind.setdefault(k, []).append(sizes)
    for k, group in sorted(by_kind.items()):
        assert len(group) <= len(kinds[k].bins), "exit flows stay within the GPUs of a kind"
        group.sort(key=lambda sizes: (-sum(sizes), [-s for s in sizes]))
        for b, sizes in zip(kinds[k].bins, group):
            for size in sizes:
                queue = waiting.get(size)
                if queue:
                    out[queue.pop(0)] = (b,)
    assert not any(waiting.values()), "every free replica is covered by the flow"
    return tuple(out)


def eligible(problem: Problem, assignment) -> list[int]:
    """Replicas the arc-flow model may repack: placed by this plan (not running), on one GPU, free of spread, and
    holding some VRAM."""
    return [
        i
        for i, (item, where) in enumerate(zip(problem.items, assignment))
        if where and item.current is None and item.gpus == 1 and item.spread == Spread.NONE and item.vram > 0
    ]

