"""Deciding, poll by poll, what became of the applications an apply waits for. Pure: no Ray, no clock, no sleep.

The executor's loop reads Serve, hands each open application's state to ``step`` with the time, and acts on what it
returns (progress lines, results); the timeouts and the pending grace live here, so they are table-tested.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from reconciler.observed import ReplicaState
from reconciler.settings import ApplySettings


@dataclass(frozen=True, slots=True)
class AppResult:
    ok: bool
    message: str


@dataclass(frozen=True, slots=True)
class Update:
    """One line of progress for an application, and its result once it has one."""

    app: str
    progress: str
    result: AppResult | None = None


@dataclass(frozen=True, slots=True)
class Waiting:
    begun: float
    running: frozenset[str]  # still to be seen running
    gone: frozenset[str]  # still to be seen gone
    pending_since: tuple[tuple[str, float], ...] = field(default=())  # when Ray was first seen holding one back

    @property
    def done(self) -> bool:
        return not self.running and not self.gone


# What Serve says of one application: None when it is not (or no longer) there, else its state and message.
Seen = tuple[ReplicaState, str] | None


def start(*, gone: Iterable[str], running: Iterable[str], now: float) -> Waiting:
    return Waiting(begun=now, running=frozenset(running), gone=frozenset(gone))


def give_up_unreachable(w: Waiting, *, now: float, settings: ApplySettings, gone: bool = False) -> bool:
    """Serve did not answer this poll: keep waiting (what was submitted goes on) until every timeout has passed,
    unless the cluster itself is `gone` (its GCS port refuses connections): then at once, since nothing submitted goes
    on there, and a driver left waiting on a GCS that is gone is ended by Ray's own reconnect timer (a minute)."""
    return gone or now - w.begun > max(settings.replica_timeout, settings.stop_timeout)


def step(
    w: Waiting,
    *,
    seen: Mapping[str, Seen],
    configs: Mapping[str, Mapping[str, Any]],
    now: float,
    settings: ApplySettings,
) -> tuple[Waiting, list[Update]]:
    """One poll: ``seen`` has every open application; ``configs`` the config each was submitted with."""
    updates: list[Update] = []
    gone, running = set(w.gone), set(w.running)
    pending_since = dict(w.pending_since)
    waited = now - w.begun
    for name in sorted(w.gone):
        if seen.get(name) is None:
            gone.discard(name)
            updates.append(Update(name, "stopped", AppResult(True, "stopped")))
        elif waited > settings.stop_timeout:
            gone.discard(name)
            updates.append(Update(name, "stop timed out",
                                  AppResult(False, f"still stopping after {settings.stop_timeout:.0f}s")))
        else:
            updates.append(Update(name, "stopping"))
    for name in sorted(w.running):
        state = seen.get(name)
        if state is None:
            updates.append(Update(name, "submitted"))
            continue
        replica, message = state
        if replica == ReplicaState.RUNNING:
            running.discard(name)
            updates.append(Update(name, "running", AppResult(True, "running")))
        elif replica == ReplicaState.FAILED:
            running.discard(name)
            why = message or "Serve reported the deployment failed"
            updates.append(Update(name, "FAILED", AppResult(False, f"failed: {why}")))
        elif replica == ReplicaState.PENDING:
            first = pending_since.setdefault(name, now)
            if now - first > settings.pending_grace:
                running.discard(name)
                updates.append(Update(name, "PENDING", AppResult(False, pending_message(
                    configs.get(name, {}), settings.pending_grace))))
            else:
                updates.append(Update(name, "pending (no room on its GPU)"))
        else:
            pending_since.pop(name, None)
            if waited > settings.replica_timeout:
                running.discard(name)
                updates.append(Update(name, "TIMED OUT", AppResult(
                    False, f"not running after {settings.replica_timeout:.0f}s: {message or 'still starting'}")))
            else:
                updates.append(Update(name, "starting"))
    after = replace(w, gone=frozenset(gone), running=frozenset(running),
                    pending_since=tuple(sorted(pending_since.items())))
    return after, updates


def pending_message(config: Mapping[str, Any], grace: float) -> str:
    deployments = config.get("deployments") or [{}]
    resources = (deployments[0].get("ray_actor_options") or {}).get("resources") or {}
    node = ((config.get("args") or {}).get("engine_config") or {}).get("node", "?")
    need = ", ".join(f"{k}={v}" for k, v in sorted(resources.items()))
    return (
        f"pending: Ray has not placed it after {grace:.0f}s; it needs {need} MiB on {node} and that GPU has no room "
        "for it (over-committed, or held by replicas still stopping)"
    )
