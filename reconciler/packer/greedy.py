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

from itertools import combinations, islice
from math import comb

from reconciler.desired import Spread
from reconciler.packer.objective import may_move, may_preempt
from reconciler.packer.problem import Problem
from reconciler.packer.state import State

_EVICT_COMBINATIONS = 200  # victim sets of one level tried per GPU, fewest victims first (keeps the search bounded)


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
            state.place(i, cur, indexed=False)  # a fleet's running replicas: indexed once, after the loop
        else:
            displaced.add(i)
    state.reindex()
    search = _Search(state, problem, repair_budget)
    pending = [i for i, it in enumerate(items) if it.current is None] + sorted(displaced)
    search.run_levels(pending)
    settle(state)
    keep_rules(state, frozenset(displaced))
    return state


def place_waiting(state: State, problem: Problem, *, repair_budget: int = 2000) -> None:
    """Place what `state` leaves out as the construction does, level by level (free room, relocating one replica,
    evicting lower levels' replicas, which then wait at their own level), then settle. For a state where nothing
    runs yet."""
    waiting = [i for i, where in enumerate(state.where) if where is None]
    _Search(state, problem, repair_budget).run_levels(waiting)
    settle(state)


def keep_rules(state: State, forced: frozenset[int]) -> None:
    """Send back running replicas whose leaving nothing justifies any more (the replica they made room for was
    relocated later): where they ran is then free again, unless another replica took it, in which case they stay
    where they are."""
    items = state.items
    for i, item in enumerate(items):
        cur = item.current
        if cur is None or i in forced or state.where[i] == cur:
            continue
        came = [items[j] for b in cur for j in state.occupants[b] if j != i and b not in (items[j].current or ())]
        if any(may_preempt(j, item) for j in came):
            continue
        if state.where[i] is not None and any(may_move(j, item) for j in came):
            continue
        was = state.remove(i) if state.where[i] is not None else None
        if state.fits(item, cur):
            state.place(i, cur)
        elif was is not None:
            state.place(i, was)


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
        # Model -> state version at which evicting for one of its replicas found nothing: its twins need not look
        # again until something changes.
        self.no_victims: dict[str, int] = {}
        # (priority, vram, gpus) of replicas without spread for which evicting found nothing at `failed_version`:
        # one with no higher priority, no less VRAM and no fewer GPUs finds nothing either.
        self.failed: list[tuple[int, int, int]] = []
        self.failed_version = -1
        self.any_keep = any(item.keep for item in problem.items)
        # (sizes of a group, largest first; VRAM wanted) -> positions `_least_covering` picks: the answer depends on
        # nothing else, and a fleet's GPUs hold the same few mixes of sizes over and over.
        self.covering: dict[tuple[tuple[int, ...], int], tuple[int, ...]] = {}

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
            if self.moves_left <= 0 and not state.loose[b]:
                continue  # only replicas running where they are here, and none may move
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
        if self.no_victims.get(item.model) == state.version:
            return []
        if self.failed_version != state.version:
            self.failed, self.failed_version = [], state.version
        if any(item.priority <= p and item.vram >= v and item.gpus >= g for p, v, g in self.failed):
            return []
        # First the highest level each GPU would have to give up (cheap: from the state's per-level totals); only
        # the nodes where that is lowest get the full search for the least disruptive set: a higher level lost
        # outweighs everything else.
        plans: dict[str, list[tuple[tuple, int]]] = {}  # node -> (level to give up, GPU) of its best GPUs
        level_to_evict, allowed, caps = state.level_to_evict, state.allowed, state.caps
        for node in state.nodes:
            options = []
            for b in state.node_bins[node]:
                if caps[b] < item.vram:
                    continue
                level = level_to_evict(b, item)
                if level is not None and allowed(item, b):
                    options.append((level, b))
            if len(options) >= item.gpus:
                if self.any_keep:  # among GPUs as good, the one whose replicas were used least recently
                    options.sort(key=lambda o: (o[0], self._keep_cost(i, o[1]), o[1]))
                else:
                    options.sort()
                plans[node] = options[: item.gpus]
        if not plans:
            self.no_victims[item.model] = state.version
            if item.spread == Spread.NONE:
                self.failed.append((item.priority, item.vram, item.gpus))
            return []
        lowest = min(max(o[0] for o in options) for options in plans.values())
        best: tuple[tuple, tuple[int, ...], tuple[int, ...]] | None = None
        for node, options in plans.items():
            if max(o[0] for o in options) != lowest:
                continue
            plans_here = [self._victim_plan(item_index=i, b=b) for _, b in options]
            victims = tuple(sorted({j for plan in plans_here for j in self._victims_of(plan)}))
            bins = tuple(sorted(b for _, b in options))
            key = (_cost(self.items, victims), bins)
            if best is None or key < best[0]:
                best = (key, bins, victims)
        assert best is not None
        _, bins, victims = best
        for j in victims:
            state.remove(j)
            if self.items[j].current is not None:
                self.evicted.add(j)
        state.place(i, bins)
        return list(victims)

    def _keep_cost(self, i: int, b: int) -> int:
        """What the replicas GPU b would give up for item i were worth keeping."""
        plan = self._victim_plan(item_index=i, b=b)
        return 0 if plan is None else sum(self.items[j].keep for j in self._victims_of(plan))

    def _victim_plan(self, *, item_index: int, b: int):
        """(the highest level GPU b must give up, what the full search needs) or None when evicting cannot make
        room; the level is () when the replica fits already."""
        items = self.items
        item = items[item_index]
        state = self.state
        short = item.vram - state.free[b]
        if short <= 0:
            return ((), short, None, None, None)
        levels: dict[tuple[int, bool], list[int]] = {}
        total = 0
        for j in state.occupants[b]:
            other = items[j]
            if other.priority < item.priority and other.preemptible:
                levels.setdefault((other.priority, not other.elastic), []).append(j)
                total += other.vram
        if total < short:
            return None
        order = sorted(levels)  # lowest level first
        below = [0]
        for key in order:
            below.append(below[-1] + sum(items[j].vram for j in levels[key]))
        top = next(k for k in range(len(order)) if below[k + 1] >= short)
        return (order[top], short, levels, order, below)

    def _victims_of(self, plan) -> list[int]:
        """The least disruptive set of a GPU's replicas whose eviction makes room, in the objective's order: the
        highest level touched as low as it can be, the least VRAM of it, then the same for each level below."""
        top_key, short, levels, order, below = plan
        if short <= 0:
            return []
        chosen: list[int] = []
        need = short
        for k in range(order.index(top_key), -1, -1):
            want = need - below[k]  # what this level must give when every level below gives all it has
            if want <= 0:
                continue
            picked = _least_covering(levels[order[k]], want, self.items, self.covering)
            chosen += picked
            need -= sum(self.items[j].vram for j in picked)
        return chosen


def _least_covering(group: list[int], want: int, items, cache: dict) -> list[int]:
    """Replicas of one level whose VRAM sums to at least `want` with the least total: fewest replicas first among
    small sets (a bounded enumeration), else largest first with what is not needed handed back."""
    # Among replicas of one size, those least worth keeping (idle, least recently used) come first and are picked.
    ordered = sorted(group, key=lambda j: (-items[j].vram, items[j].keep, items[j].key))
    sizes = [items[j].vram for j in ordered]
    key = (tuple(sizes), want)
    if key not in cache:
        cache[key] = _least_covering_positions(sizes, want)
    return [ordered[k] for k in cache[key]]


def _least_covering_positions(sizes: list[int], want: int) -> tuple[int, ...]:
    """`_least_covering` on the sizes alone (largest first): the positions it picks."""
    n = len(sizes)
    best: tuple[int, int, tuple[int, ...]] | None = None
    tried = 0
    for r in range(1, n + 1):
        if sum(sizes[:r]) < want:
            # No r replicas cover it (the r largest do not): skip the enumeration, but count it as tried.
            tried += comb(n, r)
            if tried >= _EVICT_COMBINATIONS:
                break
            continue
        left = _EVICT_COMBINATIONS - tried
        found = None  # (size, position among the r-combinations)
        for at, combo in enumerate(islice(combinations(sizes, r), left)):
            size = sum(combo)
            if size >= want and (found is None or size < found[0]):
                found = (size, at)
                if size == want:
                    break  # nothing smaller can cover it
        tried += min(left, comb(n, r))
        if found is not None and (best is None or (found[0], r) < best[:2]):
            chosen = next(islice(combinations(range(n), r), found[1], None))
            best = (found[0], r, chosen)
        if tried >= _EVICT_COMBINATIONS or (best is not None and best[0] == want):
            break
    if best is not None:
        return tuple(best[2])
    picked, size = [], 0
    for k in range(n):
        if size >= want:
            break
        picked.append(k)
        size += sizes[k]
    for k in sorted(picked, key=lambda k: sizes[k]):
        if size - sizes[k] >= want:
            picked.remove(k)
            size -= sizes[k]
    return tuple(picked)


def _cost(items, victims) -> tuple:
    """Lower is better: VRAM lost per level from the highest level down (the objective's order), then the number of
    replicas disturbed, then how much they were worth keeping (idle and least recently used ones go first)."""
    lost: dict[tuple[int, bool], int] = {}
    for j in victims:
        key = (items[j].priority, not items[j].elastic)
        lost[key] = lost.get(key, 0) + items[j].size
    return (
        tuple(sorted(lost.items(), reverse=True)),
        len(victims),
        sum(items[j].keep for j in victims),
        sum(items[j].vram * items[j].gpus for j in victims),
        tuple(sorted((items[j].priority for j in victims), reverse=True)),
        tuple(sorted(items[j].key for j in victims)),
    )
