"""The memory peaks kept in the cluster: per kind of replica (``observed.peak_key``), the most its processes were seen
to use, when it was first and last seen, and how many observations said so.

They live in one value of the cluster's KV store (``adapter.kv``), so they outlast any one reconciler and are the same
for every reconciler that talks to the cluster. ``fold_peaks`` is the bookkeeping (pure: samples and the time in, the
bounded set of peaks out); ``PeakStore`` reads and writes that value. Two observers folding at the same moment may
lose one of the two samples (the last write wins): a peak is a running maximum, and the next observation restores it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from reconciler.adapter.kv import KV
from reconciler.observed import MemoryPeak, memory_peak_from_json, memory_peak_to_json

KEY = "memory-peaks"


def fold_peaks(
    peaks: Iterable[MemoryPeak], samples: Iterable[tuple[str, int]], *, now: float, limit: int
) -> tuple[MemoryPeak, ...]:
    """``peaks`` with one observation's ``samples`` (peak key, bytes per GPU) folded in, at most ``limit`` of them.

    Replicas of one kind measured in the same observation are one sample (its highest figure): ``samples`` counts
    observations, not replicas. Past the limit the kinds seen least recently go first: a model nobody runs any more
    is the one whose peak matters least.
    """
    by_key = {p.key: p for p in peaks}
    highest: dict[str, int] = {}
    for key, used in samples:
        highest[key] = max(highest.get(key, 0), int(used))
    for key, used in highest.items():
        old = by_key.get(key)
        if old is None:
            by_key[key] = MemoryPeak(key=key, peak_bytes=used, first_seen=now, last_seen=now, samples=1)
        else:
            by_key[key] = MemoryPeak(key=key, peak_bytes=max(old.peak_bytes, used), first_seen=min(old.first_seen, now),
                                     last_seen=max(old.last_seen, now), samples=old.samples + 1)
    kept = sorted(by_key.values(), key=lambda p: (-p.last_seen, p.key))[:max(0, limit)]
    return tuple(sorted(kept, key=lambda p: p.key))


def encode(peaks: Iterable[MemoryPeak]) -> bytes:
    return json.dumps([memory_peak_to_json(p) for p in peaks], sort_keys=True, separators=(",", ":")).encode()


def decode(raw: bytes | None) -> tuple[MemoryPeak, ...]:
    """The stored peaks; none when nothing or something unreadable is stored (it is rebuilt from the next samples)."""
    if not raw:
        return ()
    try:
        return tuple(sorted((memory_peak_from_json(p) for p in json.loads(raw)), key=lambda p: p.key))
    except (ValueError, KeyError, TypeError):
        return ()


class PeakStore:
    def __init__(self, kv: KV, *, limit: int) -> None:
        self.kv = kv
        self.limit = limit

    def read(self) -> tuple[MemoryPeak, ...]:
        return decode(self.kv.get(KEY))

    def record(self, samples: Iterable[tuple[str, int]], *, now: float) -> tuple[MemoryPeak, ...]:
        """Folds one observation's samples in and writes the result back; returns the peaks as now kept."""
        samples = list(samples)
        peaks = self.read()
        if not samples:
            return peaks
        folded = fold_peaks(peaks, samples, now=now, limit=self.limit)
        self.kv.put(KEY, encode(folded))
        return folded
