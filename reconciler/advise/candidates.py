"""Choices in order of cost: every multiset of node types in a cost window that meets the capacity rules.

The cheapest choice is the first of them on which everything fits, so the search walks them cheapest first and asks
of each whether it holds every replica: the packer's greedy construction answers yes fast for most, the exact model
with all its nodes bought answers the rest. A choice is proven cheapest when every cheaper candidate was proven not
to fit. The rules that prune (VRAM of replicas of each size on GPUs that can hold them, with the `tolerate` largest
nodes lost; a GPU for each replica too big to share one; a node for each replica of a model spread over nodes) are
the capacity bound's (`bound.py`), checked per choice.
"""

from __future__ import annotations

from reconciler.advise.kinds import Group, Kind

Counts = tuple[int, ...]


class Rules:
    """Necessary conditions a choice must meet to have a chance of fitting."""

    def __init__(self, kinds: tuple[Kind, ...], groups: tuple[Group, ...], tolerate: int) -> None:
        self.kinds, self.tolerate = kinds, tolerate
        self.sizes: list[tuple[int, tuple[int, ...]]] = []  # (bytes needed, offer per node of each kind)
        for v in sorted({g.vram for g in groups}):
            need = sum(g.vram * g.gpus * g.count for g in groups if g.vram >= v)
            self.sizes.append((need, tuple(sum(c for c in kind.caps if c >= v) for kind in kinds)))
            big = sum(g.gpus * g.count for g in groups if g.vram >= v and all(
                2 * g.vram > c for kind in kinds for c in kind.caps if c >= g.vram))
            if big:
                self.sizes.append((big, tuple(sum(1 for c in kind.caps if c >= v) for kind in kinds)))
        for g in groups:  # replicas of one model a node holds by itself, spread over nodes or not
            self.sizes.append((g.count, tuple(g.hosts(kind.caps) for kind in kinds)))
        # Per rule, the kinds that offer something, cheapest per unit of offer first.
        self.cheapest = [
            [k for k in sorted(range(len(kinds)), key=lambda k: kinds[k].price / offer[k] if offer[k] else 0)
             if offer[k] and not kinds[k].fixed]
            for _, offer in self.sizes
        ]

    def met(self, counts: Counts) -> bool:
        for need, offer in self.sizes:
            total = sum(o * n for o, n in zip(offer, counts))
            if self.tolerate:
                lost, left = 0, self.tolerate
                for o, k in sorted(((o, k) for k, o in enumerate(offer) if counts[k]), reverse=True):
                    take = min(left, counts[k])
                    lost += o * take
                    left -= take
                    if not left:
                        break
                total -= lost
            if total < need:
                return False
        return True

    def least_more(self, counts: Counts, upto: int, limits: Counts) -> int | None:
        """The least a choice that keeps `counts` of the kinds before `upto` must still spend on the others to meet
        the rules (failures ignored, nodes taken fractionally: a bound); None when it cannot meet them at all."""
        worst = 0
        for (need, offer), cheapest in zip(self.sizes, self.cheapest):
            left = need - sum(o * n for o, n in zip(offer, counts) if n)
            left += sum(offer[k] * counts[k] for k in range(upto, len(offer)) if counts[k])
            if left <= 0:
                continue
            spend = 0.0
            for k in cheapest:
                if k < upto:
                    continue
                whole = min(limits[k] * offer[k], left)
                spend += self.kinds[k].price * whole / offer[k]
                left -= whole
                if left <= 0:
                    break
            if left > 0:
                return None
            worst = max(worst, int(spend))
        return worst


def window(kinds: tuple[Kind, ...], limits: Counts, rules: Rules, *, lo: int, hi: int,
           cap: int = 200_000, visits: int = 5_000) -> tuple[list[tuple[int, int, Counts]], bool]:
    """Every choice of cost in [lo, hi] within `limits` that meets the rules, as (cost, nodes, counts) sorted; at
    most `cap` of them, and no more than `visits` partial choices looked at; and whether the list is complete."""
    out: list[tuple[int, int, Counts]] = []
    seen = [0]
    counts = [len(k.kept) if k.fixed else 0 for k in kinds]
    order = list(range(len(kinds)))

    def walk(pos: int, cost: int) -> None:
        seen[0] += 1
        if len(out) > 4 * cap or seen[0] > visits:
            return
        if pos == len(order):
            chosen = tuple(counts)
            if cost >= lo and rules.met(chosen):
                out.append((cost, sum(chosen), chosen))
            return
        k = order[pos]
        kind = kinds[k]
        if kind.fixed:
            walk(pos + 1, cost)
            return
        for n in range(limits[k] + 1):
            if cost + n * kind.price > hi:
                break
            counts[k] = n
            more = rules.least_more(tuple(counts), pos + 1, limits)
            if more is not None and cost + n * kind.price + more <= hi:
                walk(pos + 1, cost + n * kind.price)
        counts[k] = 0

    walk(0, 0)
    out.sort()
    return out[:cap], len(out) <= cap and seen[0] <= visits
