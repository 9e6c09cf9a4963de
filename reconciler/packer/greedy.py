"""The constructive heuristic: priority levels in order, best-fit decreasing within a level.

1. Running replicas stay where they are (stability), unless their GPU no longer holds them (capacity shrank, spread
   tightened): then they are re-placed like new ones, without counting as voluntary moves.
2. Levels in order (higher priority first; a priority's elastic replicas after the rest of it). Within a level,
   largest first. An item that finds no free room tries, in order: relocating one replica placed in this plan (free),
   moving one running replica of no higher priority (within max_moves), evicting the least disruptive set of
   lower-priority preemptible replicas (when its class preempts). Elastic items only take free room.
3. Evicted running replicas get another chance at their own level: free room elsewhere takes them (the plan shows a
   move); they never evict or move others themselves.
4. Settling: once every level is done, each replica still left out takes free room if there is any, where it ran
   first. An eviction late in a level can leave room that a replica evicted earlier in that level fits in; without
   this pass the plan would evict a replica that fits.

Evictions weigh what they cost with the objective's order: any VRAM of a higher level outweighs all of a lower one,
so three replicas of priority 0 go before one of priority 50.
"""

from __future__ import annotations

from itertools import combinations

from reconciler.packer.problem import Problem
from reconciler.packer.state import State

_EVICT_CANDIDATES = 12  # per GPU; beyond this, only the lowest levels are considered (keeps the search bounded)
_EVICT_COMBINATIONS = 1_000  # victim sets tried per GPU, fewest victims first


def construct(problem: Problem, *, repair_budget: int = 2000) -> State:
    state = State(problem)
    items = problem.items
    displaced: set[int] = set()
    running = sorted(
        (i for i, it in enumerate(items) if it.current is not None),
        key=lambda i: (items[i].level, -items[i].size, items[i].model, items[i].replica),
    )
    for i in running:
        cur = items[i].current
        assert cur is not None
        if state.fits(items[i], cur):
            state.place(i, cur)
        else:
            displaced.add(i)
    search = _Search(state, problem, repair_budget)
    pending = [i for i, it in enumerate(items) if it.current is None] + sorted(displaced)
    search.run_levels(pending)
    settle(state)
    return state


def settle(state: State) -> None:
    """Give every replica left out a place in free room, in the objective's order, where it ran if it still fits
    there. Placing in free room takes nothing from anyone, so one pass in level order is enough."""
    items = state.items
    left = sorted(
        (i for i, bins in enumerate(state.where) if bins is None),
        key=lambda i: (items[i].level, items[i].replica if items[i].elastic else 0, -items[i].size, items[i].key),
    )
    full: set[str] = set()
    for i in left:
        item = items[i]
        if item.elastic and item.model in full:
            continue
        if item.current is not None and state.fits(item, item.current):
            state.place(i, item.current)
            continue
        bins = state.find(item)
        if bins is not None:
            state.place(i, bins)
        elif item.elastic:
            full.add(item.model)


class _Search:
    def __init__(self, state: State, problem: Problem, repair_budget: int) -> None:
        self.state = state
        self.items = problem.items
        self.moves_left = problem.max_moves
        self.repair_budget = repair_budget
        self.evicted: set[int] = set()  # running items evicted so far (may still be re-placed as a move)

    def run_levels(self, pending: list[int]) -> None:
        items = self.items
        queue = set(pending)
        while queue:
            level = min(items[i].level for i in queue)
            batch = [i for i in queue if items[i].level == level]
            queue.difference_update(batch)
            if level[1]:
                self._fill_elastic(batch)
                continue
            batch.sort(key=lambda i: (-items[i].size, -items[i].gpus, items[i].model, items[i].replica))
            for i in batch:
                for j in self._place(i):
                    if items[j].level > level:
                        queue.add(j)
                    else:  # cannot happen: only lower priorities are evicted
                        raise AssertionError("evicted an item of the same or a higher level")

    def _fill_elastic(self, batch: list[int]) -> None:
        items = self.items
        # Round robin by replica index across the level's elastic models: a fair share when several compete.
        batch.sort(key=lambda i: (items[i].replica, items[i].model))
        full: set[str] = set()
        for i in batch:
            item = items[i]
            if item.model in full:
                continue  # identical replicas: once one does not fit, no later one will
            bins = self.state.find(item)
            if bins is None:
                full.add(item.model)
            else:
                self.state.place(i, bins)

    def _place(self, i: int) -> list[int]:
        """Place item i if the rules allow; return the running items it evicted."""
        item = self.items[i]
        state = self.state
        bins = state.find(item)
        if bins is not None:
            state.place(i, bins)  # an evicted replica that finds free room elsewhere restarts there
            return []
        if i in self.evicted:
            return []  # an evicted replica only takes free room elsewhere
        if item.gpus == 1 and self.repair_budget > 0 and self._relocate_one(i):
            return []
        if item.preempts:
            return self._evict_for(i)
        return []

    # -- making room by relocating one replica -------------------------------------------------------------------
    def _relocate_one(self, i: int) -> bool:
        item = self.items[i]
        state = self.state
        best: tuple[tuple[int, int, int], int, int, tuple[int, ...]] | None = None
        for b in range(len(state.caps)):
            if state.caps[b] < item.vram or not state.allowed(item, b):
                continue
            short = item.vram - state.free[b]
            for j in state.occupants[b]:
                other = self.items[j]
                if other.gpus != 1 or other.vram < short:
                    continue
                running = other.current is not None and state.where[j] == other.current
                if running and (self.moves_left <= 0 or other.priority > item.priority or other.elastic):
                    continue
                self.repair_budget -= 1
                target = state.find(other, exclude=b)
                if target is None:
                    continue
                # Prefer relocating replicas placed in this plan (free) over moving running ones, then small ones.
                key = (int(running), other.vram, b)
                if best is None or key < best[0]:
                    best = (key, j, b, target)
            if self.repair_budget <= 0:
                break
        if best is None:
            return False
        _, j, b, target = best
        if best[0][0]:
            self.moves_left -= 1
        state.remove(j)
        state.place(j, target)
        state.place(i, (b,))
        return True

    # -- evicting lower priorities ------------------------------------------------------------------------------
    def _evict_for(self, i: int) -> list[int]:
        item = self.items[i]
        state = self.state
        best: tuple[tuple, tuple[int, ...], tuple[int, ...]] | None = None
        for node in state.nodes:
            options = []
            for b in state.node_bins[node]:
                if state.caps[b] < item.vram or not state.allowed(item, b):
                    continue
                victims = self._cheapest_victims(item_index=i, b=b)
                if victims is not None:
                    options.append((_cost(self.items, victims), b, victims))
            if len(options) < item.gpus:
                continue
            options.sort()
            chosen = options[: item.gpus]
            victims = tuple(sorted({j for _, _, vs in chosen for j in vs}))
            bins = tuple(sorted(b for _, b, _ in chosen))
            key = (_cost(self.items, victims), bins)
            if best is None or key < best[0]:
                best = (key, bins, victims)
        if best is None:
            return []
        _, bins, victims = best
        for j in victims:
            state.remove(j)
            if self.items[j].current is not None:
                self.evicted.add(j)
        state.place(i, bins)
        return list(victims)

    def _cheapest_victims(self, *, item_index: int, b: int) -> tuple[int, ...] | None:
        """The least disruptive set of replicas on GPU b whose eviction makes room: fewest, then least VRAM, then
        lowest priorities. () when it already fits, None when it cannot be done."""
        item = self.items[item_index]
        state = self.state
        short = item.vram - state.free[b]
        if short <= 0:
            return ()
        candidates = [
            j for j in state.occupants[b] if self.items[j].priority < item.priority and self.items[j].preemptible
        ]
        if sum(self.items[j].vram for j in candidates) < short:
            return None
        candidates.sort(key=lambda j: (self.items[j].priority, not self.items[j].elastic, -self.items[j].vram,
                                       self.items[j].key))
        candidates = candidates[:_EVICT_CANDIDATES]
        best, tried = None, 0
        for r in range(1, len(candidates) + 1):
            for c in combinations(candidates, r):
                tried += 1
                if sum(self.items[j].vram for j in c) >= short:
                    cost = _cost(self.items, c)
                    if best is None or cost < best[0]:
                        best = (cost, c)
            if tried >= _EVICT_COMBINATIONS:
                break
        return None if best is None else best[1]


def _cost(items, victims) -> tuple:
    """Lower is better: VRAM lost per level from the highest level down (the objective's order), then the number of
    replicas disturbed."""
    lost: dict[tuple[int, bool], int] = {}
    for j in victims:
        key = (items[j].priority, not items[j].elastic)
        lost[key] = lost.get(key, 0) + items[j].size
    return (
        tuple(sorted(lost.items(), reverse=True)),
        len(victims),
        sum(items[j].vram * items[j].gpus for j in victims),
        tuple(sorted((items[j].priority for j in victims), reverse=True)),
        tuple(sorted(items[j].key for j in victims)),
    )
