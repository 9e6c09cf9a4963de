"""A mutable working copy of a placement, private to the packer's algorithms.

The packer's public functions stay pure (a `Problem` in, a `Solution` out); inside, one search mutates this state.
Indices kept sorted make best-fit and worst-fit lookups O(log n), which is what lets 10,000 replicas on 1,000 GPUs
plan in well under a second.
"""

from __future__ import annotations

from bisect import bisect_left, insort
from collections import Counter

from reconciler.desired import Placement, Spread
from reconciler.packer.problem import Item, Problem

_SCALE = 1_000_000
_SCAN_NODES = 64  # up to this many nodes, gangs compare every node; beyond, they walk the sorted indices
_NONE: Counter = Counter()  # fixed-point relative load, for the spread policy


class State:
    def __init__(self, problem: Problem) -> None:
        self.problem = problem
        self.items = problem.items
        self.caps = [b.capacity for b in problem.bins]
        self.free = list(self.caps)
        self.occupants: list[dict[int, None]] = [{} for _ in problem.bins]  # ordered sets of item ids
        self.where: list[tuple[int, ...] | None] = [None] * len(problem.items)
        self.node_of = [b.node for b in problem.bins]
        self.node_bins: dict[str, list[int]] = {}
        for b, gpu in enumerate(problem.bins):
            self.node_bins.setdefault(gpu.node, []).append(b)
        self.nodes = sorted(self.node_bins)
        self.on_bin: dict[str, Counter[int]] = {}  # model -> bins holding one of its replicas
        self.on_node: dict[str, Counter[str]] = {}
        self.binpack = problem.policy == Placement.BINPACK
        # Sorted indices: used bins by free bytes, empty bins by capacity, all bins by relative load.
        self.used: list[tuple[int, int]] = []
        self.empty: list[tuple[int, int]] = sorted((c, b) for b, c in enumerate(self.caps))
        self.rel: list[tuple[int, int]] = sorted((0, b) for b in range(len(self.caps)))
        self.version = 0  # bumped on every change, so searches can remember what failed on an unchanged state
        # Per GPU and level (lowest first; a level is (priority, not elastic)): VRAM of the preemptible replicas of
        # that level on it, so what evictions could free is known without walking the GPU's replicas.
        self.levels = sorted({(item.priority, not item.elastic) for item in problem.items})
        self.rank = {key: k for k, key in enumerate(self.levels)}
        self.preemptible: list[list[int]] = [[0] * len(self.levels) for _ in problem.bins]
        # Per GPU, single-GPU replicas on it that do not run there now (new, or moved): the ones free to relocate.
        self.loose: list[int] = [0] * len(problem.bins)

    # -- bookkeeping -------------------------------------------------------------------------------------------
    def _rel(self, b: int) -> int:
        cap = self.caps[b]
        return _SCALE if cap <= 0 else (cap - self.free[b]) * _SCALE // cap

    def _unindex(self, b: int) -> None:
        if self.occupants[b]:
            _remove(self.used, (self.free[b], b))
        else:
            _remove(self.empty, (self.caps[b], b))
        _remove(self.rel, (self._rel(b), b))

    def _index(self, b: int) -> None:
        if self.occupants[b]:
            insort(self.used, (self.free[b], b))
        else:
            insort(self.empty, (self.caps[b], b))
        insort(self.rel, (self._rel(b), b))

    def place(self, i: int, bins: tuple[int, ...], *, indexed: bool = True) -> None:
        """Put item i on `bins`. With `indexed` false the sorted indices are left stale, for a batch of placements
        that ends with `reindex()` (one sort instead of a sorted insertion per placement)."""
        item = self.items[i]
        on_bin = self.on_bin.get(item.model)
        if on_bin is None:
            on_bin = self.on_bin[item.model] = Counter()
        for b in bins:
            if indexed:
                self._unindex(b)
            self.free[b] -= item.vram
            self.occupants[b][i] = None
            if indexed:
                self._index(b)
            on_bin[b] += 1
            if item.preemptible:
                self.preemptible[b][self.rank[(item.priority, not item.elastic)]] += item.vram
            if item.gpus == 1 and item.current != bins:
                self.loose[b] += 1
        on_node = self.on_node.get(item.model)
        if on_node is None:
            on_node = self.on_node[item.model] = Counter()
        on_node[self.node_of[bins[0]]] += 1
        self.where[i] = bins
        self.version += 1

    def reindex(self) -> None:
        self.used = sorted((self.free[b], b) for b in range(len(self.caps)) if self.occupants[b])
        self.empty = sorted((self.caps[b], b) for b in range(len(self.caps)) if not self.occupants[b])
        self.rel = sorted((self._rel(b), b) for b in range(len(self.caps)))

    def remove(self, i: int) -> tuple[int, ...]:
        bins = self.where[i]
        assert bins is not None
        item = self.items[i]
        for b in bins:
            self._unindex(b)
            self.free[b] += item.vram
            del self.occupants[b][i]
            self._index(b)
            self.on_bin[item.model][b] -= 1
            if item.preemptible:
                self.preemptible[b][self.rank[(item.priority, not item.elastic)]] -= item.vram
            if item.gpus == 1 and item.current != bins:
                self.loose[b] -= 1
        self.on_node[item.model][self.node_of[bins[0]]] -= 1
        self.where[i] = None
        self.version += 1
        return bins

    def level_to_evict(self, b: int, item: Item) -> tuple[int, bool] | tuple[()] | None:
        """The highest level GPU b must give up for `item` when lower levels go first: () when it fits already,
        None when evicting every preemptible replica of a lower priority is not enough."""
        short = item.vram - self.free[b]
        if short <= 0:
            return ()
        freed = 0
        for key, vram in zip(self.levels, self.preemptible[b]):
            if key[0] >= item.priority:
                break
            freed += vram
            if freed >= short:
                return key  # the first level that gets there, so one with VRAM to give
        return None

    # -- constraints -------------------------------------------------------------------------------------------
    def allowed(self, item: Item, b: int) -> bool:
        """Spread anti-affinity only; capacity is checked by the callers."""
        if item.spread == Spread.GPU:
            return not self.on_bin.get(item.model, _NONE)[b]
        if item.spread == Spread.NODE:
            return not self.on_node.get(item.model, _NONE)[self.node_of[b]]
        return True

    def fits(self, item: Item, bins: tuple[int, ...]) -> bool:
        if len(set(bins)) != item.gpus or len({self.node_of[b] for b in bins}) != 1:
            return False
        return all(self.free[b] >= item.vram and self.allowed(item, b) for b in bins)

    # -- choosing GPUs -----------------------------------------------------------------------------------------
    def find(self, item: Item, exclude: int = -1) -> tuple[int, ...] | None:
        """Where the policy puts `item` in free space, or None. Deterministic: ties go to the lowest bin."""
        if item.gpus > 1:
            return self._find_gang(item)
        need = item.vram
        if self.binpack:
            # Best fit among GPUs already in use, then the smallest empty GPU that holds it.
            for index in (self.used, self.empty):
                for _, b in index[bisect_left(index, (need, -1)) :]:
                    if b != exclude and self.allowed(item, b):
                        return (b,)
            return None
        for _, b in self.rel:
            if b != exclude and self.free[b] >= need and self.allowed(item, b):
                return (b,)
        return None

    def _find_gang(self, item: Item) -> tuple[int, ...] | None:
        if len(self.nodes) > _SCAN_NODES:
            return self._find_gang_indexed(item)
        best: tuple[tuple[int, ...], tuple[int, ...]] | None = None
        free, need, plain = self.free, item.vram, item.spread == Spread.NONE
        for node in self.nodes:
            ok = [b for b in self.node_bins[node] if free[b] >= need]
            if len(ok) < item.gpus:
                continue
            if not plain:
                ok = [b for b in ok if self.allowed(item, b)]
                if len(ok) < item.gpus:
                    continue
            if self.binpack:
                ok.sort(key=lambda b: (not self.occupants[b], self.free[b], b))
                chosen = tuple(sorted(ok[: item.gpus]))
                key = (sum(1 for b in chosen if not self.occupants[b]), sum(self.free[b] - item.vram for b in chosen))
            else:
                ok.sort(key=lambda b: (self._rel(b), b))
                chosen = tuple(sorted(ok[: item.gpus]))
                key = (max(self._rel(b) for b in chosen), 0)
            if best is None or key < best[0]:
                best = (key, chosen)
        return None if best is None else best[1]

    def _find_gang_indexed(self, item: Item) -> tuple[int, ...] | None:
        """The gang search of large pools, in time that depends on the GPUs with room rather than on the nodes:
        walk the sorted indices (binpack: GPUs in use by free room, then empty GPUs by capacity; spread: all GPUs by
        relative load) and take the first node that gathers enough GPUs that hold the replica. Binpack thus
        prefers GPUs in use, and among them the fullest, as the full scan does."""
        need, wanted = item.vram, item.gpus
        found: dict[str, list[int]] = {}
        if self.binpack:
            walks = [self.used[bisect_left(self.used, (need, -1)) :], self.empty[bisect_left(self.empty, (need, -1)) :]]
        else:
            walks = [self.rel]
        for walk in walks:
            for _, b in walk:
                if self.free[b] < need or not self.allowed(item, b):
                    continue
                chosen = found.setdefault(self.node_of[b], [])
                chosen.append(b)
                if len(chosen) == wanted:
                    return tuple(sorted(chosen))
        return None

    def assignment(self) -> tuple[tuple[int, ...] | None, ...]:
        return tuple(self.where)

    @classmethod
    def of(cls, problem: Problem, assignment) -> State:
        """A working copy holding `assignment` (per item, its bins or None)."""
        state = cls(problem)
        for i, bins in enumerate(assignment):
            if bins:
                state.place(i, bins)
        return state


def _remove(index: list[tuple[int, int]], entry: tuple[int, int]) -> None:
    at = bisect_left(index, entry)
    assert index[at] == entry
    del index[at]
