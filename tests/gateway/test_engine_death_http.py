"""A replica whose engine died, over real sockets (no Ray): its endpoint answers 503 ``engine_dead`` from the first
request after the death, the gateway takes it out of rotation and sends the request to another replica, or holds it
until a replacement answers; an engine that dies mid-request never leaks its own error text."""

from __future__ import annotations

import concurrent.futures
import dataclasses
import time

import httpx
import openai

from reconciler.engines.endpoint import Endpoint
from reconciler.engines.guard import EngineGuard
from reconciler.settings import DEFAULTS
from tests.gateway.conftest import echo, route, running_rig


class Mortal:
    """An echo engine whose "engine" can be killed, and the endpoint in front of it guarded like a replica's."""

    def __init__(self, rig, app: str, model: str = "chat") -> None:
        self.dead: str | None = None
        self.deaths: list[str] = []
        self.engine = echo(model)
        rig.engines[app] = self.engine
        guarded_endpoint(rig, EngineGuard(self.engine.http_app(), death=lambda: self.dead, name=f"{model}[0]",
                                          on_death=self.deaths.append), app)


def guarded_endpoint(rig, guarded: EngineGuard, app: str = "chat-0") -> str:
    """A guarded engine app served like a replica's endpoint (taking the rig's secret); its URL."""

    async def start() -> str:
        endpoint = Endpoint(guarded, "127.0.0.1", secret=rig.secret)
        rig.endpoints[app] = endpoint
        return await endpoint.start()

    return rig.call(start())


def ask(rig, text: str) -> str:
    client = openai.OpenAI(base_url=rig.url, api_key="unused", max_retries=0, timeout=30)
    return client.chat.completions.create(model="chat", messages=[{"role": "user", "content": text}]) \
        .choices[0].message.content


def test_a_dead_engine_answers_503_with_its_state_and_the_request_goes_to_the_other_replica():
    with running_rig(secret="s") as rig:
        first, second = Mortal(rig, "chat-0"), Mortal(rig, "chat-1")
        rig.publish(route("chat", "chat-0", "chat-1"))
        assert [ask(rig, f"n{i}") for i in range(4)] == [f"n{i}" for i in range(4)]
        first.dead = "signal 9 (SIGKILL)"
        direct = httpx.post(f"{rig.endpoints['chat-0'].url}/v1/chat/completions", json={"messages": []},
                            headers={"Authorization": "Bearer s"}, timeout=5)
        assert direct.status_code == 503 and direct.headers["X-Engine-State"] == "dead"
        assert direct.json()["error"]["code"] == "engine_dead" and "chat[0] stopped" in direct.json()["error"]["message"]
        assert first.deaths == ["signal 9 (SIGKILL)"]  # reported once
        assert [ask(rig, f"m{i}") for i in range(6)] == [f"m{i}" for i in range(6)]  # no error reaches a client
        assert rig.engines["chat-0"].running == 0 and second.engine is rig.engines["chat-1"]


def test_with_its_only_replica_restarting_a_request_waits_for_the_replacement():
    limits = dataclasses.replace(DEFAULTS.apply.gateway.limits, restart_hold=20.0)
    with running_rig(limits=limits, secret="s") as rig:
        only = Mortal(rig, "chat-0")
        rig.publish(route("chat", "chat-0"))
        assert ask(rig, "before") == "before"
        only.dead = "signal 9 (SIGKILL)"
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            waiting = [pool.submit(ask, rig, f"w{i}") for i in range(4)]
            time.sleep(1.5)
            assert not any(f.done() for f in waiting)  # held, not failed
            rig.stop_replica("chat-0")  # Serve replaces the replica: the same application, a new endpoint
            Mortal(rig, "chat-0")
            assert [f.result(20) for f in waiting] == [f"w{i}" for i in range(4)]


def test_past_the_hold_the_client_gets_503_with_retry_after():
    limits = dataclasses.replace(DEFAULTS.apply.gateway.limits, restart_hold=1.0)
    with running_rig(limits=limits, secret="s") as rig:
        only = Mortal(rig, "chat-0")
        rig.publish(route("chat", "chat-0"))
        only.dead = "exit code 1"
        answer = httpx.post(f"{rig.url}/chat/completions", json={"model": "chat", "messages": []}, timeout=10)
        assert answer.status_code == 503 and "Retry-After" in answer.headers
        assert answer.json()["error"]["code"] == "replicas_unavailable"


def test_requests_waiting_for_a_replacement_hold_their_bodies_within_the_budget():
    # 3 KiB of bodies may be held: a 2 KiB request waits; a second one finds the budget spent and gets 503 at once.
    limits = dataclasses.replace(DEFAULTS.apply.gateway.limits, restart_hold=20.0, held_bytes=3 << 10)
    with running_rig(limits=limits, secret="s") as rig:
        only = Mortal(rig, "chat-0")
        rig.publish(route("chat", "chat-0"))
        only.dead = "signal 9 (SIGKILL)"
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(ask, rig, "w" * 2048)
            deadline = time.monotonic() + 15
            while rig.gateway.held_bytes.held == 0 and time.monotonic() < deadline:  # until it waits
                time.sleep(0.05)
            assert rig.gateway.held_bytes.held > 0 and not waiting.done()
            # Not held: its 503 comes within the client's 10 s, where a held request would wait out the 20 s hold.
            refused = httpx.post(f"{rig.url}/chat/completions", timeout=10,
                                 json={"model": "chat", "messages": [{"role": "user", "content": "r" * 2048}]})
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "replicas_unavailable"
            rig.stop_replica("chat-0")  # the replacement: the held request is answered, its bytes given back
            Mortal(rig, "chat-0")
            assert waiting.result(20) == "w" * 2048
        assert rig.gateway.held_bytes.held == 0


def test_an_engine_that_dies_mid_request_never_leaks_its_text():
    async def crashing(scope, receive, send):  # an engine app whose request fails as its engine dies
        state["dead"] = "signal 9 (SIGKILL)"
        await send({"type": "http.response.start", "status": 500, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"'State' object has no attribute 'server'"})

    state: dict[str, str | None] = {"dead": None}
    with running_rig(secret="s") as rig:
        guarded_endpoint(rig, EngineGuard(crashing, death=lambda: state["dead"], name="chat[0]"))
        rig.publish(route("chat", "chat-0"))
        answer = httpx.post(f"{rig.url}/chat/completions", json={"model": "chat", "messages": []}, timeout=10)
        assert answer.status_code == 503 and "State" not in answer.text
        assert answer.json()["error"]["message"] == "the engine of chat[0] stopped while answering"


def test_a_living_engine_streams_through_the_guard_chunk_by_chunk_in_order():
    with running_rig(secret="s") as rig:
        mortal = Mortal(rig, "chat-0")
        rig.publish(route("chat", "chat-0"))
        client = openai.OpenAI(base_url=rig.url, api_key="unused", max_retries=0, timeout=30)
        words = " ".join(f"w{i}" for i in range(40))
        chunks = [c.choices[0].delta.content for c in client.chat.completions.create(
            model="chat", messages=[{"role": "user", "content": words}], stream=True) if c.choices]
        assert len([c for c in chunks if c]) >= 40 and "".join(c or "" for c in chunks).split() == words.split()
        assert mortal.deaths == []


def test_an_engine_that_dies_after_its_answer_began_keeps_the_answer_it_started():
    async def dying(scope, receive, send):  # the answer is under way (200) when the engine dies
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        state["dead"] = "signal 9 (SIGKILL)"
        await send({"type": "http.response.body", "body": b'{"partial":', "more_body": True})
        await send({"type": "http.response.body", "body": b' true}'})

    state: dict[str, str | None] = {"dead": None}
    with running_rig(secret="s") as rig:
        url = guarded_endpoint(rig, EngineGuard(dying, death=lambda: state["dead"], name="chat[0]"))
        answer = httpx.post(f"{url}/v1/chat/completions", json={}, headers={"Authorization": "Bearer s"}, timeout=10)
        assert answer.status_code == 200 and answer.json() == {"partial": True}
