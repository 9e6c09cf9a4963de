"""Where revisions live: one key per revision in the cluster's key-value store (Ray's GCS, see ``kv``).

``revision/<number>`` holds a compressed ``Revision``. Numbers only grow: a new one is claimed with put-if-absent
on the number after the highest, so two reconcilers recording at once never share one (the apply lock makes that
rare anyway). Only the newest ``keep`` are kept.

    revision = append(kv, lambda number: Revision(number=number, ...), keep=50)
    put(kv, revision.finish(results=..., ended=time.time()))
    history(kv)   # oldest first, each as it reads now (an apply that died reads as interrupted)
"""

from __future__ import annotations

from collections.abc import Callable

from reconciler.adapter.kv import KV
from reconciler.adapter.lease import describe
from reconciler.revision import Revision, settle

PREFIX = "revision/"


def key(number: int) -> str:
    return f"{PREFIX}{number:012d}"


def numbers(kv: KV) -> list[int]:
    """Every stored revision's number, oldest first."""
    return sorted(int(k[len(PREFIX):]) for k in kv.keys(PREFIX) if k[len(PREFIX):].isdigit())


def append(kv: KV, make: Callable[[int], Revision], *, keep: int) -> Revision:
    """Store a new revision under the next free number (``make`` builds it for that number); drop the oldest."""
    for _ in range(100):
        existing = numbers(kv)
        number = existing[-1] + 1 if existing else 1
        revision = make(number)
        if kv.put_if_absent(key(number), revision.to_bytes()):
            for old in existing[: max(0, len(existing) + 1 - keep)]:
                kv.delete(key(old))
            return revision
    raise RuntimeError("could not claim a revision number: another reconciler keeps taking the next one")


def put(kv: KV, revision: Revision) -> None:
    """Store a revision again under its own number (when its apply ended)."""
    kv.put(key(revision.number), revision.to_bytes())


def _holder_token(kv: KV, now: float) -> str | None:
    lease = describe(kv)
    return None if lease is None or lease.free(now) else lease.holder.token


def get(kv: KV, number: int, *, now: float) -> Revision | None:
    data = kv.get(key(number))
    return None if data is None else settle(Revision.from_bytes(data), holder_token=_holder_token(kv, now))


def history(kv: KV, *, now: float, last: int | None = None) -> list[Revision]:
    """The stored revisions, oldest first (only the newest ``last`` when given), each settled."""
    token = _holder_token(kv, now)
    found = numbers(kv)
    out = []
    for number in found[-last:] if last else found:
        data = kv.get(key(number))
        if data is not None:  # trimmed between listing and reading
            out.append(settle(Revision.from_bytes(data), holder_token=token))
    return out


def latest_number(kv: KV) -> int | None:
    found = numbers(kv)
    return found[-1] if found else None
