"""A plan is data: the actions that take the observed state to the desired one, and the end state they reach.

Shared by the planner (producer), the renderers and the executor (consumers). Reasons are for people only: nothing
branches on them. A plan is self-contained, as Terraform's plan file is: it carries what each model runs
(``ModelRuntime``), the memory of the GPUs each replica lands on, the application each action stops, and the GPUs it
assumed where none could be observed, so ``apply`` needs the plan and the cluster, never the specs. Its JSON form
carries a digest of its own content, so a saved plan that was edited is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from reconciler.desired import (
    Gateway,
    Scaling,
    canonical_json,
    gateway_from_json,
    gateway_to_json,
    scaling_from_json,
    scaling_to_json,
)
from reconciler.quantity import format_bytes
from reconciler.sizing.estimate import Estimate, estimate_from_json, estimate_to_json

PLAN_FORMAT = "reconciler/plan-v1"


class ActionKind(StrEnum):
    EVICT = "evict"  # preempted by a higher priority
    DELETE = "delete"  # no longer desired
    MOVE = "move"  # same spec, other GPU(s)
    REPLACE = "replace"  # restart for a changed engine, source, vram, tensorParallel or engineArgs
    UPDATE = "update"  # no restart: route, labels
    CREATE = "create"


# The safe order of an apply: free VRAM first, then reshuffle, then fill. The planner sorts by it and the executor
# walks the list as given.
APPLY_ORDER: tuple[ActionKind, ...] = (
    ActionKind.EVICT,
    ActionKind.DELETE,
    ActionKind.MOVE,
    ActionKind.REPLACE,
    ActionKind.UPDATE,
    ActionKind.CREATE,
)

SYMBOLS: dict[ActionKind, str] = {
    ActionKind.CREATE: "+",
    ActionKind.DELETE: "-",
    ActionKind.EVICT: "!",
    ActionKind.MOVE: "→",
    ActionKind.REPLACE: "±",
    ActionKind.UPDATE: "~",
}


@dataclass(frozen=True, slots=True)
class Location:
    node: str
    gpus: tuple[int, ...]

    def __str__(self) -> str:
        return f"{self.node}/" + "+".join(f"gpu{i}" for i in self.gpus)


def replica_id(model: str, replica: int) -> str:
    """How a replica is written everywhere people read it: plans, diffs, events, status, apply reports."""
    return f"{model}[{replica}]"


@dataclass(frozen=True, slots=True)
class Action:
    kind: ActionKind
    model: str
    replica: int
    source: Location | None  # where it runs now ("from"); None for create
    target: Location | None  # where it will run ("to"); None for delete/evict
    vram: int  # bytes per GPU of the replica (the new figure for replace)
    reason: str
    # Make-before-break: the new replica starts while the old one still serves. Only set on move/replace when the
    # target has room for both at once.
    make_before_break: bool = False
    source_app: str = ""  # the Serve application it stops, moves or replaces, as observed ("" when none)

    @property
    def replica_id(self) -> str:
        return replica_id(self.model, self.replica)

    def describe(self) -> str:
        """One line without the reason, e.g. ``move chat[1] node-a/gpu0 -> node-b/gpu1``."""
        where = f" {self.source}" if self.source else ""
        if self.target is not None and self.target != self.source:
            where += f" -> {self.target}" if self.source else f" {self.target}"
        return f"{self.kind} {self.replica_id}{where}"


@dataclass(frozen=True, slots=True)
class PlacedReplica:
    model: str
    replica: int
    node: str
    gpus: tuple[int, ...]
    vram: int
    gpu_memory: int = 0  # total bytes of the smallest of its GPUs (vLLM's memory fraction is taken of it)

    @property
    def location(self) -> Location:
        return Location(self.node, self.gpus)


@dataclass(frozen=True, slots=True)
class ModelRuntime:
    """What a model's replicas run with and where it answers: copied from its spec by the planner."""

    name: str
    engine: str
    source: str
    vram: int  # bytes per replica and per GPU
    tensor_parallel: int
    engine_args_json: str  # canonical JSON
    route: str  # resolved: the spec's route or the default one
    restart_hash: str  # changes when a replica must restart (names its applications)
    config_hash: str  # changes on what a running replica takes without a restart
    replicas: int | None = None  # what the spec asks for (None: "max"), for the gateway's model list
    scaling: Scaling | None = None  # `replicas: {min, max}`: `replicas` is then what demand asked for at planning
    vram_auto: bool = False  # `vram: auto`: `vram` was sized from the model (`sizing` says how)
    # The estimate behind `vram` (auto), or inside it (a fixed figure): the engine sizes its KV cache from its terms.
    sizing: Estimate | None = None

    @property
    def engine_args(self) -> dict[str, Any]:
        return json.loads(self.engine_args_json)


@dataclass(frozen=True, slots=True)
class ScaleDecision:
    """One `replicas: {min, max}` model's count at planning: what ran, what its demand asked for, and why."""

    model: str
    running: int  # replicas it had (starting ones included)
    wanted: int
    rule: str  # steady | wake | idle | up | down | range: for metrics and tests, never for the executor
    reason: str  # for people; "" when steady
    in_flight: int = 0
    queued: int = 0
    last_request: float | None = None  # epoch seconds

    @property
    def changes(self) -> bool:
        return self.wanted != self.running


def scale_decision_to_json(d: ScaleDecision) -> dict[str, Any]:
    return {"model": d.model, "running": d.running, "wanted": d.wanted, "rule": d.rule, "reason": d.reason,
            "inFlight": d.in_flight, "queued": d.queued, "lastRequest": d.last_request}


@dataclass(frozen=True, slots=True)
class AssumedGpu:
    """A GPU taken from a pool's inventory because its node's GPUs cannot be observed (a simulated node)."""

    node: str
    index: int
    name: str
    memory: int


@dataclass(frozen=True, slots=True)
class Unplaced:
    model: str
    replica: int
    reason: str


@dataclass(frozen=True, slots=True)
class GpuUse:
    """One replica's share of a GPU, for the before/after view."""

    model: str
    replica: int
    vram: int


@dataclass(frozen=True, slots=True)
class GpuView:
    pool: str
    node: str
    index: int
    name: str
    memory: int
    reserve: int
    foreign: int
    before: tuple[GpuUse, ...]
    after: tuple[GpuUse, ...]

    @property
    def capacity(self) -> int:
        """What the planner may place on it."""
        return max(0, self.memory - self.reserve - self.foreign)


JOB_PREFIX = "job/"


def job_item(name: str) -> str:
    """How a job stands among the models of a plan (actions, GPU views): `job/NAME`, never a model's name."""
    return f"{JOB_PREFIX}{name}"


def is_job(item: str) -> bool:
    return item.startswith(JOB_PREFIX)


def job_name(item: str) -> str:
    return item.removeprefix(JOB_PREFIX)


@dataclass(frozen=True, slots=True)
class PlannedJob:
    """A job in the plan: its state, the run it places or keeps and where, and what a new run is submitted with."""

    name: str
    state: str  # planner.jobs.JobState: waiting | running | preempted | succeeded | failed (as observed)
    run: int  # the active run, or the number a new run gets
    runs: int  # runs so far
    failures: int
    preemptions: int
    reason: str  # for people
    node: str = ""  # where its run is (or will be) placed; "" when it has no place
    gpus: tuple[int, ...] = ()
    vram: int = 0  # bytes per GPU
    entrypoint: str = ""
    working_dir: str | None = None
    env_json: str = "{}"  # canonical JSON
    revision: str = ""
    slot: float | None = None
    priority: int = 0

    @property
    def env(self) -> dict[str, str]:
        return json.loads(self.env_json)

    @property
    def location(self) -> Location | None:
        return Location(self.node, self.gpus) if self.node else None


@dataclass(frozen=True, slots=True)
class PoolQuality:
    """How good one pool's placement is: proven optimal for the planner's objective, or how far it may be from a
    bound no placement can beat (placed VRAM summed over the priority levels, GPUs in use for binpack, running
    replicas kept where they run, the fullest GPU's fill for spread)."""

    pool: str
    proven_optimal: bool
    gap_bytes: int = 0
    gap_gpus: int = 0
    gap_stays: int = 0
    gap_fill: int = 0  # spread: per mille of its memory the fullest GPU may be above the bound

    @property
    def summary(self) -> str:
        if self.proven_optimal:
            return "proven optimal"
        gpus = f"{self.gap_gpus} GPU{'' if self.gap_gpus == 1 else 's'}"
        text = f"within {format_bytes(self.gap_bytes)} / {gpus} of the bound"
        if self.gap_stays:
            text += f", {self.gap_stays} running replica{'' if self.gap_stays == 1 else 's'} that might stay"
        if self.gap_fill:
            text += f", the fullest GPU up to {self.gap_fill / 10:g}% of its memory fuller than it must be"
        return text


@dataclass(frozen=True, slots=True)
class Plan:
    actions: tuple[Action, ...]  # in apply order
    placement: tuple[PlacedReplica, ...]  # the full desired end state, sorted by (model, replica)
    unplaced: tuple[Unplaced, ...]
    gpus: tuple[GpuView, ...]  # sorted by (pool, node, index)
    fingerprint: str  # ObservedState.fingerprint of the state the plan was computed from
    desired_fingerprint: str  # DesiredState.fingerprint of the specs it was computed from
    models: tuple[ModelRuntime, ...] = ()  # every model of the specs, sorted by name
    assumed: tuple[AssumedGpu, ...] = ()  # the pools' inventory the observation fell back on, sorted
    gateway: Gateway | None = None  # the Gateway spec (key names and hashes, limits, listen address), if any
    quality: tuple[PoolQuality, ...] = ()  # one per pool, sorted by pool
    jobs: tuple[PlannedJob, ...] = ()  # every job of the specs, sorted by name
    scaling: tuple[ScaleDecision, ...] = ()  # every on-demand model's count, sorted by model

    def job(self, name: str) -> PlannedJob:
        for job in self.jobs:
            if job.name == name:
                return job
        raise KeyError(name)

    def model(self, name: str) -> ModelRuntime:
        for model in self.models:
            if model.name == name:
                return model
        raise KeyError(name)

    @property
    def empty(self) -> bool:
        return not self.actions

    @property
    def summary(self) -> dict[str, int]:
        counts = {str(kind): 0 for kind in APPLY_ORDER}
        for action in self.actions:
            counts[str(action.kind)] += 1
        counts["unplaced"] = len(self.unplaced)
        return counts


def _location(loc: Location | None) -> dict[str, Any] | None:
    return None if loc is None else {"node": loc.node, "gpus": list(loc.gpus)}


def _parse_location(data: Any) -> Location | None:
    return None if data is None else Location(node=data["node"], gpus=tuple(data["gpus"]))


def action_to_json(a: Action) -> dict[str, Any]:
    """One action as the plan file, `plan --format json` and watch's events all write it."""
    return {
        "action": str(a.kind),
        "model": a.model,
        "replica": a.replica,
        "from": _location(a.source),
        "to": _location(a.target),
        "fromApp": a.source_app or None,
        "vram_bytes": a.vram,
        "makeBeforeBreak": a.make_before_break,
        "reason": a.reason,
    }


def digest(document: dict[str, Any]) -> str:
    """SHA-256 of a plan document's content (everything but the digest itself), in canonical JSON."""
    content = {k: v for k, v in document.items() if k != "digest"}
    return "sha256:" + hashlib.sha256(canonical_json(content).encode()).hexdigest()


def to_json(plan: Plan) -> dict[str, Any]:
    """The stable JSON form documented by schemas/plan.schema.json."""
    document = {
        "format": PLAN_FORMAT,
        "fingerprint": plan.fingerprint,
        "desiredFingerprint": plan.desired_fingerprint,
        "summary": plan.summary,
        "actions": [action_to_json(a) for a in plan.actions],
        "placement": [
            {"model": p.model, "replica": p.replica, "node": p.node, "gpus": list(p.gpus), "vram_bytes": p.vram,
             "gpu_memory_bytes": p.gpu_memory}
            for p in plan.placement
        ],
        "unplaced": [{"model": u.model, "replica": u.replica, "reason": u.reason} for u in plan.unplaced],
        "gpus": [
            {
                "pool": g.pool,
                "node": g.node,
                "index": g.index,
                "name": g.name,
                "memory": g.memory,
                "reserve": g.reserve,
                "foreign": g.foreign,
                "before": [{"model": u.model, "replica": u.replica, "vram_bytes": u.vram} for u in g.before],
                "after": [{"model": u.model, "replica": u.replica, "vram_bytes": u.vram} for u in g.after],
            }
            for g in plan.gpus
        ],
        "models": [
            {
                "name": m.name,
                "engine": m.engine,
                "source": m.source,
                "vram_bytes": m.vram,
                "tensorParallel": m.tensor_parallel,
                "engineArgs": m.engine_args,
                "route": m.route,
                "restartHash": m.restart_hash,
                "configHash": m.config_hash,
                "replicas": m.replicas,
                **({"scaling": scaling_to_json(m.scaling)} if m.scaling is not None else {}),
                **({"vramAuto": True} if m.vram_auto else {}),
                **({"sizing": estimate_to_json(m.sizing)} if m.sizing is not None else {}),
            }
            for m in plan.models
        ],
        "gateway": None if plan.gateway is None else gateway_to_json(plan.gateway),
        "assumed": [{"node": g.node, "index": g.index, "name": g.name, "memory": g.memory} for g in plan.assumed],
        "quality": [
            {
                "pool": q.pool,
                "provenOptimal": q.proven_optimal,
                "gapBytes": q.gap_bytes,
                "gapGpus": q.gap_gpus,
                "gapStays": q.gap_stays,
                **({"gapFill": q.gap_fill} if q.gap_fill else {}),  # spread only: plans keep their form otherwise
                "summary": q.summary,
            }
            for q in plan.quality
        ],
    }
    if plan.jobs:  # only then: plans without jobs keep their form and digest
        document["jobs"] = [planned_job_to_json(j) for j in plan.jobs]
    if plan.scaling:  # likewise for plans without on-demand models
        document["scaling"] = [scale_decision_to_json(d) for d in plan.scaling]
    document["digest"] = digest(document)
    return document


def planned_job_to_json(j: PlannedJob) -> dict[str, Any]:
    return {
        "name": j.name,
        "state": j.state,
        "run": j.run,
        "runs": j.runs,
        "failures": j.failures,
        "preemptions": j.preemptions,
        "reason": j.reason,
        "node": j.node or None,
        "gpus": list(j.gpus),
        "vram_bytes": j.vram,
        "entrypoint": j.entrypoint,
        "workingDir": j.working_dir,
        "env": j.env,
        "revision": j.revision,
        "slot": j.slot,
        "priority": j.priority,
    }


def _planned_job(j: dict[str, Any]) -> PlannedJob:
    return PlannedJob(
        name=j["name"], state=j["state"], run=j["run"], runs=j["runs"], failures=j["failures"],
        preemptions=j["preemptions"], reason=j["reason"], node=j["node"] or "", gpus=tuple(j["gpus"]),
        vram=j["vram_bytes"], entrypoint=j["entrypoint"], working_dir=j["workingDir"],
        env_json=canonical_json(j["env"]), revision=j["revision"], slot=j["slot"], priority=j["priority"],
    )


def from_json(data: dict[str, Any]) -> Plan:
    """A plan from its JSON form. Trusts its input: `apply --plan` reads files through ``schemas.read.read_plan``,
    which checks the schema and the digest first."""

    def uses(items: list[dict[str, Any]]) -> tuple[GpuUse, ...]:
        return tuple(GpuUse(u["model"], u["replica"], u["vram_bytes"]) for u in items)

    return Plan(
        actions=tuple(
            Action(
                kind=ActionKind(a["action"]),
                model=a["model"],
                replica=a["replica"],
                source=_parse_location(a["from"]),
                target=_parse_location(a["to"]),
                vram=a["vram_bytes"],
                reason=a["reason"],
                make_before_break=a["makeBeforeBreak"],
                source_app=a["fromApp"] or "",
            )
            for a in data["actions"]
        ),
        placement=tuple(
            PlacedReplica(p["model"], p["replica"], p["node"], tuple(p["gpus"]), p["vram_bytes"], p["gpu_memory_bytes"])
            for p in data["placement"]
        ),
        unplaced=tuple(Unplaced(u["model"], u["replica"], u["reason"]) for u in data["unplaced"]),
        gpus=tuple(
            GpuView(
                pool=g["pool"],
                node=g["node"],
                index=g["index"],
                name=g["name"],
                memory=g["memory"],
                reserve=g["reserve"],
                foreign=g["foreign"],
                before=uses(g["before"]),
                after=uses(g["after"]),
            )
            for g in data["gpus"]
        ),
        fingerprint=data["fingerprint"],
        desired_fingerprint=data["desiredFingerprint"],
        models=tuple(
            ModelRuntime(
                name=m["name"],
                engine=m["engine"],
                source=m["source"],
                vram=m["vram_bytes"],
                tensor_parallel=m["tensorParallel"],
                engine_args_json=canonical_json(m["engineArgs"]),
                route=m["route"],
                restart_hash=m["restartHash"],
                config_hash=m["configHash"],
                replicas=m["replicas"],
                scaling=scaling_from_json(m["scaling"]) if "scaling" in m else None,
                vram_auto=m.get("vramAuto", False),
                sizing=estimate_from_json(m["sizing"]) if "sizing" in m else None,
            )
            for m in data["models"]
        ),
        gateway=None if data["gateway"] is None else gateway_from_json(data["gateway"]),
        assumed=tuple(AssumedGpu(g["node"], g["index"], g["name"], g["memory"]) for g in data["assumed"]),
        quality=tuple(
            PoolQuality(q["pool"], q["provenOptimal"], q["gapBytes"], q["gapGpus"], q["gapStays"], q.get("gapFill", 0))
            for q in data["quality"]
        ),
        jobs=tuple(_planned_job(j) for j in data.get("jobs", [])),
        scaling=tuple(ScaleDecision(model=d["model"], running=d["running"], wanted=d["wanted"], rule=d["rule"],
                                    reason=d["reason"], in_flight=d["inFlight"], queued=d["queued"],
                                    last_request=d["lastRequest"]) for d in data.get("scaling", [])),
    )
