"""JSON Schema (draft 2020-12) of an observed-state snapshot: what ``reconciler.observed.to_json`` writes.

`reconciler plan --observed FILE` validates a snapshot against it before reading it. ``to_json`` always writes every
property; hand-written snapshots may leave out those that ``from_json`` defaults, and each such property says its
default here.
"""

from __future__ import annotations

from typing import Any

from reconciler.observed import FORMAT_VERSION, MEASURED_SOURCES, JobRunState, ReplicaState, Source

FILENAME = "observed.schema.json"

_NAME = {"type": "string", "minLength": 1}
_INDEX = {"type": "integer", "minimum": 0}
_BYTES = {"type": "integer", "minimum": 0}


def _obj(description: str, required: dict[str, Any], optional: dict[str, Any]) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": {**required, **optional},
        "required": sorted(required),
        "additionalProperties": False,
    }


def _gpu() -> dict[str, Any]:
    return _obj(
        "One GPU of a node.",
        {
            "index": {**_INDEX, "description": "the GPU's index on its node"},
            "memory": {**_BYTES, "description": "total bytes"},
        },
        {
            "name": {"type": "string", "default": "", "description": "model name, e.g. NVIDIA RTX 4090"},
            "foreign": {
                **_BYTES,
                "default": 0,
                "description": "bytes used by processes that are not reconciler's replicas",
            },
            "used": {
                "type": ["integer", "null"],
                "minimum": 0,
                "default": None,
                "description": "bytes in use in total as NVML reports; null when the GPU is simulated",
            },
        },
    )


def _node() -> dict[str, Any]:
    return _obj(
        "One node of the cluster.",
        {"name": {**_NAME, "description": "the node's name as the specs' inventory spells it"}},
        {
            "nodeId": {"type": ["string", "null"], "default": None, "description": "Ray's node id; null offline"},
            "alive": {"type": "boolean", "default": True},
            "deadSince": {
                "type": ["number", "null"],
                "default": None,
                "description": "unix seconds when Ray declared the node dead; null while it is alive or when Ray "
                "did not say",
            },
            "deathReason": {"type": "string", "default": "", "description": "Ray's words for why the node died"},
            "simulated": {
                "type": "boolean",
                "default": True,
                "description": "GPUs taken from the pool inventory rather than read from NVML",
            },
            "labels": {
                "type": "object",
                "additionalProperties": {"type": "string"},
                "default": {},
                "description": "Ray node labels; pools select nodes by them",
            },
            "gpus": {"type": "array", "items": {"$ref": "#/$defs/gpu"}, "default": []},
        },
    )


def _replica() -> dict[str, Any]:
    return _obj(
        "One running (or starting, pending, failed, stopping) replica reconciler manages.",
        {
            "model": _NAME,
            "replica": _INDEX,
            "node": _NAME,
            "gpus": {"type": "array", "items": _INDEX, "minItems": 1, "uniqueItems": True},
            "vram": {**_BYTES, "description": "bytes reserved on each of its GPUs"},
            "restartHash": {"type": "string", "description": "restart hash of the spec it was started from"},
        },
        {
            "configHash": {"type": "string", "default": "", "description": "config hash it was last configured with"},
            "state": {"enum": [str(s) for s in ReplicaState], "default": str(ReplicaState.RUNNING)},
            "message": {"type": "string", "default": "", "description": "why it is pending or failed"},
            "app": {"type": "string", "default": "", "description": "the Serve application that runs it"},
            "measured": {
                "type": ["integer", "null"],
                "minimum": 0,
                "default": None,
                "description": "bytes its processes really use on each of its GPUs (NVML per process on a GPU node, "
                "resident memory on a simulated one); null when not read",
            },
            "measuredSource": {"enum": ["", *MEASURED_SOURCES], "default": "",
                               "description": "where `measured` came from"},
        },
    )


def _memory_peak() -> dict[str, Any]:
    seconds = {"type": "number", "minimum": 0}
    return _obj(
        "The highest memory seen per GPU of replicas of one kind (model source, engine, engine args, GPU model, "
        "tensorParallel), kept in the cluster.",
        {
            "key": {**_NAME, "description": "digest of what makes replicas the same kind"},
            "peakBytes": {**_BYTES, "description": "the highest bytes per GPU seen"},
            "firstSeen": {**seconds, "description": "epoch seconds of the first sample"},
            "lastSeen": {**seconds, "description": "epoch seconds of the latest sample"},
            "samples": {"type": "integer", "minimum": 1, "description": "observations folded in"},
        },
        {},
    )


def _job_run() -> dict[str, Any]:
    seconds = {"type": ["number", "null"], "minimum": 0, "default": None}
    return _obj(
        "One run of a Job: active (pending, running) or finished (its history).",
        {
            "job": _NAME,
            "run": {"type": "integer", "minimum": 1, "description": "counts up from 1 per job"},
            "revision": {"type": "string", "description": "revision of the Job spec it was started from"},
            "state": {"enum": [str(s) for s in JobRunState]},
        },
        {
            "node": {"type": "string", "default": ""},
            "gpus": {"type": "array", "items": _INDEX, "uniqueItems": True, "default": []},
            "vram": {**_BYTES, "default": 0, "description": "bytes on each of its GPUs"},
            "slot": {**seconds, "description": "the scheduled time it runs for (epoch seconds)"},
            "started": {**seconds, "description": "epoch seconds"},
            "ended": {**seconds, "description": "epoch seconds"},
            "message": {"type": "string", "default": "", "description": "the tail of its log when it failed"},
        },
    )


def _recorded_job() -> dict[str, Any]:
    text = {"type": "string"}
    return _obj(
        "A Job as the planner takes it: pool and priority resolved, memory in bytes, deadlines in seconds.",
        {
            "name": _NAME, "pool": _NAME, "priorityClass": text, "priority": {"type": "integer"},
            "preemption": {"enum": ["LowerPriority", "Never"]}, "preemptible": {"type": "boolean"},
            "vram": _BYTES, "gpus": {"type": "integer", "minimum": 1}, "entrypoint": text,
            "workingDir": {"type": ["string", "null"]}, "env": {"type": "object", "additionalProperties": text},
            "retries": {"type": "integer", "minimum": 0},
            "activeDeadline": {"type": ["integer", "null"], "minimum": 1},
            "schedule": {"type": ["string", "null"]},
        },
        {},
    )


def _demand() -> dict[str, Any]:
    seconds = {"type": ["number", "null"], "minimum": 0, "default": None}
    count = {"type": "integer", "minimum": 0, "default": 0}
    return _obj(
        "What the gateways saw of one model: the input of demand-driven replica counts (`replicas: {min, max}`).",
        {"model": _NAME},
        {
            "inFlight": {**count, "description": "requests its replicas are answering"},
            "queued": {**count, "description": "requests held by a gateway until a replica can take them"},
            "sinceLastRequest": {**seconds, "description": "seconds since the last request arrived or was "
                                 "answered, measured by the gateway on its own clock; null: none seen"},
            "heldFor": {**seconds, "description": "seconds the longest-held request has waited (the gateway's clock)"},
            "samples": {
                "type": "array",
                "default": [],
                "description": "the load's history as [seconds before the report, mean requests in flight or held "
                "from then on] where it changed, oldest first",
                "items": {"type": "array", "prefixItems": [{"type": "integer", "minimum": 0},
                                                             {"type": "number", "minimum": 0}],
                          "minItems": 2, "maxItems": 2},
            },
            "partial": {"type": "boolean", "default": False,
                        "description": "a gateway did not answer in time: counts are a lower bound and idleness is "
                        "unknown (never scales down)"},
        },
    )


def schema() -> dict[str, Any]:
    root = _obj(
        "The cluster as seen: nodes, their GPUs and the replicas reconciler manages. Recorded by `reconciler "
        "observe`, read by `reconciler plan --observed FILE` so CI can plan without cluster access.",
        {"format": {"const": FORMAT_VERSION}},
        {
            "source": {
                "enum": [str(s) for s in Source],
                "default": str(Source.SNAPSHOT),
                "description": "how the state was obtained",
            },
            "nodes": {"type": "array", "items": {"$ref": "#/$defs/node"}, "default": []},
            "replicas": {"type": "array", "items": {"$ref": "#/$defs/replica"}, "default": []},
            "jobs": {"type": "array", "items": {"$ref": "#/$defs/jobRun"}, "default": []},
            "recordedJobs": {
                "type": "array",
                "description": "ad-hoc jobs (`reconciler run`) recorded in the cluster: desired state kept there",
                "items": {"$ref": "#/$defs/recordedJob"},
                "default": [],
            },
            "demand": {
                "type": "array",
                "description": "requests per model as the gateways saw them",
                "items": {"$ref": "#/$defs/demand"},
                "default": [],
            },
            "memoryPeaks": {
                "type": "array",
                "description": "memory peaks per kind of replica kept in the cluster",
                "items": {"$ref": "#/$defs/memoryPeak"},
                "default": [],
            },
            "engineDeaths": {
                "type": "array",
                "description": "engines that died under their replicas recently, as the replicas recorded them",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["model", "replica", "app", "node", "gpus", "reason", "at"],
                    "properties": {
                        "model": {"type": "string"},
                        "replica": {"type": "integer", "minimum": 0},
                        "app": {"type": "string"},
                        "node": {"type": "string"},
                        "gpus": {"type": "array", "items": {"type": "integer", "minimum": 0}},
                        "reason": {"type": "string"},
                        "at": {"type": "number"},
                    },
                },
                "default": [],
            },
            "observedAt": {
                "type": "number",
                "minimum": 0,
                "description": "when it was observed (epoch seconds): the clock schedules and backoff are planned with",
            },
        },
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "reconciler observed state",
        **root,
        "$defs": {"node": _node(), "gpu": _gpu(), "replica": _replica(), "jobRun": _job_run(),
                   "recordedJob": _recorded_job(), "demand": _demand(),
                   "memoryPeak": _memory_peak()},
    }
