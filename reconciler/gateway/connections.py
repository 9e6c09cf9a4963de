"""Client connections to the gateway: at most so many at once, headers within a time, answers taken within a time.

aiohttp's server bounds an idle keep-alive connection, but not one that trickles a request header a byte at a time
(slowloris), nor one that sends a request and never reads its answer: such a client would hold its connection, and
with enough of them every connection, forever. Here a connection whose request header is not complete
``header_timeout`` seconds after its first byte (or after it was opened) is closed; one whose socket stays full
(the transport paused writing: more than its high-water mark unsent) for ``write_timeout`` seconds is dropped, with
what it did not take; and connections beyond ``max_connections`` are answered 503 and closed at once.

This leans on two attributes of aiohttp's request handler (the parsed-message queue and the request-in-progress flag,
aiohttp 3.9 to 3.14); the hostile-client tests fail if a release changes them.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from reconciler.gateway.errors import too_many_connections


# What every answer's Server header says: aiohttp's own names itself, its version and Python's, which are nobody's
# business but the operator's.
SERVER = "reconciler"


def _overloaded_answer() -> bytes:
    error = too_many_connections()
    body = error.body()
    head = (f"HTTP/1.1 {error.status} Service Unavailable\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nRetry-After: {error.retry_after}\r\nConnection: close\r\n\r\n")
    return head.encode() + body


class _Handler(RequestHandler):
    """aiohttp's per-connection protocol with a deadline on request headers and one on a full socket."""

    header_timeout: float = 10.0
    write_timeout: float = 60.0
    max_connections: int = 4096

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._deadline: asyncio.TimerHandle | None = None
        self._stuck: asyncio.TimerHandle | None = None
        if len(self._manager.connections) > self.max_connections:  # type: ignore[union-attr]
            transport.write(_overloaded_answer())  # type: ignore[attr-defined]
            self.force_close()
            transport.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self._messages or self._request_in_progress:
            self._disarm()  # a whole header arrived: the body and the answer have their own limits
        elif self._deadline is None:
            self._arm()  # the first bytes of the next request on a kept-alive connection

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm()
        self._unstick()
        super().connection_lost(exc)

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        """aiohttp's answer to a request HTTP itself refused (a malformed request line, say), without its name."""
        response = super().handle_error(request, status, exc, message)
        response.headers["Server"] = SERVER
        return response

    def pause_writing(self) -> None:
        super().pause_writing()
        if getattr(self, "_stuck", None) is None:
            self._stuck = self._loop.call_later(self.write_timeout, self._drop)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._unstick()

    def _unstick(self) -> None:
        stuck = getattr(self, "_stuck", None)
        if stuck is not None:
            stuck.cancel()
            self._stuck = None

    def _drop(self) -> None:
        """The client's socket stayed full for ``write_timeout``: the connection goes, with what it did not take, and
        whatever waits to write to it gets ConnectionResetError. A close would first wait for the client to read what
        is buffered, in the transport and in the kernel: the socket lingers for none of it (a reset)."""
        self._stuck = None
        transport = self.transport
        if transport is not None:
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        self.force_close()

    def _arm(self) -> None:
        self._deadline = self._loop.call_later(self.header_timeout, self._late)

    def _disarm(self) -> None:
        deadline = getattr(self, "_deadline", None)
        if deadline is not None:
            deadline.cancel()
            self._deadline = None

    def _late(self) -> None:
        self._deadline = None
        if not self._messages and not self._request_in_progress:
            self.force_close()
            if self.transport is not None:
                self.transport.close()


class _Server(web.Server):
    handler_class: type[_Handler] = _Handler

    def __call__(self) -> RequestHandler:
        return self.handler_class(self, loop=self._loop, **self._kwargs)


class GuardedRunner(web.AppRunner):
    """An AppRunner whose connections have a header deadline, a deadline on a full socket and a cap on their
    number."""

    def __init__(self, app: web.Application, *, header_timeout: float, write_timeout: float, max_connections: int,
                 **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._handler_class = type("Handler", (_Handler,), {"header_timeout": header_timeout,
                                                             "write_timeout": write_timeout,
                                                             "max_connections": max_connections})

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        server.__class__ = type("Server", (_Server,), {"handler_class": self._handler_class})
        return server
