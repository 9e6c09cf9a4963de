"""From what Ray and Serve report (plain dicts) to an ObservedState. Pure: the adapter fetches, this interprets, and
the tests of the interpretation need no cluster."""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from collections.abc import Iterable
from typing import Any

from reconciler.adapter.memory import SOURCE_NVML
from reconciler.desired import canonical_json, short_hash
from reconciler.naming import MANAGED_BY, MIB, REPLICA_DEPLOYMENT, AppKind, sanitise
from reconciler.plan import AssumedGpu
from reconciler.observed import (
    NODE_NAME_LABEL,
    ObservedGpu,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    Source,
    normalised,
    peak_key,
)

HIDDEN_LABELS = ("ray.io/node-id",)  # Ray's own per-process label: it is node_id, and would churn fingerprints


@dataclass(frozen=True)
class RayNode:
    node_id: str
    alive: bool
    labels: dict[str, str]
    resources: dict[str, float]
    hostname: str = ""
    death_reason: str = ""
    died: float | None = None  # unix seconds; from the state API (ray.nodes() does not say)

    @property
    def name(self) -> str:
        return self.labels.get(NODE_NAME_LABEL) or self.hostname or self.node_id[:12]

    @classmethod
    def from_ray(cls, raw: dict[str, Any]) -> "RayNode":
        return cls(
            node_id=raw["NodeID"],
            alive=bool(raw.get("Alive")),
            labels=dict(raw.get("Labels") or {}),
            resources=dict(raw.get("Resources") or {}),
            hostname=raw.get("NodeManagerHostname", ""),
            death_reason=str(raw.get("DeathReasonMessage") or "") if not raw.get("Alive") else "",
        )


def is_ours(app: dict[str, Any]) -> bool:
    config = app.get("deployed_app_config") or {}
    return (config.get("args") or {}).get("managed_by") == MANAGED_BY


def our_kind(app: dict[str, Any]) -> str | None:
    if not is_ours(app):
        return None
    return app["deployed_app_config"]["args"].get("kind")


def serve_fingerprint(serve: dict[str, Any]) -> str:
    """What changes when an application or replica starts, stops, fails or is redeployed, and nothing else.

    Watch's cheap probe between drift checks compares it with the details the last cycle ended on; messages and
    metrics are left out because they change without anything having happened to reconcile."""
    apps = serve.get("applications") or {}
    return short_hash([
        [name, app.get("status"), app.get("last_deployed_time_s"),
         sorted([d_name, d.get("status"), sorted([r.get("replica_id") or r.get("actor_name"), r.get("state")]
                                                  for r in d.get("replicas") or [])]
                for d_name, d in (app.get("deployments") or {}).items())]
        for name, app in sorted(apps.items())
    ], 16)


def replica_pids_by_node(serve: dict[str, Any]) -> dict[str, list[int]]:
    """The worker PIDs of our replicas per Ray node id: what NVML must not count as foreign use."""
    pids: dict[str, list[int]] = {}
    for app in (serve.get("applications") or {}).values():
        if our_kind(app) != AppKind.REPLICA:
            continue
        for deployment in app.get("deployments", {}).values():
            for replica in deployment.get("replicas", []):
                if replica.get("node_id") and replica.get("pid"):
                    pids.setdefault(replica["node_id"], []).append(int(replica["pid"]))
    return pids


def our_configs(details: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The deployed configs of reconciler's applications, by name, from Serve's details."""
    return {
        name: app["deployed_app_config"]
        for name, app in (details.get("applications") or {}).items()
        if is_ours(app)
    }


def foreign_configs(details: dict[str, Any]) -> list[dict[str, Any]]:
    """Applications someone else deployed declaratively, exactly as deployed. Imperative ones (`serve.run`) are not
    part of any declarative config and a PUT leaves them alone."""
    return [
        app["deployed_app_config"]
        for app in (details.get("applications") or {}).values()
        if not is_ours(app) and app.get("deployed_app_config")
    ]


def running_pid(serve: dict[str, Any], app: str) -> int | None:
    """The worker pid of an application's replica while Serve reports it running, else None."""
    found = (serve.get("applications") or {}).get(app) or {}
    for deployment in (found.get("deployments") or {}).values():
        for replica in deployment.get("replicas") or []:
            if replica.get("state") == "RUNNING" and replica.get("pid"):
                return int(replica["pid"])
    return None


def _gpus_from_resources(node: RayNode) -> tuple[ObservedGpu, ...]:
    pattern = re.compile(rf"^vram_mb_{re.escape(sanitise(node.name))}_gpu(\d+)$")
    gpus = []
    for key, value in node.resources.items():
        match = pattern.match(key)
        if match:
            gpus.append(ObservedGpu(index=int(match.group(1)), name="", memory=int(value) * MIB))
    return tuple(sorted(gpus, key=lambda g: g.index))


def _inventory(assumed: Iterable[AssumedGpu]) -> dict[str, tuple[ObservedGpu, ...]]:
    found: dict[str, list[ObservedGpu]] = {}
    for g in sorted(assumed, key=lambda g: (g.node, g.index)):
        found.setdefault(g.node, []).append(ObservedGpu(index=g.index, name=g.name, memory=g.memory))
    return {node: tuple(gpus) for node, gpus in found.items()}


def _latest(nodes: list[RayNode]) -> list[RayNode]:
    """One node per name: the live one, else the one that died last. Ray keeps every node that ever joined, so a
    node that restarted is one live entry and one or more dead ones under the same name."""
    by_name: dict[str, RayNode] = {}
    for node in nodes:
        kept = by_name.get(node.name)
        if kept is None or (node.alive, node.died or 0.0) > (kept.alive, kept.died or 0.0):
            by_name[node.name] = node
    return [by_name[name] for name in sorted(by_name)]


def build_nodes(
    nodes: list[RayNode], probes: dict[str, dict[str, Any]], assumed: Iterable[AssumedGpu]
) -> tuple[ObservedNode, ...]:
    inventory = _inventory(assumed)
    observed = []
    for node in _latest(nodes):
        if not node.alive:
            gpus = inventory.get(node.name) or _gpus_from_resources(node)
            labels = tuple(sorted((k, v) for k, v in node.labels.items() if k not in HIDDEN_LABELS))
            observed.append(ObservedNode(name=node.name, labels=labels, gpus=gpus, node_id=node.node_id, alive=False,
                                         simulated=True, dead_since=node.died, death_reason=node.death_reason))
            continue
        probe = probes.get(node.node_id) or {}
        if probe.get("available") and probe.get("gpus"):
            gpus = tuple(
                ObservedGpu(index=g["index"], name=g["name"], memory=g["memory"], foreign=g["foreign"], used=g["used"])
                for g in probe["gpus"]
            )
            simulated = False
        else:
            gpus = inventory.get(node.name) or _gpus_from_resources(node)
            simulated = True
        labels = tuple(sorted((k, v) for k, v in node.labels.items() if k not in HIDDEN_LABELS))
        observed.append(
            ObservedNode(
                name=node.name, labels=labels, gpus=gpus, node_id=node.node_id, alive=True, simulated=simulated
            )
        )
    return tuple(observed)


def _shape(resources: dict[str, Any]) -> tuple[tuple[str, float], ...]:
    return tuple(sorted((k, float(v)) for k, v in resources.items() if float(v) and k not in ("CPU", "GPU")))


def pending_apps(serve: dict[str, Any], demands: list[tuple[dict[str, float], int]]) -> set[str]:
    """Our replica applications Ray is holding back for want of resources.

    Ray reports unmet demand by resource shape, not by actor; every replica's shape names its GPUs, so a shape's
    count is handed to that many not-yet-running replicas asking for exactly it. (A replica whose worker is merely
    starting already holds its resources and is no longer a demand.)
    """
    left: dict[tuple[tuple[str, float], ...], int] = {}
    for bundle, count in demands:
        key = _shape(bundle)
        left[key] = left.get(key, 0) + int(count)
    pending = set()
    for name, app in sorted((serve.get("applications") or {}).items()):
        if our_kind(app) != AppKind.REPLICA or app.get("status") == "DELETING":
            continue
        replicas = [r for d in (app.get("deployments") or {}).values() for r in d.get("replicas", [])]
        if any(r.get("state") == "RUNNING" for r in replicas):
            continue
        deployments = app["deployed_app_config"].get("deployments") or [{}]
        key = _shape((deployments[0].get("ray_actor_options") or {}).get("resources") or {})
        if key and left.get(key, 0) > 0:
            left[key] -= 1
            pending.add(name)
    return pending


SERVE_RECOVERING = ("STARTING", "UPDATING", "RECOVERING", "STOPPING")  # Serve's replica states while it replaces one


def replica_state(app: dict[str, Any], pending: bool) -> tuple[ReplicaState, str]:
    """One replica application's state, and Serve's words for why when it is not running."""
    status = app.get("status", "")
    deployment = (app.get("deployments") or {}).get(REPLICA_DEPLOYMENT) or {}
    replicas = deployment.get("replicas") or []
    message = deployment.get("message") or app.get("message") or ""
    if status == "DELETING":
        return ReplicaState.STOPPING, message
    if any(r.get("state") == "RUNNING" for r in replicas):
        return ReplicaState.RUNNING, ""
    if status == "DEPLOY_FAILED" or deployment.get("status") == "DEPLOY_FAILED":
        return ReplicaState.FAILED, message or app.get("message", "")
    if status == "UNHEALTHY" or deployment.get("status") == "UNHEALTHY":
        # A replica that died or failed its health check: Serve is already starting another in its place. Acting
        # on it too would race Serve; if the new one cannot start either, Serve says DEPLOY_FAILED.
        if any(r.get("state") in SERVE_RECOVERING for r in replicas):
            return ReplicaState.STARTING, f"Serve is restarting it: {message}" if message else "Serve is restarting it"
        return ReplicaState.FAILED, message or app.get("message", "")
    if pending:
        return ReplicaState.PENDING, message or "waiting for Ray to schedule it: no room for its VRAM resource"
    return ReplicaState.STARTING, message


def build_replicas(
    serve: dict[str, Any], nodes_by_id: dict[str, str], pending: set[str]
) -> tuple[ObservedReplica, ...]:
    replicas = []
    for name, app in (serve.get("applications") or {}).items():
        if our_kind(app) != AppKind.REPLICA:
            continue
        config = app["deployed_app_config"]
        engine = config["args"]["engine_config"]
        deployment_config = next(
            (d for d in config.get("deployments", []) if d.get("name") == REPLICA_DEPLOYMENT), {}
        )
        running_on = [
            r.get("node_id")
            for d in (app.get("deployments") or {}).values()
            for r in d.get("replicas", [])
            if r.get("node_id")
        ]
        node = nodes_by_id.get(running_on[0], engine["node"]) if running_on else engine["node"]
        state, message = replica_state(app, name in pending)
        replicas.append(
            ObservedReplica(
                model=engine["model"],
                replica=int(engine["replica"]),
                node=node,
                gpus=tuple(engine["gpus"]),
                vram=int(engine["vram_bytes"]),
                restart_hash=config["args"].get("restart_hash", ""),
                config_hash=str((deployment_config.get("user_config") or {}).get("config_hash", "")),
                state=state,
                message=message,
                app=name,
            )
        )
    return tuple(replicas)


def build_observed(
    *,
    nodes: list[RayNode],
    probes: dict[str, dict[str, Any]],
    serve: dict[str, Any],
    assumed: Iterable[AssumedGpu],
    demands: list[tuple[dict[str, float], int]] = (),
) -> ObservedState:
    observed_nodes = build_nodes(nodes, probes, assumed)
    nodes_by_id = {n.node_id: n.name for n in observed_nodes if n.node_id}
    replicas = build_replicas(serve, nodes_by_id, pending_apps(serve, list(demands)))
    return normalised(ObservedState(nodes=observed_nodes, replicas=replicas, source=Source.LIVE))


def replica_roots_by_node(serve: dict[str, Any]) -> dict[str, dict[str, int]]:
    """Per Ray node id, each replica application's worker PID (a running one first): the root of the processes whose
    memory is the replica's."""
    roots: dict[str, dict[str, int]] = {}
    for name, app in sorted((serve.get("applications") or {}).items()):
        if our_kind(app) != AppKind.REPLICA:
            continue
        found = [r for d in (app.get("deployments") or {}).values() for r in d.get("replicas") or []
                 if r.get("node_id") and r.get("pid")]
        found.sort(key=lambda r: r.get("state") != "RUNNING")
        if found:
            roots.setdefault(found[0]["node_id"], {})[name] = int(found[0]["pid"])
    return roots


def replica_peak_key(engine: dict[str, Any], gpu_name: str) -> str:
    """The kind of replica an application runs (``peak_key``), from its engine config as deployed."""
    return peak_key(source=str(engine.get("source", "")), engine=str(engine.get("engine", "")),
                    engine_args_json=canonical_json(engine.get("engine_args") or {}), gpu_name=gpu_name,
                    tensor_parallel=int(engine.get("tensor_parallel", 1)))


def with_measured(
    observed: ObservedState, serve: dict[str, Any], measured: dict[str, dict[str, Any]]
) -> tuple[ObservedState, list[tuple[str, int]]]:
    """Each replica with the memory its processes use per GPU (``measured``: what ``memory.measure_node`` said, by
    application), and the samples (peak key, bytes) of the replicas running or starting, for the peak store.

    RSS is one figure for the whole replica: on several GPUs it is shared evenly, as tensor parallelism shards it."""
    apps = serve.get("applications") or {}
    replicas, samples = [], []
    for replica in observed.replicas:
        reading = measured.get(replica.app) or {}
        used = reading.get("bytes")
        if used is None:
            replicas.append(replica)
            continue
        per_gpu = int(used) if reading.get("source") == SOURCE_NVML else -(-int(used) // max(1, len(replica.gpus)))
        replicas.append(replace(replica, measured=per_gpu, measured_source=str(reading.get("source", ""))))
        app = apps.get(replica.app) or {}
        engine = ((app.get("deployed_app_config") or {}).get("args") or {}).get("engine_config")
        gpu_name = _gpu_name(observed, replica)
        # A GPU of unknown model (no NVML, no inventory given) keys nothing the planner could ask for.
        if engine and gpu_name and replica.state in (ReplicaState.RUNNING, ReplicaState.STARTING):
            samples.append((replica_peak_key(engine, gpu_name), per_gpu))
    return replace(observed, replicas=tuple(replicas)), samples


def _gpu_name(observed: ObservedState, replica: ObservedReplica) -> str:
    try:
        return observed.node(replica.node).gpu(replica.gpus[0]).name
    except (KeyError, IndexError):
        return ""
