"""Keeping a held lease alive from a daemon thread, and taking it again when it merely ran out.

The thread renews every ``ttl / 3`` and publishes the holder's status with each renewal. Whether a lost lease may be
taken again is decided by ``retake_after`` (pure, table-tested); the keeper only reads the store, waits outside its
lock and acquires.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from reconciler.adapter.lease import Lease, LeaseLost, LeaseRecord, acquire, key


def retake_after(*, mine: LeaseRecord, stored: LeaseRecord | None, taken_over: bool, now: float,
                 margin: float) -> float | None:
    """Seconds to wait before taking a lost lease again as the next generation, or None when it must not be.

    A lease that ran out (this process, or a GCS busy starting fifty replicas, was too slow to renew it in time)
    while nobody took it may be taken again, exactly as a newcomer would take it: the store's put-if-absent still
    decides. Never when another reconciler took it over, the record is gone (an operator breaking the lock) or it
    was released. Not while it is still valid by our own clock; inside the safety margin, once it has run out for
    everyone."""
    if taken_over or stored is None or stored.released or stored.holder.token != mine.holder.token:
        return None
    left = stored.expires - now
    if left > margin:
        return None
    return max(0.0, left + 0.05) if left > 0 else 0.0


class LeaseKeeper:
    """Renews a lease every ``ttl / 3`` from a daemon thread; calls ``on_lost`` once if it is lost.

    ``status`` is read at each renewal, so the holder's published status stays current without extra writes.
    """

    def __init__(self, lease: Lease, *, on_lost: Callable[[LeaseLost], None],
                 status: Callable[[], dict[str, Any]] = dict,
                 on_retaken: Callable[[Lease], None] = lambda _: None) -> None:
        self.lease = lease
        self.on_lost = on_lost
        self.status = status
        self.on_retaken = on_retaken
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler-lease", daemon=True)

    def start(self) -> "LeaseKeeper":
        self._thread.start()
        return self

    def confirm(self) -> None:
        try:
            with self._lock:
                self.lease.confirm()
        except LeaseLost:
            if not self._retake():
                raise

    def valid(self) -> bool:
        return self.lease.valid()

    def stop(self, *, release: bool = True) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        if release:
            with self._lock:
                self.lease.release()

    def _run(self) -> None:
        while not self._stop.wait(self.lease.ttl / 3):
            try:
                with self._lock:
                    self.lease.renew(status=self.status())
            except LeaseLost as lost:
                if self._retake():
                    continue
                if not self._stop.is_set():
                    self.on_lost(lost)
                return
            except Exception as exc:  # the store is briefly unreachable: keep trying until the lease runs out
                if not self.lease.valid():
                    if self._retake():
                        continue
                    self.on_lost(LeaseLost(f"lost the cluster's apply lock: could not renew it ({exc})"))
                    return

    def _retake(self) -> bool:
        """Take the lease again where ``retake_after`` allows; the wait happens outside the lock, so ``confirm``
        and ``stop`` are never held up by it."""
        lease = self.lease
        try:
            with self._lock:
                data = lease.kv.get(key(lease.generation))
                wait = retake_after(
                    mine=lease.record,
                    stored=None if data is None else LeaseRecord.from_bytes(data),
                    taken_over=lease.kv.get(key(lease.generation + 1)) is not None,
                    now=lease.clock(),
                    margin=lease.margin,
                )
            if wait is None:
                return False
            if wait > 0 and self._stop.wait(wait):
                return False
            with self._lock:
                fresh = acquire(lease.kv, holder=lease.record.holder, ttl=lease.ttl, margin=lease.margin,
                                clock=lease.clock, status=self.status())
                self.lease = fresh
        except Exception:  # noqa: BLE001 - taken meanwhile (LeaseHeld) or the store is unreachable: it is lost
            return False
        self.on_retaken(fresh)
        return True
