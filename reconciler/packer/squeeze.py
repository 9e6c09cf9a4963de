"""One GPU fewer when the ejection search stalls (binpack): empty the GPU with the least to move, spread its replicas
over the other GPUs in use even where they overfill them, then drive the total overfill to zero by tabu search.

A step takes the best of every move of one of these shapes that touches an overfilled GPU: a replica to another GPU,
two replicas swapped, two of one GPU for one of another, and one for two. All of them are scored at once with numpy
(the change in total overfill), the best one not tabu is made (or a tabu one that beats the best total seen), and
the GPU a replica left is tabu for it for a while. Overfill zero means the replicas fit on one GPU fewer. Searching
over a fixed number of GPUs this way found the last GPU of a tight published instance (Scholl's HARD3), where
inserting and ejecting replicas into free room could not, because every GPU is nearly full.

Only replicas this plan places new on one GPU without spread move; everything else on a GPU is a fixed load, and so
are new replicas on a GPU that a running replica left (they are what justifies its leaving). Work is counted in
scored moves, never seconds, so the result is the same on every machine.
"""

from __future__ import annotations

import random
from itertools import combinations

import numpy as np

from reconciler.desired import Spread
from reconciler.packer.state import State

_NEVER = np.int64(1 << 60)  # the score of a move that is not allowed
_TENURE = (15, 30)  # steps a replica may not go back to the GPU it left (drawn per move, seeded)
# Each step costs at least this many scored moves: a step's fixed work (building the move tables) does not shrink
# with the moves it scores, and a pool with few replicas per GPU would otherwise take tens of thousands of steps.
_PER_STEP = 40_000


def squeeze(state: State, *, budget: int, seed: int, lower_bound: int, max_cells: int) -> int:
    """Empty GPUs one at a time while the budget (scored moves) lasts and more than `lower_bound` are in use; a
    search that fails leaves the state as it was. Returns the budget left."""
    rng = random.Random(seed)
    if len(state.items) > max_cells:  # more replicas than cells: no pool this size is searched, skip the scan
        return budget
    while budget > 0:
        used = [b for b in range(len(state.caps)) if state.occupants[b]]
        if len(used) <= lower_bound:
            break
        movable = _movable(state)
        candidates = [b for b in used if all(i in movable for i in state.occupants[b])]
        if not candidates:
            break
        load = {b: state.caps[b] - state.free[b] for b in used}
        emptied = min(candidates, key=lambda b: (load[b], b))
        keep = [b for b in used if b != emptied]
        items = sorted(i for b in used for i in state.occupants[b] if i in movable)
        if not keep or len(items) * len(keep) > max_cells:
            break
        found, budget = _search(state, items=items, keep=keep, budget=budget, rng=rng)
        if found is None:
            break
        for i in items:
            state.remove(i)
        for i, b in zip(items, found):
            state.place(i, (b,))
    return budget


def _movable(state: State) -> set[int]:
    left_by_running = {
        b for item, where in zip(state.items, state.where) if item.current is not None and where != item.current
        for b in item.current
    }
    return {
        i
        for i, (item, where) in enumerate(zip(state.items, state.where))
        if where is not None and item.current is None and item.gpus == 1 and item.spread == Spread.NONE
        and where[0] not in left_by_running
    }


def _search(
    state: State, *, items: list[int], keep: list[int], budget: int, rng: random.Random
) -> tuple[list[int] | None, int]:
    """A GPU of `keep` for each of `items` with no GPU overfilled, or None; and the budget left."""
    column = {b: k for k, b in enumerate(keep)}
    moving = set(items)
    size = np.array([state.items[i].vram for i in items], dtype=np.int64)
    fixed = [sum(state.items[j].vram for j in state.occupants[b] if j not in moving) for b in keep]
    cap = np.array([state.caps[b] for b in keep], dtype=np.int64) - np.array(fixed, dtype=np.int64)
    where = np.array([column.get(state.where[i][0], -1) for i in items], dtype=np.int64)
    load = np.zeros(len(keep), dtype=np.int64)
    np.add.at(load, where[where >= 0], size[where >= 0])
    # The emptied GPU's replicas go, largest first, to the GPU with the most room left.
    for x in sorted(np.nonzero(where < 0)[0], key=lambda x: (-size[x], x)):
        k = int(np.argmax(cap - load))
        where[x], load[k] = k, load[k] + size[x]
    over = _overfill(load, cap)
    total = int(over.sum())
    best = total
    n, bins = len(items), len(keep)
    tabu = np.zeros((n, bins), dtype=np.int64)
    step = 0
    while total > 0 and budget > 0:
        step += 1
        move, score, cost = _best_move(size, where, load, cap, tabu, step=step, total=total, best=best)
        budget -= max(cost, _PER_STEP)
        if move is None:
            break
        for x, k in move:
            tabu[x, where[x]] = step + rng.randint(*_TENURE)
            load[where[x]] -= size[x]
            load[k] += size[x]
            where[x] = k
        total += score
        best = min(best, total)
    if total > 0:
        return None, max(0, budget)
    return [keep[int(k)] for k in where], max(0, budget)


def _overfill(load: np.ndarray, cap: np.ndarray) -> np.ndarray:
    return np.maximum(0, load - cap)


def _best_move(size, where, load, cap, tabu, *, step: int, total: int, best: int):
    """The best allowed move: a list of (replica, new GPU) and its change in total overfill, with the moves scored."""
    n = len(size)
    every = np.arange(n)
    hot = np.nonzero(load > cap)[0]
    mine = np.nonzero(np.isin(where, hot))[0]  # replicas on an overfilled GPU
    a, s_a = where[mine], size[mine]
    load_a, cap_a = load[a], cap[a]
    lost_a = _overfill(load_a, cap_a)
    base = _overfill(load, cap)
    options = []

    def allowed(scores, free):
        return np.where(free | (total + scores < best), scores, _NEVER)

    # A replica to another GPU.
    shift = (_overfill(load_a - s_a, cap_a) - lost_a)[:, None] + (
        _overfill(load[None, :] + s_a[:, None], cap[None, :]) - base[None, :])
    shift[np.arange(len(mine)), a] = _NEVER
    shift = allowed(shift, tabu[mine] <= step)
    at = np.unravel_index(int(np.argmin(shift)), shift.shape)
    options.append((shift[at], [(int(mine[at[0]]), int(at[1]))]))
    # Two replicas swapped.
    b_all, s_all = where[None, :], size[None, :]
    load_b, cap_b = load[b_all], cap[b_all]
    swap = (_overfill(load_a[:, None] - s_a[:, None] + s_all, cap_a[:, None]) - lost_a[:, None]
            + _overfill(load_b - s_all + s_a[:, None], cap_b) - base[b_all])
    swap = np.where((a[:, None] == b_all) | (s_a[:, None] == s_all), _NEVER, swap)
    swap = allowed(swap, (tabu[mine[:, None], b_all] <= step) & (tabu[every[None, :], a[:, None]] <= step))
    at = np.unravel_index(int(np.argmin(swap)), swap.shape)
    options.append((swap[at], [(int(mine[at[0]]), int(where[at[1]])), (int(at[1]), int(a[at[0]]))]))
    cost = shift.size + swap.size
    # Two of an overfilled GPU for one of another.
    pairs = np.array([p for g in hot for p in combinations(np.nonzero(where == g)[0], 2)], dtype=np.int64)
    if len(pairs):
        s_p, g = size[pairs].sum(axis=1), where[pairs[:, 0]]
        two = (_overfill(load[g][:, None] - s_p[:, None] + s_all, cap[g][:, None]) - base[g][:, None]
               + _overfill(load_b - s_all + s_p[:, None], cap_b) - base[b_all])
        two = np.where(g[:, None] == b_all, _NEVER, two)
        free = (tabu[pairs[:, 0][:, None], b_all] <= step) & (tabu[pairs[:, 1][:, None], b_all] <= step) & (
            tabu[every[None, :], g[:, None]] <= step)
        two = allowed(two, free)
        at = np.unravel_index(int(np.argmin(two)), two.shape)
        x, y, z = int(pairs[at[0], 0]), int(pairs[at[0], 1]), int(at[1])
        options.append((two[at], [(x, int(where[z])), (y, int(where[z])), (z, int(g[at[0]]))]))
        cost += two.size
    # One of an overfilled GPU for two of another.
    order = np.argsort(where, kind="stable")
    edges = np.searchsorted(where[order], np.arange(len(load) + 1))
    duos = np.array([p for k in range(len(load)) for p in combinations(order[edges[k]:edges[k + 1]], 2)],
                    dtype=np.int64)
    if len(duos) and len(mine):
        s_q, g = size[duos].sum(axis=1), where[duos[:, 0]]
        one = (_overfill(load_a[:, None] - s_a[:, None] + s_q[None, :], cap_a[:, None]) - lost_a[:, None]
               + _overfill(load[g][None, :] - s_q[None, :] + s_a[:, None], cap[g][None, :]) - base[g][None, :])
        one = np.where(a[:, None] == g[None, :], _NEVER, one)
        free = (tabu[mine[:, None], g[None, :]] <= step) & (tabu[duos[:, 0][None, :], a[:, None]] <= step) & (
            tabu[duos[:, 1][None, :], a[:, None]] <= step)
        one = allowed(one, free)
        at = np.unravel_index(int(np.argmin(one)), one.shape)
        x, (y, z) = int(mine[at[0]]), (int(duos[at[1], 0]), int(duos[at[1], 1]))
        options.append((one[at], [(x, int(g[at[1]])), (y, int(a[at[0]])), (z, int(a[at[0]]))]))
        cost += one.size
    score, move = min(options, key=lambda o: o[0])  # the first of equals: deterministic
    if score >= _NEVER // 2:
        return None, 0, cost
    return move, int(score), cost
