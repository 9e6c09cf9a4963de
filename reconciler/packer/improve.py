"""Freeing GPUs (binpack): empty one GPU at a time by pushing its replicas into the others.

An ejection search in the spirit of consistent neighbourhood search for bin packing: the replicas of the emptied GPU
wait in a pool P; each step inserts what fits (directly, or after relocating one replica to another GPU), else swaps
up to two replicas of a GPU for up to two of P so that P's total VRAM shrinks, with a tabu list against cycling.
P empty means one GPU fewer. Only replicas placed by this plan on one GPU take part: running replicas stay
(stability) and tensor-parallel gangs keep their GPUs.

Work is counted in evaluated candidates, not seconds, so the result is the same on every machine.
"""

from __future__ import annotations

import random
from bisect import bisect_right
from itertools import combinations

from reconciler.desired import Spread
from reconciler.packer.state import State

_TENURE = 7


def consolidate(state: State, *, budget: int, seed: int, lower_bound: int) -> int:
    """Empty GPUs while the budget lasts or until `lower_bound` GPUs are in use; returns the budget left."""
    rng = random.Random(seed)
    failed: set[tuple[int, ...]] = set()
    per_try = max(1, budget // 2)
    while budget > 0:
        used = [b for b in range(len(state.caps)) if state.occupants[b]]
        if len(used) <= lower_bound:
            break
        candidates = sorted(
            (b for b in used if all(_movable(state, i) for i in state.occupants[b])),
            key=lambda b: (state.caps[b] - state.free[b], len(state.occupants[b]), b),
        )
        pairs = [tuple(sorted(p)) for p in combinations(candidates[:4], 2)] or [(b,) for b in candidates[:1]]
        pairs = [p for p in pairs if p not in failed]
        if not pairs:
            break
        # Bounded tries: a pair that resists gets replaced by another one rather than eating the whole budget.
        allowance = max(1, min(budget, per_try))
        ok, left = _empty(state, emptied=pairs[0], budget=allowance, rng=rng)
        budget -= allowance - left
        if ok:
            failed.clear()
        else:
            failed.add(pairs[0])
    return budget


def _movable(state: State, i: int) -> bool:
    item = state.items[i]
    return item.gpus == 1 and (item.current is None or state.where[i] != item.current)


def _empty(state: State, *, emptied: tuple[int, ...], budget: int, rng: random.Random) -> tuple[bool, int]:
    """Take the replicas off the `emptied` GPUs into a waiting pool; success is when the pool fits on one of them
    (one GPU fewer) or, with one emptied GPU, when the pool is empty."""
    snapshot = list(state.where)
    pool = [i for e in emptied for i in state.occupants[e]]
    for i in pool:
        state.remove(i)
    holder = max(emptied, key=lambda b: (state.caps[b], -b)) if len(emptied) > 1 else None
    open_bins = [b for b in range(len(state.caps)) if state.occupants[b] and b not in emptied]
    tabu: dict[tuple[int, int], int] = {}
    step = 0
    stuck = True
    while budget > 0:
        step += 1
        if stuck:
            budget -= _descend(state, open_bins=open_bins, budget=budget)
        pool, spent = _insert(state, pool=pool, open_bins=open_bins)
        budget -= spent
        if _done(state, pool=pool, holder=holder):
            return True, budget
        gain, spent = _swap(state, pool=pool, open_bins=open_bins, tabu=tabu, step=step, rng=rng)
        budget -= spent
        if gain is None:
            break
        stuck = gain <= 0
    _restore(state, snapshot)
    return False, budget


def _done(state: State, *, pool: list[int], holder: int | None) -> bool:
    if not pool:
        return True
    if holder is None or sum(state.items[i].vram for i in pool) > state.caps[holder]:
        return False
    placed = []
    for i in sorted(pool):
        if not state.allowed(state.items[i], holder):
            for j in placed:
                state.remove(j)
            return False
        state.place(i, (holder,))
        placed.append(i)
    pool.clear()
    return True


def _descend(state: State, *, open_bins: list[int], budget: int) -> int:
    """Concentrate free room: shift or swap replicas between two GPUs while the sum of squared loads grows (the
    fuller GPU gets fuller), so that the free room gathers where a waiting replica may fit. Returns work spent."""
    items = state.items
    spent = 0
    improved = True
    while improved and spent < budget:
        improved = False
        for a in open_bins:
            if state.free[a] == 0:
                continue  # a full GPU has no free room to hand over
            for b in open_bins:
                spent += 1  # looking at a pair is work too: with many GPUs and few replicas it is most of it
                if state.free[b] == 0:
                    continue  # nothing fits into a full GPU, not even the difference of a swap
                if a == b or state.free[b] > state.free[a] or (state.free[b] == state.free[a] and b > a):
                    continue  # only towards the fuller GPU
                for x in list(state.occupants[a]):
                    if not _movable(state, x):
                        continue
                    wx = items[x].vram
                    spent += 1
                    if state.free[b] >= wx and state.allowed(items[x], b):
                        state.remove(x)
                        state.place(x, (b,))
                        improved = True
                        break
                    for y in list(state.occupants[b]):
                        d = wx - items[y].vram
                        spent += 1
                        if 0 < d <= state.free[b] and _movable(state, y) and _swap_pair(state, x=x, a=a, y=y, b=b):
                            improved = True
                            break
                    if improved:
                        break
    return spent


def _swap_pair(state: State, *, x: int, a: int, y: int, b: int) -> bool:
    state.remove(x)
    state.remove(y)
    if state.allowed(state.items[x], b) and state.allowed(state.items[y], a):
        state.place(x, (b,))
        state.place(y, (a,))
        return True
    state.place(x, (a,))
    state.place(y, (b,))
    return False


def _restore(state: State, snapshot: list[tuple[int, ...] | None]) -> None:
    for i, bins in enumerate(state.where):
        if bins is not None and bins != snapshot[i]:
            state.remove(i)
    for i, bins in enumerate(snapshot):
        if bins is not None and state.where[i] is None:
            state.place(i, bins)


def _insert(state: State, *, pool: list[int], open_bins: list[int]) -> tuple[list[int], int]:
    """Best-fit each waiting replica (largest first) into an open GPU, else after relocating one replica."""
    spent = 0
    left: list[int] = []
    for i in sorted(pool, key=lambda i: (-state.items[i].vram, i)):
        item = state.items[i]
        best = None
        for b in open_bins:
            spent += 1
            if state.free[b] >= item.vram and state.allowed(item, b):
                if best is None or state.free[b] < state.free[best]:
                    best = b
        if best is not None:
            state.place(i, (best,))
            continue
        if not _insert_relocating(state, i=i, open_bins=open_bins):
            left.append(i)
        spent += len(open_bins)
    return left, spent


def _insert_relocating(state: State, *, i: int, open_bins: list[int]) -> bool:
    item = state.items[i]
    for b in open_bins:
        short = item.vram - state.free[b]
        if not state.allowed(item, b) or short <= 0:
            continue
        for j in list(state.occupants[b]):
            other = state.items[j]
            if other.vram < short or not _movable(state, j):
                continue
            for c in open_bins:
                if c != b and state.free[c] >= other.vram and state.allowed(other, c):
                    state.remove(j)
                    if state.allowed(other, c):
                        state.place(j, (c,))
                        state.place(i, (b,))
                        return True
                    state.place(j, (b,))
    return False


def _swap(
    state: State, *, pool: list[int], open_bins: list[int], tabu: dict[tuple[int, int], int], step: int,
    rng: random.Random,
) -> tuple[int | None, int]:
    """Swap up to two replicas of one GPU for up to two waiting ones: the largest shrink of the pool's VRAM that is
    not tabu (sideways or worse when nothing better exists); random tie-breaks, seeded."""
    items = state.items
    groups = [(i,) for i in pool] + list(combinations(pool, 2))
    incoming = sorted((sum(items[i].vram for i in t), t) for t in groups)
    sums = [s for s, _ in incoming]
    best: tuple[tuple[int, float], int, tuple[int, ...], tuple[int, ...]] | None = None
    spent = 0
    for b in open_bins:
        movable = [j for j in state.occupants[b] if _movable(state, j)]
        outs = [(j,) for j in movable] + list(combinations(movable, 2))
        for out in outs:
            w_out = sum(items[j].vram for j in out)
            room = state.free[b] + w_out
            at = bisect_right(sums, room)
            # Walk down from the largest group that fits until one is allowed here.
            for k in range(at - 1, max(-1, at - 8), -1):
                spent += 1
                w_in, group = incoming[k]
                gain = w_in - w_out
                if best is not None and gain < best[0][0]:
                    break
                if any(tabu.get((i, b), 0) > step for i in group):
                    continue
                if not _allowed_after(state, b=b, out=out, group=group):
                    continue
                key = (gain, rng.random())
                if best is None or key > best[0]:
                    best = (key, b, out, group)
                break
    if best is None:
        return None, spent
    (gain, _), b, out, group = best
    for j in out:
        state.remove(j)
        tabu[(j, b)] = step + _TENURE + rng.randrange(3)
        pool.append(j)
    for i in group:
        state.place(i, (b,))
        pool.remove(i)
    return gain, spent


def _allowed_after(state: State, *, b: int, out: tuple[int, ...], group: tuple[int, ...]) -> bool:
    items = state.items
    if all(items[i].spread is Spread.NONE for i in group):
        return True
    removed = [state.remove(j) for j in out]
    ok = True
    placed = []
    for i in group:
        if not state.allowed(items[i], b):
            ok = False
            break
        state.place(i, (b,))
        placed.append(i)
    for i in placed:
        state.remove(i)
    for j, bins in zip(out, removed):
        state.place(j, bins)
    return ok
