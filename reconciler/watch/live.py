"""Watch bound to a live Ray cluster: the adapter's observe, the executor's apply, the lease in the cluster's GCS.

The only module of the watch package that reaches Ray, and only through the adapter and the executor.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from typing import IO, Any

import time
from dataclasses import replace

from reconciler import adapter
from reconciler.adapter import gateway as gateways
from reconciler.planner import scaling
from reconciler.adapter.kv import RayKV
from reconciler.adapter.observation import serve_fingerprint
from reconciler.desired import DesiredState
from reconciler.observed import ObservedState
from reconciler.plan import Plan
from reconciler.settings import DEFAULTS, ApplySettings
from reconciler.watch.controller import ActionResult
from reconciler.watch.target import WatchTarget


def connect_live(address: str | None, *, connect_timeout: float = DEFAULTS.cluster.connect_timeout,
                 progress: IO[str] | None = None,
                 apply_settings: ApplySettings = DEFAULTS.apply, spec_dir: Any = None) -> WatchTarget:
    from reconciler.executor.progress import Progress
    from reconciler.executor.run import Executor, sync_gateway
    from reconciler.planner.runtime import model_runtime

    cluster = adapter.connect(address, connect_timeout=connect_timeout)
    try:
        cluster.ray_nodes()  # connects the driver: the lease lives in this cluster's GCS
        kv = RayKV()
    except BaseException:
        cluster.close()
        raise
    stream = progress if progress is not None else sys.stdout
    probe = ServeProbe(cluster)
    demand = DemandProbe(cluster)
    woken = threading.Event()  # a gateway woke the controller: an apply in progress may start those models at once
    listeners: list[Callable[[str], None]] = []

    def gone_if_unreachable(exc: Exception) -> None:
        """After a failed call: when the cluster's GCS port no longer answers at all, the cluster is gone (stopped,
        restarted elsewhere): the driver is dropped before Ray's own reconnect timer ends this process, and the
        session reconnects."""
        if not cluster.gone():
            return
        cluster.close()
        for listener in listeners:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            listener(f"the Ray cluster at {cluster.address} stopped answering ({first})")

    def observe(desired: DesiredState) -> ObservedState:
        woken.clear()  # this observation reads the demand that woke it: its own plan starts those models
        try:
            observed, details = cluster.observe_with_details(desired)
        except Exception as exc:
            gone_if_unreachable(exc)
            raise
        probe.mark(details)
        demand.mark(desired, observed)
        try:
            # An empty plan is never applied, so a changed API key or limit would never reach the gateways.
            sync_gateway(cluster, models=[model_runtime(m) for m in desired.models], gateway=desired.gateway)
        except Exception as exc:  # noqa: BLE001 - the per-model routes still serve; the next cycle tries again
            print(f"warning: the gateway did not take the route table: {exc}", file=stream)
        return observed

    def apply(plan: Plan, desired: DesiredState, observed: ObservedState) -> Sequence[ActionResult]:
        # A fresh Progress per apply: it keeps per-apply rows; plain lines, never a live table, in a long-running log.
        # Only a run that ships a folder needs the specs on disk (under --git, written out from the revision).
        ships = any(j.working_dir and not j.working_dir.startswith("/") for j in plan.jobs)
        directory = spec_dir() if callable(spec_dir) and ships else (None if callable(spec_dir) else spec_dir)
        executor = Executor(cluster, settings=apply_settings,
                            progress=Progress(stream, live=False), spec_dir=directory, wakes=fresh_plan)
        try:
            report = executor.apply(plan)
        except Exception as exc:
            gone_if_unreachable(exc)
            raise
        finally:
            probe.mark(executor.last_serve)
        return [ActionResult(action=o.action, ok=o.ok, error="" if o.ok else o.message) for o in report.outcomes]

    def changed() -> bool:
        try:
            return probe.changed() or demand.changed()
        except Exception as exc:
            gone_if_unreachable(exc)
            raise

    def wake(timeout: float) -> bool:
        if not demand.wanted():  # no model scales with demand: wait all the same, the caller loops on this
            time.sleep(timeout)
            return False
        if gateways.wait_wake(cluster, timeout):
            woken.set()
            return True
        return False

    def fresh_plan() -> Plan | None:
        """Asked by an apply while it waits: when a gateway woke the controller meanwhile, a plan of the same
        desired state on a fresh observation, whose woken models that apply may start without waiting to end."""
        if not woken.is_set() or demand.desired is None:
            return None
        woken.clear()
        from reconciler.planner import plan as make_plan

        return make_plan(demand.desired, cluster.observe(demand.desired))

    def endpoints() -> tuple[str | None, list[str]]:
        return cluster.http_url, gateways.urls(cluster)

    return WatchTarget(observe=observe, apply=apply, kv=kv, describe=f"the Ray cluster at {cluster.address}",
                       close=cluster.close, probe=changed, reachable=lambda: not cluster.gone(),
                       on_lost=listeners.append, wake=wake, endpoints=endpoints)


class DemandProbe:
    """Between cycles: would the demand the gateways see now change an on-demand model's count? Asks the gateways
    (no Serve, no NVML) and runs the planner's pure scaling rules on the last observation with the fresh demand."""

    def __init__(self, cluster: "adapter.Cluster") -> None:
        self.cluster = cluster
        self.desired: DesiredState | None = None
        self.observed: ObservedState | None = None

    def mark(self, desired: DesiredState, observed: ObservedState) -> None:
        self.desired, self.observed = desired, observed

    def wanted(self) -> bool:
        """Whether any model scales with demand (else nothing here is worth asking)."""
        return self.desired is not None and any(m.on_demand for m in self.desired.models)

    def changed(self) -> bool:
        if not self.wanted() or self.observed is None:
            return False
        assert self.desired is not None
        fresh = replace(self.observed, demand=gateways.demand(self.cluster), at=time.time())
        return any(d.changes for d in scaling.decisions(self.desired, fresh))


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

