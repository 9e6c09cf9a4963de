"""The cluster-wide apply lock: a lease in Ray's GCS key-value store that only one reconciler holds at a time.

Why a lease and not a lock: a holder that dies (SIGKILL, a lost machine) cannot release anything, so the record
carries an expiry that the live holder pushes forward (``renew``) every ``ttl / 3``; once it passes, anyone may take
over. Why generations: the GCS store has put-if-absent but no compare-and-swap. Each lease is the key
``lease/apply/<generation>``; taking over an expired or released generation ``g`` means creating ``g + 1`` with
put-if-absent, so of two reconcilers racing for the same expired lease exactly one wins. The current lease is the
highest generation. A holder that finds ``g + 1`` exists, or that failed to renew before its own expiry, has lost the
lease and must stop acting. Expiry compares wall clocks of different hosts: keep them NTP-synced; the holder treats
its lease as over ``margin`` seconds before others may take it.

The holder also publishes a small ``status`` (what `reconciler status` shows: crash-loop backoff of replicas, the
last reconcile) with each renewal, so readers need no second key.

    lease = acquire(RayKV(), holder=Holder.current("reconciler watch specs/"), ttl=15)
    lease.renew(status={...})   # every ttl/3, or let keeper.LeaseKeeper do it
    lease.release()
    describe(RayKV())           # the current record, or None

The store is ``kv``; the thread that renews a held lease is ``keeper``.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime, timezone
from typing import Any

from reconciler.adapter.kv import KV
from reconciler.errors import TransientError
from reconciler.settings import DEFAULTS

PREFIX = "lease/apply/"


@dataclass(frozen=True, slots=True)
class Holder:
    host: str
    pid: int
    command: str
    since: float  # unix time the holder started trying
    token: str  # tells two holders apart even with the same host and pid (containers)

    @classmethod
    def current(cls, command: str) -> "Holder":
        return cls(host=socket.gethostname(), pid=os.getpid(), command=command, since=time.time(),
                   token=uuid.uuid4().hex)

    def __str__(self) -> str:
        return f"`{self.command}` (pid {self.pid} on {self.host}, since {_iso(self.since)})"


@dataclass(frozen=True, slots=True)
class LeaseRecord:
    generation: int
    holder: Holder
    renewed: float
    expires: float
    released: bool = False
    status: dict[str, Any] = field(default_factory=dict)

    def free(self, now: float) -> bool:
        return self.released or now >= self.expires

    def to_bytes(self) -> bytes:
        return json.dumps(asdict(self), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes) -> "LeaseRecord":
        raw = json.loads(data)
        return cls(**{**raw, "holder": Holder(**raw["holder"])})

    def describe(self, now: float) -> str:
        if self.released:
            return f"released by {self.holder}"
        left = self.expires - now
        state = f"expires in {left:.0f} s" if left > 0 else f"expired {-left:.0f} s ago"
        return f"held by {self.holder}, {state}"


class LeaseHeld(TransientError):
    def __init__(self, record: LeaseRecord, now: float) -> None:
        self.record = record
        super().__init__(
            f"the cluster's apply lock is {record.describe(now)}. Only one reconciler may apply to a cluster at a "
            f"time: stop that one, or wait for its lease to expire if it died."
        )


class LeaseLost(TransientError):
    pass


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def key(generation: int) -> str:
    return f"{PREFIX}{generation:012d}"


def _generations(kv: KV) -> list[int]:
    return sorted((int(k[len(PREFIX):]) for k in kv.keys(PREFIX) if k[len(PREFIX):].isdigit()), reverse=True)


def describe(kv: KV) -> LeaseRecord | None:
    """The current lease record (held, expired or released), or None when no reconciler ever took one."""
    for _ in range(5):  # a generation may be garbage-collected between listing and reading it
        for generation in _generations(kv):
            data = kv.get(key(generation))
            if data is not None:
                return LeaseRecord.from_bytes(data)
        if not _generations(kv):
            return None
    return None


class Lease:
    """A lease this process holds. Not thread-safe on its own: use it from one thread, or through LeaseKeeper."""

    def __init__(self, kv: KV, record: LeaseRecord, *, ttl: float, margin: float,
                 clock: Callable[[], float]) -> None:
        self.kv = kv
        self.record = record
        self.ttl = ttl
        self.margin = margin
        self.clock = clock
        self.lost = False

    @property
    def generation(self) -> int:
        return self.record.generation

    def valid(self, now: float | None = None) -> bool:
        """May the holder act now? False once lost, or when too close to the expiry others go by."""
        now = self.clock() if now is None else now
        return not self.lost and now < self.record.expires - self.margin

    def confirm(self) -> None:
        """Check the store, not just the local clock: call right before acting. Raises LeaseLost."""
        if not self.valid():
            self._lose("the lease expired before it could be renewed")
        current = self.kv.get(key(self.generation))
        if current is None or LeaseRecord.from_bytes(current).holder.token != self.record.holder.token:
            self._lose("the lease record is gone or belongs to someone else")
        if self.kv.get(key(self.generation + 1)) is not None:
            self._lose(f"taken over by {describe(self.kv).holder if describe(self.kv) else 'another reconciler'}")

    def renew(self, *, status: dict[str, Any] | None = None) -> None:
        self.confirm()
        now = self.clock()
        record = replace(self.record, renewed=now, expires=now + self.ttl,
                         status=self.record.status if status is None else status)
        self.kv.put(key(self.generation), record.to_bytes())
        self.record = record
        # A taker that read the old record as expired just before our write may have created the next generation.
        if self.kv.get(key(self.generation + 1)) is not None:
            self._lose("taken over while renewing")

    def release(self) -> None:
        """Give the lock up so the next reconciler needn't wait for the expiry. Idempotent; never raises LeaseLost."""
        if self.lost:
            return
        self.lost = True
        if self.kv.get(key(self.generation + 1)) is not None:
            return
        current = self.kv.get(key(self.generation))
        if current is not None and LeaseRecord.from_bytes(current).holder.token == self.record.holder.token:
            self.kv.put(key(self.generation), replace(self.record, released=True).to_bytes())

    def _lose(self, why: str) -> None:
        self.lost = True
        raise LeaseLost(f"lost the cluster's apply lock: {why}")


def holder_gone(holder: Holder) -> bool:
    """True when the holder was a process of this host that no longer runs: its lease need not run out first.

    A pid the system has since given to a younger process counts as gone too. A holder on another host may be alive
    for all this host can tell: its lease is left to expire.
    """
    if holder.host != socket.gethostname() or holder.pid == os.getpid():
        return False
    import psutil  # installed with Ray

    try:
        started = psutil.Process(holder.pid).create_time()
    except psutil.NoSuchProcess:
        return True
    except psutil.Error:
        return False
    return started > holder.since + 1.0  # the holder's process was older than its first attempt at the lock


def acquire(kv: KV, *, holder: Holder, ttl: float = DEFAULTS.lease.ttl, margin: float | None = None,
            clock: Callable[[], float] = time.time, status: dict[str, Any] | None = None,
            gone: Callable[[Holder], bool] = holder_gone) -> Lease:
    """Take the lease, or raise LeaseHeld naming who has it. Never waits: see ``wait_acquire``.

    A lease whose holder is ``gone`` (by default: a dead process on this host) is taken over at once, as if expired.
    """
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    margin = ttl / 5 if margin is None else margin
    now = clock()
    current = describe(kv)
    if current is not None and not current.free(now) and not gone(current.holder):
        raise LeaseHeld(current, now)
    generation = 1 if current is None else current.generation + 1
    record = LeaseRecord(generation=generation, holder=holder, renewed=now, expires=now + ttl, status=status or {})
    if not kv.put_if_absent(key(generation), record.to_bytes()):
        winner = describe(kv)
        raise LeaseHeld(winner if winner is not None else record, now)
    for old in _generations(kv):
        if old < generation:
            kv.delete(key(old))
    return Lease(kv, record, ttl=ttl, margin=margin, clock=clock)


def wait_acquire(kv: KV, *, holder: Holder, ttl: float = DEFAULTS.lease.ttl, stop: threading.Event,
                 on_wait: Callable[[LeaseHeld], None] = lambda _: None,
                 poll: float = DEFAULTS.lease.wait_poll) -> Lease | None:
    """Acquire, waiting while someone else holds it (a standby watcher). None when ``stop`` is set first."""
    reported = None
    while not stop.is_set():
        try:
            return acquire(kv, holder=holder, ttl=ttl)
        except LeaseHeld as held:
            if reported != held.record.generation:
                on_wait(held)
                reported = held.record.generation
        stop.wait(poll)
    return None
