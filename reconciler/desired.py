"""The desired state: what the specs ask for, normalised, frozen and free of YAML.

The loader (``reconciler.spec``) is the only producer; the planner is the main consumer. Every memory figure is an
integer number of bytes and every default is filled in, so nothing downstream re-interprets user input.
"""

from __future__ import annotations

import ipaddress

import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from enum import StrEnum
from typing import Any

from reconciler.sizing.estimate import Estimate, estimate_to_json

class Placement(StrEnum):
    BINPACK = "binpack"  # fewest GPUs in use: keeps whole GPUs free for large models
    SPREAD = "spread"  # balanced VRAM use across GPUs


class Preemption(StrEnum):
    LOWER_PRIORITY = "LowerPriority"
    NEVER = "Never"


class Spread(StrEnum):
    NONE = "none"
    GPU = "gpu"
    NODE = "node"


class Engine(StrEnum):
    VLLM = "vllm"
    ECHO = "echo"


def canonical_json(value: Any) -> str:
    """One spelling per value, so hashes and fingerprints are stable across runs and machines."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def short_hash(value: Any, length: int = 12) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:length]


@dataclass(frozen=True, slots=True)
class GpuSpec:
    name: str
    memory: int  # bytes


@dataclass(frozen=True, slots=True)
class InventoryNode:
    node: str
    gpus: tuple[GpuSpec, ...]


@dataclass(frozen=True, slots=True)
class Pool:
    name: str
    placement: Placement = Placement.BINPACK
    reserve: int = 0  # bytes kept free on every GPU of the pool
    # Ray node labels a node must carry to belong to the pool; None: every GPU node no other pool selects.
    selector: tuple[tuple[str, str], ...] | None = None
    inventory: tuple[InventoryNode, ...] = ()
    max_moves: int = 0

    def selects(self, labels: dict[str, str]) -> bool:
        return self.selector is not None and all(labels.get(k) == v for k, v in self.selector)


@dataclass(frozen=True, slots=True)
class PriorityClass:
    name: str
    value: int
    preemption: Preemption = Preemption.LOWER_PRIORITY
    preemptible: bool = True
    default: bool = False


# The class models get when they name none and no class is marked default.
IMPLICIT_PRIORITY = PriorityClass(name="", value=0)


@dataclass(frozen=True, slots=True)
class Scaling:
    """A model whose replica count follows its demand within ``min``..``max`` (``replicas: {min, max}``).

    Times are whole seconds. The planner turns demand (requests in flight and queued, the time of the last one) into
    a replica count with these; the gateway holds a request for a model with no replica for up to ``load_timeout``.
    """

    min: int
    max: int
    target_in_flight: int = 8  # requests in flight per replica above which another replica is wanted
    scale_up_after: int = 15  # sustained load before replicas are added
    scale_down_after: int = 300  # sustained low load before replicas are removed (never below min)
    idle_after: int = 600  # no request at all for this long: scale to min (0 unloads the model)
    load_timeout: int = 600  # the longest a request waits for a replica to start


def default_route(model_name: str) -> str:
    """The route of a model whose spec names none."""
    return f"/{model_name}"


@dataclass(frozen=True, slots=True)
class Model:
    name: str
    pool: str  # resolved: always a pool that exists
    priority_class: str  # resolved class name ("" for the implicit class)
    priority: int  # the class's value, copied so the planner needs no lookup
    preemption: Preemption
    preemptible: bool
    engine: Engine
    source: str
    vram: int  # bytes per replica and per GPU of the replica
    replicas: int | None  # None means "max": as many as fit once all other demand is placed
    tensor_parallel: int = 1
    spread: Spread = Spread.NONE
    route: str = ""
    labels: tuple[tuple[str, str], ...] = ()
    engine_args_json: str = "{}"  # canonical JSON: keeps the value hashable and frozen
    # Set for `replicas: {min, max}`: the count follows demand. `replicas` then holds the count the planner decided
    # (the loader writes `min`); the planner replaces it from the observed demand before packing.
    scaling: Scaling | None = None
    # `vram: auto`: `vram` then holds the figure sized from the model (`sizing`); the planner may replace it with one
    # from a measured peak (planner.sizes).
    vram_auto: bool = False
    kv_cache_tokens: int | None = None  # as written; None: the default (SizingSettings.default_sequences)
    # The estimate from the model's files, term by term; also for a fixed `vram` when the files could be read, so the
    # engine knows the weights and overheads inside its figure. None when they could not be read.
    sizing: Estimate | None = None

    @property
    def on_demand(self) -> bool:
        return self.scaling is not None

    @property
    def engine_args(self) -> dict[str, Any]:
        return json.loads(self.engine_args_json)

    @property
    def route_path(self) -> str:
        """Where the model answers over HTTP: its route, or the default one."""
        return self.route or default_route(self.name)

    @property
    def is_max(self) -> bool:
        return self.replicas is None

    @property
    def restart_hash(self) -> str:
        """Hash of everything whose change needs the replica restarted (a ``replace``)."""
        return _restart_hash(str(self.engine), self.source, self.vram, self.tensor_parallel, self.engine_args_json)

    @property
    def config_hash(self) -> str:
        """Hash of what can change on a running replica without a restart (an ``update``)."""
        return _config_hash(self.route, self.labels)


# The planner asks for a model's hashes once per replica: remembered, since a fleet has 100,000 replicas of a few
# thousand specs.
@lru_cache(maxsize=4096)
def _restart_hash(engine: str, source: str, vram: int, tensor_parallel: int, engine_args_json: str) -> str:
    return short_hash(
        {
            "engine": engine,
            "source": source,
            "vram": vram,
            "tensorParallel": tensor_parallel,
            "engineArgs": json.loads(engine_args_json),
        }
    )


@lru_cache(maxsize=4096)
def _config_hash(route: str, labels: tuple[tuple[str, str], ...]) -> str:
    return short_hash({"route": route, "labels": dict(labels)})


@dataclass(frozen=True, slots=True)
class Job:
    """Batch work on GPUs: runs to completion on ``gpus`` GPUs of one node, placed with the models by priority."""

    name: str
    pool: str  # resolved, as for models
    priority_class: str
    priority: int
    preemption: Preemption
    preemptible: bool
    vram: int  # bytes per GPU
    entrypoint: str
    gpus: int = 1
    working_dir: str | None = None  # relative to the spec directory
    env: tuple[tuple[str, str], ...] = ()
    retries: int = 0
    active_deadline: int | None = None  # seconds
    schedule: str | None = None  # five-field cron, UTC

    @property
    def revision(self) -> str:
        """Changes with everything a run is started from: without a schedule, one run per revision."""
        return short_hash(
            {
                "vram": self.vram,
                "gpus": self.gpus,
                "entrypoint": self.entrypoint,
                "workingDir": self.working_dir,
                "env": dict(self.env),
                "schedule": self.schedule,
            }
        )


@dataclass(frozen=True, slots=True)
class ApiKey:
    name: str
    sha256: str  # hex digest of the key; the key itself is never in the specs
    models: tuple[str, ...]  # model names, or ("*",) for every model
    requests_per_minute: int | None = None
    concurrent_requests: int | None = None
    tokens_per_minute: int | None = None


@dataclass(frozen=True, slots=True)
class Gateway:
    """The Gateway spec: where the one OpenAI base URL listens and which keys it takes (none: open to all)."""

    name: str
    host: str | None = None
    port: int | None = None
    keys: tuple[ApiKey, ...] = ()  # sorted by name
    allow_anonymous: bool = False  # said in words: no keys on an address beyond loopback is what is wanted

    def anonymous_exposure(self, host: str | None) -> bool:
        """Whether listening on ``host`` (None: loopback) would take requests from other machines without a key
        when the spec did not ask for exactly that."""
        return not self.keys and not self.allow_anonymous and not is_loopback(host or "127.0.0.1")


def is_loopback(host: str | None) -> bool:
    """Whether ``host`` is reachable from this machine only (a hostname other than localhost counts as not)."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class DesiredState:
    pools: tuple[Pool, ...] = ()
    priority_classes: tuple[PriorityClass, ...] = ()
    models: tuple[Model, ...] = ()  # sorted by name
    jobs: tuple[Job, ...] = ()  # sorted by name
    gateway: Gateway | None = None

    def job(self, name: str) -> Job:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)

    def pool(self, name: str) -> Pool:
        for pool in self.pools:
            if pool.name == name:
                return pool
        raise KeyError(name)

    def model(self, name: str) -> Model:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    def models_in(self, pool: str) -> tuple[Model, ...]:
        return tuple(m for m in self.models if m.pool == pool)

    @property
    def fingerprint(self) -> str:
        return short_hash(desired_to_json(self), 16)


def desired_to_json(desired: DesiredState) -> dict[str, Any]:
    """A plain-data view, used for fingerprints and by tests that compare desired states."""

    def pool(p: Pool) -> dict[str, Any]:
        return {
            "name": p.name,
            "placement": str(p.placement),
            "reserve": p.reserve,
            "selector": None if p.selector is None else dict(p.selector),
            "inventory": [
                {"node": n.node, "gpus": [{"name": g.name, "memory": g.memory} for g in n.gpus]}
                for n in p.inventory
            ],
            "maxMoves": p.max_moves,
        }

    def klass(c: PriorityClass) -> dict[str, Any]:
        return {
            "name": c.name,
            "value": c.value,
            "preemption": str(c.preemption),
            "preemptible": c.preemptible,
            "default": c.default,
        }

    def model(m: Model) -> dict[str, Any]:
        return {
            "name": m.name,
            "pool": m.pool,
            "priorityClass": m.priority_class,
            "priority": m.priority,
            "preemption": str(m.preemption),
            "preemptible": m.preemptible,
            "engine": str(m.engine),
            "source": m.source,
            "vram": m.vram,
            "replicas": "max" if m.replicas is None else m.replicas,
            "tensorParallel": m.tensor_parallel,
            "spread": str(m.spread),
            "route": m.route,
            "labels": dict(m.labels),
            "engineArgs": m.engine_args,
            # Only when written, so models without a range keep the fingerprints they always had.
            **({"scaling": scaling_to_json(m.scaling)} if m.scaling is not None else {}),
            # Only for `vram: auto`, so models with a figure keep the fingerprints they always had.
            **({"vramAuto": True, "kvCacheTokens": m.kv_cache_tokens,
                "sizing": None if m.sizing is None else estimate_to_json(m.sizing)} if m.vram_auto else {}),
        }

    out: dict[str, Any] = {
        "pools": [pool(p) for p in desired.pools],
        "priorityClasses": [klass(c) for c in desired.priority_classes],
        "models": [model(m) for m in desired.models],
    }
    if desired.jobs:  # only then: specs without jobs keep the fingerprints they always had
        out["jobs"] = [job_to_json(j) for j in desired.jobs]
    if desired.gateway is not None:  # only when written, so specs without one keep their fingerprints
        out["gateway"] = gateway_to_json(desired.gateway)
    return out


def desired_from_json(data: dict[str, Any]) -> DesiredState:
    """The desired state back from ``desired_to_json`` (a recorded revision's, for `reconciler rollback`): the
    fingerprint of the result is the fingerprint of what was written."""

    def pool(p: dict[str, Any]) -> Pool:
        return Pool(
            name=p["name"], placement=Placement(p["placement"]), reserve=p["reserve"],
            selector=None if p["selector"] is None else tuple(sorted(p["selector"].items())),
            inventory=tuple(
                InventoryNode(node=n["node"], gpus=tuple(GpuSpec(g["name"], g["memory"]) for g in n["gpus"]))
                for n in p["inventory"]
            ),
            max_moves=p["maxMoves"],
        )

    def model(m: dict[str, Any]) -> Model:
        return Model(
            name=m["name"], pool=m["pool"], priority_class=m["priorityClass"], priority=m["priority"],
            preemption=Preemption(m["preemption"]), preemptible=m["preemptible"], engine=Engine(m["engine"]),
            source=m["source"], vram=m["vram"], replicas=None if m["replicas"] == "max" else m["replicas"],
            tensor_parallel=m["tensorParallel"], spread=Spread(m["spread"]), route=m["route"],
            labels=tuple(sorted(m["labels"].items())), engine_args_json=canonical_json(m["engineArgs"]),
            scaling=scaling_from_json(m["scaling"]) if "scaling" in m else None,
        )

    return DesiredState(
        pools=tuple(pool(p) for p in data["pools"]),
        priority_classes=tuple(PriorityClass(name=c["name"], value=c["value"], preemption=Preemption(c["preemption"]),
                                             preemptible=c["preemptible"], default=c["default"])
                               for c in data["priorityClasses"]),
        models=tuple(model(m) for m in data["models"]),
        jobs=tuple(job_from_json(j) for j in data.get("jobs", ())),
        gateway=gateway_from_json(data["gateway"]) if "gateway" in data else None,
    )


def scaling_to_json(s: Scaling) -> dict[str, Any]:
    return {"min": s.min, "max": s.max, "targetInFlight": s.target_in_flight, "scaleUpAfter": s.scale_up_after,
            "scaleDownAfter": s.scale_down_after, "idleAfter": s.idle_after, "loadTimeout": s.load_timeout}


def scaling_from_json(data: dict[str, Any]) -> Scaling:
    return Scaling(min=data["min"], max=data["max"], target_in_flight=data["targetInFlight"],
                   scale_up_after=data["scaleUpAfter"], scale_down_after=data["scaleDownAfter"],
                   idle_after=data["idleAfter"], load_timeout=data["loadTimeout"])


def gateway_to_json(g: Gateway) -> dict[str, Any]:
    """A Gateway spec as the desired state's JSON and the plan file write it (key hashes, never keys)."""
    return {
        "name": g.name,
        "host": g.host,
        "port": g.port,
        "keys": [{"name": k.name, "sha256": k.sha256, "models": list(k.models),
                  "requestsPerMinute": k.requests_per_minute, "concurrentRequests": k.concurrent_requests,
                  "tokensPerMinute": k.tokens_per_minute} for k in g.keys],
        # Only when said: Gateways written before the field keep their fingerprints.
        **({"allowAnonymous": True} if g.allow_anonymous else {}),
    }


def gateway_from_json(data: dict[str, Any]) -> Gateway:
    return Gateway(
        name=data["name"],
        host=data["host"],
        port=data["port"],
        keys=tuple(ApiKey(name=k["name"], sha256=k["sha256"], models=tuple(k["models"]),
                          requests_per_minute=k["requestsPerMinute"], concurrent_requests=k["concurrentRequests"],
                          tokens_per_minute=k["tokensPerMinute"]) for k in data["keys"]),
        allow_anonymous=bool(data.get("allowAnonymous", False)),
    )


def job_from_json(data: dict[str, Any]) -> Job:
    return Job(
        name=data["name"],
        pool=data["pool"],
        priority_class=data["priorityClass"],
        priority=data["priority"],
        preemption=Preemption(data["preemption"]),
        preemptible=data["preemptible"],
        vram=data["vram"],
        gpus=data["gpus"],
        entrypoint=data["entrypoint"],
        working_dir=data["workingDir"],
        env=tuple(sorted(data["env"].items())),
        retries=data["retries"],
        active_deadline=data["activeDeadline"],
        schedule=data["schedule"],
    )


def job_to_json(j: Job) -> dict[str, Any]:
    return {
        "name": j.name,
        "pool": j.pool,
        "priorityClass": j.priority_class,
        "priority": j.priority,
        "preemption": str(j.preemption),
        "preemptible": j.preemptible,
        "vram": j.vram,
        "gpus": j.gpus,
        "entrypoint": j.entrypoint,
        "workingDir": j.working_dir,
        "env": dict(j.env),
        "retries": j.retries,
        "activeDeadline": j.active_deadline,
        "schedule": j.schedule,
    }


__all__ = [
    "ApiKey",
    "DesiredState",
    "Gateway",
    "Engine",
    "GpuSpec",
    "IMPLICIT_PRIORITY",
    "InventoryNode",
    "Job",
    "Model",
    "Placement",
    "Pool",
    "Preemption",
    "PriorityClass",
    "Scaling",
    "Spread",
    "canonical_json",
    "desired_from_json",
    "desired_to_json",
    "job_from_json",
    "job_to_json",
    "short_hash",
]
