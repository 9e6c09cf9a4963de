"""A bound on each level's placed VRAM from the configuration LP (column generation with HiGHS).

A column is what one GPU of one card size could hold at once (a pattern: how many replicas of each kind); the LP
picks at most as many patterns per card size as there are such GPUs, uses each kind at most as often as it has
replicas, keeps the levels above at least at what a placement gives them, and maximises the level's VRAM. Patterns
are priced by a bounded knapsack over sizes rounded down to `grid` bytes (every real pattern stays feasible, so the
bound stays valid), and whatever the pricing still finds when the rounds run out is added as Farley's bound. Gangs
count once on each of their GPUs and spread, stability and preemption are left out: all relaxations, so the bound
holds for every placement the objective allows. Far tighter than the room bounds where free room is split into
pieces too small for what is left out, because each GPU's room is only as usable as the kinds left to fill it.
"""

from __future__ import annotations

from collections.abc import Sequence

import highspy
import numpy as np

from reconciler.desired import Spread
from reconciler.packer.problem import Problem

GRID = 64 << 20  # sizes and capacities are rounded down to this (bytes) in the pricing
_ROUNDS = 60  # pricing rounds per level
_EPS = 1e-9


def level_bounds(problem: Problem, assignment, keys: Sequence[tuple[int, bool]], fits_somewhere) -> list[int]:
    """Per level of `keys` (highest first), an upper bound on its placed bytes when the levels above place at least
    what `assignment` gives them (whose GPUs are the first patterns, so the LP starts feasible)."""
    placed: dict = {}
    for item, where in zip(problem.items, assignment):
        if where:
            placed[item.level] = placed.get(item.level, 0) + item.size
    scale = float(1 << 30)
    caps: dict[int, int] = {}
    for b in problem.bins:
        caps[b.capacity] = caps.get(b.capacity, 0) + 1
    kinds: dict[tuple, list] = {}  # (level, vram, model of spread: gpu or "") -> [copies, per-GPU limit]
    for item in problem.items:
        if not fits_somewhere(item):
            continue
        key = (item.level, item.vram, item.model if item.spread == Spread.GPU else "")
        entry = kinds.setdefault(key, [0, 0])
        entry[0] += item.gpus
        entry[1] = 1 if key[2] else entry[1] + 1
    on_gpu: list[dict] = [{} for _ in problem.bins]
    for item, where in zip(problem.items, assignment):
        key = (item.level, item.vram, item.model if item.spread == Spread.GPU else "")
        for b in where or ():
            if key in kinds:
                on_gpu[b][key] = on_gpu[b].get(key, 0) + 1
    patterns = [(problem.bins[b].capacity, counts) for b, counts in enumerate(on_gpu)]
    order = list(kinds)
    out = []
    for k, key in enumerate(keys):
        above = keys[:k]
        members = [t for t in order if t[0] in above or t[0] == key]
        out.append(_solve(members, kinds, caps, above, key, placed, scale, patterns))
    return out


def _solve(members, kinds, caps, above, key, placed, scale, patterns) -> int:
    if not any(t[0] == key for t in members):
        return 0
    classes = sorted(caps)
    rows_class = {c: r for r, c in enumerate(classes)}
    rows_kind = {t: len(classes) + r for r, t in enumerate(members)}
    rows_above = {lv: len(classes) + len(members) + r for r, lv in enumerate(above)}
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("threads", 1)
    inf = highspy.kHighsInf
    for c in classes:
        h.addRow(-inf, float(caps[c]), 0, np.array([], dtype=np.int32), np.array([], dtype=float))
    for t in members:
        h.addRow(-inf, float(kinds[t][0]), 0, np.array([], dtype=np.int32), np.array([], dtype=float))
    for lv in above:
        h.addRow(placed.get(lv, 0) / scale, inf, 0, np.array([], dtype=np.int32), np.array([], dtype=float))

    def add(c: int, counts: dict) -> None:
        index = [rows_class[c]]
        value = [1.0]
        weight = 0.0
        per_level: dict = {}
        for t, n in counts.items():
            if n <= 0:
                continue
            index.append(rows_kind[t])
            value.append(float(n))
            if t[0] == key:
                weight += n * t[1] / scale
            else:
                per_level[t[0]] = per_level.get(t[0], 0.0) + n * t[1] / scale
        for lv, v in per_level.items():
            index.append(rows_above[lv])
            value.append(v)
        h.addCol(-weight, 0.0, inf, len(index), np.array(index, dtype=np.int32), np.array(value, dtype=float))

    # The placement's own GPUs make the master feasible; each kind alone, as many as fit one GPU, helps it along.
    wanted = set(members)
    for c, counts in patterns:
        add(c, {t: n for t, n in counts.items() if t in wanted})
    for c in classes:
        for t in members:
            if t[1] <= c:
                add(c, {t: min(kinds[t][1], c // t[1])})
    bound = None
    for _ in range(_ROUNDS):
        h.run()
        if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
            return int(sum(kinds[t][0] * t[1] for t in members if t[0] == key))
        value = -h.getInfo().objective_function_value
        duals = h.getSolution().row_dual
        farley, added = 0.0, False
        for c in classes:
            profit = {t: (t[1] / scale if t[0] == key else 0.0) + duals[rows_kind[t]]
                      + (duals[rows_above[t[0]]] * t[1] / scale if t[0] in rows_above else 0.0)
                      for t in members if t[1] <= c}
            best, counts = _knapsack(c, {t: p for t, p in profit.items() if p > _EPS}, kinds)
            reduced = best + duals[rows_class[c]]
            if reduced > 1e-7:
                add(c, counts)
                added = True
                farley += caps[c] * reduced
        bound = value + farley
        if not added:
            break
    assert bound is not None
    return int(bound * scale * (1 + 1e-6)) + (1 << 20)  # LP tolerances: a margin far above them


def _knapsack(capacity: int, profit: dict, kinds: dict) -> tuple[float, dict]:
    """The most profit one GPU of `capacity` can hold, sizes rounded down to GRID; and the counts that give it."""
    room = capacity // GRID
    best = np.zeros(room + 1)
    chunks = []
    for t, p in profit.items():
        size = t[1] // GRID
        left = min(kinds[t][1], capacity // t[1])
        step = 1
        while left > 0:
            take = min(step, left)
            w = size * take
            if w == 0:
                best += p * take
                chunks.append((t, take, None))
            elif w <= room:
                shifted = np.full(room + 1, -np.inf)
                shifted[w:] = best[:-w] + p * take
                chose = shifted > best
                best = np.where(chose, shifted, best)
                chunks.append((t, take, (w, chose)))
            left -= take
            step *= 2
    at = int(np.argmax(best))
    total = float(best[at])
    counts: dict = {}
    for t, take, rec in reversed(chunks):
        if rec is None:
            counts[t] = counts.get(t, 0) + take
            continue
        w, chose = rec
        if chose[at]:
            counts[t] = counts.get(t, 0) + take
            at -= w
    return total, counts
