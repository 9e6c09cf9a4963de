"""Crash-loop backoff per replica: a replica that keeps failing is re-created less and less often.

Pure: the clock is an argument and nothing here talks to the cluster. The controller tells it what it tried and
what it then observed; it answers which replicas must be left alone for now, and why. A replica in backoff never
holds up the others: only its own actions are deferred.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from reconciler.desired import DesiredState
from reconciler.observed import ObservedState, ReplicaState
from reconciler.plan import Action, ActionKind, Plan

ReplicaKey = tuple[str, int]

# Actions that start a replica: the ones a crash loop repeats and backoff defers. Deletes and evictions free VRAM
# and always go ahead.
STARTS = frozenset({ActionKind.CREATE, ActionKind.REPLACE, ActionKind.MOVE})


@dataclass(slots=True)
class Entry:
    restart_hash: str  # the spec that keeps failing; a changed spec starts over
    failures: int = 0
    retry_at: float = 0.0
    reason: str = ""
    attempted: bool = False  # started again since the last failure was counted
    running_since: float | None = None


@dataclass(frozen=True, slots=True)
class Held:
    model: str
    replica: int
    failures: int
    retry_at: float
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "replica": self.replica,
            "failures": self.failures,
            "retryAt": self.retry_at,
            "reason": self.reason,
        }


@dataclass(slots=True)
class Backoff:
    base: float = 5.0  # delay after the second failure in a row; the first is retried at once
    cap: float = 300.0
    stable: float = 60.0  # running this long with the same spec forgives past failures
    entries: dict[ReplicaKey, Entry] = field(default_factory=dict)

    def delay(self, failures: int) -> float:
        # A replica that died once (a node lost, someone killed it) is re-created straight away; only a second
        # failure with the same spec looks like a crash loop.
        if failures <= 1:
            return 0.0
        return min(self.cap, self.base * 2 ** (failures - 2))

    def note_failure(self, key: ReplicaKey, *, restart_hash: str, reason: str, now: float) -> None:
        entry = self.entries.get(key)
        if entry is None or entry.restart_hash != restart_hash:
            entry = self.entries[key] = Entry(restart_hash=restart_hash)
        elif entry.failures and not entry.attempted:
            # The same incident seen again (still failed, nothing tried since): one failure, not one per cycle.
            entry.reason = reason or entry.reason
            return
        entry.failures += 1
        entry.retry_at = now + self.delay(entry.failures)
        entry.reason = reason
        entry.attempted = False
        entry.running_since = None

    def note_started(self, key: ReplicaKey, *, restart_hash: str) -> None:
        entry = self.entries.setdefault(key, Entry(restart_hash=restart_hash))
        entry.restart_hash = restart_hash
        entry.attempted = True

    def forget(self, key: ReplicaKey) -> None:
        """The replica is being removed on purpose (scaled down, evicted): when it is wanted again, it is new."""
        self.entries.pop(key, None)

    def observe(self, *, desired: DesiredState, observed: ObservedState, plan: Plan, now: float) -> None:
        """Count failures from what the cluster shows, and forgive replicas that stayed up.

        A failure is: a replica observed FAILED, or one we started that the plan wants to create again (it died and
        vanished since). A spec change of the model (new restart hash) clears its history.
        """
        hashes = {m.name: m.restart_hash for m in desired.models}
        for key in [k for k, e in self.entries.items() if hashes.get(k[0]) != e.restart_hash]:
            del self.entries[key]
        for replica in observed.replicas:
            restart_hash = hashes.get(replica.model)
            if restart_hash is None or replica.restart_hash != restart_hash:
                continue
            if replica.state is ReplicaState.FAILED:
                self.note_failure(replica.key, restart_hash=restart_hash, reason=replica.message or "failed",
                                  now=now)
            elif replica.state is ReplicaState.RUNNING and (entry := self.entries.get(replica.key)):
                if entry.running_since is None:
                    entry.running_since = now
                elif now - entry.running_since >= self.stable:
                    del self.entries[replica.key]
        for action in plan.actions:
            entry = self.entries.get((action.model, action.replica))
            # Only a create proves the replica is gone: a move of a healthy replica is the planner's choice.
            if action.kind is ActionKind.CREATE and entry is not None and entry.attempted and action.model in hashes:
                self.note_failure((action.model, action.replica), restart_hash=hashes[action.model],
                                  reason=f"gone again after being started ({action.reason})", now=now)

    def held(self, now: float) -> tuple[Held, ...]:
        return tuple(
            Held(model=k[0], replica=k[1], failures=e.failures, retry_at=e.retry_at, reason=e.reason)
            for k, e in sorted(self.entries.items())
            if e.failures and now < e.retry_at
        )

    def failing(self) -> tuple[Held, ...]:
        """Every replica with failures on record, held or due for its next try: what `status` shows."""
        return tuple(
            Held(model=k[0], replica=k[1], failures=e.failures, retry_at=e.retry_at, reason=e.reason)
            for k, e in sorted(self.entries.items())
            if e.failures
        )


def split(actions: Iterable[Action], held: Iterable[Held]) -> tuple[tuple[Action, ...], tuple[Action, ...]]:
    """(actions to run now, actions deferred by backoff)."""
    keys = {(h.model, h.replica) for h in held}
    run, deferred = [], []
    for action in actions:
        (deferred if action.kind in STARTS and (action.model, action.replica) in keys else run).append(action)
    return tuple(run), tuple(deferred)
