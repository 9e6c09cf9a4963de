"""The cheapest node counts by an arc-flow relaxation of the packing: a lower bound, and the next choice to check.

One graph per kind of node and GPU size (Valério de Carvalho's arc-flow): a path from 0 to the GPU's capacity is
what one GPU holds (arcs are slices of replicas, largest first, so each pattern is one path). Flows are continuous;
node counts and the gangs of each model on each kind are integers, so HiGHS branches on few variables; the flows' LP
is the configuration LP of each GPU size, much tighter than VRAM totals. Dropped, so that the relaxation stays valid: which GPUs of one
node a gang's slices share and the one replica of a spread model per GPU on a path; kept: a node holds no more
replicas of a model than it can by itself (`Group.hosts`), which is also what keeps spread over nodes. Sizes are
rounded down and capacities too, so every real placement is a flow.

`Relaxation.next()` returns the cheapest counts not yet ruled out; `rule_out(counts)` removes those counts and
every choice with no more of any kind (fewer nodes hold no more), `exclude(counts)` exactly one choice. With
`fixed`, the counts are given and a solution says how many replicas of each label go to each kind (`wholes`), which
`forbid_share` can rule out for a kind (`patterns.py`). Limits are HiGHS's node and iteration counts, never the
clock, so the same request gives the same answers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import reduce

import highspy
import numpy as np

from reconciler.advise.kinds import Group, Kind
from reconciler.desired import Spread

Counts = tuple[int, ...]
_GRID = 400  # a graph has at most about this many positions: sizes are rounded down to a coarser unit beyond it


@dataclass(frozen=True, slots=True)
class Next:
    counts: Counts | None  # None: no choice left (or the limit was hit before one was found: `exhausted` False)
    cost: int
    bound: int  # no choice left costs less
    exhausted: bool  # proven: no choice is left


@dataclass(frozen=True, slots=True)
class _Label:
    """Replicas alike for the flow: one size, one gang width, and one model where spread rules apply."""

    group: Group  # the merged group (its items are all the label's replicas)
    slices: int  # slices to place: replicas x GPUs each


def _labels(groups: tuple[Group, ...]) -> list[_Label]:
    merged: dict[tuple, list[Group]] = {}
    for g in groups:
        key = (g.vram, g.gpus, g.spread, g.model if g.spread != Spread.NONE else "")
        merged.setdefault(key, []).append(g)
    out = []
    for (vram, gpus, spread, model), members in merged.items():
        items = tuple(i for g in members for i in g.items)
        group = Group(model=model or members[0].model, items=items, vram=vram, gpus=gpus, spread=spread)
        out.append(_Label(group=group, slices=len(items) * gpus))
    # Largest first: the order arcs take along a path.
    out.sort(key=lambda lab: (-lab.group.vram, -lab.group.gpus, lab.group.model))
    return out


class _Model:
    """Columns and rows gathered, then handed to HiGHS at once."""

    def __init__(self) -> None:
        self.cost: list[float] = []
        self.lo: list[float] = []
        self.hi: list[float] = []
        self.integer: list[int] = []
        self.rows: list[tuple[list[int], list[float], float, float]] = []

    def col(self, *, cost: float = 0.0, lo: float = 0.0, hi: float = highspy.kHighsInf, integer: bool = False) -> int:
        self.cost.append(cost)
        self.lo.append(lo)
        self.hi.append(hi)
        self.integer.append(1 if integer else 0)
        return len(self.cost) - 1

    def row(self, terms: dict[int, float], lo: float, hi: float) -> None:
        idx = sorted(terms)
        self.rows.append((idx, [terms[i] for i in idx], lo, hi))


def _arcs(cap: int, sizes: list[tuple[int, int, int]]) -> list[tuple[int, int, int]]:
    """Arcs (from, to, label) of one GPU's graph: `sizes` are (label, size, most per GPU), largest first; a
    position is reached by labels no later than the arc's, so every pattern is a path in label order."""
    reach = {0}
    arcs: set[tuple[int, int, int]] = set()
    for label, size, most in sizes:
        if size <= 0 or size > cap:
            continue
        new = set()
        for d in sorted(reach):
            at = d
            for _ in range(most):
                if at + size > cap:
                    break
                arcs.add((at, at + size, label))
                at += size
                new.add(at)
        reach |= new
    return sorted(arcs)


class Relaxation:
    def __init__(self, kinds: tuple[Kind, ...], groups: tuple[Group, ...], uppers: Counts, tolerate: int, *,
                 max_nodes: int = 20_000, max_columns: int = 60_000,
                 fixed: bool = False, max_iterations: int = 1_000_000) -> None:
        """`uppers`: the most nodes of each kind; with `fixed`, exactly that many (does this choice fit?)."""
        self.kinds, self.uppers, self.max_nodes, self.max_iterations = kinds, uppers, max_nodes, max_iterations
        labels = _labels(groups)
        caps = sorted({c for kind in kinds for c in kind.caps if c > 0})
        unit = reduce(math.gcd, [lab.group.vram for lab in labels] + caps, 0) or 1
        if caps and caps[-1] // unit > _GRID:
            unit = -(-caps[-1] // _GRID)
        m = _Model()
        self.labels = labels
        self.unit = unit
        # Per graph: (kind, GPU capacity, GPUs of it per node, its end position, [(from, to, label, column)]),
        # label -1 for a loss arc: what a solution's flows are read back by (`patterns.py`).
        self.graphs: list[tuple[int, int, int, int, list[tuple[int, int, int, int]]]] = []
        self.wholes: dict[tuple[int, int], int] = {}  # (label, kind) -> the column of its replicas on that kind
        self.x = [m.col(cost=kind.price, lo=upper if fixed else len(kind.kept) if kind.fixed else 0,
                        hi=len(kind.kept) if kind.fixed else upper, integer=True)
                  for kind, upper in zip(kinds, uppers)]
        demand: list[dict[int, float]] = [{} for _ in labels]
        for k, kind in enumerate(kinds):
            if uppers[k] == 0:
                continue
            on_kind: list[dict[int, float]] = [{} for _ in labels]
            hosts = [lab.group.hosts(kind.caps) for lab in labels]
            for cap in sorted(set(kind.caps)):
                per_node = kind.caps.count(cap)
                sizes = [(li, lab.group.vram // unit,
                          1 if lab.group.spread != Spread.NONE else min(lab.slices, cap // lab.group.vram))
                         for li, lab in enumerate(labels) if hosts[li] and lab.group.vram <= cap]
                size = cap // unit
                arcs = _arcs(size, sizes)
                if not arcs:
                    continue
                # One balance row per position; the source's surplus is the GPUs used, at most those bought.
                used = m.col()
                balance: dict[int, dict[int, float]] = {0: {used: -1.0}, size: {used: 1.0}}
                recorded: list[tuple[int, int, int, int]] = []
                self.graphs.append((k, cap, per_node, size, recorded))
                for a, b, li in arcs:
                    f = m.col()
                    recorded.append((a, b, li, f))
                    balance.setdefault(a, {})[f] = 1.0
                    balance.setdefault(b, {})[f] = -1.0
                    demand[li][f] = 1.0
                    on_kind[li][f] = 1.0
                for d in sorted(balance):
                    if d not in (0, size):  # whatever room is left over: a loss arc to the end
                        loss = m.col()
                        recorded.append((d, size, -1, loss))
                        balance[d][loss] = 1.0
                        balance[size][loss] = balance[size].get(loss, 0.0) - 1.0
                for d in sorted(balance):
                    m.row(balance[d], 0.0, 0.0)
                m.row({used: 1.0, self.x[k]: -float(per_node)}, -highspy.kHighsInf, 0.0)
            for li, lab in enumerate(labels):
                if not on_kind[li]:
                    continue
                # Whole replicas on each kind (a gang's slices stay together), no more than a node holds by itself
                # (spread over nodes: one).
                whole = m.col(hi=float(lab.group.count), integer=fixed or lab.group.gpus > 1)
                self.wholes[(li, k)] = whole
                on_kind[li][whole] = -float(lab.group.gpus)
                m.row(on_kind[li], 0.0, 0.0)
                m.row({whole: 1.0, self.x[k]: -float(hosts[li])}, -highspy.kHighsInf, 0.0)
        for li, lab in enumerate(labels):
            if lab.group.vram // unit > 0:
                m.row(demand[li], float(lab.slices), highspy.kHighsInf)
            if lab.group.spread == Spread.NODE:
                hosting = {self.x[k]: 1.0 for k, kind in enumerate(kinds) if lab.group.hosts(kind.caps)}
                m.row(hosting, float(lab.group.count + tolerate), highspy.kHighsInf)
        self.done = False
        self.iterations = 0  # simplex iterations of every solve so far: the work done, counted the same everywhere
        self.built = len(m.cost) <= max_columns
        if self.built:
            self.h = self._build(m)

    def _build(self, m: _Model) -> highspy.Highs:
        h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("presolve", "off")  # measured: the model is small, presolve costs more than it saves
        h.setOptionValue("mip_max_nodes", self.max_nodes)
        h.setOptionValue("simplex_iteration_limit", self.max_iterations)
        h.setOptionValue("mip_rel_gap", 0.0)
        h.setOptionValue("mip_abs_gap", 0.999)  # costs are integers
        n = len(m.cost)
        h.addVars(n, np.array(m.lo, dtype=np.float64), np.array(m.hi, dtype=np.float64))
        h.changeColsCost(n, np.arange(n, dtype=np.int32), np.array(m.cost, dtype=np.float64))
        ints = np.array([i for i, v in enumerate(m.integer) if v], dtype=np.int32)
        h.changeColsIntegrality(len(ints), ints, np.array([highspy.HighsVarType.kInteger] * len(ints)))
        starts, index, value, lower, upper = [], [], [], [], []
        for idx, vals, lo, hi in m.rows:
            starts.append(len(index))
            index += idx
            value += vals
            lower.append(lo)
            upper.append(hi)
        h.addRows(len(lower), np.array(lower, dtype=np.float64), np.array(upper, dtype=np.float64), len(index),
                  np.array(starts, dtype=np.int32), np.array(index, dtype=np.int32),
                  np.array(value, dtype=np.float64))
        return h

    @property
    def size(self) -> int:
        return self.h.getNumCol()

    def next(self) -> Next:
        if self.done:
            return Next(counts=None, cost=0, bound=0, exhausted=True)
        h = self.h
        # What is left of the budget, so that one solve cannot overrun it by a whole budget more.
        h.setOptionValue("simplex_iteration_limit", max(1, self.max_iterations - self.iterations))
        h.run()
        status = h.getModelStatus()
        info = h.getInfo()
        self.iterations += max(0, info.simplex_iteration_count)
        bound = int(math.ceil(info.mip_dual_bound - 1e-6)) if math.isfinite(info.mip_dual_bound) else 0
        if status == highspy.HighsModelStatus.kInfeasible:
            return Next(counts=None, cost=0, bound=0, exhausted=True)
        if info.primal_solution_status != 2:
            return Next(counts=None, cost=0, bound=bound, exhausted=False)
        values = h.getSolution().col_value
        self.values = values
        counts = tuple(int(round(values[c])) for c in self.x)
        cost = sum(kind.price * n for kind, n in zip(self.kinds, counts))
        if status == highspy.HighsModelStatus.kOptimal:
            bound = cost
        return Next(counts=counts, cost=cost, bound=min(bound, cost), exhausted=False)

    def _indicator(self, k: int, at_least: int) -> int:
        """A binary that may be 1 only when kind k has at least `at_least` nodes."""
        h = self.h
        h.addCol(0.0, 0.0, 1.0, 0, np.array([], dtype=np.int32), np.array([], dtype=np.float64))
        b = h.getNumCol() - 1
        h.changeColIntegrality(b, highspy.HighsVarType.kInteger)
        h.addRow(0.0, highspy.kHighsInf, 2, np.array([self.x[k], b], dtype=np.int32),
                 np.array([1.0, -float(at_least)], dtype=np.float64))
        return b

    def _at_most(self, k: int, at_most: int) -> int:
        """A binary that may be 1 only when kind k has at most `at_most` nodes."""
        h = self.h
        h.addCol(0.0, 0.0, 1.0, 0, np.array([], dtype=np.int32), np.array([], dtype=np.float64))
        b = h.getNumCol() - 1
        h.changeColIntegrality(b, highspy.HighsVarType.kInteger)
        big = float(self.uppers[k])
        # x_k <= at_most + (upper - at_most) (1 - b)
        h.addRow(-highspy.kHighsInf, big, 2, np.array([self.x[k], b], dtype=np.int32),
                 np.array([1.0, big - at_most], dtype=np.float64))
        return b

    def forbid_share(self, k: int, share: dict[int, int]) -> None:
        """Kind k's nodes cannot hold `share` (replicas per label), nor any share with at least as many of each."""
        h = self.h
        out = []
        for li, n in share.items():
            col = self.wholes[(li, k)]
            count = self.labels[li].group.count
            h.addCol(0.0, 0.0, 1.0, 0, np.array([], dtype=np.int32), np.array([], dtype=np.float64))
            b = h.getNumCol() - 1
            h.changeColIntegrality(b, highspy.HighsVarType.kInteger)
            # b = 1: fewer than n of this label on kind k.
            h.addRow(-highspy.kHighsInf, float(count), 2, np.array([col, b], dtype=np.int32),
                     np.array([1.0, float(count - n + 1)], dtype=np.float64))
            out.append(b)
        self._any(out)

    def _any(self, binaries: list[int]) -> None:
        if not binaries:  # nothing can differ: no choice is left
            self.done = True
            return
        self.h.addRow(1.0, highspy.kHighsInf, len(binaries), np.array(binaries, dtype=np.int32),
                      np.ones(len(binaries), dtype=np.float64))

    def rule_out(self, counts: Counts) -> None:
        """`counts` does not fit, and nor does any choice with no more nodes of any kind."""
        self._any([self._indicator(k, n + 1) for k, n in enumerate(counts)
                   if not self.kinds[k].fixed and n < self.uppers[k]])

    def exclude(self, counts: Counts) -> None:
        """Only `counts` itself is left out (for the runner-up: a different multiset)."""
        out = [self._indicator(k, n + 1) for k, n in enumerate(counts)
               if not self.kinds[k].fixed and n < self.uppers[k]]
        out += [self._at_most(k, n - 1) for k, n in enumerate(counts) if not self.kinds[k].fixed and n > 0]
        self._any(out)
