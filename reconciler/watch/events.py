"""Structured events of the watch loop: one JSON object per line for machines, one short line for people.

Every event has ``time`` (UTC, ISO 8601 with milliseconds), ``event`` (its kind) and ``message`` (the human line);
the other fields depend on the kind and are documented with ``Kind``. Sinks are plain text streams, so a test reads
the events back with ``json.loads`` per line.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any, TextIO

from reconciler.plan import SYMBOLS, Action


class Kind(StrEnum):
    STARTED = "started"  # directory, address, interval, heal, planOnly
    LEASE = "lease"  # holder, generation: the apply lock was taken
    LEASE_LOST = "lease-lost"  # holder: someone else holds it now; the watcher stops
    SPEC_INVALID = "spec-invalid"  # diagnostics: ["path:line:col: error: ..."], keeping: desired fingerprint or null
    SPEC_LOADED = "spec-loaded"  # fingerprint, models
    REVISION = "revision"  # commit, subject, url, branch, path: watch --git applies a new revision
    REVISION_INVALID = "revision-invalid"  # commit, subject, ..., keeping, diagnostics: a commit that is not applied
    PLAN = "plan"  # cause, summary, actions, unplaced, fingerprint, desiredFingerprint
    DRIFT = "drift"  # actions: the cluster moved away from the applied desired state
    # model, replica, app, node, gpus, planned, measured, source, neighbours: a replica measured above its planned VRAM
    # (once per replica until it is back within it)
    OVERRUN = "overrun"
    ENGINE_DIED = "engine-died"  # model, replica, app, node, gpus, reason, at: a replica's engine died; Serve replaces it
    SKIPPED = "skipped"  # why: plan-only | no-heal | backoff | stopping; actions
    BACKOFF = "backoff"  # model, replica, failures, retryAt, reason
    SCALE = "scale"  # model, running, wanted, rule, reason, inFlight, queued: an on-demand model's count changes
    APPLY = "apply"  # actions: an apply starts
    ACTION = "action"  # action, model, replica, from, to, ok, error
    APPLIED = "applied"  # ok, failed, seconds
    FAILURE = "failure"  # stage (load|observe|plan|apply|fetch), error, temporary, retryIn
    CYCLE = "cycle"  # cause, seconds, acted
    RECONNECTED = "reconnected"  # cluster: the cluster was lost and answers again; the watcher carries on
    STOPPED = "stopped"  # why


def action_line(action: Action) -> str:
    where = " → ".join(str(x) for x in (action.source, action.target) if x is not None)
    return f"{SYMBOLS[action.kind]} {action.kind} {action.replica_id} {where}: {action.reason}"


def _timestamp(now: float) -> str:
    return datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class EventLog:
    """Writes each event to a JSON-lines sink and/or a human sink; safe to call from several threads."""

    def __init__(self, *, json_sink: TextIO | None = None, text_sink: TextIO | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.json_sink = json_sink
        self.text_sink = text_sink
        self.clock = clock
        self._lock = threading.Lock()

    def emit(self, kind: Kind, message: str, /, *, detail: list[str] | None = None, human: bool = True,
             **fields: Any) -> dict[str, Any]:
        """``detail`` lines go to the human log under the message (diagnostics, actions); JSON has them in fields.
        ``human=False`` keeps a routine event (another in-sync cycle) out of the human log; JSON gets everything."""
        now = self.clock()
        record = {"time": _timestamp(now), "event": str(kind), "message": message, **fields}
        with self._lock:
            if self.json_sink is not None:
                self.json_sink.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
                self.json_sink.flush()
            if self.text_sink is not None and human:
                stamp = datetime.fromtimestamp(now).strftime("%H:%M:%S")
                lines = [f"{stamp} {message}"] + [f"         {line}" for line in detail or ()]
                self.text_sink.write("\n".join(lines) + "\n")
                self.text_sink.flush()
        return record
