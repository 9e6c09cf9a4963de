"""More VRAM for the first level that leaves replicas out: refill one GPU at a time with the best subset of its sizes.

In a pool asked for more than it holds, the objective is decided at the first level whose replicas do not all fit:
how much of it the room left by the levels above can take. For one GPU, that is a subset-sum problem over the
level's replicas on the GPU and those left out, which is solved exactly (bitsets of reachable sums, one per group of
equal sizes, then read back). A GPU whose best subset holds more than it does now takes it; what it gives up waits
for the next GPU. Rounds over the GPUs, emptiest first, until one brings nothing. Lower levels then take the free
room that is left, in the objective's order.

Only replicas this plan places new on one GPU (`spread: node` apart) change place; GPUs a running replica left are not
touched (what came there justifies its leaving). Work is counted in bitset operations, so the result is the same on
every machine.
"""

from __future__ import annotations

from collections import Counter
from functools import reduce
from math import gcd

from reconciler.desired import Spread
from reconciler.packer.bounds import SUBSET_SUM_LIMIT
from reconciler.packer.greedy import settle
from reconciler.packer.state import State


def refill(state: State, *, budget: int, fits_somewhere) -> int:
    """Raise the placed VRAM of the first level with replicas left out; returns the budget left."""
    items = state.items
    left = [i for i, where in enumerate(state.where) if where is None and not items[i].elastic
            and fits_somewhere(items[i])]
    if not left:
        return budget
    level = min(items[i].level for i in left)
    unit = reduce(gcd, (item.vram for item in items), 0) or 1
    left_by_running = {b for item, where in zip(items, state.where)
                       if item.current is not None and where != item.current for b in item.current}

    def free_to_move(i: int) -> bool:
        item = items[i]
        return item.current is None and item.gpus == 1 and item.spread != Spread.NODE

    improved = True
    while improved and budget > 0:
        improved = False
        waiting = [i for i, where in enumerate(state.where)
                   if where is None and items[i].level == level and free_to_move(i)]
        if not waiting:
            break
        order = sorted((b for b in range(len(state.caps)) if b not in left_by_running),
                       key=lambda b: (-state.free[b], b))
        for b in order:
            if budget <= 0:
                break
            mine = [i for i in state.occupants[b] if items[i].level == level and free_to_move(i)]
            lower = [i for i in state.occupants[b] if items[i].level > level and free_to_move(i)]
            room = state.free[b] + sum(items[i].vram for i in mine + lower)
            now = sum(items[i].vram for i in mine)
            if room // unit > SUBSET_SUM_LIMIT or room == now:
                continue
            pool = _candidates(state, b, mine + [i for i in waiting if items[i].vram <= room], moving=mine + lower)
            chosen, spent = _best_subset(pool, [items[i].vram // unit for i in pool], room // unit)
            budget -= spent
            if sum(items[i].vram for i in chosen) <= now:
                continue
            for i in mine + lower:
                state.remove(i)
            for i in chosen:
                state.place(i, (b,))
            improved = True
            waiting = [i for i in waiting if i not in set(chosen)] + [i for i in mine if i not in set(chosen)]
            if not waiting:
                break
    settle(state)
    return budget


def _candidates(state: State, b: int, pool: list[int], *, moving: list[int]) -> list[int]:
    """What may go on GPU b together: of a `spread: gpu` model, one replica, and none where one stays on b."""
    items = state.items
    leaving = set(moving)
    present = {items[j].model for j in state.occupants[b] if j not in leaving}
    out, seen = [], set()
    for i in pool:
        item = items[i]
        if item.spread == Spread.GPU:
            if item.model in present or item.model in seen:
                continue
            seen.add(item.model)
        out.append(i)
    return out


def _best_subset(pool: list[int], sizes: list[int], limit: int) -> tuple[list[int], int]:
    """Members of `pool` whose sizes sum to the most at most `limit` (equal sizes taken in binary-split chunks), and
    the bitset operations spent."""
    by_size: dict[int, list[int]] = {}
    for i, size in zip(pool, sizes):
        by_size.setdefault(size, []).append(i)
    mask = (1 << (limit + 1)) - 1
    reach = 1
    chunks: list[tuple[int, int, int]] = []  # (size, how many, reachable sums before the chunk)
    for size in sorted(by_size):
        count, chunk = len(by_size[size]), 1
        while count > 0:
            take = min(chunk, count)
            chunks.append((size, take, reach))
            reach = (reach | (reach << (size * take))) & mask
            count -= take
            chunk *= 2
    target = reach.bit_length() - 1
    taken: Counter[int] = Counter()
    for size, take, before in reversed(chunks):
        if (before >> target) & 1:
            continue
        taken[size] += take
        target -= size * take
    chosen = [i for size, n in taken.items() for i in by_size[size][:n]]
    return chosen, len(chunks)
