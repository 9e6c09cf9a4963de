"""A bound on each level's placed VRAM from the configuration LP (column generation with HiGHS).

A column is what one GPU of one card size could hold at once (a pattern: how many replicas of each kind); the LP
picks at most as many patterns per card size as there are such GPUs, uses each kind at most as often as it has
replicas, keeps the levels above at least at what a placement gives them, and maximises the level's VRAM. Patterns
are priced by a bounded knapsack over sizes rounded down to `GRID` bytes (every real pattern stays feasible, so the
bound stays valid), and whatever the pricing still finds when the rounds run out is added as Farley's bound. Gangs
count once on each of their GPUs and spread, stability and preemption are left out: all relaxations, so the bound
holds for every placement the objective allows. Far tighter than the room bounds where free room is split into
pieces too small for what is left out, because each GPU's room is only as usable as the kinds left to fill it.

`Master` is also the start of the pattern placement (`patterns.py`), which prices with sizes rounded up instead, so
that every pattern it finds really fits.
"""

from __future__ import annotations

from collections.abc import Sequence

import highspy
import numpy as np

from reconciler.desired import Spread
from reconciler.packer.problem import Item, Problem

GRID = 64 << 20  # sizes and capacities are rounded to this (bytes) in the pricing
_ROUNDS = 60  # pricing rounds per level
_EPS = 1e-9
SCALE = float(1 << 30)  # the LP's unit: GiB keeps its coefficients near 1

Kind = tuple  # (level, vram, gpus, model of spread: gpu or "")
Counts = dict  # Kind -> replicas (gang members) of that kind on one GPU


def kind_of(item: Item) -> Kind:
    return (item.level, item.vram, item.gpus, item.model if item.spread == Spread.GPU else "")


def signature(counts: Counts) -> tuple:
    """A pattern's counts as a hashable value (kinds with none left out)."""
    return tuple(sorted((t, n) for t, n in counts.items() if n > 0))


def kinds_of(problem: Problem, fits_somewhere) -> dict[Kind, list[int]]:
    """Per kind of the replicas that fit some node: [gang members in all, the most one GPU can hold]."""
    kinds: dict[Kind, list[int]] = {}
    for item in problem.items:
        if not fits_somewhere(item):
            continue
        key = kind_of(item)
        entry = kinds.setdefault(key, [0, 0])
        entry[0] += item.gpus
        entry[1] = 1 if key[3] else entry[1] + 1  # a gang puts one member on each of its GPUs
    return kinds


def gpu_patterns(problem: Problem, assignment, kinds) -> list[tuple[int, Counts]]:
    """What each GPU of `assignment` holds, as (capacity, counts) over `kinds`."""
    on_gpu: list[Counts] = [{} for _ in problem.bins]
    for item, where in zip(problem.items, assignment):
        key = kind_of(item)
        for b in where or ():
            if key in kinds:
                on_gpu[b][key] = on_gpu[b].get(key, 0) + 1
    return [(problem.bins[b].capacity, counts) for b, counts in enumerate(on_gpu)]


def level_bounds(problem: Problem, assignment, keys: Sequence[tuple[int, bool]], fits_somewhere,
                 memo: dict | None = None) -> list[int]:
    """Per level of `keys` (highest first), an upper bound on its placed bytes when the levels above place at least
    what `assignment` gives them (whose GPUs are the first patterns, so the LP starts feasible). A level's bound
    depends on the placement only through what the levels above hold: `memo` keeps the bounds found for one problem
    by that, so a plan that asks again after its searches solves only the levels whose levels above changed."""
    placed: dict = {}
    for item, where in zip(problem.items, assignment):
        if where:
            placed[item.level] = placed.get(item.level, 0) + item.size
    caps: dict[int, int] = {}
    for b in problem.bins:
        caps[b.capacity] = caps.get(b.capacity, 0) + 1
    kinds = kinds_of(problem, fits_somewhere)
    patterns = gpu_patterns(problem, assignment, kinds)
    out = []
    for k, key in enumerate(keys):
        members = [t for t in kinds if t[0] in keys[:k] or t[0] == key]
        if not any(t[0] == key for t in members):
            out.append(0)
            continue
        seen = (key, tuple(placed.get(lv, 0) for lv in keys[:k]))
        if memo is not None and seen in memo:
            out.append(memo[seen])
            continue
        master = Master(members=members, kinds=kinds, caps=caps, above=keys[:k], key=key, placed=placed,
                        round_up=False)
        for c, counts in patterns:
            master.add(c, counts)
        bound = master.price(_ROUNDS)
        if bound is None:
            out.append(int(sum(kinds[t][0] * t[1] for t in members if t[0] == key)))
        else:
            out.append(int(bound * SCALE * (1 + 1e-6)) + (1 << 20))  # LP tolerances: a margin far above them
        if memo is not None:
            memo[seen] = out[-1]
    return out


class Master:
    """The configuration LP of one level: `members` are the kinds of that level and those above, `placed[lv]` what
    each level above must keep (bytes). With `round_up`, the pricing only finds patterns that really fit."""

    def __init__(self, *, members: list[Kind], kinds: dict[Kind, list[int]], caps: dict[int, int],
                 above: Sequence, key, placed: dict, round_up: bool) -> None:
        self.members, self.kinds, self.caps, self.key = members, kinds, caps, key
        self.round_up = round_up
        self.classes = sorted(caps)
        self.rows_class = {c: r for r, c in enumerate(self.classes)}
        self.rows_kind = {t: len(self.classes) + r for r, t in enumerate(members)}
        self.rows_above = {lv: len(self.classes) + len(members) + r for r, lv in enumerate(above)}
        self.columns: list[tuple[int, Counts]] = []
        self._seen: set = set()
        h = self.highs = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        inf = highspy.kHighsInf
        none = (np.array([], dtype=np.int32), np.array([], dtype=float))
        for c in self.classes:
            h.addRow(-inf, float(caps[c]), 0, *none)
        for t in members:
            h.addRow(-inf, float(kinds[t][0]), 0, *none)
        for lv in above:
            h.addRow(placed.get(lv, 0) / SCALE, inf, 0, *none)
        # Each kind alone, as many as fit one GPU, helps the master along.
        for c in self.classes:
            for t in members:
                if t[1] <= c:
                    self.add(c, {t: min(kinds[t][1], c // t[1])})

    def add(self, capacity: int, counts: Counts) -> None:
        """A column: one GPU of `capacity` holding `counts` (kinds outside `members` are left out of it)."""
        counts = {t: n for t, n in counts.items() if n > 0 and t in self.rows_kind}
        seen = (capacity, signature(counts))
        if seen in self._seen:
            return
        self._seen.add(seen)
        index, value = [self.rows_class[capacity]], [1.0]
        weight, per_level = 0.0, {}
        for t, n in counts.items():
            index.append(self.rows_kind[t])
            value.append(float(n))
            if t[0] == self.key:
                weight += n * t[1] / SCALE
            else:
                per_level[t[0]] = per_level.get(t[0], 0.0) + n * t[1] / SCALE
        for lv, v in per_level.items():
            index.append(self.rows_above[lv])
            value.append(v)
        self.highs.addCol(-weight, 0.0, highspy.kHighsInf, len(index), np.array(index, dtype=np.int32),
                          np.array(value, dtype=float))
        self.columns.append((capacity, counts))

    def price(self, rounds: int) -> float | None:
        """Column generation for up to `rounds` rounds; the LP's value plus Farley's bound on what pricing still
        finds (GiB of the level), or None when the master is infeasible."""
        h = self.highs
        bound = None
        for _ in range(rounds):
            h.run()
            if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                return None
            value = -h.getInfo().objective_function_value
            duals = h.getSolution().row_dual
            farley, added = 0.0, False
            for c in self.classes:
                profit = {t: (t[1] / SCALE if t[0] == self.key else 0.0) + duals[self.rows_kind[t]]
                          + (duals[self.rows_above[t[0]]] * t[1] / SCALE if t[0] in self.rows_above else 0.0)
                          for t in self.members if t[1] <= c}
                best, counts = knapsack(c, {t: p for t, p in profit.items() if p > _EPS}, self.kinds,
                                        round_up=self.round_up)
                reduced = best + duals[self.rows_class[c]]
                if reduced > 1e-7:
                    before = len(self.columns)
                    self.add(c, counts)
                    added = added or len(self.columns) > before
                    farley += self.caps[c] * reduced
            bound = value + farley
            if not added:
                break
        return bound


def knapsack(capacity: int, profit: dict, kinds: dict, *, round_up: bool = False) -> tuple[float, dict]:
    """The most profit one GPU of `capacity` can hold, sizes rounded to GRID (down, or up with `round_up`); and the
    counts that give it."""
    room = capacity // GRID
    best = np.zeros(room + 1)
    chunks = []
    for t, p in profit.items():
        size = -(-t[1] // GRID) if round_up else t[1] // GRID
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
