"""A streamed answer relayed to its client: each chunk from the replica goes through the usage tap and straight to the
client's socket, in the callback that read it (no task switch per token chunk).

The answer's header went out through aiohttp (``StreamResponse``, chunked); the chunks are framed here the same way,
and aiohttp writes the last one. A client that stops reading is not written to without bound: once its socket holds
``SLOW_CLIENT_BYTES`` unsent, reading from the replica pauses until it drains, for at most the stream gap, and then
both connections are dropped.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from reconciler.gateway.usage import StreamTap
from reconciler.gateway.wire import Exchange

SLOW_CLIENT_BYTES = 1 << 16  # asyncio's own high-water mark for a transport's write buffer
DRAIN_POLL_S = 0.01  # how often a slow client's socket is looked at (only while one is slow)


class StreamRelay:
    __slots__ = ("_client", "tap", "_exchange", "_first", "slow", "gone", "_wake")

    def __init__(self, client: asyncio.Transport | None, tap: StreamTap, exchange: Exchange,
                 on_first: Callable[[], None]) -> None:
        self._client = client
        self.tap = tap
        self._exchange = exchange
        self._first: Callable[[], None] | None = on_first
        self.slow = False  # the client's socket is full: reading from the replica is paused
        self.gone = False  # the client's socket closed
        self._wake: asyncio.Future[None] | None = None

    def feed(self, chunk: bytes) -> None:
        """The exchange's sink: a chunk of the replica's stream."""
        out = self.tap.feed(chunk)
        if out:
            self.write(out)

    def write(self, out: bytes) -> None:
        client = self._client
        if client is None or client.is_closing():
            self.gone = True
            self._exchange.pause()
            self._signal()
            return
        client.write(b"%x\r\n%b\r\n" % (len(out), out))
        if self._first is not None:
            first, self._first = self._first, None
            first()
        if client.get_write_buffer_size() > SLOW_CLIENT_BYTES:
            self.slow = True
            self._exchange.pause()
            self._signal()

    async def wait(self, seconds: float) -> None:
        """Until the stream ended, the client turned slow or left, or ``seconds`` passed."""
        loop = asyncio.get_running_loop()
        self._wake = loop.create_future()
        try:
            await asyncio.wait((self._exchange.ended, self._wake), timeout=seconds,
                               return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._wake = None

    async def drained(self, within: float) -> bool:
        """Whether a slow client's socket drained within ``within`` seconds (reading from the replica resumes)."""
        client = self._client
        try:
            async with asyncio.timeout(within):
                while client is not None and not client.is_closing() \
                        and client.get_write_buffer_size() > SLOW_CLIENT_BYTES:
                    await asyncio.sleep(DRAIN_POLL_S)
        except TimeoutError:
            return False
        self.slow = False
        self._exchange.resume()
        return True

    def _signal(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)
