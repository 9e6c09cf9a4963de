"""The adapter: every call reconciler makes to Ray goes through this package.

``connect(address)`` resolves the cluster (``--address``, ``RAY_ADDRESS``, or the local cluster `reconciler up`
started), authenticates with Ray's token, and returns a ``Cluster`` with ``observe(desired)``, the Serve primitives
the executor uses (``serve_details``, ``put_serve_config``, ``wait_serve``, ``pending_actors``) and ``close()``.
Ray itself is imported only when a connection is made.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from reconciler.adapter.cluster import Cluster


def connect(address: str | None = None, *, connect_timeout: float | None = None) -> "Cluster":
    from reconciler.adapter.cluster import connect as _connect

    return _connect(address, connect_timeout=connect_timeout)


__all__ = ["connect"]
