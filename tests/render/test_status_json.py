"""`status --format json`: the document for scripts, checked against its committed schema."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema

from reconciler.desired import ApiKey, DesiredState, Engine, Gateway, Model, Preemption
from reconciler.gateway.exposure import open_endpoint_warning
from reconciler.observed import ObservedGpu, ObservedNode, ObservedReplica, ObservedState, ReplicaState
from reconciler.plan import Unplaced
from reconciler.render.status_json import status_document

SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "status.schema.json").read_text())
GiB = 1 << 30


def model(name: str, replicas: int | None) -> Model:
    return Model(name=name, pool="p", priority_class="", priority=0, preemption=Preemption.LOWER_PRIORITY,
                 preemptible=True, engine=Engine.ECHO, source="s", vram=4 * GiB, replicas=replicas)


def test_the_document_names_the_base_url_models_replicas_and_nodes():
    desired = DesiredState(models=(model("big", 1), model("chat", 2), model("idle", 0)))
    observed = ObservedState(
        nodes=(ObservedNode("node-a", gpus=(ObservedGpu(0, "sim", 24 * GiB, foreign=GiB),)),),
        replicas=(
            ObservedReplica("chat", 0, "node-a", (0,), 4 * GiB, "r", "c"),
            ObservedReplica("chat", 1, "node-a", (0,), 4 * GiB, "r", "c", state=ReplicaState.STARTING),
        ),
    )
    document = status_document(observed, desired=desired, gateway_urls=["http://127.0.0.1:8001/v1"],
                               http_url="http://127.0.0.1:8000", unplaced=[Unplaced("big", 0, "no room")])
    jsonschema.validate(document, SCHEMA)
    assert document["gateway"] == {"url": "http://127.0.0.1:8001/v1", "urls": ["http://127.0.0.1:8001/v1"],
                                   "keysRequired": False}
    assert [(m["name"], m["state"], m["replicas"]) for m in document["models"]] == [
        ("big", "unplaced", {"running": 0, "desired": 1}),
        ("chat", "running", {"running": 1, "desired": 2}),
        ("idle", "stopped", {"running": 0, "desired": 0}),
    ]
    assert document["models"][1]["url"] == "http://127.0.0.1:8000/chat"
    assert [(r["model"], r["replica"], r["state"]) for r in document["replicas"]] == [
        ("chat", 0, "running"), ("chat", 1, "starting")]
    assert document["nodes"][0]["gpus"] == [
        {"index": 0, "name": "sim", "total": 24 * GiB, "planned": 8 * GiB, "used": None, "foreign": GiB}]


def test_without_a_gateway_the_url_is_null():
    document = status_document(ObservedState(), desired=None, gateway_urls=[])
    jsonschema.validate(document, SCHEMA)
    assert document["gateway"]["url"] is None and document["models"] == []


def test_an_open_endpoint_beyond_loopback_is_warned_about():
    keyed = Gateway("g", keys=(ApiKey("alice", "0" * 64, ("*",)),))
    assert open_endpoint_warning(["http://127.0.0.1:8001/v1"], None) is None
    assert open_endpoint_warning(["http://localhost:8001/v1"], None) is None
    assert open_endpoint_warning(["http://[::1]:8001/v1"], None) is None
    assert "without an API key" in open_endpoint_warning(["http://10.0.0.5:8001/v1"], None)
    assert "without an API key" in open_endpoint_warning(["http://10.0.0.5:8001/v1"], Gateway("g"))
    assert open_endpoint_warning(["http://10.0.0.5:8001/v1"], keyed) is None
