"""The one place reconciler talks to Ray: a driver connection (for NVML probes on each node) and the dashboard's REST
API (Serve's declarative config, the state API), with Ray's token auth."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import requests

from reconciler.desired import DesiredState
from reconciler.errors import PermanentError, TransientError, UserError
from reconciler.naming import GPU_SOURCE_INVENTORY, GPU_SOURCE_LABEL
from reconciler.observed import ObservedState
from reconciler.plan import AssumedGpu
from reconciler.planner.runtime import assumed_gpus
from reconciler.settings import DEFAULTS
from reconciler.adapter import localcluster, reach
from reconciler.adapter.observation import (
    RayNode,
    build_observed,
    replica_pids_by_node,
    replica_roots_by_node,
    with_measured,
)

if TYPE_CHECKING:
    from reconciler.adapter.jobs import Jobs
    from reconciler.adapter.peaks import PeakStore

SERVE_API = "/api/serve/applications/"


@dataclass(frozen=True)
class Endpoint:
    """Where a cluster is and how to authenticate to it."""

    address: str  # GCS host:port
    token: str | None
    token_path: str | None = None
    dashboard_url: str | None = None  # known up front for the local cluster; discovered otherwise
    http_url: str | None = None  # Serve's HTTP proxy, when known
    local: bool = False  # started by `reconciler up`


def state_files() -> list[Path]:
    return [localcluster.default_state_file(), Path.home() / localcluster.STATE_DIR_NAME / localcluster.STATE_FILE_NAME]


def find_local_cluster() -> tuple[Path, dict[str, Any]] | None:
    for path in state_files():
        state = localcluster.read_state(path)
        if state is not None:
            return path, state
    return None


def read_token() -> tuple[str | None, str | None]:
    """The token Ray 2.60 itself would use, in its order: RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH, ~/.ray/auth_token."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), None
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    try:
        return Path(path).read_text().strip() or None, path
    except OSError:
        return None, None


def resolve(address: str | None) -> Endpoint:
    """`--address`, else RAY_ADDRESS, else the local cluster `reconciler up` started."""
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        found = find_local_cluster()
        if found is None:
            raise UserError(
                "no Ray cluster to talk to: pass --address HOST:PORT, set RAY_ADDRESS, or start the local one "
                "with `reconciler up`"
            )
        _, state = found
        token_path = state.get("auth_token_path")
        token = Path(token_path).read_text().strip() if token_path else None
        return Endpoint(
            address=state["address"],
            token=token,
            token_path=token_path,
            dashboard_url=state["dashboard_url"],
            http_url=state.get("http_url"),
            local=True,
        )
    if address.startswith(("ray://", "http://", "https://")):
        raise UserError(
            f"--address {address!r}: give the cluster's GCS address HOST:PORT (what `ray start --head` prints, "
            "default port 6379); the dashboard is found from there"
        )
    token, token_path = read_token()
    return Endpoint(address=address, token=token, token_path=token_path)


class Cluster:
    """A connection to one Ray cluster. Use `connect()`; call `close()` (or use it as a context manager)."""

    def __init__(self, endpoint: Endpoint, *, connect_timeout: float = DEFAULTS.cluster.connect_timeout) -> None:
        self.endpoint = endpoint
        self.connect_timeout = connect_timeout
        self.address = endpoint.address
        self._session = requests.Session()
        self._session.headers["User-Agent"] = "reconciler"  # not a browser: Ray returns runtime_env unredacted
        if endpoint.token:
            self._session.headers["Authorization"] = f"Bearer {endpoint.token}"
        self._ray = None
        self.dashboard_url = endpoint.dashboard_url
        self._http_url = endpoint.http_url
        self._probe_fn = None
        self._measure_fn = None
        self._owns_driver = False
        self._jobs: Any = None

    # -- connection -------------------------------------------------------------------------------------------------

    def _driver(self) -> Any:
        if self._ray is not None:
            return self._ray
        deadline = time.monotonic() + self.connect_timeout  # importing Ray takes seconds of it already
        if self.endpoint.token and "RAY_AUTH_MODE" not in os.environ:
            os.environ["RAY_AUTH_MODE"] = "token"
        if self.endpoint.token_path:
            os.environ.setdefault("RAY_AUTH_TOKEN_PATH", self.endpoint.token_path)
        elif self.endpoint.token:
            os.environ.setdefault("RAY_AUTH_TOKEN", self.endpoint.token)
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        reach.shorten_retries(self.connect_timeout)
        import ray

        host = self.address.rsplit(":", 1)[0]
        kwargs: dict[str, Any] = {"logging_level": "ERROR", "log_to_driver": False}
        if host in ("127.0.0.1", "localhost"):
            kwargs["_node_ip_address"] = "127.0.0.1"  # else Ray may rewrite loopback to the host IP and hang
        if ray.is_initialized() and ray.get_runtime_context().gcs_address == self.address:
            # This process is already a driver of this cluster (a test session, a notebook): share it, leave it up.
            self._owns_driver = False
            if self.dashboard_url is None:
                url = ray._private.worker._global_node.webui_url or ""  # the public accessor is deprecated
                self.dashboard_url = url if url.startswith("http") else f"http://{url}"
            self._ray = ray
            return ray
        if ray.is_initialized():
            raise PermanentError(
                f"this process is already connected to another Ray cluster ({ray.get_runtime_context().gcs_address})"
            )
        self._owns_driver = True
        reach.check_port(self.address, timeout=max(0.5, deadline - time.monotonic()), budget=self.connect_timeout,
                         local=self.endpoint.local)
        try:
            context = reach.within(lambda: ray.init(address=self.address, **kwargs), address=self.address,
                                   timeout=max(1.0, deadline - time.monotonic()), budget=self.connect_timeout,
                                   local=self.endpoint.local)
        except reach.Unreachable:
            raise
        except ConnectionError as exc:
            raise TransientError(f"cannot connect to the Ray cluster at {self.address}: {_first_line(exc)}; "
                                 f"{reach.advice(self.address, local=self.endpoint.local)}") from exc
        except Exception as exc:  # AuthenticationError and friends: say what to fix
            raise PermanentError(f"cannot connect to the Ray cluster at {self.address}: {_first_line(exc)}") from exc
        if self.dashboard_url is None:
            url = context.address_info.get("webui_url") or ""
            if not url:
                raise PermanentError(f"the Ray cluster at {self.address} runs no dashboard; reconciler needs its API")
            self.dashboard_url = url if url.startswith("http") else f"http://{url}"
        self._ray = ray
        return ray

    def gone(self, timeout: float = 2.0) -> bool:
        """Whether the cluster itself is gone (stopped, or restarted at another address): its GCS port accepts no
        connection. A dashboard too busy to answer leaves that port open; a stopped cluster does not."""
        try:
            reach.check_port(self.address, timeout=timeout)
        except reach.Unreachable:
            return True
        return False

    def close(self) -> None:
        if self._ray is not None and self._owns_driver:
            self._ray.shutdown()
        self._ray = None
        self._session.close()

    def __enter__(self) -> "Cluster":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- REST -------------------------------------------------------------------------------------------------------

    def _url(self, path: str) -> str:
        if self.dashboard_url is None:
            self._driver()
        return f"{self.dashboard_url}{path}"

    def _request(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        try:
            response = self._session.request(method, self._url(path), timeout=DEFAULTS.cluster.http_timeout, **kwargs)
        except requests.RequestException as exc:
            raise TransientError(f"the Ray dashboard at {self.dashboard_url} did not answer: {exc}") from exc
        if response.status_code in (401, 403):
            raise PermanentError(
                f"the Ray dashboard refused reconciler ({response.status_code}): token auth is on and the token is "
                "missing or wrong; set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH to the cluster's token"
            )
        return response

    def serve_details(self) -> dict[str, Any]:
        """Serve's full instance details: applications, deployments, replicas, deployed configs, HTTP options."""
        response = self._request("GET", SERVE_API)
        if response.status_code != 200:
            raise TransientError(f"GET {SERVE_API} answered {response.status_code}: {response.text[:500]}")
        return response.json()

    @property
    def http_url(self) -> str | None:
        """Serve's HTTP proxy: known up front for the local cluster, else read from Serve's HTTP options once it
        has them. None while Serve is not running or cannot be asked."""
        if self._http_url is None:
            try:
                http = self.serve_details().get("http_options") or {}
            except UserError:
                return None
            if http.get("port"):
                host = http.get("host") or "127.0.0.1"
                host = urlparse(self.dashboard_url or "").hostname if host in ("0.0.0.0", "::") else host
                self._http_url = f"http://{host}:{http['port']}"
        return self._http_url

    def put_serve_config(self, config: dict[str, Any]) -> None:
        """Serve's declarative apply: the whole config; Serve changes only the applications whose config changed."""
        response = self._request("PUT", SERVE_API, data=json.dumps(config), headers={"Content-Type": "application/json"})
        if response.status_code != 200:
            raise PermanentError(f"Serve refused the configuration ({response.status_code}): {response.text[:2000]}")

    def pending_demands(self) -> list[tuple[dict[str, float], int]]:
        """Resource shapes Ray cannot schedule yet, with how many tasks/actors wait for each."""
        self._driver()
        from ray._private import worker
        from ray.autoscaler.v2.schema import Stats
        from ray.autoscaler.v2.utils import ClusterStatusParser
        from ray.core.generated.autoscaler_pb2 import GetClusterStatusReply

        try:
            # The driver's own GCS client: Ray's get_cluster_status opens a new one, which waits for a GCS that is
            # gone well past the call's timeout.
            reply = GetClusterStatusReply.FromString(worker.global_worker.gcs_client.get_cluster_status(
                timeout_s=math.ceil(DEFAULTS.cluster.gcs_timeout)))
            status = ClusterStatusParser.from_get_cluster_status_reply(reply, stats=Stats())
        except Exception as exc:
            raise TransientError(f"cannot read the cluster's resource demand: {exc}") from exc
        return [
            (dict(request.bundle), int(request.count))
            for demand in status.resource_demands.ray_task_actor_demand
            for request in demand.bundles_by_count
        ]

    # -- observation ------------------------------------------------------------------------------------------------

    def ray_nodes(self) -> list[RayNode]:
        self._driver()
        from reconciler.adapter.nodetable import node_table

        try:
            raw = node_table()
        except Exception as exc:  # the GCS is restarting or gone: worth another try later
            raise TransientError(f"the Ray cluster at {self.address} did not list its nodes: {exc}") from exc
        nodes = [RayNode.from_ray(n) for n in raw]
        if all(n.alive for n in nodes):
            return nodes
        died = self._death_times()
        return [replace(n, died=died.get(n.node_id)) if not n.alive else n for n in nodes]

    def _death_times(self) -> dict[str, float]:
        """When each dead node died (unix seconds), from the dashboard's state API; empty when it cannot say."""
        try:
            response = self._request("GET", "/api/v0/nodes", params={"detail": "1", "limit": "10000"})
            rows = response.json()["data"]["result"]["result"] if response.status_code == 200 else []
        except (UserError, ValueError, KeyError, TypeError):
            return {}
        return {row["node_id"]: row["end_time_ms"] / 1000 for row in rows
                if isinstance(row, dict) and row.get("node_id") and row.get("end_time_ms")}

    def _probes(self, nodes: list[RayNode], pids: dict[str, list[int]]) -> dict[str, dict[str, Any]]:
        ray = self._driver()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from reconciler.adapter.nvml import probe_node

        if self._probe_fn is None:
            self._probe_fn = ray.remote(num_cpus=0, max_retries=0)(probe_node)
        probe_fn = self._probe_fn
        # Nodes simulated by `reconciler up` are not probed: NVML has nothing to say about them.
        probed = [n for n in nodes if n.alive and n.labels.get(GPU_SOURCE_LABEL) != GPU_SOURCE_INVENTORY]
        refs = self._submit(lambda: {
            node.node_id: probe_fn.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=node.node_id, soft=False)).remote(pids.get(node.node_id, []))
            for node in probed
        }, "an NVML probe")
        results, failed = reach.gathered(ray, refs, timeout=DEFAULTS.cluster.probe_timeout, force=True)
        for node_id, why in failed.items():  # a node that cannot run the probe keeps its inventory GPUs
            results[node_id] = {"available": False, "error": f"probe failed: {why}", "gpus": []}
        return results

    def _submit(self, submit: Callable[[], dict[str, Any]], what: str) -> dict[str, Any]:
        """``submit()``'s Ray calls, within the GCS timeout: a function's first call exports it through the GCS,
        which on a GCS that stopped answering would wait until Ray ends the process."""
        timeout = DEFAULTS.cluster.gcs_timeout
        try:
            return reach.bounded(submit, timeout, name="ray-submit")
        except reach.StillRunning:
            raise TransientError(f"the cluster's GCS did not take {what} within {timeout:.3g} s") from None

    def observe(self, desired: DesiredState | None = None, *,
                assumed: tuple[AssumedGpu, ...] | None = None) -> ObservedState:
        """The cluster now. GPUs that NVML cannot report (simulated nodes) are taken from ``assumed``, or from the
        pools' inventory of ``desired``: a saved plan passes the inventory it was planned with."""
        return self.observe_with_details(desired, assumed=assumed)[0]

    def observe_with_details(self, desired: DesiredState | None = None, *,
                             assumed: tuple[AssumedGpu, ...] | None = None) -> tuple[ObservedState, dict[str, Any]]:
        """``observe``, and the Serve details it was built from (watch's probe compares later ones with them)."""
        if assumed is None:
            assumed = assumed_gpus(desired) if desired is not None else ()
        serve = self.serve_details()
        nodes = self.ray_nodes()
        probes = self._probes(nodes, replica_pids_by_node(serve))
        observed = build_observed(
            nodes=nodes, probes=probes, serve=serve, assumed=assumed, demands=self.pending_demands()
        )
        # Job runs, and the time of the observation: the planner's clock for schedules and backoff.
        observed = replace(observed, jobs=self.jobs.runs(), at=time.time(), recorded=self.jobs.recorded(),
                           demand=self._demand())
        observed, samples = with_measured(observed, serve, self._measure(nodes, serve))
        # Every observation's readings go into the peaks kept in the cluster: a reading nobody records is lost, and
        # the peak a later `vram: auto` or right-sizing needs is the most any observer saw.
        peaks = self.peaks.record(samples, now=observed.at if observed.at is not None else time.time())
        from reconciler.adapter import deaths

        return replace(observed, memory_peaks=peaks, engine_deaths=deaths.read()), serve

    @property
    def peaks(self) -> "PeakStore":
        """The memory peaks per kind of replica, in the cluster's KV store."""
        from reconciler.adapter.kv import RayKV
        from reconciler.adapter.peaks import PeakStore

        self._driver()
        return PeakStore(RayKV(), limit=DEFAULTS.memory.peaks_limit)

    def _measure(self, nodes: list[RayNode], serve: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """What each replica application's processes use, read on their nodes (``adapter.memory``) within
        ``memory.measure_timeout`` for all nodes together; an application whose node did not answer is left out."""
        roots = replica_roots_by_node(serve)
        alive = {n.node_id: n for n in nodes if n.alive}
        if not any(node_id in alive for node_id in roots):
            return {}
        ray = self._driver()
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from reconciler.adapter.memory import measure_node

        if self._measure_fn is None:
            self._measure_fn = ray.remote(num_cpus=0, max_retries=0)(measure_node)
        measure_fn = self._measure_fn
        measured = {node_id: (alive[node_id], apps) for node_id, apps in sorted(roots.items()) if node_id in alive}
        refs = self._submit(lambda: {
            node_id: measure_fn.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                node_id=node_id, soft=False)).remote(apps, node.labels.get(GPU_SOURCE_LABEL) != GPU_SOURCE_INVENTORY)
            for node_id, (node, apps) in measured.items()
        }, "a memory reading")
        # A node whose task failed (it is dying) or did not answer: its replicas' figures stay unknown.
        answered, _ = reach.gathered(ray, refs, timeout=DEFAULTS.memory.measure_timeout, force=True)
        found: dict[str, dict[str, Any]] = {}
        for figures in answered.values():
            found.update(figures)
        return found

    def _demand(self) -> tuple:
        """What the gateways saw of each model; nothing when none runs. A gateway that does not answer is left
        out: without its history no model is taken for idle, so nothing is unloaded on a missing report."""
        from reconciler.adapter import gateway as gateways

        return gateways.demand(self)

    @property
    def jobs(self) -> "Jobs":
        """Ray's job submission API, with the dashboard and token this connection uses."""
        if self._jobs is None:
            from reconciler.adapter.jobs import Jobs
            from reconciler.adapter.kv import RayKV

            self._driver()
            assert self.dashboard_url is not None
            self._jobs = Jobs(dashboard_url=self.dashboard_url, token=self.endpoint.token, kv=RayKV())
        return self._jobs

    def wait_serve(self, predicate: Any, *, timeout: float, interval: float = 0.5) -> dict[str, Any]:
        """Poll Serve's details until `predicate(details)` is true or `timeout` passes; returns the last details."""
        deadline = time.monotonic() + timeout
        while True:
            details = self.serve_details()
            if predicate(details) or time.monotonic() >= deadline:
                return details
            time.sleep(interval)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")


def connect(address: str | None = None, *, connect_timeout: float | None = None) -> Cluster:
    """A cluster handle; the driver connects on first use, giving up after ``connect_timeout`` seconds."""
    timeout = DEFAULTS.cluster.connect_timeout if connect_timeout is None else connect_timeout
    return Cluster(resolve(address), connect_timeout=timeout)
