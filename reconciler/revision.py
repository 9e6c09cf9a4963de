"""A revision: one apply that changed the cluster, as recorded in it (Argo CD's sync history, Helm's releases).

Each records who applied what from where, the desired state and the plan (both whole, so `reconciler history N`
can show the plan and diff the specs, and `reconciler rollback N` can plan them again), the actions with their
reasons, and what came of it. Pure data: the adapter stores it (``adapter.revisions``), the executor fills it in
(``executor.record``), the renderers show it.

An apply writes its revision before it starts (outcome ``applying``) and again when it ends, so one whose process
died midway is still there; it reads as ``interrupted`` once the apply lock is no longer held by it (``settle``).
"""

from __future__ import annotations

import json
import zlib
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from enum import StrEnum
from typing import Any

from reconciler.desired import DesiredState, canonical_json, desired_from_json, desired_to_json
from reconciler.plan import Plan, action_to_json, digest, from_json, replica_id, to_json

RECORD_FORMAT = 1


class Outcome(StrEnum):
    APPLYING = "applying"  # still running (or its process died: see ``settle``)
    CONVERGED = "converged"  # every action succeeded
    FAILED = "failed"  # an action failed, or the apply raised
    INTERRUPTED = "interrupted"  # stopped before it ended (a signal, a lost lock or cluster, a killed process)


@dataclass(frozen=True, slots=True)
class Who:
    host: str
    user: str
    pid: int
    command: str

    def __str__(self) -> str:
        return f"{self.user}@{self.host} (pid {self.pid}, `{self.command}`)"

    def to_json(self) -> dict[str, Any]:
        return {"host": self.host, "user": self.user, "pid": self.pid, "command": self.command}


@dataclass(frozen=True, slots=True)
class Source:
    """Where the specs came from: a directory (in a git work tree or not), a followed branch, or a saved plan."""

    directory: str | None = None  # as given, or the path inside the followed repository
    repository: str | None = None  # the followed remote (watch --git); None for a local directory
    commit: str | None = None  # the commit the specs are at, when in git
    subject: str | None = None  # its subject line
    dirty: bool = False  # a local directory with uncommitted changes to its specs: the commit is not all of it
    plan_file: str | None = None  # `apply --plan FILE`

    def __str__(self) -> str:
        if self.plan_file is not None:
            return f"saved plan {self.plan_file}"
        where = f"{self.repository} {self.directory or '.'}" if self.repository else (self.directory or "?")
        if self.commit is None:
            return where
        return f"{where} at {self.commit[:12]}{' (modified)' if self.dirty else ''}"

    def to_json(self) -> dict[str, Any]:
        return {"directory": self.directory, "repository": self.repository, "commit": self.commit,
                "subject": self.subject, "dirty": self.dirty, "planFile": self.plan_file}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Source":
        return cls(directory=data["directory"], repository=data["repository"], commit=data["commit"],
                   subject=data["subject"], dirty=data["dirty"], plan_file=data["planFile"])


@dataclass(frozen=True, slots=True)
class Result:
    """What one action of the plan came to."""

    ok: bool
    message: str = ""


@dataclass(frozen=True, slots=True)
class Revision:
    number: int
    at: float  # unix seconds the apply started
    by: Who
    source: Source
    cause: str  # why it was applied, in words: "apply", "spec change", "drift", "rollback to 3"
    plan: Plan
    desired: DesiredState | None  # None for a saved plan applied without its specs
    outcome: Outcome = Outcome.APPLYING
    reason: str = ""  # why the outcome (empty while applying)
    results: tuple[Result, ...] = ()  # one per action once it ended
    ended: float | None = None
    token: str = ""  # the apply lock's holder token while applying: tells a live apply from a dead one

    @property
    def desired_fingerprint(self) -> str:
        return self.plan.desired_fingerprint

    @property
    def plan_digest(self) -> str:
        return digest(to_json(self.plan))

    def finish(self, *, results: tuple[Result, ...] = (), outcome: Outcome | None = None, reason: str = "",
               ended: float) -> "Revision":
        """The revision once its apply ended: by its results, unless an outcome is given (it raised, or stopped)."""
        if outcome is None:
            outcome, reason = conclude(self, results)
        return replace(self, outcome=outcome, reason=reason, results=results, ended=ended)

    def to_json(self) -> dict[str, Any]:
        return {
            "format": RECORD_FORMAT,
            "revision": self.number,
            "at": self.at,
            "by": self.by.to_json(),
            "source": self.source.to_json(),
            "cause": self.cause,
            "desiredFingerprint": self.desired_fingerprint,
            "planDigest": self.plan_digest,
            "outcome": str(self.outcome),
            "reason": self.reason,
            "results": [{"ok": r.ok, "message": r.message} for r in self.results],
            "ended": self.ended,
            "token": self.token,
            "plan": to_json(self.plan),
            "desired": None if self.desired is None else desired_to_json(self.desired),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Revision":
        return cls(
            number=data["revision"], at=data["at"], by=Who(**data["by"]), source=Source.from_json(data["source"]),
            cause=data["cause"], plan=from_json(data["plan"]),
            desired=None if data["desired"] is None else desired_from_json(data["desired"]),
            outcome=Outcome(data["outcome"]), reason=data["reason"],
            results=tuple(Result(r["ok"], r["message"]) for r in data["results"]), ended=data["ended"],
            token=data["token"],
        )

    def to_bytes(self) -> bytes:
        """Compressed: a desired state and plan of a few hundred replicas shrink about tenfold."""
        return zlib.compress(canonical_json(self.to_json()).encode(), 6)

    @classmethod
    def from_bytes(cls, data: bytes) -> "Revision":
        return cls.from_json(json.loads(zlib.decompress(data)))


def conclude(revision: Revision, results: tuple[Result, ...]) -> tuple[Outcome, str]:
    failed = [(a, r) for a, r in zip(revision.plan.actions, results) if not r.ok]
    if not failed:
        return Outcome.CONVERGED, ""
    first = "; ".join(f"{replica_id(a.model, a.replica)}: {r.message}" for a, r in failed[:3])
    more = f"; and {len(failed) - 3} more" if len(failed) > 3 else ""
    return Outcome.FAILED, f"{len(failed)} of {len(results)} actions failed: {first}{more}"


def settle(revision: Revision, *, holder_token: str | None) -> Revision:
    """How a revision reads now: one still ``applying`` whose token no longer holds the apply lock was interrupted
    (its process died, or lost the cluster, before it could say how it ended). ``holder_token``: the token of the
    live lock's holder, None when nobody holds it."""
    if revision.outcome is not Outcome.APPLYING or (holder_token is not None and holder_token == revision.token):
        return revision
    return replace(revision, outcome=Outcome.INTERRUPTED,
                   reason="the apply stopped before it ended: its process exited or lost the cluster's apply lock")


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def summary_json(revision: Revision) -> dict[str, Any]:
    """One row of `reconciler history --format json` (the interface scripts rely on)."""
    return {
        "revision": revision.number,
        "at": iso(revision.at),
        "by": revision.by.to_json(),
        "source": str(revision.source),
        "commit": revision.source.commit,
        "subject": revision.source.subject,
        "cause": revision.cause,
        "actions": len(revision.plan.actions),
        "outcome": str(revision.outcome),
        "reason": revision.reason,
        "desiredFingerprint": revision.desired_fingerprint,
        "planDigest": revision.plan_digest,
    }


def detail_json(revision: Revision) -> dict[str, Any]:
    """`reconciler history N --format json`: the row, then each action with its reason and what came of it."""
    results = revision.results or tuple(Result(ok=False, message="") for _ in revision.plan.actions)
    done = bool(revision.results)
    return {
        **summary_json(revision),
        "ended": iso(revision.ended) if revision.ended is not None else None,
        "plan": [{**action_to_json(a), "ok": r.ok if done else None, "message": r.message}
                 for a, r in zip(revision.plan.actions, results)],
    }
