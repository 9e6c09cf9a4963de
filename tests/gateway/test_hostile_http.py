"""The gateway against hostile clients and failing replicas, over real sockets (no Ray): slow headers, huge and
malformed bodies, clients that leave, replicas that die after reading a request, compress, hang or leak internal
text. Each test checks what a client sees and that the gateway still serves everyone else afterwards."""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import gzip
import hashlib
import json
import socket
import time

import httpx
import openai
import pytest

from reconciler.desired import ApiKey
from reconciler.gateway.table import RouteTable
from reconciler.settings import DEFAULTS
from tests.gateway.conftest import echo, route, running_rig

TIGHT = dataclasses.replace(DEFAULTS.apply.gateway.limits, header_timeout=1.0, body_timeout=2.0, answer_timeout=1.5,
                            stream_gap=1.0, write_timeout=1.0, body_bytes=1 << 20, max_connections=64)
ALICE = "sk-rc-alice-secret"


ROOMY = dataclasses.replace(TIGHT, stream_gap=3.0, write_timeout=3.0)


@pytest.fixture()
def tight():
    with running_rig(limits=TIGHT, secret="cluster-secret") as rig:
        yield rig


@pytest.fixture()
def roomy():
    with running_rig(limits=ROOMY, secret="cluster-secret") as rig:
        yield rig


def ok_chat(rig, text: str = "still here") -> str:
    client = openai.OpenAI(base_url=rig.url, api_key="unused", max_retries=0, timeout=10)
    return client.chat.completions.create(model="chat", messages=[{"role": "user", "content": text}]) \
        .choices[0].message.content


def host_port(rig) -> tuple[str, int]:
    url = httpx.URL(rig.url)
    return url.host, url.port


class RawReplica:
    """A replica that speaks raw TCP: it reads one request (headers and body) and then does what ``behave`` says."""

    def __init__(self, rig, behave) -> None:
        self.arrivals = 0
        self.request_ids: list[str] = []
        self._behave = behave

        async def start():
            return await asyncio.start_server(self._serve, "127.0.0.1", 0)

        self._server = rig.call(start())
        self._rig = rig
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._task = asyncio.run_coroutine_threadsafe(asyncio.sleep(0), rig.loop)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.lower() == b"content-length":
                length = int(value)
            if name.lower() == b"x-request-id":
                self.request_ids.append(value.strip().decode())
        await reader.readexactly(length)
        self.arrivals += 1
        await self._behave(writer)

    def stop(self) -> None:
        self._rig.loop.call_soon_threadsafe(self._server.close)


def raw_answer(status: str, body: bytes, **headers: str) -> bytes:
    lines = [f"HTTP/1.1 {status}", f"Content-Length: {len(body)}"] + [f"{k.replace('_', '-')}: {v}"
                                                                      for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def add_raw(rig, app: str, behave) -> RawReplica:
    replica = RawReplica(rig, behave)
    rig.endpoints[app] = replica
    return replica


# ------------------------------------------------------------------------------------------------- connections

def test_slow_headers_are_closed_at_the_header_timeout_while_others_are_served(tight):
    tight.add_replica("chat-0", echo("chat"))
    tight.publish(route("chat", "chat-0"))
    loris = socket.create_connection(host_port(tight))
    loris.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    for i in range(5):
        assert ok_chat(tight, f"n{i}") == f"n{i}"  # a normal client meanwhile
        try:
            loris.sendall(b"X-Slow: 1\r\n")  # bytes keep coming, but never a whole header
        except OSError:  # already closed: the deadline passed while the others were served
            break
    # Closed by the header deadline (1 s here), long before the idle keep-alive limit (60 s) would.
    loris.settimeout(15)
    try:
        assert loris.recv(1) == b""
    except ConnectionResetError:
        pass
    loris.close()


def test_connections_beyond_the_cap_are_answered_503_and_closed():
    limits = dataclasses.replace(TIGHT, max_connections=3)
    with running_rig(limits=limits) as rig:
        rig.add_replica("chat-0", echo("chat"))
        rig.publish(route("chat", "chat-0"))
        held = [socket.create_connection(host_port(rig)) for _ in range(3)]
        extra = socket.create_connection(host_port(rig))
        extra.settimeout(5)
        answer = extra.recv(4096)
        assert answer.startswith(b"HTTP/1.1 503") and b"too_many_connections" in answer
        for s in held + [extra]:
            s.close()
        time.sleep(0.2)
        assert ok_chat(rig) == "still here"


# ------------------------------------------------------------------------------------------------------ bodies

def test_a_20_mib_body_is_refused_413_without_being_read(tight):
    tight.add_replica("chat-0", echo("chat"))
    tight.publish(route("chat", "chat-0"))
    big = b'{"model": "chat", "messages": [{"role": "user", "content": "' + b"x" * (20 << 20) + b'"}]}'
    answer = httpx.post(f"{tight.url}/chat/completions", content=big, headers={"Content-Type": "application/json"},
                        timeout=30)
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"

    def chunks():  # no Content-Length: the limit is counted as it arrives
        for _ in range(20):
            yield b"x" * (1 << 20)

    answer = httpx.post(f"{tight.url}/chat/completions", content=chunks(), timeout=30)
    assert answer.status_code == 413 and answer.json()["error"]["type"] == "invalid_request_error"
    assert ok_chat(tight) == "still here"


@pytest.mark.parametrize("body, why", [
    (b"{not json", "not valid JSON"),
    (b"[" * 200_000 + b"]" * 200_000, "nested too deeply"),
    (b"\xff\xfe\x00garbage", "not valid JSON"),
    (b'["a list"]', "got a JSON list"),
])
def test_malformed_and_deeply_nested_bodies_are_400_in_the_envelope(tight, body, why):
    tight.add_replica("chat-0", echo("chat"))
    tight.publish(route("chat", "chat-0"))
    answer = httpx.post(f"{tight.url}/chat/completions", content=body, timeout=30)
    assert answer.status_code == 400
    assert why in answer.json()["error"]["message"]
    assert ok_chat(tight) == "still here"


def test_a_client_that_leaves_mid_body_frees_its_slot(tight):
    tight.add_replica("chat-0", echo("chat"))
    key = ApiKey("alice", hashlib.sha256(ALICE.encode()).hexdigest(), ("*",), concurrent_requests=1)
    tight.loop.call_soon_threadsafe(tight.gateway.set_table,
                                    RouteTable(models=(route("chat", "chat-0"),), created=1, keys=(key,)))
    for _ in range(5):
        s = socket.create_connection(host_port(tight))
        s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + ALICE.encode()
                  + b"\r\nContent-Length: 1000\r\n\r\n{\"model\":")
        time.sleep(0.05)
        s.close()
    client = openai.OpenAI(base_url=tight.url, api_key=ALICE, max_retries=0)
    deadline = time.monotonic() + 5
    while tight.gateway.limiter.active.get("alice") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "free"}]) \
        .choices[0].message.content == "free"


def test_1000_cancelled_requests_leave_a_concurrency_limit_admitting_exactly_its_number(tight):
    tight.add_replica("chat-0", echo("chat", stream_delay_s=0.2))
    key = ApiKey("alice", hashlib.sha256(ALICE.encode()).hexdigest(), ("*",), concurrent_requests=2)
    tight.loop.call_soon_threadsafe(tight.gateway.set_table,
                                    RouteTable(models=(route("chat", "chat-0"),), created=1, keys=(key,)))
    body = {"model": "chat", "stream": True, "messages": [{"role": "user", "content": "a b c d e f"}]}
    headers = {"Authorization": f"Bearer {ALICE}"}

    async def cancelled() -> None:
        async with httpx.AsyncClient(limits=httpx.Limits(max_connections=50)) as client:
            async def one() -> None:
                try:
                    await asyncio.wait_for(client.post(f"{tight.url}/chat/completions", json=body, headers=headers),
                                           timeout=0.01)
                except (asyncio.TimeoutError, httpx.HTTPError):
                    pass
            for _ in range(20):
                await asyncio.gather(*(one() for _ in range(50)))

    asyncio.run(cancelled())
    deadline = time.monotonic() + 10
    while tight.gateway.limiter.active.get("alice") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not tight.gateway.limiter.active.get("alice")

    def stream() -> int:
        with httpx.stream("POST", f"{tight.url}/chat/completions", json=body, headers=headers, timeout=10) as r:
            r.read()
            return r.status_code

    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        statuses = sorted(pool.map(lambda _: stream(), range(5)))
    assert statuses == [200, 200, 429, 429, 429]


# ---------------------------------------------------------------------------------------------------- replicas

def test_a_replica_that_reads_the_body_and_dies_is_not_retried_elsewhere(tight):
    async def die(writer: asyncio.StreamWriter) -> None:
        writer.transport.abort()

    replicas = [add_raw(tight, f"chat-{i}", die) for i in range(3)]
    tight.publish(route("chat", "chat-0", "chat-1", "chat-2"))
    answer = httpx.post(f"{tight.url}/chat/completions", json={"model": "chat", "messages": []}, timeout=10)
    assert answer.status_code == 502 and answer.json()["error"]["code"] == "upstream_error"
    assert sum(r.arrivals for r in replicas) == 1  # the request that may have crashed its engine went nowhere else
    assert "127.0.0.1" not in answer.text


def test_a_refused_connection_goes_to_the_next_replica(tight):
    tight.add_replica("chat-0", echo("chat"))
    tight.add_replica("chat-1", echo("chat"))
    tight.publish(route("chat", "chat-0", "chat-1"))
    ok_chat(tight)
    ok_chat(tight)
    tight.stop_replica("chat-1")
    assert [ok_chat(tight, f"n{i}") for i in range(4)] == [f"n{i}" for i in range(4)]


def test_an_internal_error_text_never_reaches_the_client(tight):
    async def traceback(writer: asyncio.StreamWriter) -> None:
        writer.write(raw_answer("500 Internal Server Error",
                                b"Traceback: 'State' object has no attribute 'server' at 10.1.2.3:41234",
                                Content_Type="text/plain"))
        await writer.drain()
        writer.close()

    add_raw(tight, "chat-0", traceback)
    tight.publish(route("chat", "chat-0"))
    answer = httpx.post(f"{tight.url}/chat/completions", json={"model": "chat", "messages": []}, timeout=10)
    assert answer.status_code == 502
    assert "State" not in answer.text and "10.1.2.3" not in answer.text
    assert answer.json()["error"]["code"] == "engine_error"


def test_a_replica_that_answers_gzip_reaches_the_client_decoded(tight):
    payload = {"id": "x", "object": "chat.completion", "created": 1, "model": "chat",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "zipped"},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}}

    async def zipped(writer: asyncio.StreamWriter) -> None:
        writer.write(raw_answer("200 OK", gzip.compress(json.dumps(payload).encode()),
                                Content_Type="application/json", Content_Encoding="gzip"))
        await writer.drain()
        writer.close()

    add_raw(tight, "chat-0", zipped)
    tight.publish(route("chat", "chat-0"))
    client = openai.OpenAI(base_url=tight.url, api_key="unused", max_retries=0)
    assert client.chat.completions.create(model="chat", messages=[]).choices[0].message.content == "zipped"


def test_a_hung_replica_answers_504_within_the_timeout_and_frees_its_slot(tight):
    async def hang(writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    add_raw(tight, "chat-0", hang)
    tight.publish(route("chat", "chat-0"))
    started = time.monotonic()
    answer = httpx.post(f"{tight.url}/chat/completions", json={"model": "chat", "messages": []}, timeout=20)
    assert answer.status_code == 504 and answer.json()["error"]["type"] == "timeout"
    assert time.monotonic() - started < TIGHT.answer_timeout + 2
    assert tight.gateway.in_flight.get("chat-0", 0) == 0


def test_a_stream_whose_replica_goes_silent_ends_with_an_error_event_after_the_gap(tight):
    async def silent(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        event = b'data: {"choices": [{"index": 0, "delta": {"content": "a"}}]}\n\n'
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
        await asyncio.sleep(30)

    add_raw(tight, "chat-0", silent)
    tight.publish(route("chat", "chat-0"))
    started = time.monotonic()
    with httpx.stream("POST", f"{tight.url}/chat/completions",
                      json={"model": "chat", "stream": True, "messages": []}, timeout=20) as raw:
        lines = [line for line in raw.iter_lines() if line]
    assert time.monotonic() - started < TIGHT.stream_gap + 3
    assert lines[0].startswith("data: {\"choices\"") and '"upstream_error"' in lines[1] and lines[-1] == "data: [DONE]"


def test_a_client_that_pauses_within_the_gap_gets_the_whole_stream(roomy):
    """Reading from the replica pauses while the client's socket is full and resumes when it drains: a client that
    pauses (each time for a third of the gap) is slowed down to, not let go, and gets every event. The gap is longer
    here than in the other tests: after each pause the client must be scheduled and drain on a loaded machine."""
    event = b'data: {"choices": [{"index": 0, "delta": {"content": "%s"}}]}\n\n' % (b"x" * 4000)
    events = 400  # 1.6 MB: more than the sockets between them hold, so the gateway's buffer fills while paused

    async def fast(writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(events):
            writer.write(b"%x\r\n%b\r\n" % (len(event), event))
            await writer.drain()
        done = b"data: [DONE]\n\n"
        writer.write(b"%x\r\n%b\r\n0\r\n\r\n" % (len(done), done))
        await writer.drain()

    add_raw(roomy, "chat-0", fast)
    roomy.publish(route("chat", "chat-0"))
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    reader.connect(host_port(roomy))
    body = json.dumps({"model": "chat", "stream": True, "messages": []}).encode()
    reader.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                   + f"Content-Length: {len(body)}\r\n\r\n".encode() + body)
    reader.settimeout(10)
    got = bytearray()
    pauses = 0
    while not got.endswith(b"0\r\n\r\n"):
        if pauses < 3 and len(got) > (pauses + 1) * 200_000:
            time.sleep(ROOMY.stream_gap / 3)
            pauses += 1
        chunk = reader.recv(65536)
        assert chunk, "the gateway closed the stream"
        got += chunk
    reader.close()
    assert pauses == 3
    assert b"upstream_error" not in got and got.count(b"x" * 4000) == events and b"data: [DONE]" in got


def test_a_clients_request_id_is_echoed_but_never_the_engines(tight):
    async def answer(writer: asyncio.StreamWriter) -> None:
        writer.write(raw_answer("200 OK", b'{"object": "list", "data": []}', Content_Type="application/json"))
        await writer.drain()
        writer.close()

    replica = add_raw(tight, "emb-0", answer)
    tight.loop.call_soon_threadsafe(tight.gateway.set_table, RouteTable(models=(route("emb", "emb-0"),), created=1))
    got = [httpx.post(f"{tight.url}/embeddings", json={"model": "emb", "input": "x"},
                      headers={"X-Request-Id": "same-id"}, timeout=10) for _ in range(2)]
    assert [g.headers["X-Request-Id"] for g in got] == ["same-id", "same-id"]
    assert len(set(replica.request_ids)) == 2 and "same-id" not in replica.request_ids


def test_replica_endpoints_refuse_requests_without_the_cluster_secret(tight):
    tight.add_replica("chat-0", echo("chat"))
    tight.publish(route("chat", "chat-0"))
    url = tight.endpoints["chat-0"].url
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = httpx.get(f"{url}/v1/models", headers=headers, timeout=5)
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "gateway_only"
    assert ok_chat(tight) == "still here"  # the gateway holds the secret


# ---------------------------------------------------------------------------------------------------- surface

def test_unknown_paths_and_methods_answer_in_the_envelope(tight):
    root = tight.url.removesuffix("/v1")
    for missing in (httpx.get(f"{root}/nothing", timeout=5), httpx.post(f"{tight.url}/nothing", json={}, timeout=5)):
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_url"
    wrong = httpx.get(f"{tight.url}/chat/completions", timeout=5)
    assert wrong.status_code == 405 and wrong.json()["error"]["code"] == "method_not_allowed"
    wrong = httpx.delete(f"{tight.url}/models", timeout=5)
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_no_answer_names_the_gateways_software_or_versions(tight):
    """aiohttp would send `Server: Python/3.11 aiohttp/3.x` with every answer: whole, streamed, the gateway's own
    errors and those of HTTP itself (a malformed request line)."""
    tight.add_replica("chat-0", echo("chat"))
    tight.publish(route("chat", "chat-0"))
    chat = {"model": "chat", "messages": [{"role": "user", "content": "a b"}]}
    answers = [httpx.post(f"{tight.url}/chat/completions", json=chat, timeout=10),
               httpx.get(f"{tight.url}/models", timeout=5),
               httpx.get(tight.url.removesuffix("/v1") + "/nothing", timeout=5),
               httpx.post(f"{tight.url}/chat/completions", content=b"{not json", timeout=5)]
    with httpx.stream("POST", f"{tight.url}/chat/completions", json={**chat, "stream": True}, timeout=10) as stream:
        stream.read()
        answers.append(stream)
    assert [a.status_code for a in answers] == [200, 200, 404, 400, 200]
    assert [a.headers.get("server") for a in answers] == ["reconciler"] * 5
    with socket.create_connection(host_port(tight), timeout=5) as raw:
        raw.sendall(b"NOT HTTP AT ALL\r\n\r\n")
        head = raw.recv(4096).decode(errors="replace")
    assert head.split(" ")[1] == "400" and "Server: reconciler\r\n" in head, head
    assert "aiohttp" not in head and "Python" not in head, head


def test_a_scoped_key_sees_only_its_models_in_lists_and_404s_and_401_says_bearer(tight):
    tight.add_replica("chat-0", echo("chat"))
    tight.add_replica("emb-0", echo("emb"))
    key = ApiKey("alice", hashlib.sha256(ALICE.encode()).hexdigest(), ("emb",))
    tight.loop.call_soon_threadsafe(tight.gateway.set_table, RouteTable(
        models=(route("chat", "chat-0"), route("emb", "emb-0"), route("secret-model", "chat-0")), created=1,
        keys=(key,)))
    time.sleep(0.1)
    client = openai.OpenAI(base_url=tight.url, api_key=ALICE, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["emb"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[])
    assert "secret-model" not in str(missing.value) and "chat" not in str(missing.value.body)
    anonymous = httpx.get(f"{tight.url}/models", timeout=5)
    assert anonymous.status_code == 401 and anonymous.headers["WWW-Authenticate"].startswith("Bearer")


def test_tokens_per_minute_are_reserved_at_admission_and_usage_is_stripped_when_not_asked(tight):
    tight.add_replica("chat-0", echo("chat", stream_delay_s=0.3))
    key = ApiKey("alice", hashlib.sha256(ALICE.encode()).hexdigest(), ("*",), tokens_per_minute=100)
    tight.loop.call_soon_threadsafe(tight.gateway.set_table,
                                    RouteTable(models=(route("chat", "chat-0"),), created=1, keys=(key,)))
    time.sleep(0.1)
    body = {"model": "chat", "stream": True, "max_tokens": 80, "messages": [{"role": "user", "content": "a b c"}]}
    headers = {"Authorization": f"Bearer {ALICE}"}

    def stream() -> tuple[int, str]:
        with httpx.stream("POST", f"{tight.url}/chat/completions", json=body, headers=headers, timeout=10) as r:
            return r.status_code, r.read().decode()

    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        results = sorted(pool.map(lambda _: stream(), range(3)))
    assert [status for status, _ in results] == [200, 429, 429]  # one reservation of ~100 spends the minute
    assert '"usage"' not in results[0][1]  # the client did not ask for usage: it was read, then taken out


def unread_request(rig, body: dict) -> socket.socket:
    """A client connection that sends ``body`` to chat completions and reads nothing (a small receive buffer)."""
    raw = json.dumps(body).encode()
    sleeper = socket.socket()
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sleeper.connect(host_port(rig))
    sleeper.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {len(raw)}\r\n\r\n".encode() + raw)
    return sleeper


def read_until_dropped(sleeper: socket.socket) -> int:
    """Bytes the client can still read of its answer once it reads again."""
    sleeper.settimeout(10)
    taken = 0
    try:
        while piece := sleeper.recv(1 << 16):
            taken += len(piece)
    except ConnectionResetError:
        pass
    return taken


def test_a_stream_client_that_stops_reading_at_its_last_event_is_let_go(tight):
    """A replica that sends its whole stream at once, a 4 MiB event and then `[DONE]`: the stream has ended before
    the gateway finds the client's socket full, so only the answer's end is left to write. A client that reads none
    of it is let go within the write timeout, and its replica's slot with it."""
    event = b"data: " + b"x" * (4 << 20) + b"\n\n" + b"data: [DONE]\n\n"

    async def whole_stream(writer):
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%b\r\n0\r\n\r\n" % (len(event), event))
        await writer.drain()

    replica = add_raw(tight, "chat-0", whole_stream)
    tight.publish(route("chat", "chat-0"))
    with unread_request(tight, {"model": "chat", "stream": True, "messages": []}) as sleeper:
        deadline = time.monotonic() + 30
        while replica.arrivals == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        while tight.gateway.in_flight.get("chat-0", 0) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert replica.arrivals == 1
        assert tight.gateway.in_flight.get("chat-0", 0) == 0  # let go, not held until the client reads
        assert read_until_dropped(sleeper) < len(event)
    tight.add_replica("chat-1", echo("chat"))
    tight.publish(route("chat", "chat-1"))
    assert ok_chat(tight) == "still here"  # the gateway serves on


def test_a_client_that_never_reads_a_large_whole_answer_is_dropped(tight):
    """An 8 MiB answer (a large embeddings batch, say) to a client that reads none of it: once its socket has been
    full for the write timeout, the connection goes, with the rest of the answer."""
    payload = b'{"object": "list", "data": "' + b"x" * (8 << 20) + b'"}'

    async def large(writer):
        writer.write(raw_answer("200 OK", payload, Content_Type="application/json"))
        await writer.drain()

    replica = add_raw(tight, "chat-0", large)
    tight.publish(route("chat", "chat-0"))
    with unread_request(tight, {"model": "chat", "messages": []}) as sleeper:
        # The write timeout counts from the answer's write, once the gateway has the whole answer: on a busy machine
        # that comes a while after the request.
        deadline = time.monotonic() + 30
        while (replica.arrivals == 0 or tight.gateway.in_flight.get("chat-0", 0)) and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(TIGHT.write_timeout + 2.0)
        assert read_until_dropped(sleeper) < len(payload)


def test_a_stream_client_that_stops_reading_is_let_go_and_frees_its_replica(tight):
    tight.add_replica("chat-0", echo("chat"))
    tight.publish(route("chat", "chat-0"))
    words = " ".join("w" for _ in range(150_000))  # ~150,000 events, ~20 MB of stream for a client that reads none
    sleeper = unread_request(tight, {"model": "chat", "stream": True, "messages": [{"role": "user", "content": words}]})
    deadline = time.monotonic() + 60
    while tight.gateway.in_flight.get("chat-0", 0) == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    while tight.gateway.in_flight.get("chat-0", 0) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert tight.gateway.in_flight.get("chat-0", 0) == 0  # let go, not held until the client reads
    assert ok_chat(tight) == "still here"
    sleeper.close()
