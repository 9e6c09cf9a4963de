"""The gateway's HTTP/1.1 client for replicas: kept-alive connections per replica, an answer's body handed on as it
arrives, parsed by httptools (llhttp, the parser uvicorn serves replicas with).

Why not aiohttp's client: relaying a stream through it costs, per token chunk, a StreamReader, a task switch to the
reading coroutine and a timer rescheduled for the read timeout. Here the parser's body callback hands each chunk to
the relay's ``sink`` at once, in the same callback that read it, and the gap between chunks is checked by one timer
per stream that re-arms itself only when it fires. On 2 cores shared with the engine that is a measurable share of a
streamed request (``bench/gateway.py``).

What the caller learns of a failure is where it happened: ``Refused`` (the connection could not be opened: the
request was never written), ``Closed`` (the replica closed or reset the connection; ``answered`` says whether its
answer's header had arrived) or ``Malformed`` (not HTTP). Waits are bounded by the caller.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from urllib.parse import urlsplit

import httptools

IDLE_S = 30.0  # a kept-alive connection unused this long is closed rather than reused (replicas keep theirs 75 s)
IDLE_PER_REPLICA = 256  # kept-alive connections kept per replica, at most
ADDRESSES_KEPT = 4096  # parsed replica addresses cached, at most
HEADER_BYTES = 64 << 10  # an answer's header beyond this is not HTTP from a replica (aiohttp's bound is 8 KiB a line)

Sink = Callable[[bytes], None]


class WireError(Exception):
    pass


class Refused(WireError):
    """The connection could not be opened: the replica never saw the request."""


class Closed(WireError):
    def __init__(self, *, answered: bool) -> None:
        super().__init__("closed after the answer's header" if answered else "closed before an answer")
        self.answered = answered


class Malformed(WireError):
    pass


class Exchange:
    """One request and its answer on one connection."""

    __slots__ = ("_conn", "status", "headers", "_chunks", "_sink", "_answered", "_done", "error", "complete",
                 "last_chunk", "_until_eof")

    def __init__(self, conn: "_Connection", loop: asyncio.AbstractEventLoop) -> None:
        self._conn = conn
        self.status = 0
        self.headers: dict[str, str] = {}
        self._chunks: list[bytes] = []
        self._sink: Sink | None = None
        self._answered: asyncio.Future[None] = loop.create_future()
        self._done: asyncio.Future[None] = loop.create_future()
        self.error: WireError | None = None
        self.complete = False
        self.last_chunk = 0.0  # time.monotonic() of the latest body bytes (for a stream's gap)
        self._until_eof = False  # a body with neither a length nor chunks: it ends when the connection does

    # ------------------------------------------------------------------------------------------------- the caller

    async def answered(self) -> None:
        """Until the answer's status and header arrived; raises the connection's failure before then."""
        await self._answered
        if not self.status:
            assert self.error is not None
            raise self.error

    async def body(self) -> bytes:
        """The whole body, once it ended; raises the connection's failure."""
        await self._done
        if self.error is not None:
            raise self.error
        return b"".join(self._chunks)

    def relay(self, sink: Sink) -> None:
        """Hand the body to ``sink`` from now on, chunk by chunk as it arrives (what came before first)."""
        chunks, self._chunks = self._chunks, []
        for chunk in chunks:
            sink(chunk)
        self._sink = sink

    @property
    def ended(self) -> asyncio.Future[None]:
        """Done when the body ended or the connection failed (then ``error`` says how)."""
        return self._done

    def pause(self) -> None:
        transport = self._conn.transport
        if not self.complete and transport is not None and not transport.is_closing():  # a pooled one is not ours
            transport.pause_reading()

    def resume(self) -> None:
        """Read again after ``pause``; the gap since the last chunk restarts (the replica was not the one waiting)."""
        transport = self._conn.transport
        if not self.complete and transport is not None and not transport.is_closing():  # a pooled one is not ours
            self.last_chunk = time.monotonic()
            transport.resume_reading()

    def abort(self) -> None:
        """Drop the connection: the replica sees the request end (and its engine aborts it)."""
        if not self.complete:
            self._conn.close()

    # --------------------------------------------------------------------------------------------- the connection

    def _header_done(self, status: int, headers: dict[str, str]) -> None:
        self.status, self.headers = status, headers
        self.last_chunk = time.monotonic()  # a stream's first gap runs from its header
        self._until_eof = "content-length" not in headers and "chunked" not in headers.get("transfer-encoding", "")
        if not self._answered.done():
            self._answered.set_result(None)

    def _chunk(self, chunk: bytes) -> None:
        self.last_chunk = time.monotonic()
        sink = self._sink
        if sink is None:
            self._chunks.append(chunk)
        else:
            sink(chunk)

    def _end(self) -> None:
        self.complete = True
        if not self._done.done():
            self._done.set_result(None)

    def _fail(self, error: WireError) -> None:
        if self.complete:
            return
        if isinstance(error, Closed) and error.answered and self._until_eof:
            self._end()  # the body was meant to end with the connection
            return
        self.error = error
        for waiter in (self._answered, self._done):
            if not waiter.done():
                waiter.set_result(None)


class _Connection(asyncio.Protocol):
    __slots__ = ("pool", "key", "transport", "parser", "exchange", "_headers", "_header_bytes", "idle_since",
                 "closed")

    def __init__(self, pool: "Pool", key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.exchange: Exchange | None = None
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self.idle_since = 0.0
        self.closed = False

    # asyncio's protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        if self.exchange is None:  # nothing was asked: a replica talking out of turn is not to be trusted
            self.close()
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            exchange, self.exchange = self.exchange, None
            if exchange is not None:
                exchange._fail(Malformed("not an HTTP answer"))
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        exchange, self.exchange = self.exchange, None
        if exchange is not None:
            exchange._fail(Closed(answered=exchange.status != 0))

    # httptools' callbacks

    def on_message_begin(self) -> None:
        self._headers = {}
        self._header_bytes = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > HEADER_BYTES:
            raise Malformed("an answer's header too large")  # the parser stops: the connection fails as malformed
        self._headers[name.decode("latin-1").lower()] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        if self.exchange is not None:
            self.exchange._header_done(self.parser.get_status_code(), self._headers)

    def on_body(self, body: bytes) -> None:
        if self.exchange is not None:
            self.exchange._chunk(body)

    def on_message_complete(self) -> None:
        exchange, self.exchange = self.exchange, None
        if exchange is None:
            return
        keep = self.parser.should_keep_alive()
        exchange._end()
        if keep and not self.closed:
            self.pool._release(self)
        else:
            self.close()

    # ours

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class Pool:
    """Kept-alive connections to replicas, by address."""

    def __init__(self) -> None:
        self._idle: dict[tuple[str, int], list[_Connection]] = {}
        self._addresses: dict[str, tuple[str, int, bytes]] = {}

    async def send(self, base: str, path: str, headers: dict[str, str], body: bytes, *,
                   connect_timeout: float) -> Exchange:
        """Write a POST of ``body`` to ``base + path`` on an idle or a new connection; the exchange to read it by."""
        host, port, host_header = self._address(base)
        conn = self._take((host, port))
        if conn is None:
            loop = asyncio.get_running_loop()
            try:
                async with asyncio.timeout(connect_timeout):
                    _, conn = await loop.create_connection(lambda: _Connection(self, (host, port)), host, port)
            except (OSError, TimeoutError) as exc:
                raise Refused(type(exc).__name__) from None
        exchange = Exchange(conn, asyncio.get_running_loop())
        conn.exchange = exchange
        head = [b"POST ", path.encode(), b" HTTP/1.1\r\nHost: ", host_header,
                b"\r\nContent-Length: ", str(len(body)).encode(), b"\r\n"]
        for name, value in headers.items():
            head += (name.encode("latin-1"), b": ", value.encode("latin-1"), b"\r\n")
        head += (b"\r\n", body)
        assert conn.transport is not None
        conn.transport.write(b"".join(head))
        return exchange

    def close(self) -> None:
        for conns in self._idle.values():
            for conn in conns:
                conn.close()
        self._idle.clear()

    def _address(self, base: str) -> tuple[str, int, bytes]:
        found = self._addresses.get(base)
        if found is None:
            if len(self._addresses) >= ADDRESSES_KEPT:  # replicas come and go on new ports: the cache must not grow
                self._addresses.clear()
            parts = urlsplit(base)
            host, port = parts.hostname or "127.0.0.1", parts.port or 80
            found = self._addresses[base] = (host, port, parts.netloc.encode())
        return found

    def _take(self, key: tuple[str, int]) -> _Connection | None:
        conns = self._idle.get(key)
        now = time.monotonic()
        while conns:
            conn = conns.pop()
            transport = conn.transport
            if not conn.closed and transport is not None and not transport.is_closing() \
                    and now - conn.idle_since < IDLE_S:
                return conn
            conn.close()
        return None

    def _release(self, conn: _Connection) -> None:
        conns = self._idle.setdefault(conn.key, [])
        if len(conns) >= IDLE_PER_REPLICA:
            conn.close()
            return
        conn.idle_since = time.monotonic()
        conns.append(conn)

    def _forget(self, conn: _Connection) -> None:
        conns = self._idle.get(conn.key)
        if conns and conn in conns:
            conns.remove(conn)
