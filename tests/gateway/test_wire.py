"""The gateway's HTTP/1.1 client against raw servers on 127.0.0.1: what it reads, what it reuses, how each failure is
reported. The servers write bytes by hand, so framing the client must handle (chunks split anywhere, a body that ends
with its connection) is what it gets."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import pytest

from reconciler.gateway import wire

Behave = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _read_request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                  if line.lower().startswith(b"content-length"))
    return head + await reader.readexactly(length)


def _run(behave: Behave, test: Callable[[str, list[bytes], list[int]], Awaitable[None]]) -> None:
    """``test(base_url, requests_seen, connections_opened)`` against a server that runs ``behave`` per connection."""
    seen: list[bytes] = []
    opened: list[int] = []

    async def main() -> None:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            opened.append(1)
            try:
                await behave(reader, writer, seen)  # type: ignore[call-arg]
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(serve, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            await asyncio.wait_for(test(f"http://127.0.0.1:{port}", seen, opened), 10)
        finally:
            server.close()

    asyncio.run(main())


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%b\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _answer_once(answer: bytes, *, then_close: bool) -> Behave:
    """A server that reads one request, writes ``answer``, then closes the connection or waits for the client's."""
    async def behave(reader, writer, seen):
        seen.append(await _read_request(reader))
        writer.write(answer)
        await writer.drain()
        if not then_close:
            await reader.read()

    return behave  # type: ignore[return-value]


async def _keep_alive_json(reader, writer, seen):
    while True:
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{\"ok\": 1.0}")
        await writer.drain()


def test_answers_are_read_whole_and_the_connection_is_kept_for_the_next_request():
    async def test(base, seen, opened):
        pool = wire.Pool()
        for n in range(3):
            exchange = await pool.send(base, "/v1/chat/completions", {"X-Request-Id": f"r{n}"}, b'{"a": 1}',
                                       connect_timeout=1)
            await exchange.answered()
            assert (exchange.status, exchange.headers["content-type"]) == (200, "application/json")
            assert await exchange.body() == b'{"ok": 1.0}'
        assert len(opened) == 1  # kept alive
        assert seen[0].startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
        assert b"\r\nX-Request-Id: r2\r\n" in seen[2] and seen[2].endswith(b'\r\n\r\n{"a": 1}')
        pool.close()

    _run(_keep_alive_json, test)


def test_a_stream_reaches_the_sink_chunk_by_chunk_however_the_bytes_are_split():
    events = [b"data: %d\n\n" % n for n in range(20)]
    wire_bytes = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n" + \
        _chunked(*events)

    async def trickle(reader, writer, seen):
        seen.append(await _read_request(reader))
        for at in range(0, len(wire_bytes), 7):  # split through headers, chunk sizes and CRLFs alike
            writer.write(wire_bytes[at:at + 7])
            await writer.drain()
            await asyncio.sleep(0)
        await reader.read()

    async def test(base, seen, opened):
        pool = wire.Pool()
        exchange = await pool.send(base, "/v1/chat/completions", {}, b"{}", connect_timeout=1)
        await exchange.answered()
        got: list[bytes] = []
        exchange.relay(got.append)
        await exchange.ended
        assert exchange.error is None and exchange.complete
        assert b"".join(got) == b"".join(events)
        pool.close()

    _run(trickle, test)


def test_a_body_without_length_or_chunks_ends_with_its_connection():
    until_close = _answer_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n"
                               b'{"whole": true}', then_close=True)

    async def test(base, seen, opened):
        pool = wire.Pool()
        exchange = await pool.send(base, "/x", {}, b"{}", connect_timeout=1)
        await exchange.answered()
        assert await exchange.body() == b'{"whole": true}'
        pool.close()

    _run(until_close, test)


def test_failures_say_whether_the_answer_had_begun():
    async def dies_after_reading(reader, writer, seen):
        seen.append(await _read_request(reader))  # read the request, answer nothing

    dies_mid_body = _answer_once(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
                                 b'{"par', then_close=True)
    garbage = _answer_once(b"SMTP ready\r\n\r\n", then_close=False)

    async def before_answer(base, seen, opened):
        exchange = await wire.Pool().send(base, "/x", {}, b"{}", connect_timeout=1)
        with pytest.raises(wire.Closed) as closed:
            await exchange.answered()
        assert not closed.value.answered

    async def mid_body(base, seen, opened):
        exchange = await wire.Pool().send(base, "/x", {}, b"{}", connect_timeout=1)
        await exchange.answered()
        with pytest.raises(wire.Closed) as closed:
            await exchange.body()
        assert closed.value.answered

    async def not_http(base, seen, opened):
        exchange = await wire.Pool().send(base, "/x", {}, b"{}", connect_timeout=1)
        with pytest.raises(wire.Malformed):
            await exchange.answered()

    _run(dies_after_reading, before_answer)
    _run(dies_mid_body, mid_body)
    _run(garbage, not_http)


def test_a_port_nobody_listens_on_is_refused_before_anything_is_written():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # bound, never listening: connecting is refused

        async def main() -> None:
            with pytest.raises(wire.Refused):
                await wire.Pool().send(f"http://127.0.0.1:{port}", "/x", {}, b"{}", connect_timeout=1)

        asyncio.run(main())


def test_a_connection_the_replica_closed_while_idle_is_not_reused():
    # The connection is closed after the answer, as a replica's idle timeout would.
    one_answer_then_close = _answer_once(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", then_close=True)

    async def test(base, seen, opened):
        pool = wire.Pool()
        for _ in range(2):
            exchange = await pool.send(base, "/x", {}, b"{}", connect_timeout=1)
            await exchange.answered()
            assert await exchange.body() == b"ok"
            while any(pool._idle.values()):  # until the replica's close reaches the client (bounded by _run)
                await asyncio.sleep(0.01)
        assert len(opened) == 2 and len(seen) == 2
        pool.close()

    _run(one_answer_then_close, test)


def test_an_aborted_exchange_closes_its_connection_and_is_never_reused():
    async def slow(reader, writer, seen):
        while True:
            seen.append(await _read_request(reader))
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n")
            await writer.drain()
            await asyncio.sleep(0.2)
            writer.write(_chunked(b"data: late\n\n"))
            await writer.drain()

    async def test(base, seen, opened):
        pool = wire.Pool()
        exchange = await pool.send(base, "/x", {}, b"{}", connect_timeout=1)
        await exchange.answered()
        exchange.abort()
        exchange = await pool.send(base, "/x", {}, b"{}", connect_timeout=1)
        await exchange.answered()
        await exchange.body()
        assert len(opened) == 2
        pool.close()

    _run(slow, test)


def test_an_answer_header_beyond_the_bound_fails_as_malformed():
    fillers = b"".join(b"X-Filler-%d: %b\r\n" % (n, b"f" * 1000) for n in range(wire.HEADER_BYTES // 1000 + 2))
    endless_header = _answer_once(b"HTTP/1.1 200 OK\r\n" + fillers + b"Content-Length: 0\r\n\r\n", then_close=False)

    async def test(base, seen, opened):
        exchange = await wire.Pool().send(base, "/x", {}, b"{}", connect_timeout=1)
        with pytest.raises(wire.Malformed):
            await exchange.answered()

    _run(endless_header, test)


def test_a_paused_exchange_reads_nothing_until_resumed_and_its_gap_restarts_then():
    paused = asyncio.Event()

    async def two_chunks(reader, writer, seen):
        seen.append(await _read_request(reader))
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n%b\r\n" % (len(b"data: 1\n\n"), b"data: 1\n\n"))
        await writer.drain()
        await paused.wait()  # the second chunk only once the client paused
        writer.write(_chunked(b"data: 2\n\n"))
        await writer.drain()
        await reader.read()

    async def test(base, seen, opened):
        exchange = await wire.Pool().send(base, "/x", {}, b"{}", connect_timeout=1)
        await exchange.answered()
        got: list[bytes] = []
        exchange.relay(got.append)
        while not got:
            await asyncio.sleep(0.01)
        exchange.pause()
        paused.set()
        await asyncio.sleep(0.3)  # the second chunk was sent meanwhile, and is not read
        assert got == [b"data: 1\n\n"] and not exchange.ended.done()
        before = time.monotonic()
        exchange.resume()
        assert exchange.last_chunk >= before  # the time paused is not the replica's silence
        await exchange.ended
        assert got == [b"data: 1\n\n", b"data: 2\n\n"] and exchange.error is None

    _run(two_chunks, test)
