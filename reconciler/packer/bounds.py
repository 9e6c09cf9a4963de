"""Lower bounds on the number of GPUs a set of replicas needs: when a placement meets one, it is optimal.

`l2` is Martello and Toth's L2 bound for one capacity; `gpus_needed` adapts the idea to the mixed pools of a real
cluster (GPUs of different sizes, replicas already pinned).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence


def l1(capacity: int, sizes: Sequence[int]) -> int:
    return -(-sum(sizes) // capacity) if capacity > 0 else 0


def l2(capacity: int, sizes: Sequence[int]) -> int:
    """Martello-Toth L2: for every threshold k, items above capacity-k each need their own bin, items above half
    each need their own bin too, and what the mid-sized items can't fit into the slack of those bins needs more.
    Computed over the distinct sizes with their counts: a fleet has 100,000 replicas of a few sizes."""
    if capacity <= 0 or not sizes:
        return 0
    best = l1(capacity, sizes)
    counts = Counter(sizes)
    distinct = sorted(counts, reverse=True)
    half = capacity / 2
    for k in sorted({s for s in distinct if s <= half} | {0}):
        big = sum(counts[s] for s in distinct if s > capacity - k)
        mid_count = sum(counts[s] for s in distinct if capacity - k >= s > half)
        mid_total = sum(s * counts[s] for s in distinct if capacity - k >= s > half)
        small = sum(s * counts[s] for s in distinct if half >= s >= k)
        spill = small - (mid_count * capacity - mid_total)
        best = max(best, big + mid_count + max(0, -(-spill // capacity)))
    return best


def gpus_needed(capacities: Sequence[int], sizes: Sequence[int]) -> int:
    """Fewest GPUs whose capacities could hold `sizes` in total (largest GPUs first); with one capacity, L2."""
    if not sizes:
        return 0
    if len(set(capacities)) == 1:
        return l2(capacities[0], sizes)
    need, total = sum(sizes), 0
    for count, cap in enumerate(sorted(capacities, reverse=True), start=1):
        total += cap
        if total >= need:
            return count
    return len(capacities)
