"""The gateway over real HTTP with the official `openai` SDK as the client, in front of echo replicas (no Ray)."""

from __future__ import annotations

import asyncio
import dataclasses
import concurrent.futures
import time

import httpx
import openai
import pytest

from reconciler.engines.endpoint import Endpoint
from reconciler.settings import DEFAULTS
from tests.gateway.conftest import echo, route, running_rig

WORDS = " ".join(f"w{i}" for i in range(40))


def client(rig, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=rig.url, api_key="unused", max_retries=0, **kwargs)


def chat(sdk: openai.OpenAI, model: str | None = "chat", text: str = "hello there", **kwargs):
    extra = {} if model is not None else {}
    return sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": text}], **extra, **kwargs)


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_lists_every_model_of_the_table_with_its_state_even_with_no_replica_up(rig):
    rig.publish(route("chat", "chat-0", "chat-1"), route("idle", state="stopped", desired=0),
                route("big", state="unplaced", desired=1))
    models = client(rig).models.list()
    got = {m.id: (m.object, m.owned_by, m.created, m.state, m.replicas) for m in models.data}
    assert got == {
        "chat": ("model", "reconciler", 1700000000, "running", {"running": 2, "desired": 2}),
        "idle": ("model", "reconciler", 1700000000, "stopped", {"running": 0, "desired": 0}),
        "big": ("model", "reconciler", 1700000000, "unplaced", {"running": 0, "desired": 1}),
    }
    assert rig.lookups == []  # answered from the table: no replica was asked
    assert client(rig).models.retrieve("idle").state == "stopped"
    with pytest.raises(openai.NotFoundError, match="known models: chat, idle, big"):
        client(rig).models.retrieve("gpt-4")


def test_chat_completions_and_embeddings_go_to_the_model_the_body_names(rig):
    rig.add_replica("chat-0", echo("chat"))
    rig.add_replica("emb-0", echo("emb", dimensions=4))
    rig.publish(route("chat", "chat-0"), route("emb", "emb-0"))
    sdk = client(rig)
    answer = chat(sdk, text="hello gateway")
    assert answer.model == "chat" and answer.choices[0].message.content == "hello gateway"
    completion = sdk.completions.create(model="chat", prompt="def main(")
    assert completion.choices[0].text == "def main("
    vectors = sdk.embeddings.create(model="emb", input=["a", "b"])
    assert vectors.model == "emb" and [len(d.embedding) for d in vectors.data] == [4, 4]


def test_error_cases_surface_as_the_sdks_own_exceptions(rig):
    rig.add_replica("chat-0", echo("chat"))
    rig.publish(route("chat", "chat-0"), route("emb", state="starting", desired=1))
    sdk = client(rig)
    with pytest.raises(openai.NotFoundError, match=r"'gpt-4' does not exist; known models: chat, emb") as nf:
        chat(sdk, model="gpt-4")
    assert nf.value.body["code"] == "model_not_found" and nf.value.body["param"] == "model"
    with pytest.raises(openai.BadRequestError, match="names no `model`"):
        sdk.chat.completions.create(messages=[{"role": "user", "content": "x"}], model="")
    with pytest.raises(openai.InternalServerError, match="'emb' has no running replica") as unavailable:
        sdk.embeddings.create(model="emb", input="x")
    assert unavailable.value.status_code == 503
    assert unavailable.value.response.headers["Retry-After"] == "5"
    assert httpx.post(f"{rig.url}/chat/completions", content=b"{not json").status_code == 400


def test_the_only_model_needs_no_model_field(rig):
    rig.add_replica("chat-0", echo("chat"))
    rig.publish(route("chat", "chat-0"))
    answer = httpx.post(f"{rig.url}/chat/completions", json={"messages": [{"role": "user", "content": "solo"}]})
    assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "solo"


def test_streams_chunk_by_chunk_with_usage_and_done_last(rig):
    rig.add_replica("chat-0", echo("chat", stream_delay_s=0.05))
    rig.publish(route("chat", "chat-0"))
    arrivals, pieces, usage = [], [], None
    for chunk in chat(client(rig), text="one two three four five six", stream=True,
                      stream_options={"include_usage": True}):
        arrivals.append(time.monotonic())
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    assert "".join(pieces) == "one two three four five six"
    assert usage is not None and usage.completion_tokens == 6
    # Passed on as produced: the first chunk came well before the last (six chunks 50 ms apart).
    assert arrivals[-1] - arrivals[0] > 0.2
    with httpx.stream("POST", f"{rig.url}/completions",
                      json={"model": "chat", "prompt": "a b", "stream": True}) as raw:
        assert raw.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in raw.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_a_client_that_disconnects_mid_stream_cancels_the_generation(rig):
    engine = echo("chat", stream_delay_s=0.2)  # 40 words: an 8 s stream
    rig.add_replica("chat-0", engine)
    rig.publish(route("chat", "chat-0"))
    with httpx.stream("POST", f"{rig.url}/chat/completions",
                      json={"model": "chat", "stream": True, "messages": [{"role": "user", "content": WORDS}]}) as s:
        lines = s.iter_lines()
        assert next(lines).startswith("data: ")
        assert engine.running_requests() == 1
    assert wait_until(lambda: engine.running_requests() == 0, timeout=3.0)


def test_a_replica_that_is_gone_is_skipped_before_the_first_byte():
    with running_rig(limits=dataclasses.replace(DEFAULTS.apply.gateway.limits, restart_hold=0.5)) as rig:
        _gone_is_skipped(rig)


def _gone_is_skipped(rig):
    rig.add_replica("chat-0", echo("chat"))
    rig.add_replica("chat-1", echo("chat"))
    rig.publish(route("chat", "chat-0", "chat-1"))
    sdk = client(rig)
    for _ in range(4):  # both replicas get known to the gateway
        chat(sdk)
    rig.stop_replica("chat-1")  # its port now refuses connections; the gateway still has its URL
    answers = [chat(sdk, text=f"n{i}").choices[0].message.content for i in range(6)]
    assert answers == [f"n{i}" for i in range(6)]
    rig.stop_replica("chat-0")
    with pytest.raises(openai.InternalServerError, match="no replica of the model 'chat' could take the request"):
        chat(sdk)


def test_requests_go_to_the_replica_with_fewest_in_flight(rig):
    slow = [echo("chat", 0, stream_delay_s=0.1), echo("chat", 1, stream_delay_s=0.1)]
    rig.add_replica("chat-0", slow[0])
    rig.add_replica("chat-1", slow[1])
    rig.publish(route("chat", "chat-0", "chat-1"))

    def stream() -> None:
        for _ in chat(client(rig), text="a b c d e f g h", stream=True):
            pass

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(stream) for _ in range(4)]
        assert wait_until(lambda: slow[0].running + slow[1].running == 4)
        assert (slow[0].running, slow[1].running) == (2, 2)
        for future in futures:
            future.result()


def test_a_stream_that_breaks_after_the_first_byte_ends_with_an_error_event(rig):
    async def dying_replica(scope, receive, send):  # an ASGI app that dies after its first event
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"text/event-stream")]})
        await send({"type": "http.response.body", "body": b'data: {"choices": []}\n\n', "more_body": True})
        await asyncio.sleep(0.05)
        raise RuntimeError("the engine died")

    async def start() -> str:
        endpoint = Endpoint(dying_replica, "127.0.0.1")
        rig.endpoints["dying-0"] = endpoint
        return await endpoint.start()

    rig.call(start())
    rig.publish(route("chat", "dying-0"))
    with httpx.stream("POST", f"{rig.url}/chat/completions",
                      json={"model": "chat", "stream": True, "messages": []}) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert lines[0] == 'data: {"choices": []}'
    assert lines[1].startswith('data: {"error": {"message": "the replica of the model \'chat\' stopped answering mid-response')
    assert lines[-1] == "data: [DONE]"
