"""The channel between the gateway and a replica, both sides for real on 127.0.0.1: the replica's server
(`engines.channel`) running an ASGI app, the gateway's pool (`gateway.channel`) sending to it."""

from __future__ import annotations

import asyncio
import json
import socket

import pytest

from reconciler.engines import channel as served
from reconciler.engines.secret import RequireSecret
from reconciler.gateway.channel import ChannelExchange, ChannelPool
from reconciler.gateway.frames import BODY, END, HEAD_LEN, REQUEST, START, frame, start_payload
from reconciler.gateway.wire import Closed, Malformed, Refused


class App:
    """An ASGI app: /whole answers at once, /stream sends `n` pieces, /broken fails before or after its start,
    /wait waits for the client to leave (and records that it saw it), /held sends its pieces once `go` is set."""

    def __init__(self) -> None:
        self.left: list[str] = []
        self.release = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, scope, receive, send) -> None:
        body = json.loads((await receive())["body"] or b"{}")
        path = scope["path"]
        if path == "/whole":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"application/json"), (b"x-seen", body.get("tag", "").encode())]})
            await send({"type": "http.response.body", "body": json.dumps({"echo": body}).encode()})
        elif path == "/stream":
            await send({"type": "http.response.start", "status": 200,
                        "headers": [(b"content-type", b"text/event-stream")]})
            for k in range(body["n"]):
                await send({"type": "http.response.body", "body": f"data: {body['tag']}-{k}\n\n".encode(),
                            "more_body": True})
                await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        elif path == "/broken":
            if body.get("started"):
                await send({"type": "http.response.start", "status": 200, "headers": []})
                await send({"type": "http.response.body", "body": b"part", "more_body": True})
            raise RuntimeError("the engine broke")
        elif path == "/wait":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            message = await receive()
            self.left.append(message["type"])
            self.release.set()
        elif path == "/held":
            await send({"type": "http.response.start", "status": 200, "headers": []})
            await self.go.wait()
            for k in range(3):
                await send({"type": "http.response.body", "body": b"%d" % k, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})


def _listener() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    return sock


async def _replica(app) -> tuple[asyncio.AbstractServer, str]:
    sock = _listener()
    server = await served.serve(app, sock)
    return server, f"chan://127.0.0.1:{sock.getsockname()[1]}"


def _send(pool: ChannelPool, url: str, path: str, body: dict, headers: dict[str, str] | None = None):
    return pool.send(url, path, headers or {"content-type": "application/json"}, json.dumps(body).encode(),
                     connect_timeout=5)


def test_answers_whole_and_streamed_on_one_connection():
    async def run():
        app = App()
        server, url = await _replica(app)
        pool = ChannelPool()
        try:
            whole = await _send(pool, url, "/whole", {"tag": "a"})
            await whole.answered()
            assert whole.status == 200 and whole.headers["x-seen"] == "a"
            assert json.loads(await whole.body()) == {"echo": {"tag": "a"}}

            async def stream(tag: str) -> bytes:
                exchange = await _send(pool, url, "/stream", {"tag": tag, "n": 20})
                await exchange.answered()
                pieces: list[bytes] = []
                exchange.relay(pieces.append)
                await exchange.ended
                assert exchange.error is None
                return b"".join(pieces)

            got = await asyncio.gather(*[stream(f"s{k}") for k in range(32)])
            for k, text in enumerate(got):
                assert text == b"".join(f"data: s{k}-{i}\n\n".encode() for i in range(20))
            assert len(pool._open) == 1  # every request shared the replica's one connection
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_a_failing_app_ends_its_request_only_and_says_whether_it_had_answered():
    async def run():
        server, url = await _replica(App())
        pool = ChannelPool()
        try:
            before = await _send(pool, url, "/broken", {})
            with pytest.raises(Closed) as early:
                await before.answered()
            assert not early.value.answered
            after = await _send(pool, url, "/broken", {"started": True})
            await after.answered()
            with pytest.raises(Closed) as late:
                await after.body()
            assert late.value.answered
            fine = await _send(pool, url, "/whole", {"tag": "b"})  # the connection stays up for the others
            await fine.answered()
            assert fine.status == 200
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_a_cancelled_request_is_a_disconnect_for_the_app():
    async def run():
        app = App()
        server, url = await _replica(app)
        pool = ChannelPool()
        try:
            exchange = await _send(pool, url, "/wait", {})
            await exchange.answered()
            exchange.abort()
            await asyncio.wait_for(app.release.wait(), 5)
            assert app.left == ["http.disconnect"]
            assert exchange.ended.done() and exchange.error is not None
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_pieces_held_for_a_slow_client_come_out_before_the_end():
    async def run():
        app = App()
        server, url = await _replica(app)
        pool = ChannelPool()
        try:
            exchange = await _send(pool, url, "/held", {})
            await exchange.answered()
            pieces: list[bytes] = []
            exchange.relay(pieces.append)
            exchange.pause()
            app.go.set()
            for _ in range(50):
                await asyncio.sleep(0.01)
            assert pieces == [] and not exchange.ended.done()  # the END waits behind the held pieces
            exchange.resume()
            await asyncio.wait_for(exchange.ended, 5)
            assert b"".join(pieces) == b"012" and exchange.error is None
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_the_secret_guards_the_channel_like_the_http_endpoint():
    async def run():
        server, url = await _replica(RequireSecret(App(), "s3cret"))
        pool = ChannelPool()
        try:
            refused = await _send(pool, url, "/whole", {"tag": "x"})
            await refused.answered()
            assert refused.status == 401 and b"gateway" in await refused.body()
            allowed = await _send(pool, url, "/whole", {"tag": "x"},
                                  {"content-type": "application/json", "authorization": "Bearer s3cret"})
            await allowed.answered()
            assert allowed.status == 200
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_a_replica_that_is_gone_or_speaks_nonsense_fails_its_requests_cleanly():
    async def run():
        sock = _listener()
        port = sock.getsockname()[1]
        sock.close()
        pool = ChannelPool()
        with pytest.raises(Refused):
            await _send(pool, f"chan://127.0.0.1:{port}", "/whole", {})

        async def nonsense(reader, writer):
            await reader.read(1)
            writer.write(b"HTTP/1.1 200 OK\r\n\r\n")  # not a frame: its size field is far beyond any frame
            await writer.drain()

        server = await asyncio.start_server(nonsense, "127.0.0.1", 0)
        url = f"chan://127.0.0.1:{server.sockets[0].getsockname()[1]}"
        try:
            exchange = await _send(pool, url, "/whole", {})
            with pytest.raises(Malformed):
                await asyncio.wait_for(exchange.answered(), 5)
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_the_replica_closes_a_connection_that_sends_what_is_not_a_request():
    async def run():
        server, url = await _replica(App())
        port = int(url.rsplit(":", 1)[1])
        try:
            for garbage in (b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n\r\n",  # its size field: ~1.3 GB
                            frame(1, START, b"{}"),  # a replica's frame, sent to a replica
                            frame(1, REQUEST, HEAD_LEN.pack(5) + b"notjs")):  # a request whose head is not JSON
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(garbage)
                try:
                    assert await asyncio.wait_for(reader.read(), 5) == b""
                except ConnectionResetError:
                    pass
                writer.close()
        finally:
            server.close()

    asyncio.run(run())


def test_a_request_beyond_the_connections_limit_is_answered_503_and_the_others_go_on(monkeypatch):
    monkeypatch.setattr(served, "MAX_REQUESTS", 2)

    async def run():
        app = App()
        server, url = await _replica(app)
        pool = ChannelPool()
        try:
            waiting = [await _send(pool, url, "/wait", {}) for _ in range(2)]
            for exchange in waiting:
                await exchange.answered()
            over = await _send(pool, url, "/whole", {"tag": "late"})
            await over.answered()
            assert over.status == 503 and b"too many requests" in await over.body()
            assert all(exchange.status == 200 and not exchange.ended.done() for exchange in waiting)
            waiting[0].abort()
            await asyncio.wait_for(app.release.wait(), 5)
            for _ in range(100):
                if len(app.left) == 1:
                    break
                await asyncio.sleep(0.01)
            again = await _send(pool, url, "/whole", {"tag": "again"})  # room again: served
            await again.answered()
            assert again.status == 200
        finally:
            pool.close()
            server.close()

    asyncio.run(run())


def test_frames_split_anywhere_across_reads_arrive_whole():
    from reconciler.gateway.channel import _Channel

    async def run():
        stream = (frame(7, START, start_payload(200, [["content-type", "text/event-stream"]]))
                  + b"".join(frame(7, BODY, b"data: %d\n\n" % k) for k in range(5)) + frame(7, END))
        for cut in range(1, 12):
            channel = _Channel(ChannelPool(), ("127.0.0.1", 0))
            exchange = channel.exchanges[7] = ChannelExchange(channel, asyncio.get_running_loop(), 7)
            pieces: list[bytes] = []
            exchange.relay(pieces.append)
            for at in range(0, len(stream), cut):
                channel.data_received(stream[at:at + cut])
            assert exchange.status == 200 and exchange.headers["content-type"] == "text/event-stream"
            assert exchange.ended.done() and exchange.error is None
            assert b"".join(pieces) == b"".join(b"data: %d\n\n" % k for k in range(5)), cut

    asyncio.run(run())
