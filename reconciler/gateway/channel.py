"""The gateway's side of a replica's channel (``engines/channel.py``): one connection per replica for all requests.

Each request is an ``Exchange`` like one on its own HTTP/1.1 connection (``wire``), so the rest of the gateway does
not tell them apart: its answer's pieces go to the relay's sink in the callback that read them, and a failure says
where it happened (``Refused``: the connection could not be opened; ``Closed``: it broke, before or after the
answer's start). Since the connection is shared, a stream whose client reads slowly is not paused by pausing the
socket: its pieces wait in the exchange until the client drains (the relay bounds that wait), and a cancelled
request is ended with a ``CANCEL`` frame, not by closing the connection.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from urllib.parse import urlsplit

from reconciler.gateway.frames import BODY, CANCEL, END, FRAME, IDS, MAX_FRAME, RESET, START, frame, request_frame
from reconciler.gateway.wire import ADDRESSES_KEPT, Closed, Exchange, Malformed, Refused


class ChannelExchange(Exchange):
    __slots__ = ("_request", "_held", "_sink_after", "_end_held")

    def __init__(self, conn: "_Channel", loop: asyncio.AbstractEventLoop, request: int) -> None:
        super().__init__(conn, loop)  # type: ignore[arg-type]
        self._request = request
        self._held: list[bytes] | None = None  # while paused: the pieces that wait for a slow client
        self._sink_after = None  # while paused: where the pieces go once it drains
        self._end_held = False

    def _header_done(self, status: int, headers: dict[str, str]) -> None:
        super()._header_done(status, headers)
        self._until_eof = False  # the END frame ends a body, never the connection

    def pause(self) -> None:
        # The connection is shared, so its socket is not paused: the pieces go to a list instead of the sink.
        if self._held is None:
            self._held, self._sink_after = [], self._sink
            self._sink = self._held.append

    def resume(self) -> None:
        if self._held is None:
            return
        held, self._held, self._sink = self._held, None, self._sink_after
        self.last_chunk = time.monotonic()  # the gap restarts: the replica was not the one waiting
        for chunk in held:
            self._chunk(chunk)
        if self._end_held:
            self._end_held = False
            super()._end()

    def _end(self) -> None:
        if self._held is not None:  # the pieces held for a slow client go out before the stream ends
            self._end_held = True
            return
        super()._end()

    def abort(self) -> None:
        if not self.complete:
            self._conn.cancel(self._request)  # type: ignore[attr-defined]


class _Channel(asyncio.Protocol):
    def __init__(self, pool: "ChannelPool", key: tuple[str, int]) -> None:
        self.pool = pool
        self.key = key
        self.transport: asyncio.Transport | None = None
        self.exchanges: dict[int, ChannelExchange] = {}
        self._ids = itertools.count(1)
        self._buffer = bytearray()
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._forget(self)
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            exchange._fail(Closed(answered=exchange.status != 0))

    def data_received(self, data: bytes) -> None:
        # Most reads hold whole frames: they are read from `data` itself, and only a part left over is kept.
        if self._buffer:
            self._buffer += data
            buffer: bytes | bytearray = self._buffer
        else:
            buffer = data
        at = 0
        head = FRAME.size
        while len(buffer) - at >= head:
            size, request, kind = FRAME.unpack_from(buffer, at)
            if size > MAX_FRAME:
                self._malformed()
                return
            end = at + head + size
            if len(buffer) < end:
                break
            exchange = self.exchanges.get(request)
            if exchange is not None:  # else cancelled: what was on its way is dropped
                if kind == BODY:
                    exchange._chunk(bytes(buffer[at + head:end]))
                elif kind == START:
                    try:
                        start = json.loads(buffer[at + head:end])
                        headers = {str(k).lower(): str(v) for k, v in start["headers"]}
                        status = int(start["status"])
                    except (ValueError, KeyError, TypeError):
                        self._malformed()
                        return
                    exchange._header_done(status, headers)
                elif kind == END:
                    del self.exchanges[request]
                    exchange._end()
                elif kind == RESET:
                    del self.exchanges[request]
                    exchange._fail(Closed(answered=exchange.status != 0))
                else:
                    self._malformed()
                    return
            at = end
        if buffer is data:
            if at < len(data):
                self._buffer += data[at:]
        else:
            del self._buffer[:at]

    def send(self, path: str, headers: dict[str, str], body: bytes) -> ChannelExchange:
        request = next(self._ids) % IDS
        while request in self.exchanges:  # after 2^32 requests on one connection, ids come round again
            request = next(self._ids) % IDS
        exchange = ChannelExchange(self, asyncio.get_running_loop(), request)
        self.exchanges[request] = exchange
        assert self.transport is not None
        self.transport.write(request_frame(request, "POST", path, list(headers.items()), body))
        return exchange

    def cancel(self, request: int) -> None:
        exchange = self.exchanges.pop(request, None)
        if exchange is not None:
            exchange._fail(Closed(answered=exchange.status != 0))
            if self.transport is not None and not self.transport.is_closing():
                self.transport.write(frame(request, CANCEL))

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def _malformed(self) -> None:
        exchanges, self.exchanges = self.exchanges, {}
        for exchange in exchanges.values():
            exchange._fail(Malformed("not a channel frame"))
        self.close()


class ChannelPool:
    """One channel per replica address (``chan://host:port``), opened on first use."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, int], _Channel] = {}
        self._opening: dict[tuple[str, int], asyncio.Future[_Channel]] = {}
        self._keys: dict[str, tuple[str, int]] = {}

    async def send(self, base: str, path: str, headers: dict[str, str], body: bytes, *,
                   connect_timeout: float) -> Exchange:
        key = self._keys.get(base)
        if key is None:
            if len(self._keys) >= ADDRESSES_KEPT:  # replicas come and go on new ports: the cache must not grow
                self._keys.clear()
            parts = urlsplit(base)
            key = self._keys[base] = (parts.hostname or "127.0.0.1", parts.port or 0)
        channel = self._open.get(key)
        if channel is None or channel.closed or channel.transport is None or channel.transport.is_closing():
            channel = await self._connect(key, connect_timeout)
        return channel.send(path, headers, body)

    async def _connect(self, key: tuple[str, int], timeout: float) -> _Channel:
        pending = self._opening.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._dial(key, timeout))
            self._opening[key] = pending
            pending.add_done_callback(lambda _: self._opening.pop(key, None))
        return await asyncio.shield(pending)

    async def _dial(self, key: tuple[str, int], timeout: float) -> _Channel:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(timeout):
                _, channel = await loop.create_connection(lambda: _Channel(self, key), *key)
        except (OSError, TimeoutError) as exc:
            raise Refused(type(exc).__name__) from None
        self._open[key] = channel
        return channel

    def _forget(self, channel: _Channel) -> None:
        if self._open.get(channel.key) is channel:
            del self._open[channel.key]

    def close(self) -> None:
        for channel in list(self._open.values()):
            channel.close()
        self._open.clear()
