"""Watch bound to a live Ray cluster: the adapter's observe, the executor's apply, the lease in the cluster's GCS.

The only module of the watch package that reaches Ray, and only through the adapter and the executor.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO

from reconciler.adapter.lease import RayKV
from reconciler.desired import DesiredState
from reconciler.observed import ObservedState
from reconciler.plan import Plan
from reconciler.watch.controller import ActionResult
from reconciler.watch.session import Cluster


def connect_live(address: str | None, *, progress: IO[str] | None = None) -> Cluster:
    from reconciler import adapter
    from reconciler.executor.progress import Progress
    from reconciler.executor.run import Executor

    cluster = adapter.connect(address)
    try:
        cluster.ray_nodes()  # connects the driver: the lease lives in this cluster's GCS
        kv = RayKV()
    except BaseException:
        cluster.close()
        raise
    stream = progress if progress is not None else sys.stdout

    def apply(plan: Plan, desired: DesiredState, observed: ObservedState) -> Sequence[ActionResult]:
        # A fresh Progress per apply: it keeps per-apply rows; plain lines, never a live table, in a long-running log.
        executor = Executor(cluster, progress=Progress(stream, live=False))
        report = executor.apply(plan, desired, observed)
        return [ActionResult(action=o.action, ok=o.ok, error="" if o.ok else o.message) for o in report.outcomes]

    return Cluster(observe=cluster.observe, apply=apply, kv=kv, describe=f"the Ray cluster at {cluster.address}",
                   close=cluster.close)


def observe_once(address: str | None, desired: DesiredState | None) -> ObservedState:
    """One observation through a connection of its own (benchmarks and tests)."""
    from reconciler import adapter

    with adapter.connect(address) as cluster:
        return cluster.observe(desired)
