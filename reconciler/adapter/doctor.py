"""Gathering `reconciler doctor`'s facts: a probe task on every live node, vLLM imported where a model needs it (once
per host and Python), each node's clock read against the controller's, the dashboard asked with and without the
token, each gateway's health. Every wait is bounded by ``DoctorSettings``; judging is ``doctor.judge``'s."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import requests

from reconciler.desired import DesiredState
from reconciler.doctor.facts import (
    AuthFacts,
    ClusterFacts,
    EngineImport,
    GatewayFacts,
    NodeFacts,
    Versions,
    node_from_probe,
)
from reconciler.doctor.judge import needs_vllm
from reconciler.naming import GPU_SOURCE_INVENTORY, GPU_SOURCE_LABEL
from reconciler.settings import DEFAULTS, DoctorSettings
from reconciler.adapter import nodefacts
from reconciler.adapter.cluster import SERVE_API, Cluster


def gather(cluster: Cluster, desired: DesiredState | None, *, settings: DoctorSettings = DEFAULTS.doctor,
           gateway_enabled: bool = DEFAULTS.apply.gateway.enabled) -> ClusterFacts:
    ray = cluster._driver()
    nodes = _probe_nodes(ray, cluster.ray_nodes(), settings)
    nodes = _with_engines(ray, nodes, needs_vllm(list(nodes), desired), settings)
    nodes = tuple(_with_clock(ray, node, settings) for node in nodes)
    return ClusterFacts(
        address=cluster.address,
        local=cluster.endpoint.local,
        controller=Versions.from_probe(nodefacts.versions()),
        nodes=nodes,
        auth=_auth(cluster),
        gateways=_gateways(cluster, settings) if gateway_enabled else (),
        gateway_enabled=gateway_enabled,
    )


def _on(node_id: str) -> Any:
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def _task(ray: Any, fn: Any) -> Any:
    # No CPU asked: a node whose CPUs are all taken by replicas is still probed.
    return ray.remote(num_cpus=0, max_retries=0)(fn)


def _probe_nodes(ray: Any, raw_nodes: list[Any], settings: DoctorSettings) -> list[NodeFacts]:
    collect = _task(ray, nodefacts.collect)
    live = {n.node_id: n for n in raw_nodes if n.alive}
    refs = {node_id: collect.options(scheduling_strategy=_on(node_id)).remote() for node_id in live}
    deadline = time.monotonic() + settings.probe_timeout
    found: list[NodeFacts] = []
    for node_id, ref in refs.items():
        node = live[node_id]
        simulated = node.labels.get(GPU_SOURCE_LABEL) == GPU_SOURCE_INVENTORY
        try:
            raw = ray.get(ref, timeout=max(0.1, deadline - time.monotonic()))
        except Exception as exc:  # a timeout, a dead node, a worker that cannot import reconciler: reported as such
            _cancel(ray, ref)
            found.append(NodeFacts(name=node.name, node_id=node_id, labels=tuple(sorted(node.labels.items())),
                                   resources=tuple(sorted(node.resources.items())), simulated=simulated,
                                   probe_error=_first_line(exc)))
            continue
        found.append(node_from_probe(name=node.name, node_id=node_id, labels=node.labels, resources=node.resources,
                                     simulated=simulated, raw=raw))
    found.extend(NodeFacts(name=n.name, node_id=n.node_id, alive=False) for n in raw_nodes if not n.alive)
    return found


def _with_engines(ray: Any, nodes: list[NodeFacts], wanted: set[str], settings: DoctorSettings) -> list[NodeFacts]:
    """vLLM imported once per host and Python among the nodes that need it: simulated nodes on one machine share
    their environment, and importing it costs seconds of CPU."""
    engine = _task(ray, nodefacts.engine)
    groups: dict[tuple[str, str], list[NodeFacts]] = {}
    for node in nodes:
        if node.name in wanted and node.alive and not node.probe_error:
            groups.setdefault((node.hostname, node.executable), []).append(node)
    refs = {key: engine.options(scheduling_strategy=_on(members[0].node_id)).remote(settings.engine_timeout)
            for key, members in groups.items()}
    # The child process has its own timeout; this one covers a node that never runs the task at all.
    deadline = time.monotonic() + settings.engine_timeout + settings.probe_timeout
    results: dict[str, EngineImport] = {}
    for key, ref in refs.items():
        try:
            result = EngineImport.from_probe(ray.get(ref, timeout=max(0.1, deadline - time.monotonic())))
        except Exception as exc:
            _cancel(ray, ref)
            result = EngineImport(ok=False, error=f"the import task failed: {_first_line(exc)}")
        for member in groups[key]:
            results[member.node_id] = result
    return [replace(n, engine=results[n.node_id]) if n.node_id in results else n for n in nodes]


def _with_clock(ray: Any, node: NodeFacts, settings: DoctorSettings) -> NodeFacts:
    """The node's clock read by a task between two readings of the controller's: the offset lies between the two
    differences. Run after the probes, so the node's worker is warm and the interval narrow."""
    if not node.alive or node.probe_error:
        return node
    clock = _task(ray, nodefacts.clock)
    before = time.time()
    try:
        theirs = ray.get(clock.options(scheduling_strategy=_on(node.node_id)).remote(),
                         timeout=settings.probe_timeout)
    except Exception:
        return node
    after = time.time()
    return replace(node, clock_offset=(theirs - after, theirs - before))


def _auth(cluster: Cluster) -> AuthFacts:
    url = cluster._url(SERVE_API)
    timeout = DEFAULTS.cluster.http_timeout
    try:
        with_token = cluster._session.get(url, timeout=timeout).status_code
        without = requests.get(url, timeout=timeout, headers={"User-Agent": "reconciler"}).status_code
    except requests.RequestException as exc:
        return AuthFacts(has_token=bool(cluster.endpoint.token), error=_first_line(exc))
    return AuthFacts(has_token=bool(cluster.endpoint.token), with_token=with_token, without_token=without)


def _gateways(cluster: Cluster, settings: DoctorSettings) -> tuple[GatewayFacts, ...]:
    from reconciler.adapter import gateway

    found = []
    for url in gateway.urls(cluster):
        health = url.rstrip("/").removesuffix("/v1") + "/healthz"
        try:
            status, error = requests.get(health, timeout=settings.gateway_timeout).status_code, ""
        except requests.RequestException as exc:
            status, error = None, _first_line(exc)
        found.append(GatewayFacts(url=url, status=status, error=error))
    return tuple(found)


def _cancel(ray: Any, ref: Any) -> None:
    """Stop a probe that overran its time, so it holds nothing on the node; one already gone is fine."""
    try:
        ray.cancel(ref, force=True)
    except Exception:  # noqa: BLE001 - the task finished or its node died meanwhile
        pass


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0].rstrip(".")[:300]
