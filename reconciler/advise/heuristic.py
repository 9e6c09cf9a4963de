"""A choice found fast: node types added one at a time by the VRAM they let the packer place per unit of price, then
nodes dropped or swapped for cheaper ones while everything still fits. The packer's own greedy construction
(`packer.greedy.construct`) is the judge of what fits, so a choice found here is one the planner can place too.

It is the exact model's starting point and upper bound, and the answer where the exact model is not built."""

from __future__ import annotations

from reconciler.advise.kinds import Group, Kind, problem_of
from reconciler.packer import Item
from reconciler.packer.greedy import construct

Counts = tuple[int, ...]
Placement = tuple[tuple[int, ...] | None, ...]


def node_list(kinds: tuple[Kind, ...], counts: Counts, failed: Counts | None = None) -> list[tuple[str, tuple[int, ...]]]:
    """The nodes of a choice as (name, capacities); with `failed`, the survivors (the last nodes of a kind fail)."""
    out = []
    for k, (kind, n) in enumerate(zip(kinds, counts)):
        alive = n - (failed[k] if failed else 0)
        out += [(f"{k}/{i}", kind.caps) for i in range(alive)]
    return out


def pack(items: tuple[Item, ...], nodes: list[tuple[str, tuple[int, ...]]]) -> Placement:
    if not items:
        return ()
    return construct(problem_of(items, nodes)).assignment()


class Judge:
    """Whether a choice holds every item in every failure scenario, remembered per choice."""

    def __init__(self, items: tuple[Item, ...], kinds: tuple[Kind, ...], tolerate: int) -> None:
        self.items, self.kinds, self.tolerate = items, kinds, tolerate
        self.total = sum(item.size for item in items)
        self._seen: dict[Counts, int] = {}

    def failures(self, counts: Counts) -> list[Counts]:
        if self.tolerate <= 0:
            return [tuple(0 for _ in counts)]
        if sum(counts) < self.tolerate:
            return [counts]  # every node fails
        out: list[Counts] = []

        def spread(k: int, left: int, f: list[int]) -> None:
            if k == len(counts):
                if left == 0:
                    out.append(tuple(f))
                return
            for n in range(min(left, counts[k]) + 1):
                f.append(n)
                spread(k + 1, left - n, f)
                f.pop()

        spread(0, self.tolerate, [])
        return out

    def placed(self, counts: Counts) -> int:
        """VRAM placed in the worst failure scenario (all of it: the choice fits)."""
        if counts not in self._seen:
            worst = self.total
            for failed in self.failures(counts):
                placement = pack(self.items, node_list(self.kinds, counts, failed))
                worst = min(worst, sum(item.size for item, bins in zip(self.items, placement) if bins))
            self._seen[counts] = worst
        return self._seen[counts]

    def fits(self, counts: Counts) -> bool:
        return self.placed(counts) >= self.total


def cost(kinds: tuple[Kind, ...], counts: Counts) -> int:
    return sum(kind.price * n for kind, n in zip(kinds, counts))


def _room(kind: Kind, counts: Counts, k: int) -> bool:
    return kind.limit is None or counts[k] < kind.limit


def search(items: tuple[Item, ...], kinds: tuple[Kind, ...], groups: tuple[Group, ...], tolerate: int,
           max_nodes: int = 512) -> Counts | None:
    """The cheapest choice this search finds, or None when it finds none within the catalogue's maxima."""
    judge = Judge(items, kinds, tolerate)
    start = tuple(len(kind.kept) for kind in kinds)
    most = tuple(useful_nodes(kind, groups, tolerate) for kind in kinds)
    found = [c for c in (_grow(judge, kinds, start, max_nodes, most), *_single_types(judge, kinds, groups, start))
             if c is not None]
    if not found:
        return None
    found = [_shrink(judge, kinds, c) for c in found]
    return min(found, key=lambda c: (cost(kinds, c), sum(c), c))


def useful_nodes(kind: Kind, groups: tuple[Group, ...], tolerate: int) -> int:
    """Nodes of `kind` beyond which one more holds nothing more: every replica it can host has a node of its own
    model (and `tolerate` more fail)."""
    return sum(-(-g.count // g.hosts(kind.caps)) for g in groups if g.hosts(kind.caps)) + tolerate


def _grow(judge: Judge, kinds: tuple[Kind, ...], counts: Counts, max_nodes: int, most: Counts) -> Counts | None:
    """Nodes added one at a time until the choice fits; None when none of a kind that may still help is left
    (a catalogue whose maxima hold no choice ends here at once, not after `max_nodes`)."""

    def room(k: int, kind: Kind) -> bool:
        return not kind.fixed and _room(kind, counts, k) and counts[k] < most[k]

    while not judge.fits(counts):
        if sum(counts) >= max_nodes:
            return None
        now = judge.placed(counts)
        best, best_key = None, None
        for k, kind in enumerate(kinds):
            if not room(k, kind):
                continue
            more = counts[:k] + (counts[k] + 1,) + counts[k + 1:]
            gain = judge.placed(more) - now
            # More VRAM placed per unit of price; a free type first; then the larger node, then catalogue order.
            key = (gain * 10**6 // max(kind.price, 1) if kind.price else float("inf"), sum(kind.caps), -k)
            if gain > 0 and (best_key is None or key > best_key):
                best, best_key = more, key
        if best is None:  # no single node helps: the node with the most room per price
            options = [k for k, kind in enumerate(kinds) if room(k, kind)]
            if not options:
                return None
            k = max(options, key=lambda k: (sum(kinds[k].caps) * 10**6 // max(kinds[k].price, 1), -k))
            best = counts[:k] + (counts[k] + 1,) + counts[k + 1:]
        counts = best
    return counts


def _single_types(judge: Judge, kinds: tuple[Kind, ...], groups: tuple[Group, ...], start: Counts):
    need = judge.total
    for k, kind in enumerate(kinds):
        if kind.fixed or any(g.hosts(kind.caps) == 0 for g in groups):
            continue
        n = max(1, -(-need // max(1, sum(kind.caps)))) + judge.tolerate
        while kind.limit is None or n <= kind.limit:
            counts = start[:k] + (n,) + start[k + 1:]
            if judge.fits(counts):
                yield counts
                break
            if n > 4 * len(judge.items) + judge.tolerate:
                break
            n += 1


def _shrink(judge: Judge, kinds: tuple[Kind, ...], counts: Counts) -> Counts:
    """Drops nodes and swaps one node for a cheaper one while the choice still fits."""
    improved = True
    while improved:
        improved = False
        for k in sorted(range(len(kinds)), key=lambda k: (-kinds[k].price, k)):
            if kinds[k].fixed or counts[k] == 0:
                continue
            fewer = counts[:k] + (counts[k] - 1,) + counts[k + 1:]
            if judge.fits(fewer):
                counts, improved = fewer, True
                break
            for j in sorted(range(len(kinds)), key=lambda j: (kinds[j].price, j)):
                if kinds[j].fixed or kinds[j].price >= kinds[k].price or not _room(kinds[j], fewer, j):
                    continue
                swapped = fewer[:j] + (fewer[j] + 1,) + fewer[j + 1:]
                if judge.fits(swapped):
                    counts, improved = swapped, True
                    break
            if improved:
                break
    return counts
