"""Watch bound to a live Ray cluster: the adapter's observe, the executor's apply, the lease in the cluster's GCS.

The only module of the watch package that reaches Ray, and only through the adapter and the executor.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import IO, Any

from reconciler import adapter
from reconciler.adapter.kv import RayKV
from reconciler.adapter.observation import serve_fingerprint
from reconciler.desired import DesiredState
from reconciler.observed import ObservedState
from reconciler.plan import Plan
from reconciler.settings import DEFAULTS, ApplySettings
from reconciler.watch.controller import ActionResult
from reconciler.watch.target import WatchTarget


def connect_live(address: str | None, *, progress: IO[str] | None = None,
                 apply_settings: ApplySettings = DEFAULTS.apply, spec_dir: Any = None) -> WatchTarget:
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
    probe = ServeProbe(cluster)

    def observe(desired: DesiredState) -> ObservedState:
        observed, details = cluster.observe_with_details(desired)
        probe.mark(details)
        return observed

    def apply(plan: Plan, desired: DesiredState, observed: ObservedState) -> Sequence[ActionResult]:
        # A fresh Progress per apply: it keeps per-apply rows; plain lines, never a live table, in a long-running log.
        executor = Executor(cluster, settings=apply_settings,
                            progress=Progress(stream, live=False), spec_dir=spec_dir)
        try:
            report = executor.apply(plan)
        finally:
            probe.mark(executor.last_serve)
        return [ActionResult(action=o.action, ok=o.ok, error="" if o.ok else o.message) for o in report.outcomes]

    return WatchTarget(observe=observe, apply=apply, kv=kv, describe=f"the Ray cluster at {cluster.address}",
                       close=cluster.close, probe=probe.changed)


class ServeProbe:
    """Between drift checks: has Serve changed since the last cycle looked? One REST call, no NVML, no planning.

    The baseline is the last Serve details the cycle itself fetched (its observation, or the executor's last poll
    of an apply), so a change that happens after the cycle looked is never taken for the state it left."""

    def __init__(self, cluster: "adapter.Cluster") -> None:
        self.cluster = cluster
        self.baseline: str | None = None

    def mark(self, details: dict[str, Any]) -> None:
        self.baseline = serve_fingerprint(details) if details else None

    def changed(self) -> bool:
        now = serve_fingerprint(self.cluster.serve_details())
        return self.baseline is not None and now != self.baseline

