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
    lease.renew(status={...})   # every ttl/3, or let LeaseKeeper do it
    lease.release()
    describe(RayKV())           # the current record, or None
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
from typing import Any, Protocol

from reconciler.errors import TransientError

NAMESPACE = "reconciler"
PREFIX = "lease/apply/"


class KV(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def put_if_absent(self, key: str, value: bytes) -> bool: ...  # True when this call created it
    def delete(self, key: str) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...


class RayKV:
    """Ray's GCS internal KV: of the cluster this process is connected to (after ``ray.init``), or of the GCS at
    an address (``RayKV.at("127.0.0.1:6379")``, no driver needed)."""

    def __init__(self, gcs_client: Any = None, namespace: str = NAMESPACE) -> None:
        if gcs_client is None:
            from ray.experimental import internal_kv  # the adapter is the one place that imports ray

            if not internal_kv._internal_kv_initialized():
                raise RuntimeError("RayKV needs a connected Ray driver (the adapter's connect()) or a GCS address")
            gcs_client = internal_kv.internal_kv_get_gcs_client()
        self._gcs = gcs_client
        self._namespace = namespace.encode()

    @classmethod
    def at(cls, gcs_address: str, namespace: str = NAMESPACE) -> "RayKV":
        from ray._raylet import GcsClient

        return cls(GcsClient(address=gcs_address), namespace)

    def get(self, key: str) -> bytes | None:
        return self._gcs.internal_kv_get(key.encode(), self._namespace)

    def put(self, key: str, value: bytes) -> None:
        self._gcs.internal_kv_put(key.encode(), value, True, self._namespace)

    def put_if_absent(self, key: str, value: bytes) -> bool:
        # The GCS answers how many keys the call added: 0 when the key was already there (and is left unchanged).
        return self._gcs.internal_kv_put(key.encode(), value, False, self._namespace) == 1

    def delete(self, key: str) -> None:
        self._gcs.internal_kv_del(key.encode(), False, self._namespace)

    def keys(self, prefix: str) -> list[str]:
        return [k.decode() for k in self._gcs.internal_kv_keys(prefix.encode(), self._namespace)]


class MemoryKV:
    """The same contract in one process's memory: for a reconciler without a cluster, and for tests of the logic."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = value

    def put_if_absent(self, key: str, value: bytes) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = value
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._data if k.startswith(prefix)]


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


def _key(generation: int) -> str:
    return f"{PREFIX}{generation:012d}"


def _generations(kv: KV) -> list[int]:
    return sorted((int(k[len(PREFIX):]) for k in kv.keys(PREFIX) if k[len(PREFIX):].isdigit()), reverse=True)


def describe(kv: KV) -> LeaseRecord | None:
    """The current lease record (held, expired or released), or None when no reconciler ever took one."""
    for _ in range(5):  # a generation may be garbage-collected between listing and reading it
        for generation in _generations(kv):
            data = kv.get(_key(generation))
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
        current = self.kv.get(_key(self.generation))
        if current is None or LeaseRecord.from_bytes(current).holder.token != self.record.holder.token:
            self._lose("the lease record is gone or belongs to someone else")
        if self.kv.get(_key(self.generation + 1)) is not None:
            self._lose(f"taken over by {describe(self.kv).holder if describe(self.kv) else 'another reconciler'}")

    def renew(self, *, status: dict[str, Any] | None = None) -> None:
        self.confirm()
        now = self.clock()
        record = replace(self.record, renewed=now, expires=now + self.ttl,
                         status=self.record.status if status is None else status)
        self.kv.put(_key(self.generation), record.to_bytes())
        self.record = record
        # A taker that read the old record as expired just before our write may have created the next generation.
        if self.kv.get(_key(self.generation + 1)) is not None:
            self._lose("taken over while renewing")

    def release(self) -> None:
        """Give the lock up so the next reconciler needn't wait for the expiry. Idempotent; never raises LeaseLost."""
        if self.lost:
            return
        self.lost = True
        if self.kv.get(_key(self.generation + 1)) is not None:
            return
        current = self.kv.get(_key(self.generation))
        if current is not None and LeaseRecord.from_bytes(current).holder.token == self.record.holder.token:
            self.kv.put(_key(self.generation), replace(self.record, released=True).to_bytes())

    def _lose(self, why: str) -> None:
        self.lost = True
        raise LeaseLost(f"lost the cluster's apply lock: {why}")


def acquire(kv: KV, *, holder: Holder, ttl: float = 15.0, margin: float | None = None,
            clock: Callable[[], float] = time.time, status: dict[str, Any] | None = None) -> Lease:
    """Take the lease, or raise LeaseHeld naming who has it. Never waits: see ``wait_acquire``."""
    if ttl <= 0:
        raise ValueError("ttl must be positive")
    margin = ttl / 5 if margin is None else margin
    now = clock()
    current = describe(kv)
    if current is not None and not current.free(now):
        raise LeaseHeld(current, now)
    generation = 1 if current is None else current.generation + 1
    record = LeaseRecord(generation=generation, holder=holder, renewed=now, expires=now + ttl, status=status or {})
    if not kv.put_if_absent(_key(generation), record.to_bytes()):
        winner = describe(kv)
        raise LeaseHeld(winner if winner is not None else record, now)
    for old in _generations(kv):
        if old < generation:
            kv.delete(_key(old))
    return Lease(kv, record, ttl=ttl, margin=margin, clock=clock)


def wait_acquire(kv: KV, *, holder: Holder, ttl: float = 15.0, stop: threading.Event,
                 on_wait: Callable[[LeaseHeld], None] = lambda _: None, poll: float = 1.0) -> Lease | None:
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
        with self._lock:
            try:
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
                with self._lock:
                    if self._retake():
                        continue
                self.on_lost(lost)
                return
            except Exception as exc:  # the store is briefly unreachable: keep trying until the lease runs out
                if not self.lease.valid():
                    with self._lock:
                        if self._retake():
                            continue
                    self.on_lost(LeaseLost(f"lost the cluster's apply lock: could not renew it ({exc})"))
                    return

    def _retake(self) -> bool:
        """Called with the lock held, once the lease is lost. A lease that merely ran out (this process, or a GCS
        busy starting fifty replicas, was too slow to renew it in time) while nobody took it is taken again, as the
        next generation, exactly as a newcomer would take it: the store's put-if-absent still decides. Never when
        another reconciler took it over or the record was removed (an operator breaking the lock)."""
        lease = self.lease
        try:
            if lease.kv.get(_key(lease.generation + 1)) is not None:
                return False
            data = lease.kv.get(_key(lease.generation))
            if data is None:
                return False
            record = LeaseRecord.from_bytes(data)
            if record.holder.token != lease.record.holder.token or record.released:
                return False
            left = record.expires - lease.clock()
            if left > lease.margin:  # not expired by our own clock's reckoning: nothing to retake
                return False
            if left > 0:  # inside the safety margin: let it run out for everyone first
                time.sleep(left + 0.05)
            fresh = acquire(lease.kv, holder=lease.record.holder, ttl=lease.ttl, margin=lease.margin,
                            clock=lease.clock, status=self.status())
        except Exception:  # noqa: BLE001 - taken meanwhile (LeaseHeld) or the store is unreachable: it is lost
            return False
        self.lease = fresh
        self.on_retaken(fresh)
        return True


def status_lines(record: LeaseRecord | None, now: float | None = None) -> list[str]:
    """What `reconciler status` shows about the apply lock and what its holder published (crash-loop backoff).

        record = describe(RayKV())          # after the adapter connected
        for line in status_lines(record): print(line)
    """
    if record is None:
        return ["apply lock: free (no reconciler has taken it)"]
    now = time.time() if now is None else now
    if record.free(now):
        return [f"apply lock: free (last {record.describe(now)})"]
    lines = [f"apply lock: {record.describe(now)}"]
    status = record.status
    revision, broken = status.get("revision"), status.get("brokenRevision")
    if status.get("git"):
        git = status["git"]
        applied = f'{revision["commit"][:7]} "{revision["subject"]}"' if revision else "none yet"
        lines.append(f"  revision: {applied} of {git['url']} (branch {git['branch']}, {git['path']})")
    if broken:
        lines.append(f'  not applied: commit {broken["commit"][:7]} "{broken["subject"]}" has invalid specs')
    if status.get("specValid") is False:
        lines.append("  specs invalid: the watcher keeps enforcing the last good desired state "
                     f"({status.get('desiredFingerprint')})")
    for held in status.get("backoff", []):
        left = held.get("retryAt", 0) - now
        when = f"next try in {left:.0f} s" if left > 0 else "retrying now"
        lines.append(f"  crash loop: {held['model']}#{held['replica']}: {held['failures']} failures, {when}; last: "
                     f"{held.get('reason') or 'unknown'}")
    return lines
