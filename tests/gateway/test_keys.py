"""Keys and limits: the pure checks, table-tested, and `reconciler keys new`."""

from __future__ import annotations

import hashlib
import re

import pytest

from reconciler.cli import main as cli
from reconciler.desired import ApiKey
from reconciler.gateway import keys
from reconciler.gateway.errors import GatewayError
from reconciler.gateway.limits import Limiter

ALICE = ApiKey("alice", hashlib.sha256(b"sk-alice").hexdigest(), ("*",))
BOB = ApiKey("bob", hashlib.sha256(b"sk-bob").hexdigest(), ("chat",))
BY_HASH = {k.sha256: k for k in (ALICE, BOB)}


@pytest.mark.parametrize(
    ("header", "want"),
    [("Bearer sk-alice", "alice"), ("bearer sk-bob", "bob"), ("Bearer  sk-bob ", "bob"), (None, 401), ("", 401),
     ("Bearer", 401), ("Basic sk-alice", 401), ("Bearer sk-mallory", 401), ("sk-alice", 401)],
)
def test_authenticate(header, want):
    got = keys.authenticate(BY_HASH, header)
    if isinstance(want, int):
        assert isinstance(got, GatewayError) and got.status == want
    else:
        assert got.name == want


@pytest.mark.parametrize(("key", "model", "allowed"),
                         [(ALICE, "chat", True), (ALICE, "emb", True), (BOB, "chat", True), (BOB, "emb", False)])
def test_authorize(key, model, allowed):
    denied = keys.authorize(key, model)
    assert (denied is None) == allowed
    if denied is not None:
        assert denied.status == 403 and "may use: chat" in denied.message


def test_messages_never_hold_the_key():
    for header in ("Bearer sk-mallory", None):
        assert "sk-mallory" not in keys.authenticate(BY_HASH, header).message


def test_concurrency_limit_admits_that_many_until_one_is_released():
    key = ApiKey("k", "h", ("*",), concurrent_requests=2)
    limiter = Limiter()
    results = [limiter.admit(key, now=0.0) for _ in range(5)]
    assert [r is None for r in results] == [True, True, False, False, False]
    assert results[2].status == 429 and results[2].retry_after == 1
    limiter.release(key)
    assert limiter.admit(key, now=0.0) is None and limiter.admit(key, now=0.0) is not None


@pytest.mark.parametrize(
    ("times", "admitted", "retry_after"),
    [
        ([0.0] * 3, [True, True, True], None),  # a full minute's allowance at once
        ([0.0] * 4, [True, True, True, False], 20),  # 3 a minute: one more in 20 s
        ([0.0, 0.0, 0.0, 20.0], [True, True, True, True], None),  # refilled one by then
        ([0.0, 0.0, 0.0, 10.0], [True, True, True, False], 10),
    ],
)
def test_requests_per_minute(times, admitted, retry_after):
    key = ApiKey("k", "h", ("*",), requests_per_minute=3)
    limiter = Limiter()
    results = []
    for t in times:
        results.append(limiter.admit(key, now=t))
        limiter.release(key)
    assert [r is None for r in results] == admitted
    if retry_after is not None:
        assert results[-1].retry_after == retry_after and "3 requests per minute" in results[-1].message


def test_tokens_per_minute_are_charged_from_usage_and_may_be_overdrawn_once():
    key = ApiKey("k", "h", ("*",), tokens_per_minute=600)
    limiter = Limiter()
    assert limiter.admit(key, now=0.0) is None
    limiter.charge(key, 900, now=0.0)  # a big answer: 300 over
    refused = limiter.admit(key, now=1.0)
    assert refused.status == 429 and refused.retry_after == 30  # 290 tokens short (and one more) at 10 a second
    assert limiter.admit(key, now=31.0) is None


def test_a_changed_limit_applies_to_the_next_request():
    limiter = Limiter()
    tight = ApiKey("k", "h", ("*",), concurrent_requests=1)
    assert limiter.admit(tight, now=0.0) is None
    assert limiter.admit(tight, now=0.0) is not None
    assert limiter.admit(ApiKey("k", "h", ("*",), concurrent_requests=2), now=0.0) is None


def test_keys_new_prints_a_key_once_and_an_entry_with_its_hash(capsys):
    assert cli(["keys", "new", "alice", "--models", "chat,emb"]) == 0
    out = capsys.readouterr().out
    key = re.search(r"^  (sk-rc-\S+)$", out, re.M).group(1)
    assert len(key) > 40 and out.count(key) == 1
    assert f"sha256: {hashlib.sha256(key.encode()).hexdigest()}" in out
    assert "    - name: alice\n" in out and "models: [chat, emb]" in out
    assert cli(["keys", "new", "alice"]) == 0
    assert key not in capsys.readouterr().out  # a new key every time
