"""API keys at the gateway with the official `openai` SDK: each refusal is the SDK's own exception."""

from __future__ import annotations

import concurrent.futures
import hashlib
import threading

import httpx
import openai
import pytest

from reconciler.desired import ApiKey
from reconciler.gateway.table import RouteTable
from tests.gateway.conftest import echo, route

ALICE, BOB, CAROL = "sk-rc-alice-secret", "sk-rc-bob-secret", "sk-rc-carol-secret"


def key(name: str, secret: str, models: tuple[str, ...] = ("*",), **limits) -> ApiKey:
    return ApiKey(name, hashlib.sha256(secret.encode()).hexdigest(), models, **limits)


def publish(rig, *keys: ApiKey) -> None:
    table = RouteTable(models=(route("chat", "chat-0"), route("emb", "emb-0")), created=1, keys=keys)
    rig.loop.call_soon_threadsafe(rig.gateway.set_table, table)


def sdk(rig, secret: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=rig.url, api_key=secret, max_retries=0)


def ask(client: openai.OpenAI, model: str = "chat", text: str = "hi"):
    return client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])


@pytest.fixture()
def keyed(rig):
    rig.add_replica("chat-0", echo("chat", stream_delay_s=0.3))
    rig.add_replica("emb-0", echo("emb"))
    publish(rig, key("alice", ALICE), key("bob", BOB, ("emb",)))
    return rig


def test_missing_or_wrong_keys_are_401_and_other_models_403(keyed):
    assert ask(sdk(keyed, ALICE)).choices[0].message.content == "hi"
    missing = httpx.get(f"{keyed.url}/models")  # the SDK won't send a request without a key: plain HTTP does
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
    with pytest.raises(openai.AuthenticationError, match="not valid") as wrong:
        ask(sdk(keyed, "sk-rc-mallory"))
    assert "sk-rc-mallory" not in wrong.value.message
    with pytest.raises(openai.PermissionDeniedError, match="`bob` may not use the model 'chat'"):
        ask(sdk(keyed, BOB))
    assert len(sdk(keyed, BOB).embeddings.create(model="emb", input="x").data) == 1
    # Each key sees the models it may use.
    assert [m.id for m in sdk(keyed, BOB).models.list().data] == ["emb"]
    assert [m.id for m in sdk(keyed, ALICE).models.list().data] == ["chat", "emb"]


def test_a_key_limited_to_2_concurrent_requests_gets_exactly_2_of_5_through(keyed):
    publish(keyed, key("carol", CAROL, concurrent_requests=2))
    client = sdk(keyed, CAROL)
    start = threading.Barrier(5)

    def one(i: int) -> str:
        start.wait()
        try:
            stream = client.chat.completions.create(  # streamed, 4 words: holds its slot ~1.2 s
                model="chat", messages=[{"role": "user", "content": f"a b c n{i}"}], stream=True)
            return "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        except openai.RateLimitError as exc:
            assert exc.response.headers["Retry-After"] == "1"
            return "429"

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(one, range(5)))
    assert sorted(answers)[:3] == ["429"] * 3 and sum(a != "429" for a in answers) == 2
    assert ask(client).choices[0].message.content == "hi"  # the slots are free again


def test_requests_per_minute_and_a_changed_limit_without_restart(keyed):
    publish(keyed, key("carol", CAROL, requests_per_minute=2))
    client = sdk(keyed, CAROL)
    client.embeddings.create(model="emb", input="1")
    client.embeddings.create(model="emb", input="2")
    with pytest.raises(openai.RateLimitError, match="2 requests per minute") as limited:
        client.embeddings.create(model="emb", input="3")
    assert int(limited.value.response.headers["Retry-After"]) == 30
    publish(keyed)  # the Gateway spec lost its keys: open to everyone, at once
    assert openai.OpenAI(base_url=keyed.url, api_key="anything", max_retries=0).embeddings.create(
        model="emb", input="4").data


def test_the_metrics_see_models_key_names_statuses_and_tokens_never_keys(keyed):
    from reconciler.gateway.observer import Recorder

    recorder = Recorder()
    keyed.gateway.observer = recorder
    client = sdk(keyed, ALICE)
    client.embeddings.create(model="emb", input="one two")
    for _ in client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "a b"}],
                                            stream=True, stream_options={"include_usage": True}):
        pass
    with pytest.raises(openai.PermissionDeniedError):
        ask(sdk(keyed, BOB))
    with pytest.raises(openai.AuthenticationError):
        ask(sdk(keyed, "sk-rc-mallory"))
    assert recorder.events == [
        ("request", "emb", "alice", 200),
        ("tokens", "emb", "alice", 2, 0),
        ("first_token", "chat", "alice"),
        ("request", "chat", "alice", 200),
        ("tokens", "chat", "alice", 2, 2),
        ("request", "chat", "bob", 403),
        ("request", "-", "-", 401),
    ]
    assert not any(secret in repr(recorder.events) for secret in (ALICE, BOB, "sk-rc-mallory"))


def test_a_stream_whose_client_closes_at_done_is_counted_as_answered(keyed, monkeypatch):
    """The openai SDK closes a stream's connection at `data: [DONE]`; on a busy machine that close can reach the
    gateway before it writes the chunked terminator. The stream was delivered: a 200, not a 500."""
    from aiohttp import web
    from aiohttp.client_exceptions import ClientConnectionResetError

    from reconciler.gateway.observer import Recorder

    recorder = Recorder()
    keyed.gateway.observer = recorder
    closing = web.StreamResponse.write_eof

    async def write_eof(self, data=b""):  # the client's close arrives before the terminator is written
        if self.content_type == "text/event-stream":
            raise ClientConnectionResetError("Cannot write to closing transport")
        return await closing(self, data)

    monkeypatch.setattr(web.StreamResponse, "write_eof", write_eof)
    chunks = list(sdk(keyed, ALICE).chat.completions.create(model="chat", stream=True,
                                                             messages=[{"role": "user", "content": "a b"}]))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "a b"
    assert ("request", "chat", "alice", 200) in recorder.events
