"""The Gateway kind: keys as hashes with names, models and limits; mistakes reported at file:line:col."""

from __future__ import annotations

import hashlib

from reconciler.desired import ApiKey
from tests.spec.specs import load, messages, model, pool

ALICE = hashlib.sha256(b"sk-alice").hexdigest()
BOB = hashlib.sha256(b"sk-bob").hexdigest()

GOOD = f"""\
apiVersion: reconciler/v1
kind: Gateway
metadata: {{name: front-door}}
spec:
  port: 9000
  keys:
    - name: alice
      sha256: {ALICE}
      limits: {{requestsPerMinute: 60, concurrentRequests: 2}}
    - name: bob
      sha256: {BOB}
      models: [chat]
      limits: {{tokensPerMinute: 1000}}
"""


def test_a_gateway_builds_into_the_desired_state():
    result = load({"pool.yaml": [pool(), model("chat")], "gateway.yaml": GOOD})
    assert result.ok, messages(result)
    gateway = result.desired.gateway
    assert (gateway.name, gateway.host, gateway.port) == ("front-door", None, 9000)
    assert gateway.keys == (
        ApiKey("alice", ALICE, ("*",), requests_per_minute=60, concurrent_requests=2),
        ApiKey("bob", BOB, ("chat",), tokens_per_minute=1000),
    )


def test_specs_without_a_gateway_have_none_and_keep_their_fingerprint():
    result = load({"pool.yaml": [pool(), model("chat")]})
    assert result.desired.gateway is None
    with_gateway = load({"pool.yaml": [pool(), model("chat")], "gateway.yaml": GOOD})
    assert with_gateway.desired.fingerprint != result.desired.fingerprint


def test_field_mistakes_are_reported_where_they_are():
    bad = """\
apiVersion: reconciler/v1
kind: Gateway
metadata: {name: front-door}
spec:
  keys:
    - name: alice
      sha256: sk-the-key-itself
      limits: {concurrentRequests: 0, burst: 3}
"""
    result = load({"pool.yaml": [pool(), model("chat")], "gateway.yaml": bad})
    assert messages(result) == [
        "gateway.yaml:7:15: error: `sha256`: `sk-the-key-itself` is not a SHA-256 hash: write the 64 lowercase hex "
        "digits `reconciler keys new` prints, never the key itself",
        "gateway.yaml:8:36: error: `concurrentRequests`: must be 1 or more, not 0",
        "gateway.yaml:8:39: error: `burst` is not a field of `limits`; fields are: requestsPerMinute, "
        "concurrentRequests, tokensPerMinute",
    ]


def test_rules_across_keys_and_documents():
    bad = f"""\
apiVersion: reconciler/v1
kind: Gateway
metadata: {{name: front-door}}
spec:
  keys:
    - {{name: bob, sha256: {BOB}, models: [chta]}}
    - {{name: bob, sha256: {ALICE}}}
    - {{name: carol, sha256: {BOB}}}
---
apiVersion: reconciler/v1
kind: Gateway
metadata: {{name: another}}
spec: {{}}
"""
    result = load({"pool.yaml": [pool(), model("chat")], "gateway.yaml": bad})
    assert messages(result) == [
        "gateway.yaml:6:102: error: key `bob` names model `chta`, which does not exist; did you mean `chat`? "
        "models defined: chat",
        "gateway.yaml:7:14: error: key name `bob` is used twice (first at gateway.yaml:6:14); names must tell keys "
        "apart",
        "gateway.yaml:8:29: error: key `carol` has the same hash as key `bob`: one key can't have two names; make a "
        "new one with `reconciler keys new`",
        "gateway.yaml:12:18: error: a second Gateway (`another`; the first is `front-door` at gateway.yaml:3:18): "
        "the cluster has one gateway; merge their keys into one document",
    ]
