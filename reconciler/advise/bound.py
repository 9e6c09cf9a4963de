"""A cost no choice can beat, from capacity alone: what the exact model is measured against when it cannot finish,
and all the heuristic has beyond the exact range.

A small integer program over how many nodes of each type: for every replica size v, the VRAM of replicas of at
least v must fit on GPUs of at least v (the packer's `gpus_needed` reasoning by size, in bytes); a model spread over
nodes needs that many nodes that can hold it, and `tolerate` more; replicas too large to share a GPU with each
other (more than half of every GPU that holds them) need a GPU each, the idea of the packer's L2 bound."""

from __future__ import annotations

import math

from ortools.sat.python import cp_model

from reconciler.advise.kinds import Group, Kind
from reconciler.desired import Spread

Counts = tuple[int, ...]


def capacity_bound(kinds: tuple[Kind, ...], groups: tuple[Group, ...], limits: Counts, tolerate: int,
                   budget: float = 1.0) -> int | None:
    """The least cost of node counts that meet the capacity rules; None when none within `limits` do."""
    if not groups:
        return 0
    m = cp_model.CpModel()
    x = [m.new_int_var(len(kind.kept), len(kind.kept) if kind.fixed else limit, f"x{k}")
         for k, (kind, limit) in enumerate(zip(kinds, limits))]
    for v in sorted({g.vram for g in groups}):
        need = sum(g.vram * g.gpus * g.count for g in groups if g.vram >= v)
        offer = [sum(cap for cap in kind.caps if cap >= v) for kind in kinds]
        # Bytes are scaled down (rounding the offer up) so the coefficients stay small; the rule stays valid.
        scale = max(1, need // 1_000_000)
        m.add(sum(-(-o // scale) * xk for o, xk in zip(offer, x)) >= need // scale)
        big = sum(g.gpus * g.count for g in groups if g.vram >= v and all(2 * g.vram > cap for kind in kinds
                                                                              for cap in kind.caps if cap >= g.vram))
        if big:
            m.add(sum(sum(1 for cap in kind.caps if cap >= v) * xk for kind, xk in zip(kinds, x)) >= big)
    for g in groups:
        if g.spread == Spread.NODE:
            m.add(sum(xk for kind, xk in zip(kinds, x) if g.hosts(kind.caps)) >= g.count + tolerate)
    m.minimize(sum(kind.price * xk for kind, xk in zip(kinds, x)))
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    solver.parameters.max_deterministic_time = budget
    status = solver.solve(m)
    if status == cp_model.INFEASIBLE:
        return None
    return int(math.ceil(solver.best_objective_bound - 1e-6))
