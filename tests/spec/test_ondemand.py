"""On-demand models in the spec: `replicas: {min, max}` and `scaling`, from YAML to desired.Model, their messages with
file:line:col, their defaults, and the JSON Schema that editors check the same values with."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.desired import Scaling, desired_to_json, scaling_from_json
from reconciler.spec import Severity
from reconciler.spec.durations import format_duration, parse_duration

from .specs import load, messages, model, pool

ROOT = Path(__file__).resolve().parents[2]
POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: lab}
spec:
  inventory:
    - node: n1
      gpus: [{name: A, memory: 24Gi}, {name: B, memory: 24Gi}]
"""
HEAD = """\
apiVersion: reconciler/v1
kind: Model
metadata: {name: chat}
spec:
  source: org/chat
  vram: 8Gi
"""


def _load(spec: str):
    """The pool and one Model whose spec ends with ``spec``; the model's lines start at m.yaml:1."""
    return load({"m.yaml": HEAD + spec, "p.yaml": POOL})


def test_the_issue_example_builds_a_scaling_model():
    result = _load(
        "  replicas: {min: 0, max: 3}\n"
        "  scaling:\n"
        "    targetInFlight: 4\n"
        "    scaleUpAfter: 10s\n"
        "    scaleDownAfter: 5m\n"
        "    idleAfter: 15m\n"
        "    loadTimeout: 1h30m\n"
    )
    assert result.ok and result.diagnostics == ()
    (chat,) = result.desired.models
    assert chat.scaling == Scaling(
        min=0, max=3, target_in_flight=4, scale_up_after=10, scale_down_after=300, idle_after=900, load_timeout=5400
    )
    assert chat.on_demand and chat.replicas == 0  # the planner replaces the count; the loader writes min
    # The desired state's JSON carries the scaling, and reads back to the same value.
    (written,) = desired_to_json(result.desired)["models"]
    assert scaling_from_json(written["scaling"]) == chat.scaling


def test_a_range_without_scaling_takes_every_default_of_desired_scaling():
    result = _load("  replicas: {min: 1, max: 2}\n")
    assert result.ok and result.diagnostics == ()
    (chat,) = result.desired.models
    assert chat.scaling == Scaling(min=1, max=2) and chat.replicas == 1


def test_fields_left_out_of_scaling_take_their_defaults():
    result = _load("  replicas: {min: 0, max: 2}\n  scaling: {idleAfter: 1h}\n")
    (chat,) = result.desired.models
    assert chat.scaling == dataclasses.replace(Scaling(min=0, max=2), idle_after=3600)
    assert _load("  replicas: {min: 0, max: 2}\n  scaling: {}\n").desired.models[0].scaling == Scaling(min=0, max=2)


@pytest.mark.parametrize(("replicas", "expected"), [("3", 3), ("0", 0), ("max", None)])
def test_integer_and_max_replicas_keep_their_meaning(replicas, expected):
    result = _load(f"  replicas: {replicas}\n")
    (chat,) = result.desired.models
    assert chat.replicas == expected and chat.scaling is None and not chat.on_demand
    assert "scaling" not in desired_to_json(result.desired)["models"][0]


@pytest.mark.parametrize(
    ("spec", "diagnostics"),
    [
        (
            "  replicas: {min: 3, max: 2}\n",
            ["m.yaml:7:13: error: `replicas`: min 3 is above max 2: make max at least 3"],
        ),
        (
            "  replicas: {min: 0, max: max}\n",
            ['m.yaml:7:27: error: `max`: a range needs a number for max: "max" alone (as many as fit) is a replicas '
             "value of its own, so write replicas: max, or bound the range, such as {min: 0, max: 4}"],
        ),
        (
            "  replicas: {min: 0, max: 0}\n",
            ["m.yaml:7:27: error: `max`: must be 1 or more: for a model that should not run, write replicas: 0 "
             "instead of a range"],
        ),
        ("  replicas: {min: -1, max: 2}\n", ["m.yaml:7:19: error: `min`: must be 0 or more, not -1"]),
        (
            '  replicas: {min: "1", max: 2.5}\n',
            ['m.yaml:7:19: error: `min`: expected a number, not the text "1": remove the quotes',
             "m.yaml:7:29: error: `max`: expected a whole number, not `2.5`"],
        ),
        ("  replicas: {min: 0}\n", ["m.yaml:7:3: error: a replicas range needs `max`"]),
        (
            "  replicas: {min: 0, mx: 2}\n",
            ["m.yaml:7:3: error: a replicas range needs `max`",
             "m.yaml:7:22: error: `mx` is not a field of a replicas range; did you mean `max`?"],
        ),
        (
            "  replicas: [0, 2]\n",
            ['m.yaml:7:13: error: `replicas`: replicas must be a whole number, "max" or a range {min, max}, '
             "not a list"],
        ),
        (
            "  replicas: 2\n  scaling: {targetInFlight: 4}\n",
            ["m.yaml:8:3: error: `scaling` needs a replicas range: write replicas: {min: 0, max: N} to let load "
             "decide, or remove `scaling`"],
        ),
        (
            "  scaling: {}\n",
            ["m.yaml:7:3: error: `scaling` needs a replicas range: write replicas: {min: 0, max: N} to let load "
             "decide, or remove `scaling`"],
        ),
        (
            "  replicas: max\n  scaling: {idleAfter: 5m}\n",
            ["m.yaml:8:3: error: `scaling` needs a replicas range: write replicas: {min: 0, max: N} to let load "
             "decide, or remove `scaling`"],
        ),
        (
            "  replicas: {min: 0, max: 2}\n  scaling: {targetInflight: 4}\n",
            ["m.yaml:8:13: error: `targetInflight` is not a field of `scaling`; did you mean `targetInFlight`?"],
        ),
        (
            "  replicas: {min: 0, max: 2}\n  scaling: {targetInFlight: 0}\n",
            ["m.yaml:8:29: error: `targetInFlight`: must be 1 or more, not 0"],
        ),
        (
            "  replicas: {min: 0, max: 2}\n  scaling: {scaleUpAfter: 10}\n",
            ["m.yaml:8:27: error: `scaleUpAfter`: a duration is text such as 2h or 90m, not `10`"],
        ),
        (
            "  replicas: {min: 0, max: 2}\n  scaling: {scaleDownAfter: 5 min}\n",
            ["m.yaml:8:29: error: `scaleDownAfter`: `5 min` is not a duration: write whole numbers with d, h, m or "
             "s, such as 2h, 90m or 1h30m"],
        ),
        (
            "  replicas: {min: 0, max: 2}\n  scaling: {idleAfter: 0s}\n",
            ["m.yaml:8:24: error: `idleAfter`: `0s` is no time at all: give a duration above zero, such as 30m"],
        ),
        (
            "  replicas: {min: 0, max: 2}\n  scaling: 5m\n",
            ["m.yaml:8:12: error: `scaling` must be a mapping of fields, not `5m`"],
        ),
    ],
)
def test_mistakes_are_located_and_explained(spec, diagnostics):
    result = _load(spec)
    assert result.desired is None
    assert messages(result) == diagnostics


def test_every_mistake_of_a_document_is_reported_together():
    result = _load("  replicas: {min: 0, max: max}\n  scaling: {loadTimeout: soon, targetInFlight: -2}\n")
    assert [str(d).split(": error: ")[1].split(":")[0] for d in result.errors] == [
        "`max`", "`loadTimeout`", "`targetInFlight`"
    ]


def test_a_max_beyond_the_pool_is_left_to_demand():
    # 2 GPUs of 24 GiB hold 4 replicas of 8 GiB; a range may ask for more, and spread: gpu keeps them on 2 GPUs.
    result = _load("  replicas: {min: 0, max: 40}\n  spread: gpu\n")
    assert result.ok and result.diagnostics == ()
    assert result.desired.models[0].scaling.max == 40


def test_spread_warns_when_min_alone_cannot_be_placed():
    result = _load("  replicas: {min: 3, max: 4}\n  spread: gpu\n")
    assert result.ok
    assert [(d.severity, str(d)) for d in result.diagnostics] == [
        (Severity.WARNING, "m.yaml:7:19: warning: spread: gpu keeps replicas apart, but pool `lab` has 2 GPUs: 1 of "
                           "the 3 replicas cannot be placed")
    ]


def test_a_window_longer_than_the_gateways_history_is_warned_about():
    result = _load("  replicas: {min: 0, max: 2}\n  scaling: {scaleUpAfter: 30s, scaleDownAfter: 2h}\n")
    assert result.ok
    assert [(d.severity, str(d)) for d in result.diagnostics] == [
        (Severity.WARNING, "m.yaml:8:48: warning: scaleDownAfter is 7200 s, longer than the 3600 s of load history a "
                           "gateway keeps: this rule would never act; use at most 60m")
    ]


def test_min_zero_is_not_the_warning_for_zero_replicas():
    # replicas: 0 never runs and is warned about; a range from 0 runs when it is asked for.
    assert _load("  replicas: {min: 0, max: 1}\n").diagnostics == ()
    assert [d.severity for d in _load("  replicas: 0\n").diagnostics] == [Severity.WARNING]


def test_ranges_in_several_models_and_files():
    result = load(
        {
            "a.yaml": [pool(), model("a", replicas={"min": 0, "max": 2}, scaling={"loadTimeout": "2m"})],
            "b.yaml": [model("b", replicas={"min": 2, "max": 5}), model("c", replicas="max")],
        }
    )
    assert result.ok
    assert {m.name: (m.replicas, m.scaling) for m in result.desired.models} == {
        "a": (0, Scaling(min=0, max=2, load_timeout=120)),
        "b": (2, Scaling(min=2, max=5)),
        "c": (None, None),
    }


# The JSON Schema: what editors and CI accept is what the loader accepts.

def _model_errors(spec: dict) -> list[str]:
    schema = json.loads((ROOT / "schemas" / "model.schema.json").read_text(encoding="utf-8"))
    return [e.message for e in Draft202012Validator(schema).iter_errors(model("chat", **spec))]


@pytest.mark.parametrize(
    "spec",
    [
        {"replicas": 2},
        {"replicas": "max"},
        {"replicas": {"min": 0, "max": 3}},
        {"replicas": {"min": 0, "max": 3}, "scaling": {"targetInFlight": 4, "scaleUpAfter": "10s",
                                                        "scaleDownAfter": "5m", "idleAfter": "15m",
                                                        "loadTimeout": "1h30m"}},
        {"replicas": {"min": 1, "max": 1}, "scaling": {}},
    ],
)
def test_the_schema_accepts_what_the_loader_accepts(spec):
    assert _model_errors(spec) == []
    assert load({"a.yaml": [pool(), model("chat", **spec)]}).ok


@pytest.mark.parametrize(
    "spec",
    [
        {"replicas": {"min": 0, "max": "max"}},
        {"replicas": {"min": -1, "max": 2}},
        {"replicas": {"min": 0, "max": 0}},
        {"replicas": {"min": 0}},
        {"replicas": {"min": 0, "max": 2, "step": 1}},
        {"replicas": {"min": 0, "max": 2}, "scaling": {"targetInFlight": 0}},
        {"replicas": {"min": 0, "max": 2}, "scaling": {"scaleUpAfter": "ten seconds"}},
        {"replicas": {"min": 0, "max": 2}, "scaling": {"idle": "5m"}},
    ],
)
def test_the_schema_refuses_what_the_loader_refuses(spec):
    assert _model_errors(spec) != []
    assert not load({"a.yaml": [pool(), model("chat", **spec)]}).ok


def test_the_schema_shows_the_defaults_of_desired_scaling():
    schema = json.loads((ROOT / "schemas" / "model.schema.json").read_text(encoding="utf-8"))
    fields = schema["$defs"]["ScalingSpec"]["properties"]
    defaults = Scaling(min=0, max=1)
    assert fields["targetInFlight"]["default"] == defaults.target_in_flight
    for name, seconds in (("scaleUpAfter", defaults.scale_up_after), ("scaleDownAfter", defaults.scale_down_after),
                          ("idleAfter", defaults.idle_after), ("loadTimeout", defaults.load_timeout)):
        assert parse_duration(fields[name]["default"]) == seconds


def test_the_readme_states_the_defaults_of_desired_scaling():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    stated = dict(re.findall(r"^\s+(\w+): \S+\s+# default (\w+):", text, re.MULTILINE))
    defaults = Scaling(min=0, max=1)
    assert stated == {
        "targetInFlight": str(defaults.target_in_flight),
        "scaleUpAfter": format_duration(defaults.scale_up_after),
        "scaleDownAfter": format_duration(defaults.scale_down_after),
        "idleAfter": format_duration(defaults.idle_after),
        "loadTimeout": format_duration(defaults.load_timeout),
    }


@pytest.mark.parametrize("seconds", [*range(0, 200), 599, 600, 3599, 3600, 5400, 86399, 86400, 90061, 10**7])
def test_format_duration_reads_back(seconds):
    text = format_duration(seconds)
    assert parse_duration(text) == seconds
    assert text == "0s" or not re.search(r"(^|[a-z])0", text)  # no zero parts: 1h, never 1h0m0s
