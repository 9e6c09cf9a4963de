"""The plan and observed-state schemas describe exactly what ``to_json`` writes: every property it writes is in
the schema, nothing else is allowed, and the committed files under schemas/ are the generated ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.demand import ModelDemand
from reconciler.desired import Scaling
from reconciler.plan import ModelRuntime, ScaleDecision
from reconciler.schemas import observed as observed_schema, plan as plan_schema
from reconciler.observed import (
    JobRunState,
    ObservedGpu,
    ObservedJobRun,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    Source,
)
from reconciler.observed import from_json as observed_from_json
from reconciler.observed import to_json as observed_to_json
from reconciler.desired import Job, Preemption
from reconciler.plan import PlannedJob
from reconciler.plan import to_json as plan_to_json
from .samples import busy_plan

ROOT = Path(__file__).resolve().parents[2]
GiB = 1024**3


def _observed() -> ObservedState:
    return ObservedState(
        nodes=(
            ObservedNode(name="node-a", labels=(("reconciler.io/node", "node-a"), ("tier", "lab")),
                         gpus=(ObservedGpu(0, "NVIDIA GeForce RTX 4090", 24 * GiB, foreign=GiB, used=9 * GiB),),
                         node_id="abc123", simulated=False),
            ObservedNode(name="node-b", gpus=(ObservedGpu(0, "", 16 * GiB),), alive=False),
        ),
        replicas=(
            ObservedReplica("chat", 0, "node-a", (0,), 8 * GiB, "r1", "c1", ReplicaState.PENDING, "no room", "chat-0"),
        ),
        source=Source.LIVE,
        jobs=(ObservedJobRun("embed", 1, "rev1", JobRunState.FAILED, "node-a", (0,), 6 * GiB, slot=1.0e9,
                             started=1.0e9 + 5, ended=1.0e9 + 65, message="Traceback: boom"),),
        at=1.0e9 + 100,
        recorded=(Job(name="train", pool="homelab", priority_class="batch", priority=10,
                      preemption=Preemption.LOWER_PRIORITY, preemptible=True, vram=4 * GiB,
                      entrypoint="python train.py", working_dir="/home/me/train"),),
        demand=(ModelDemand("chat", in_flight=3, queued=2, since_last=0.5, held_for=2.0,
                            samples=((100, 0.0), (10, 4.5)), partial=True),),
    )


def _plan_with_jobs():
    from dataclasses import replace

    job = PlannedJob(name="embed", state="waiting", run=2, runs=1, failures=1, preemptions=0,
                     reason="run 1 failed; retry 1 of 3", node="node-b", gpus=(0,), vram=6 * GiB,
                     entrypoint="python embed.py", working_dir="jobs/embed", env_json='{"A":"1"}', revision="rev1",
                     slot=None, priority=10)
    plan = busy_plan()
    chat = ModelRuntime(name="chat", engine="vllm", source="org/chat", vram=8 * GiB, tensor_parallel=1,
                        engine_args_json="{}", route="/chat", restart_hash="r", config_hash="c", replicas=3,
                        scaling=Scaling(min=0, max=3))
    scaled = ScaleDecision(model=chat.name, running=1, wanted=3, rule="up", reason="scale up: 19 in flight",
                           in_flight=17, queued=2, last_request=1.0e9)
    return replace(plan, jobs=(job,), models=(chat, *plan.models), scaling=(scaled,))


def _errors(schema: dict, data: object) -> list[str]:
    return [e.message for e in Draft202012Validator(schema).iter_errors(data)]


@pytest.mark.parametrize("module", [plan_schema, observed_schema])
def test_schema_is_valid_draft_2020_12(module):
    Draft202012Validator.check_schema(module.schema())
    assert module.schema()["$schema"] == "https://json-schema.org/draft/2020-12/schema"


@pytest.mark.parametrize("module", [plan_schema, observed_schema])
def test_committed_schema_file_is_current(module):
    committed = json.loads((ROOT / "schemas" / module.FILENAME).read_text(encoding="utf-8"))
    assert committed == module.schema(), f"schemas/{module.FILENAME} is stale: regenerate it"


def _walk_properties(schema: dict, data: object, root: dict, path: str = "$") -> None:
    """Every object written has exactly the properties its schema names (so the schema documents all of them)."""
    if "$ref" in schema:
        schema = root["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    for alternative in schema.get("oneOf", []):
        if Draft202012Validator(alternative | {"$defs": root["$defs"]}).is_valid(data):
            _walk_properties(alternative, data, root, path)
    if isinstance(data, dict) and "properties" in schema and schema.get("additionalProperties") is False:
        assert set(data) <= set(schema["properties"]), path
        assert set(schema.get("required", ())) <= set(data), path
        for key, value in data.items():
            _walk_properties(schema["properties"][key], value, root, f"{path}.{key}")
    if isinstance(data, list) and "items" in schema:
        for i, item in enumerate(data):
            _walk_properties(schema["items"], item, root, f"{path}[{i}]")


def test_plan_json_matches_schema_exactly():
    schema = plan_schema.schema()
    data = plan_to_json(_plan_with_jobs())
    assert _errors(schema, data) == []
    _walk_properties(schema, data, schema)
    assert _errors(schema, plan_to_json(busy_plan())) == []  # a plan without jobs leaves the key out


def test_observed_json_matches_schema_exactly():
    schema = observed_schema.schema()
    data = observed_to_json(_observed())
    assert _errors(schema, data) == []
    _walk_properties(schema, data, schema)
    assert observed_from_json(data) == _observed()


def test_observed_schema_accepts_what_from_json_defaults():
    data = {"format": "reconciler/observed-v1", "nodes": [{"name": "node-a", "gpus": [{"index": 0, "memory": 1}]}],
            "replicas": [{"model": "m", "replica": 0, "node": "node-a", "gpus": [0], "vram": 1, "restartHash": "h"}]}
    assert _errors(observed_schema.schema(), data) == []
    observed_from_json(data)


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["actions"][0].update(action="explode"), "explode"),
        (lambda d: d["actions"][-1].update({"from": {"node": "n", "gpus": [0]}}), "not of type 'null'"),  # a create has no origin
        (lambda d: d["actions"][0].update(to={"node": "n", "gpus": [0]}), "not of type 'null'"),  # an evict has no destination
        (lambda d: d["actions"][2].update(to=None), "None is not"),  # a move has a destination
        (lambda d: d["actions"][0].update(colour="red"), "colour"),
        (lambda d: d["summary"].pop("evict"), "evict"),
        (lambda d: d["placement"][0].update(gpus=[]), "[] should be non-empty"),
        (lambda d: d["gpus"][0].update(memory=-1), "-1 is less than the minimum of 0"),
        (lambda d: d.update(format="reconciler/plan-v0"), "plan-v1"),
    ],
)
def test_plan_schema_rejects(mutate, needle):
    data = plan_to_json(busy_plan())
    mutate(data)
    errors = _errors(plan_schema.schema(), data)
    assert errors and any(needle in e for e in errors), errors


@pytest.mark.parametrize(
    ("mutate", "needle"),
    [
        (lambda d: d["replicas"][0].update(state="sleeping"), "sleeping"),
        (lambda d: d["replicas"][0].pop("restartHash"), "restartHash"),
        (lambda d: d["nodes"][0]["gpus"][0].update(memory="24GiB"), "'24GiB' is not of type 'integer'"),
        (lambda d: d["nodes"][0]["labels"].update(tier=3), "3 is not of type 'string'"),
        (lambda d: d["nodes"][0].update(gpu=[]), "gpu"),
        (lambda d: d.update(source="guess"), "guess"),
    ],
)
def test_observed_schema_rejects(mutate, needle):
    data = observed_to_json(_observed())
    mutate(data)
    errors = _errors(observed_schema.schema(), data)
    assert errors and any(needle in e for e in errors), errors
