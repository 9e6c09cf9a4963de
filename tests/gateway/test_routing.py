"""The gateway's pure parts: which model a body names, which replica goes next, the route table, the envelopes."""

from __future__ import annotations

import json

import pytest

from reconciler.gateway import errors, routing
from reconciler.gateway.errors import GatewayError
from reconciler.gateway.table import RouteTable, build_table, model_state
from tests.gateway.conftest import route

TWO = RouteTable(models=(route("chat", "chat-0", "chat-1"), route("emb", "emb-0")))


@pytest.mark.parametrize(
    ("table", "body", "want"),
    [
        (TWO, {"model": "chat"}, "chat"),
        (TWO, {"model": "emb"}, "emb"),
        (RouteTable(models=(route("chat", "chat-0"),)), {}, "chat"),  # the only model: `model` may be left out
        (RouteTable(models=(route("chat", "chat-0"),)), {"model": ""}, "chat"),
        (TWO, {}, 400),
        (TWO, {"model": "gpt-4"}, 404),
        (TWO, {"model": 7}, 400),
        (RouteTable(), {"model": "chat"}, 404),
    ],
)
def test_pick_model(table, body, want):
    got = routing.pick_model(table, body)
    if isinstance(want, int):
        assert isinstance(got, GatewayError) and got.status == want
    else:
        assert got.name == want


def test_unknown_model_names_the_known_ones_and_no_model_lists_them():
    assert "known models: chat, emb" in routing.pick_model(TWO, {"model": "gpt-4"}).message
    assert "chat, emb" in routing.pick_model(TWO, {}).message


@pytest.mark.parametrize(
    ("in_flight", "tried", "gone", "turn", "want"),
    [
        ({}, set(), set(), 0, "a"),
        ({}, set(), set(), 1, "b"),  # ties go round in turn
        ({}, set(), set(), 2, "c"),
        ({"a": 3, "b": 1, "c": 2}, set(), set(), 0, "b"),  # fewest in flight wins
        ({"a": 3, "b": 1, "c": 2}, {"b"}, set(), 0, "c"),  # a replica this request failed on is skipped
        ({"a": 0, "b": 5, "c": 5}, set(), {"a"}, 0, "b"),  # one just found gone goes last
        ({}, set(), {"a", "b", "c"}, 0, "a"),  # all found gone: try them anyway
        ({}, {"a", "b", "c"}, set(), 0, None),  # all tried: give up
    ],
)
def test_choose(in_flight, tried, gone, turn, want):
    assert routing.choose(("a", "b", "c"), in_flight=in_flight, tried=tried, gone=gone, turn=turn) == want


@pytest.mark.parametrize(
    ("desired", "backends", "unplaced", "want"),
    [(0, 0, False, "stopped"), (2, 1, False, "running"), (2, 0, True, "unplaced"), (2, 0, False, "starting"),
     (None, 3, False, "running")],
)
def test_model_state(desired, backends, unplaced, want):
    assert model_state(desired=desired, backends=backends, unplaced=unplaced) == want


def test_build_table_takes_backends_from_routers_and_lists_every_model(tmp_path):
    from reconciler.spec import load_specs

    (tmp_path / "specs.yaml").write_text("""\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: p}
spec:
  inventory: [{node: n, gpus: [{name: sim, memory: 24Gi}]}]
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: chat}
spec: {engine: echo, source: x, vram: 1Gi, replicas: 2, engineArgs: {max_model_len: 512}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: idle}
spec: {engine: echo, source: x, vram: 1Gi, replicas: 0}
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: big}
spec: {engine: echo, source: x, vram: 1Gi, replicas: 1, route: /big-one}
""")
    loaded = load_specs(tmp_path)
    assert loaded.ok, loaded.diagnostics
    apps = {
        "router-chat": {"args": {"kind": "router", "model": "chat"},
                        "deployments": [{"user_config": {"backends": ["chat-r1", "chat-r0"]}}]},
        "chat-r0": {"args": {"kind": "replica"}, "deployments": [{}]},
    }
    table = build_table(models=loaded.desired.models, apps=apps, unplaced=["big"], created=5)
    assert [(m.name, m.state, m.backends, m.route) for m in table.models] == [
        ("big", "unplaced", (), "/big-one"),
        ("chat", "running", ("chat-r0", "chat-r1"), "/chat"),
        ("idle", "stopped", (), "/idle"),
    ]
    assert table.model("chat").max_model_len == 512
    assert RouteTable.from_dict(json.loads(json.dumps(table.to_dict()))) == table


def test_envelopes_are_openais_and_carry_retry_after():
    error = errors.no_replica("chat", "starting", 5)
    assert json.loads(error.body()) == {"error": {
        "message": "the model 'chat' has no running replica (starting); retry shortly",
        "type": "service_unavailable", "param": None, "code": "no_running_replica"}}
    assert error.status == 503 and error.headers() == {"Retry-After": "5"}
    assert error.sse().startswith(b"data: {\"error\": ") and error.sse().endswith(b"\n\n")


@pytest.mark.parametrize(
    ("payload", "want"),
    [
        (b'{"usage":{"prompt_tokens":12,"total_tokens":28,"completion_tokens":16,"prompt_tokens_details":null}}',
         (12, 16)),
        (b'{"data": [{"embedding": [0.1, 0.2]}], "usage": {"prompt_tokens": 2, "total_tokens": 2}}', (2, 0)),
        (b'data: {"choices":[]}\n\ndata: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4}}\n\n', (3, 4)),
        (b'data: {"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\ndata: {"usage":{"prompt_tokens":2,'
         b'"completion_tokens":5}}\n\n', (3, 6)),
        (b'{"usage": null}', (0, 0)),
        (b'{"choices": []}', (0, 0)),
    ],
)
def test_usage_is_read_from_answers_and_stream_chunks(payload, want):
    from reconciler.gateway.usage import counts as _usage

    assert _usage(payload) == want
