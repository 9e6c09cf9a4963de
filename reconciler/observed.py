"""The observed state: the cluster as seen, as plain frozen data with a stable JSON form.

Produced by the Ray adapter (live), by ``from_inventory`` (``--offline``) or by ``from_json`` (a recorded snapshot,
``--observed state.json``). The planner reads it and never asks how it was obtained.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler import demand as demand_json
from reconciler.demand import ModelDemand
from reconciler.desired import DesiredState, Job, canonical_json, job_from_json, job_to_json, short_hash

FORMAT_VERSION = "reconciler/observed-v1"

# The Ray node label that names a node the way the specs do (inventory `node:`). Nodes started by `reconciler up`
# or by the `ray start` arguments of `reconciler node-resources` carry it.
NODE_NAME_LABEL = "reconciler.io/node"


class ReplicaState(StrEnum):
    RUNNING = "running"
    STARTING = "starting"  # scheduled, engine loading
    PENDING = "pending"  # Ray cannot schedule it (yet): no room on the GPU it was pinned to
    FAILED = "failed"
    STOPPING = "stopping"


class JobRunState(StrEnum):
    """One run of a Job as the cluster reports it, with the runs reconciler stopped to make room told apart."""

    PENDING = "pending"  # submitted; Ray has not started it yet
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PREEMPTED = "preempted"  # stopped by reconciler for a higher priority: requeued, not a failure
    STOPPED = "stopped"  # stopped otherwise (past its activeDeadline, by hand): counts as a failure


ACTIVE_RUN = (JobRunState.PENDING, JobRunState.RUNNING)


class Source(StrEnum):
    LIVE = "live"
    SNAPSHOT = "snapshot"
    OFFLINE = "offline"


@dataclass(frozen=True, slots=True)
class ObservedGpu:
    index: int
    name: str
    memory: int  # total bytes
    foreign: int = 0  # bytes used by processes that are not our replicas
    used: int | None = None  # bytes in use in total as NVML reports; None when simulated


@dataclass(frozen=True, slots=True)
class ObservedNode:
    name: str
    labels: tuple[tuple[str, str], ...] = ()
    gpus: tuple[ObservedGpu, ...] = ()
    node_id: str | None = None  # Ray's node id; None offline
    alive: bool = True
    simulated: bool = True  # GPUs taken from the pool inventory, not NVML
    dead_since: float | None = None  # unix seconds Ray declared it dead; None while alive or when Ray did not say
    death_reason: str = ""  # Ray's words for why it died

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    def gpu(self, index: int) -> ObservedGpu:
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        raise KeyError(index)


@dataclass(frozen=True, slots=True)
class ObservedReplica:
    model: str
    replica: int
    node: str
    gpus: tuple[int, ...]
    vram: int  # bytes reserved on each of its GPUs
    restart_hash: str  # Model.restart_hash of the spec it was started from
    config_hash: str  # Model.config_hash it was last configured with
    state: ReplicaState = ReplicaState.RUNNING
    message: str = ""  # why it is pending or failed, as the cluster said it
    app: str = ""  # the Serve application that runs it
    # Bytes its processes (the Serve replica actor and its engine's children) really use on each of its GPUs, to set
    # beside `vram`: NVML's per-process used memory on a GPU node (the most on any one of its GPUs), resident memory
    # on a simulated one (shared evenly over its GPUs); None when it could not be read.
    measured: int | None = None
    measured_source: str = ""  # "nvml" or "rss"; "" when not measured

    @property
    def key(self) -> tuple[str, int]:
        return (self.model, self.replica)


MEASURED_SOURCES = ("nvml", "rss")


@dataclass(frozen=True, slots=True)
class MemoryPeak:
    """The highest memory seen of replicas of one kind (``peak_key``), kept in the cluster across runs."""

    key: str
    peak_bytes: int  # per GPU
    first_seen: float  # epoch seconds of the first sample
    last_seen: float  # epoch seconds of the latest sample
    samples: int  # observations folded in


def peak_key(*, source: str, engine: str, engine_args_json: str, gpu_name: str, tensor_parallel: int) -> str:
    """What makes two replicas use the same memory: the model, how its engine runs it, on which GPU model.

    Engine args are compared by value, so their spelling (key order, spaces) does not split a kind in two.
    """
    try:
        args: Any = json.loads(engine_args_json) if engine_args_json else {}
    except ValueError:
        args = engine_args_json
    return short_hash(
        {"source": source, "engine": engine, "engineArgs": args, "gpu": gpu_name, "tensorParallel": tensor_parallel},
        16,
    )


@dataclass(frozen=True, slots=True)
class EngineDeath:
    """A replica's engine that died under it (its process killed, out of memory, a driver fault), as the replica
    recorded it in the cluster: the replica is replaced by Serve; status, events and metrics name the death."""

    model: str
    replica: int
    app: str
    node: str
    gpus: tuple[int, ...]
    reason: str  # "signal 9 (SIGKILL)", "exit code 1", "the engine reported an error"
    at: float  # epoch seconds, as the replica's node saw it

    @property
    def key(self) -> tuple[str, float]:
        return (self.app, self.at)


def engine_death_to_json(d: EngineDeath) -> dict[str, Any]:
    return {"model": d.model, "replica": d.replica, "app": d.app, "node": d.node, "gpus": list(d.gpus),
            "reason": d.reason, "at": d.at}


def engine_death_from_json(d: dict[str, Any]) -> EngineDeath:
    return EngineDeath(model=d["model"], replica=int(d["replica"]), app=d["app"], node=d["node"],
                       gpus=tuple(d["gpus"]), reason=d["reason"], at=float(d["at"]))


@dataclass(frozen=True, slots=True)
class ObservedJobRun:
    """One submission of a Job: run numbers count up from 1 per job; finished runs are its history."""

    job: str
    run: int
    revision: str  # Job.revision it was started from
    state: JobRunState
    node: str = ""
    gpus: tuple[int, ...] = ()
    vram: int = 0  # bytes on each of its GPUs
    slot: float | None = None  # the scheduled time (epoch seconds) it runs for; None without a schedule
    started: float | None = None  # epoch seconds
    ended: float | None = None
    message: str = ""  # the tail of its log when it failed, or what Ray said

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_RUN


@dataclass(frozen=True, slots=True)
class ObservedState:
    nodes: tuple[ObservedNode, ...] = ()  # sorted by name
    replicas: tuple[ObservedReplica, ...] = ()  # sorted by (model, replica)
    source: Source = Source.OFFLINE
    jobs: tuple[ObservedJobRun, ...] = ()  # sorted by (job, run)
    at: float | None = None  # when it was observed (epoch seconds): the planner's clock; None offline
    # Ad-hoc jobs (`reconciler run`) recorded in the cluster: desired state that lives there, not in the specs.
    recorded: tuple[Job, ...] = ()  # sorted by name
    # What the gateways saw of each model (requests in flight and held, the last one, the load's history): the
    # input of demand-driven replica counts. Sorted by model; empty when no gateway runs or none was asked.
    demand: tuple[ModelDemand, ...] = ()
    # The memory peaks kept in the cluster, sorted by key: the measured basis of `vram: auto` and of right-sizing.
    memory_peaks: tuple[MemoryPeak, ...] = ()
    # Engines that died under their replicas, recently (the cluster keeps the last few per application); by time.
    engine_deaths: tuple[EngineDeath, ...] = ()

    def peak(self, key: str) -> MemoryPeak | None:
        for p in self.memory_peaks:
            if p.key == key:
                return p
        return None

    def demand_of(self, model: str) -> ModelDemand | None:
        for d in self.demand:
            if d.model == model:
                return d
        return None

    def runs_of(self, job: str) -> tuple[ObservedJobRun, ...]:
        return tuple(r for r in self.jobs if r.job == job)

    def node(self, name: str) -> ObservedNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    @property
    def fingerprint(self) -> str:
        """What a saved plan records: apply refuses the plan when the cluster no longer matches it.

        Replica and job run states are left out on purpose: a replica finishing its start does not make a plan
        stale, nor does the time of the observation.
        """
        data = to_json(self)
        for replica in data["replicas"]:
            replica.pop("state")
            replica.pop("message")
            replica.pop("measured", None)  # memory moves every observation; a plan is stale only if placement is
            replica.pop("measuredSource", None)
        for run in data.get("jobs", []):
            for key in ("state", "message", "started", "ended"):
                run.pop(key)
        for node in data["nodes"]:
            if node["alive"]:  # fields of a dead node: leaving them out keeps the fingerprints from before them
                node.pop("deadSince")
                node.pop("deathReason")
        data.pop("source")
        data.pop("observedAt", None)
        data.pop("memoryPeaks", None)
        data.pop("demand", None)  # demand changes every second; a plan made from it is stale only if placement is
        return short_hash(data, 16)


def dead_nodes(state: ObservedState) -> tuple[ObservedNode, ...]:
    return tuple(n for n in state.nodes if not n.alive)


def replicas_on(state: ObservedState, node: str) -> tuple[ObservedReplica, ...]:
    """The replicas placed on a node (for a dead node: what ran there when it died)."""
    return tuple(r for r in state.replicas if r.node == node)


def normalised(state: ObservedState) -> ObservedState:
    """The same state in the deterministic order every consumer relies on."""
    return ObservedState(
        nodes=tuple(sorted(state.nodes, key=lambda n: n.name)),
        replicas=tuple(sorted(state.replicas, key=lambda r: (r.model, r.replica, r.app))),
        source=state.source,
        jobs=tuple(sorted(state.jobs, key=lambda r: (r.job, r.run))),
        at=state.at,
        recorded=tuple(sorted(state.recorded, key=lambda j: j.name)),
        demand=tuple(sorted(state.demand, key=lambda d: d.model)),
        memory_peaks=tuple(sorted(state.memory_peaks, key=lambda p: p.key)),
        engine_deaths=tuple(sorted(state.engine_deaths, key=lambda d: (d.at, d.app))),
    )


def from_inventory(desired: DesiredState) -> ObservedState:
    """An empty cluster shaped like the pools' inventories: what `--offline` plans against.

    Each node carries its pool's selector labels so pool membership works exactly as on a live cluster.
    """
    nodes: list[ObservedNode] = []
    for pool in desired.pools:
        labels = dict(pool.selector or ())
        for inv in pool.inventory:
            node_labels = {**labels, NODE_NAME_LABEL: inv.node}
            gpus = tuple(ObservedGpu(index=i, name=g.name, memory=g.memory) for i, g in enumerate(inv.gpus))
            nodes.append(ObservedNode(name=inv.node, labels=tuple(sorted(node_labels.items())), gpus=gpus))
    return normalised(ObservedState(nodes=tuple(nodes), source=Source.OFFLINE))


def job_run_to_json(r: ObservedJobRun) -> dict[str, Any]:
    return {
        "job": r.job,
        "run": r.run,
        "revision": r.revision,
        "state": str(r.state),
        "node": r.node,
        "gpus": list(r.gpus),
        "vram": r.vram,
        "slot": r.slot,
        "started": r.started,
        "ended": r.ended,
        "message": r.message,
    }


def job_run_from_json(r: dict[str, Any]) -> ObservedJobRun:
    return ObservedJobRun(
        job=r["job"],
        run=r["run"],
        revision=r["revision"],
        state=JobRunState(r["state"]),
        node=r.get("node", ""),
        gpus=tuple(r.get("gpus", [])),
        vram=r.get("vram", 0),
        slot=r.get("slot"),
        started=r.get("started"),
        ended=r.get("ended"),
        message=r.get("message", ""),
    )


def to_json(state: ObservedState) -> dict[str, Any]:
    document = _to_json(state)
    # Only when present: snapshots without jobs read and hash as they always did.
    if state.jobs:
        document["jobs"] = [job_run_to_json(r) for r in state.jobs]
    if state.at is not None:
        document["observedAt"] = state.at
    if state.recorded:
        document["recordedJobs"] = [job_to_json(j) for j in state.recorded]
    if state.demand:
        document["demand"] = [demand_json.to_json(d) for d in state.demand]
    if state.memory_peaks:
        document["memoryPeaks"] = [memory_peak_to_json(p) for p in state.memory_peaks]
    if state.engine_deaths:
        document["engineDeaths"] = [engine_death_to_json(d) for d in state.engine_deaths]
    return document


def memory_peak_to_json(p: MemoryPeak) -> dict[str, Any]:
    return {"key": p.key, "peakBytes": p.peak_bytes, "firstSeen": p.first_seen, "lastSeen": p.last_seen,
            "samples": p.samples}


def memory_peak_from_json(p: dict[str, Any]) -> MemoryPeak:
    return MemoryPeak(key=p["key"], peak_bytes=int(p["peakBytes"]), first_seen=float(p["firstSeen"]),
                      last_seen=float(p["lastSeen"]), samples=int(p["samples"]))


def _replica_to_json(r: ObservedReplica) -> dict[str, Any]:
    document: dict[str, Any] = {
        "model": r.model,
        "replica": r.replica,
        "node": r.node,
        "gpus": list(r.gpus),
        "vram": r.vram,
        "restartHash": r.restart_hash,
        "configHash": r.config_hash,
        "state": str(r.state),
        "message": r.message,
        "app": r.app,
    }
    if r.measured is not None:  # only when read: snapshots from before it read and hash as they always did
        document["measured"] = r.measured
        document["measuredSource"] = r.measured_source
    return document


def _to_json(state: ObservedState) -> dict[str, Any]:
    return {
        "format": FORMAT_VERSION,
        "source": str(state.source),
        "nodes": [
            {
                "name": n.name,
                "nodeId": n.node_id,
                "alive": n.alive,
                "simulated": n.simulated,
                "deadSince": n.dead_since,
                "deathReason": n.death_reason,
                "labels": dict(n.labels),
                "gpus": [
                    {"index": g.index, "name": g.name, "memory": g.memory, "foreign": g.foreign, "used": g.used}
                    for g in n.gpus
                ],
            }
            for n in state.nodes
        ],
        "replicas": [_replica_to_json(r) for r in state.replicas],
    }


def dumps(state: ObservedState) -> str:
    return canonical_json(to_json(state))


class ObservedFormatError(ValueError):
    """A snapshot file that is not an observed state; the message says what is wrong and where."""


def from_json(data: Any) -> ObservedState:
    """Parse a snapshot; callers validate against schemas/observed.schema.json first for friendly errors."""
    if not isinstance(data, dict) or data.get("format") != FORMAT_VERSION:
        raise ObservedFormatError(f'not an observed-state snapshot: expected "format": "{FORMAT_VERSION}"')
    try:
        nodes = tuple(
            ObservedNode(
                name=n["name"],
                node_id=n.get("nodeId"),
                alive=n.get("alive", True),
                simulated=n.get("simulated", True),
                dead_since=n.get("deadSince"),
                death_reason=n.get("deathReason", ""),
                labels=tuple(sorted((str(k), str(v)) for k, v in n.get("labels", {}).items())),
                gpus=tuple(
                    ObservedGpu(
                        index=g["index"],
                        name=g.get("name", ""),
                        memory=g["memory"],
                        foreign=g.get("foreign", 0),
                        used=g.get("used"),
                    )
                    for g in n.get("gpus", [])
                ),
            )
            for n in data.get("nodes", [])
        )
        replicas = tuple(
            ObservedReplica(
                model=r["model"],
                replica=r["replica"],
                node=r["node"],
                gpus=tuple(r["gpus"]),
                vram=r["vram"],
                restart_hash=r["restartHash"],
                config_hash=r.get("configHash", ""),
                state=ReplicaState(r.get("state", "running")),
                message=r.get("message", ""),
                app=r.get("app", ""),
                measured=r.get("measured"),
                measured_source=r.get("measuredSource", "") if r.get("measured") is not None else "",
            )
            for r in data.get("replicas", [])
        )
        jobs = tuple(job_run_from_json(r) for r in data.get("jobs", []))
        at = data.get("observedAt")
        recorded = tuple(job_from_json(j) for j in data.get("recordedJobs", []))
        demand = tuple(demand_json.from_json(d) for d in data.get("demand", []))
        peaks = tuple(memory_peak_from_json(p) for p in data.get("memoryPeaks", []))
        deaths = tuple(engine_death_from_json(d) for d in data.get("engineDeaths", []))
    except (KeyError, TypeError, ValueError) as exc:
        raise ObservedFormatError(f"malformed observed-state snapshot: {exc!r}") from exc
    return normalised(
        ObservedState(nodes=nodes, replicas=replicas, source=Source(data.get("source", "snapshot")), jobs=jobs, at=at,
                      recorded=recorded, demand=demand, memory_peaks=peaks, engine_deaths=deaths)
    )
