"""Lower bounds a placement is measured against: when it meets one, it is optimal.

`l2` is Martello and Toth's L2 bound on GPUs for one capacity; `gpus_needed` adapts the idea to the mixed pools of a
real cluster (GPUs of different sizes, replicas already pinned); `fullest_fill` bounds the spread policy's fullest GPU;
`level_rooms` bounds the VRAM the priority levels can place together.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from functools import reduce
from math import gcd


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


SUBSET_SUM_LIMIT = 4_000_000  # capacities above this many units are taken as they are (no subset sums)


def fullest_fill(capacities: Sequence[int], sizes: Sequence[int]) -> int:
    """Spread: the least per-mille fill the fullest GPU can have when all of `sizes` (one entry per GPU a replica
    uses) are placed. Fill f is possible only if the largest load each GPU can hold under f, a subset sum of the
    sizes, adds up to their total; the least such f is found by bisection (subset sums by bitset, per distinct
    capacity, sizes of one value taken in binary-split chunks)."""
    if not sizes or not capacities:
        return 0
    unit = reduce(gcd, sizes)
    units = Counter(s // unit for s in sizes)
    total = sum(s * n for s, n in units.items())
    per_cap = Counter(capacities)

    def holds(f: int) -> bool:
        room = 0
        for cap, count in per_cap.items():
            limit = f * cap // 1000 // unit
            room += count * reachable(units, limit)
            if room >= total:
                return True
        return False

    lo, hi = 0, 1000
    if not holds(hi):
        return 1000
    while lo < hi:
        mid = (lo + hi) // 2
        if holds(mid):
            hi = mid
        else:
            lo = mid + 1
    return lo


def reachable(units: Counter, limit: int) -> int:
    """The largest sum at most `limit` of some of the sizes (`units`: size -> how often it occurs); the limit itself
    when it is above `SUBSET_SUM_LIMIT`."""
    if limit <= 0:
        return 0
    total = sum(s * n for s, n in units.items())
    if total <= limit:
        return total
    if limit > SUBSET_SUM_LIMIT:
        return limit
    mask = (1 << (limit + 1)) - 1
    reach = 1
    for size, count in units.items():
        chunk = 1
        while count > 0:
            take = min(chunk, count)
            reach = (reach | (reach << (size * take))) & mask
            count -= take
            chunk *= 2
    return reach.bit_length() - 1


def level_rooms(capacities: Sequence[int], levels: Sequence[Sequence[tuple[int, int]]], unit: int) -> list[int]:
    """Per level (highest first), the most VRAM, in units, that level and the levels above can hold together: the
    sum over GPUs of the largest subset sum, within the GPU's capacity, of what may go on it. `levels` gives per
    level (VRAM on one GPU in units, how many may share one GPU) of its replicas; a replica too large for a GPU is
    left out of that GPU's sums."""
    out: list[int] = []
    sizes: Counter[int] = Counter()
    per_cap = Counter(capacities)
    for level in levels:
        for size, count in level:
            sizes[size] += count
        room = 0
        for cap, gpus in per_cap.items():
            limit = cap // unit
            fitting = Counter({s: n for s, n in sizes.items() if s <= limit})
            room += gpus * reachable(fitting, limit)
        out.append(room)
    return out

