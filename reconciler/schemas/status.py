"""JSON Schema (draft 2020-12) of `reconciler status --format json` (``reconciler.render.status_json``)."""

from __future__ import annotations

from typing import Any

from reconciler.observed import MEASURED_SOURCES, ReplicaState
from reconciler.planner.scaling import Rule

FILENAME = "status.schema.json"

_TEXT = {"type": "string"}
_NAME = {"type": "string", "minLength": 1}
_COUNT = {"type": "integer", "minimum": 0}
_BYTES = {"type": "integer", "minimum": 0}
_URL = {"anyOf": [{"type": "string", "pattern": "^https?://"}, {"type": "null"}]}


def _obj(description: str, properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "description": description, "properties": properties,
            "required": sorted(properties), "additionalProperties": False}


def _jobs() -> dict[str, Any]:
    """`jobs`: present when the status has jobs to tell of (the specs' or ad-hoc ones); `name`, `state`, `node`,
    `gpus` and `runs` are the interface scripts rely on."""
    seconds = {"anyOf": [{"type": "number"}, {"type": "null"}]}
    return {"type": "array", "items": _obj("A job: its state, where its run is, and its history.", {
        "name": _NAME,
        "state": {"enum": ["waiting", "running", "preempted", "succeeded", "failed", "error"]},
        "node": {"anyOf": [_NAME, {"type": "null"}], "description": "where its run is or will be; null: no place"},
        "gpus": {"type": "array", "items": _COUNT},
        "runs": {**_COUNT, "description": "runs so far"},
        "run": {"type": "integer", "minimum": 1, "description": "the active run, or the number of the next"},
        "failures": _COUNT,
        "preemptions": _COUNT,
        "vram_bytes": {**_BYTES, "description": "bytes on each of its GPUs"},
        "priority": {"type": "integer"},
        "reason": _TEXT,
        "lastRun": {"anyOf": [{"type": "null"}, _obj("The job's latest run.", {
            "run": {"type": "integer", "minimum": 1}, "state": _TEXT, "started": seconds, "ended": seconds,
            "logTail": {**_TEXT, "description": "the tail of its log when it failed"},
        })]},
    })}


def _revisions() -> dict[str, dict[str, Any]]:
    """`revision` and `revisions`: present when the cluster's history was read (`reconciler history` has the rest)."""
    nullable_text = {"anyOf": [_TEXT, {"type": "null"}]}
    row = {
        "revision": {"type": "integer", "minimum": 1},
        "at": {**_TEXT, "description": "when the apply started, ISO 8601 UTC"},
        "by": _obj("Who applied it.", {"host": _TEXT, "user": _TEXT, "pid": _COUNT, "command": _TEXT}),
        "source": {**_TEXT, "description": "where its specs came from, in words"},
        "commit": {**nullable_text, "description": "the git commit of its specs; null when not in git"},
        "subject": nullable_text,
        "cause": {**_TEXT, "description": 'why it was applied: "apply", "watch: spec-change", "rollback to 3", ...'},
        "actions": {**_COUNT, "description": "actions in its plan"},
        "outcome": {"enum": ["applying", "converged", "failed", "interrupted"]},
        "reason": {**_TEXT, "description": "why it failed or was interrupted; empty when it converged"},
        "desiredFingerprint": _TEXT,
        "planDigest": _TEXT,
    }
    current = _obj("The current revision with its plan's actions and what each came to.", {
        **row,
        "ended": nullable_text,
        "plan": {"type": "array", "items": {"type": "object", "description": "an action as the plan file writes "
                                            "it, with `ok` (null while applying) and `message`"}},
    })
    return {
        "revision": {"anyOf": [current, {"type": "null"}]},
        "revisions": {"type": "array", "description": "the last few revisions, newest first",
                      "items": _obj("A revision, as a row of `reconciler history --format json`.", row)},
    }


def schema() -> dict[str, Any]:
    gpu = _obj("One GPU: sizes in bytes.", {
        "index": {**_COUNT, "description": "the GPU's index on its node"},
        "name": _TEXT,
        "total": {**_BYTES, "description": "total memory"},
        "planned": {**_BYTES, "description": "VRAM reserved by reconciler's replicas on it"},
        "used": {"anyOf": [_BYTES, {"type": "null"}], "description": "in use as NVML reports; null when simulated"},
        "foreign": {**_BYTES, "description": "used by processes that are not reconciler's replicas"},
    })
    document = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "reconciler status",
        **_obj("The cluster as `reconciler status --format json` reports it.", {
            "gateway": _obj("The one OpenAI-compatible base URL for every model.", {
                "url": {**_URL, "description": "the base URL, ending in /v1 (the first gateway's); null if none"},
                "urls": {"type": "array", "items": {"type": "string"}, "description": "every gateway's base URL"},
                "keysRequired": {"type": "boolean", "description": "true when a Gateway spec lists API keys"},
            }),
            "models": {"type": "array", "items": _obj("A model of the specs (or, without specs, one that runs).", {
                "name": _NAME,
                "state": {"enum": ["running", "starting", "unplaced", "stopped"]},
                "replicas": _obj("Replicas running and wanted.", {
                    "running": _COUNT,
                    "desired": {"anyOf": [_COUNT, {"type": "null"}], "description": 'null: "max" or unknown'},
                }),
                "route": {**_TEXT, "description": "the model's own route prefix on Serve's HTTP proxy"},
                "url": {**_URL, "description": "the model's own route as a URL"},
            })},
            "replicas": {"type": "array", "items": _obj("A replica reconciler runs.", {
                "model": _NAME,
                "replica": _COUNT,
                "node": _NAME,
                "gpus": {"type": "array", "items": _COUNT},
                "vram": {**_BYTES, "description": "bytes reserved on each of its GPUs"},
                "state": {"enum": [str(s) for s in ReplicaState]},
                "message": _TEXT,
                "measured": {"anyOf": [_BYTES, {"type": "null"}],
                             "description": "bytes its processes really use on each of its GPUs (NVML per process "
                             "on a GPU node, resident memory on a simulated one); null when not read"},
                "measuredSource": {"enum": [*MEASURED_SOURCES, None], "description": "where `measured` came from"},
            })},
            "nodes": {"type": "array", "items": _obj("A node and its GPUs.", {
                "name": _NAME,
                "alive": {"type": "boolean"},
                "deadSince": {"type": ["number", "null"],
                              "description": "unix seconds when Ray declared the node dead; null while it is alive"},
                "simulated": {"type": "boolean", "description": "GPUs from the pool inventory, not NVML"},
                "gpus": {"type": "array", "items": gpu},
            })},
            "unplaced": {"type": "array", "items": _obj("A replica the specs want that has no place.", {
                "model": _NAME, "replica": _COUNT, "reason": _TEXT,
            })},
            "warnings": {"type": "array", "items": _TEXT},
        }),
    }
    document["properties"]["jobs"] = _jobs()  # optional: only a status with jobs carries it
    document["properties"].update(_revisions())  # optional: only a status that read the cluster's history
    # optional: only a status with `replicas: {min, max}` models carries it
    document["properties"]["scaling"] = {
        "type": "array",
        "description": "on-demand models: replicas running, what their demand asks for now, and why",
        "items": _obj("One on-demand model.", {
            "model": _NAME, "running": _COUNT, "wanted": _COUNT,
            "rule": {"enum": [str(r) for r in Rule]}, "reason": _TEXT,
            "inFlight": _COUNT, "queued": _COUNT, "lastRequest": {"type": ["number", "null"]},
        }),
    }
    return document
