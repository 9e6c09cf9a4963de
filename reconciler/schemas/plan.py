"""JSON Schema (draft 2020-12) of a saved plan: exactly what ``reconciler.plan.to_json`` writes.

The schema generator writes it to ``schemas/plan.schema.json``; `plan --format json`, `plan --out` and
`apply --plan` speak this format. Enumerations come from the core types so the schema cannot drift from them.
"""

from __future__ import annotations

from typing import Any

from reconciler.plan import APPLY_ORDER, PLAN_FORMAT, ActionKind
from reconciler.planner.scaling import Rule
from reconciler.sizing.estimate import Basis

FILENAME = "plan.schema.json"

_NAME = {"type": "string", "minLength": 1}
_INDEX = {"type": "integer", "minimum": 0}
_BYTES = {"type": "integer", "minimum": 0, "description": "bytes"}
_LIMIT = {"oneOf": [{"type": "integer", "minimum": 1}, {"type": "null"}]}


def _obj(description: str, properties: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
        **extra,
    }


def _with_optional(obj: dict[str, Any], **optional: Any) -> dict[str, Any]:
    """``obj`` with properties that are written only when they apply."""
    return {**obj, "properties": {**obj["properties"], **optional}}


def _sizing() -> dict[str, Any]:
    return _obj(
        "How the model's memory was reached, term by term (reconciler.sizing): weights and KV figures for the whole "
        "model, activations and overhead per GPU; perGpuBytes is what each GPU of a replica needs.",
        {
            "basis": {"enum": [str(b) for b in Basis]},
            **{k: _BYTES for k in ("weightsBytes", "kvBytesPerToken", "kvCacheBytes", "activationBytes",
                                   "overheadBytes", "perGpuBytes", "sequenceKvBytes")},
            "kvCacheTokens": {"type": "integer", "minimum": 0},
            "tensorParallel": {"type": "integer", "minimum": 1},
            "maxModelLen": {"type": "integer", "minimum": 1},
        },
    )


def _location() -> dict[str, Any]:
    return _obj(
        "Where a replica runs: a node and the GPU indices it occupies on that node (several for tensor parallelism).",
        {
            "node": _NAME,
            "gpus": {"type": "array", "items": _INDEX, "minItems": 1, "uniqueItems": True},
        },
    )


def _kinds(*kinds: ActionKind) -> dict[str, Any]:
    return {"properties": {"action": {"enum": [str(k) for k in kinds]}}, "required": ["action"]}


def _action() -> dict[str, Any]:
    ref = {"$ref": "#/$defs/location"}
    action = _obj(
        "One change to one replica. The reason is for people only; nothing may branch on it.",
        {
            "action": {"enum": [str(k) for k in APPLY_ORDER]},
            "model": _NAME,
            "replica": _INDEX,
            "from": {"oneOf": [ref, {"type": "null"}], "description": "where it runs now; null for create"},
            "to": {"oneOf": [ref, {"type": "null"}], "description": "where it will run; null for delete and evict"},
            "fromApp": {
                "oneOf": [_NAME, {"type": "null"}],
                "description": "the Serve application the action stops, moves or replaces, as observed; null if none",
            },
            "vram_bytes": {**_BYTES, "description": "bytes per GPU of the replica (the new figure for replace)"},
            "makeBeforeBreak": {
                "type": "boolean",
                "description": "the new replica starts while the old one still serves (move and replace only)",
            },
            "reason": {"type": "string"},
        },
    )
    # Which ends an action has follows from its kind: a create has no origin, a delete or evict no destination.
    action["allOf"] = [
        {"if": _kinds(ActionKind.CREATE), "then": {"properties": {"from": {"type": "null"}, "to": ref}}},
        {
            "if": _kinds(ActionKind.DELETE, ActionKind.EVICT),
            "then": {"properties": {"from": ref, "to": {"type": "null"}, "makeBeforeBreak": {"const": False}}},
        },
        {
            "if": _kinds(ActionKind.MOVE, ActionKind.REPLACE, ActionKind.UPDATE),
            "then": {"properties": {"from": ref, "to": ref}},
        },
    ]
    return action


def _use() -> dict[str, Any]:
    return _obj("One replica's share of a GPU.", {"model": _NAME, "replica": _INDEX, "vram_bytes": _BYTES})


def schema() -> dict[str, Any]:
    summary = {str(kind): {"type": "integer", "minimum": 0} for kind in APPLY_ORDER}
    summary["unplaced"] = {"type": "integer", "minimum": 0}
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "reconciler plan",
        "description": (
            "A plan is data: the actions that take the observed cluster to the desired state (in apply order), the "
            "full placement they reach, the replicas that cannot be placed, and a per-GPU view of VRAM before and "
            "after; what each model runs and the inventory it assumed, so that it applies with no specs at hand; and a "
            "digest of its own content. Written by `reconciler plan --out` and `--format json`; read by `reconciler "
            "apply --plan`, which refuses it when the cluster no longer has the recorded fingerprint or when its "
            "content no longer matches its digest."
        ),
        "type": "object",
        "properties": {
            "format": {"const": PLAN_FORMAT},
            "fingerprint": {
                "type": "string",
                "description": "fingerprint of the observed state the plan was computed from",
            },
            "desiredFingerprint": {
                "type": "string",
                "description": "fingerprint of the specs the plan was computed from",
            },
            "summary": _obj(
                "How many actions of each kind the plan has, and how many replicas cannot be placed.", summary
            ),
            "actions": {"type": "array", "items": {"$ref": "#/$defs/action"}, "description": "in apply order"},
            "placement": {
                "type": "array",
                "description": "the full desired end state, sorted by model and replica",
                "items": _obj(
                    "One placed replica.",
                    {
                        "model": _NAME,
                        "replica": _INDEX,
                        "node": _NAME,
                        "gpus": {"type": "array", "items": _INDEX, "minItems": 1, "uniqueItems": True},
                        "vram_bytes": {**_BYTES, "description": "bytes on each of its GPUs"},
                        "gpu_memory_bytes": {**_BYTES, "description": "total bytes of the smallest of its GPUs"},
                    },
                ),
            },
            "models": {
                "type": "array",
                "description": "every model of the specs, sorted by name: what apply runs, with no specs at hand",
                "items": _with_optional(_obj(
                    "What a model's replicas run with and where it answers, copied from its spec.",
                    {
                        "name": _NAME,
                        "engine": _NAME,
                        "source": {"type": "string"},
                        "vram_bytes": {**_BYTES, "description": "bytes per replica and per GPU"},
                        "tensorParallel": {"type": "integer", "minimum": 1},
                        "engineArgs": {"type": "object"},
                        "route": {"type": "string", "pattern": "^/"},
                        "restartHash": _NAME,
                        "configHash": _NAME,
                        "replicas": {
                            "oneOf": [{"type": "integer", "minimum": 0}, {"type": "null"}],
                            "description": "replicas the spec asks for (for `replicas: {min, max}`: what demand "
                            "asked for when the plan was made); null for max",
                        },
                    },
                ), scaling=_obj(
                    "`replicas: {min, max}`: the range and the scaling settings, times in seconds.",
                    {k: {"type": "integer", "minimum": 0} for k in (
                        "min", "max", "targetInFlight", "scaleUpAfter", "scaleDownAfter", "idleAfter", "loadTimeout")},
                ), vramAuto={"const": True, "description": "`vram: auto`: vram_bytes was sized from the model"},
                sizing=_sizing()),
            },
            "assumed": {
                "type": "array",
                "description": "GPUs taken from the pools' inventory for nodes NVML cannot report (simulated nodes); "
                "apply observes the cluster with them to check the fingerprint",
                "items": _obj(
                    "One assumed GPU.",
                    {"node": _NAME, "index": _INDEX, "name": {"type": "string"}, "memory": _BYTES},
                ),
            },
            "jobs": {
                "type": "array",
                "description": "every job of the specs, sorted by name (left out when there is none): its state, "
                "the run the plan places or keeps and where, and what a new run is submitted with",
                "items": _obj(
                    "One job.",
                    {
                        "name": _NAME,
                        "state": {"enum": ["waiting", "running", "preempted", "succeeded", "failed", "error"]},
                        "run": {"type": "integer", "minimum": 1},
                        "runs": {"type": "integer", "minimum": 0},
                        "failures": {"type": "integer", "minimum": 0},
                        "preemptions": {"type": "integer", "minimum": 0},
                        "reason": {"type": "string"},
                        "node": {"type": ["string", "null"]},
                        "gpus": {"type": "array", "items": _INDEX, "uniqueItems": True},
                        "vram_bytes": {**_BYTES, "description": "bytes on each of its GPUs"},
                        "entrypoint": {"type": "string"},
                        "workingDir": {"type": ["string", "null"]},
                        "env": {"type": "object", "additionalProperties": {"type": "string"}},
                        "revision": {"type": "string"},
                        "slot": {"type": ["number", "null"]},
                        "priority": {"type": "integer"},
                    },
                ),
            },
            "scaling": {
                "type": "array",
                "description": "every model with `replicas: {min, max}`, sorted by name (left out when there is "
                "none): the replicas it had, those its demand asks for, and why",
                "items": _obj(
                    "One on-demand model's count.",
                    {
                        "model": _NAME,
                        "running": {"type": "integer", "minimum": 0},
                        "wanted": {"type": "integer", "minimum": 0},
                        "rule": {"enum": [str(r) for r in Rule]},
                        "reason": {"type": "string"},
                        "inFlight": {"type": "integer", "minimum": 0},
                        "queued": {"type": "integer", "minimum": 0},
                        "lastRequest": {"type": ["number", "null"]},
                    },
                ),
            },
            "gateway": {
                "oneOf": [
                    {"type": "null"},
                    _obj(
                        "The Gateway spec: where the OpenAI base URL listens and which keys it takes (hashes only).",
                        {
                            "name": _NAME,
                            "host": {"oneOf": [{"type": "string"}, {"type": "null"}]},
                            "port": {"oneOf": [{"type": "integer", "minimum": 1, "maximum": 65535},
                                               {"type": "null"}]},
                            "keys": {
                                "type": "array",
                                "items": _obj(
                                    "One API key, by name and SHA-256 hash; the key itself is never written.",
                                    {
                                        "name": _NAME,
                                        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
                                        "models": {"type": "array", "items": _NAME},
                                        "requestsPerMinute": _LIMIT,
                                        "concurrentRequests": _LIMIT,
                                        "tokensPerMinute": _LIMIT,
                                    },
                                ),
                            },
                            "allowAnonymous": {"type": "boolean"},
                        },
                        required=["host", "keys", "name", "port"],
                    ),
                ],
            },
            "digest": {
                "type": "string",
                "pattern": "^sha256:[0-9a-f]{64}$",
                "description": "SHA-256 of the canonical JSON of every other property: apply refuses an edited plan",
            },
            "unplaced": {
                "type": "array",
                "items": _obj(
                    "A replica the specs ask for that fits nowhere, with a reason a person can act on.",
                    {"model": _NAME, "replica": _INDEX, "reason": {"type": "string"}},
                ),
            },
            "gpus": {
                "type": "array",
                "description": "every GPU of every pool, sorted by pool, node and index",
                "items": _obj(
                    "One GPU's VRAM before and after the plan.",
                    {
                        "pool": _NAME,
                        "node": _NAME,
                        "index": _INDEX,
                        "name": {"type": "string"},
                        "memory": {**_BYTES, "description": "total bytes"},
                        "reserve": {**_BYTES, "description": "bytes the pool keeps free"},
                        "foreign": {**_BYTES, "description": "bytes used by processes reconciler does not manage"},
                        "before": {"type": "array", "items": {"$ref": "#/$defs/use"}},
                        "after": {"type": "array", "items": {"$ref": "#/$defs/use"}},
                    },
                ),
            },
            "quality": {
                "type": "array",
                "description": "how good each pool's placement is, sorted by pool",
                "items": _with_optional(_obj(
                    "Proven optimal for the planner's objective (priority levels, then placed VRAM, then stability, "
                    "then the pool's placement policy), or how far the placement may be from bounds no placement "
                    "can beat.",
                    {
                        "pool": _NAME,
                        "provenOptimal": {"type": "boolean"},
                        "gapBytes": {**_BYTES, "description": "placed VRAM below an upper bound, over all levels"},
                        "gapGpus": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "binpack: GPUs in use above a lower bound",
                        },
                        "gapStays": {
                            "type": "integer",
                            "minimum": 0,
                            "description": "running replicas that might stay where they run beyond those that do",
                        },
                        "summary": {
                            "type": "string",
                            "description": '"proven optimal" or "within N MiB / N GPUs of the bound"',
                        },
                    },
                ), gapFill={
                    "type": "integer",
                    "minimum": 1,
                    "maximum": 1000,
                    "description": "spread: per mille of its memory the fullest GPU may be above the least any "
                    "placement gives it; written only when not zero",
                },
                ),
            },
        },
        "required": sorted(
            ["format", "fingerprint", "desiredFingerprint", "summary", "actions", "placement", "unplaced", "gpus",
             "quality", "models", "assumed", "gateway", "digest"]
        ),
        "additionalProperties": False,
        "$defs": {"location": _location(), "action": _action(), "use": _use()},
    }
