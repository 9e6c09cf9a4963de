"""What a watch loop acts on: a cluster (or a snapshot of one) already bound to observe, apply and a lease store.

``session`` builds one for plan-only runs (a snapshot or the pools' inventory), ``live`` for a Ray cluster; the loop
sees only this shape, so it never knows which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from reconciler.watch.controller import Apply, Observe


@dataclass(frozen=True, slots=True)
class WatchTarget:
    observe: Observe
    apply: Apply | None  # None: this target can't be acted on
    kv: Any  # where the lease lives
    describe: str
    close: Callable[[], None] = lambda: None
    probe: Callable[[], bool] | None = None  # cheap "changed since the last cycle?" between drift checks
    reachable: Callable[[], bool] = lambda: True  # does the cluster still answer at all?
    on_lost: Callable[[Callable[[str], None]], None] = lambda _: None  # register: called when it stops answering
    # Blocks for up to the given seconds (never returns at once with nothing to say: its caller loops on it); True
    # when a gateway started holding requests for a model with no replica.
    wake: Callable[[float], bool] | None = None
    # Serve's HTTP URL and the gateways' base URLs, for the status page: (None, []) without a cluster.
    endpoints: Callable[[], tuple[str | None, list[str]]] = lambda: (None, [])
