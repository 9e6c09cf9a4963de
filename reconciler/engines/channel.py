"""A replica's channel: many requests on one connection from the gateway, the answers' pieces written together.

Over HTTP/1.1 each request in flight holds a connection of its own, so every token of every stream is a write on the
replica and a read on the gateway: at 32 streams, 32 system calls on each side per engine step. Here the gateway
keeps one connection to the replica and tags each request with an id; the replica serves it with the same ASGI app
as its HTTP endpoint (vLLM's OpenAI app behind the secret check), and the frames of all answers produced in one turn
of the event loop go out in one write.

The wire format is `gateway.frames`. A connection that sends anything but requests and cancellations, or a frame
beyond ``MAX_FRAME``, is closed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from typing import Any

from reconciler.gateway.frames import (BODY, CANCEL, END, FRAME, HEAD_LEN, MAX_FRAME, REQUEST, RESET, START,
                                       start_payload)

MAX_REQUESTS = 4096  # requests in flight on one connection, at most; beyond, a request is answered 503
_BUSY = json.dumps({"error": {"message": "the replica has too many requests in flight; retry later",
                              "type": "ServiceUnavailableError", "param": None, "code": 503}}).encode()

log = logging.getLogger(__name__)


class _Served(asyncio.Protocol):
    """One gateway's connection: its requests, each run as a task of the app."""

    def __init__(self, app: Any, server: tuple[str, int]) -> None:
        self._app = app
        self._server = server
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._out: list[bytes] = []
        self._flush_soon = False
        self._left: dict[int, asyncio.Future[None]] = {}  # request id -> done when the gateway cancels it
        self._tasks: set[asyncio.Task] = set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for left in self._left.values():
            if not left.done():
                left.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        at = 0
        while len(buffer) - at >= FRAME.size:
            size, request, kind = FRAME.unpack_from(buffer, at)
            if size > MAX_FRAME:
                self._close()
                return
            end = at + FRAME.size + size
            if len(buffer) < end:
                break
            payload = bytes(buffer[at + FRAME.size:end])
            at = end
            if kind == REQUEST:
                if request in self._left or not self._start(request, payload):
                    self._close()
                    return
            elif kind == CANCEL:
                left = self._left.get(request)
                if left is not None and not left.done():
                    left.set_result(None)
            else:
                self._close()
                return
        del buffer[:at]

    def _start(self, request: int, payload: bytes) -> bool:
        try:
            (length,) = HEAD_LEN.unpack_from(payload)
            head = json.loads(payload[HEAD_LEN.size:HEAD_LEN.size + length])
            method, path = str(head["method"]), str(head["path"])
            headers = [(str(k).lower().encode("latin-1"), str(v).encode("latin-1")) for k, v in head["headers"]]
        except (struct.error, ValueError, KeyError, TypeError, UnicodeEncodeError):
            return False
        if len(self._left) >= MAX_REQUESTS:  # this one is refused; the others on the connection go on
            self._emit(request, START, start_payload(503, [["content-type", "application/json"]]))
            self._emit(request, BODY, _BUSY)
            self._emit(request, END)
            return True
        body = payload[HEAD_LEN.size + length:]
        left = asyncio.get_running_loop().create_future()
        self._left[request] = left
        path, _, query = path.partition("?")
        scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": path, "raw_path": path.encode(),
                 "query_string": query.encode(), "root_path": "", "headers": headers,
                 "client": ("gateway", 0), "server": self._server, "state": {}}
        task = asyncio.ensure_future(self._run(request, scope, body, left))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _run(self, request: int, scope: dict, body: bytes, left: asyncio.Future[None]) -> None:
        given = False
        ended = False

        async def receive() -> dict:
            nonlocal given
            if not given:
                given = True
                return {"type": "http.request", "body": body, "more_body": False}
            await asyncio.shield(left)
            return {"type": "http.disconnect"}

        async def send(message: dict) -> None:
            nonlocal ended
            if left.done():
                raise OSError("the gateway cancelled the request")  # what a server says to an app of a gone client
            kind = message["type"]
            if kind == "http.response.start":
                headers = [[k.decode("latin-1"), v.decode("latin-1")] for k, v in message.get("headers", ())]
                self._emit(request, START, start_payload(message["status"], headers))
            elif kind == "http.response.body":
                if message.get("body"):
                    self._emit(request, BODY, message["body"])
                if not message.get("more_body", False):
                    ended = True
                    self._emit(request, END)

        try:
            await self._app(scope, receive, send)
        except Exception:  # noqa: BLE001 - whatever the app raised, the gateway learns the answer broke
            if not left.done():
                log.exception("a request on the gateway's channel failed")
        finally:
            self._left.pop(request, None)
            if not ended and not left.done():
                self._emit(request, RESET)

    def _emit(self, request: int, kind: int, payload: bytes = b"") -> None:
        """Queue a frame; all queued in this turn of the loop go out in one write."""
        self._out.append(FRAME.pack(len(payload), request, kind))
        if payload:
            self._out.append(payload)
        if not self._flush_soon:
            self._flush_soon = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_soon = False
        out, self._out = self._out, []
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(b"".join(out))

    def _close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def serve(app: Any, sock: Any) -> asyncio.AbstractServer:
    """Serve ``app`` on the listening socket ``sock``."""
    loop = asyncio.get_running_loop()
    address = sock.getsockname()[:2]
    return await loop.create_server(lambda: _Served(app, address), sock=sock)
