"""The exchange with replicas: resolving where each listens, sending a request, relaying its answer.

A request goes to the replica with the fewest requests in flight (``routing.choose``). How a failure ends is decided by
``retry.decide`` from where it happened: before the request was written it goes to the next replica; after, the
client gets an error in OpenAI's envelope (or an SSE error event once bytes went out), and nothing is retried.
A replica that failed is ejected (skipped while others answer) for ``EJECT_FOR_S``.

The gateway proves itself to replicas with the cluster's secret (``Authorization: Bearer``); replicas refuse anyone
else. It asks for an uncompressed answer and passes a ``Content-Encoding`` on if a replica compresses anyway. Each
request gets an id of the gateway's own: a client's ``X-Request-Id`` is echoed back to it, never used as the engine's
request id (an engine refuses or confuses duplicates).

Requests travel on the gateway's own HTTP/1.1 client (``wire``), kept-alive per replica; a stream's chunks go from the
replica's socket to the client's in the callback that read them (``relay``).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import zlib
from dataclasses import dataclass
from typing import Awaitable, Callable

from aiohttp import web

from reconciler.desired import ApiKey
from reconciler.gateway import errors, routing, wire
from reconciler.gateway.channel import ChannelPool
from reconciler.gateway.admission import HeldBytes
from reconciler.gateway.errors import GatewayError
from reconciler.gateway.observer import Observer
from reconciler.gateway.retry import Decision, Failure, Outcome, Stage, decide
from reconciler.gateway.relay import StreamRelay
from reconciler.gateway.usage import StreamTap, counts
from reconciler.settings import GatewayLimits

Resolver = Callable[[str], Awaitable[str]]

RESOLVE_TIMEOUT_S = 5.0  # a replica still starting may take a moment to say where it listens
EJECT_FOR_S = 2.0  # after a failure, other replicas go first for this long
RETRY_AFTER_S = 5
EVENT_STREAM = "text/event-stream"
ENGINE_STATE_HEADER = "x-engine-state"  # "dead" on a replica's 503 when its engine is gone: safe to retry elsewhere
COUNT_LIMIT = 16 << 20  # bytes of a compressed answer decompressed to read its usage, at most


@dataclass
class Call:
    """One request's bookkeeping: for the metrics and the key's token bucket."""

    started: float
    model: str = "-"
    key_name: str = "-"
    key: ApiKey | None = None
    status: int = 500
    prompt: int = 0
    completion: int = 0
    client_request_id: str | None = None


class _Failed(Exception):
    def __init__(self, stage: Stage, failure: Failure) -> None:
        super().__init__(f"{stage}: {failure}")
        self.stage = stage
        self.failure = failure


def _count_from(payload: bytes, encoding: str) -> tuple[int, int]:
    if not encoding or encoding == "identity":
        return counts(payload)
    try:
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        return counts(zlib.decompressobj(wbits).decompress(payload, COUNT_LIMIT))
    except zlib.error:
        return 0, 0


class Upstream:
    def __init__(self, resolve: Resolver, *, limits: GatewayLimits, secret: str | None, observer: Observer) -> None:
        self._resolve = resolve
        self.limits = limits
        self._secret = secret
        self.observer = observer
        self.urls: dict[str, str] = {}
        self._resolving: dict[str, asyncio.Future] = {}
        self.gone_until: dict[str, float] = {}
        self.in_flight: dict[str, int] = {}
        self._turn = itertools.count()
        self.pool = wire.Pool()
        self.channels = ChannelPool()  # replicas that offer a channel (``chan://``): one connection for all requests
        self.restarting: dict[str, int] = {}  # requests waiting for a model's replacement replica, by model
        self.restart_queue = 256  # the most of them per model; the gateway sets its queue_limit
        self.held_bytes = HeldBytes(limits.held_bytes)  # the gateway's own budget once it sets it (see send)
        # Request ids: this gateway's random prefix and a count, unique across gateways and restarts without a
        # call for randomness per request (uuid4 was a measurable share of a request's own work here).
        self._ids = itertools.count()
        self._id_prefix = os.urandom(8).hex()

    async def close(self) -> None:
        self.pool.close()
        self.channels.close()

    def forget_apps(self, known: set[str]) -> list[str]:
        """Drop what is known of replicas that left the table; the ones dropped."""
        left = [a for a in set(self.urls) | set(self.in_flight) | set(self.gone_until) if a not in known]
        for app in left:
            self.urls.pop(app, None)  # its port may be someone else's soon
            self.gone_until.pop(app, None)
            if not self.in_flight.get(app):
                self.in_flight.pop(app, None)
        return left

    # ----------------------------------------------------------------------------------------------------- send

    async def send(self, request: web.Request, *, model: str, backends: tuple[str, ...], path: str, raw: bytes,
                   stream: bool, strip_usage: bool, call: Call,
                   current: Callable[[], tuple[str, ...]] | None = None) -> web.StreamResponse | GatewayError:
        """Send to a replica of ``model``. When every replica failed before taking the request (restarting: their
        ports refuse, their engines say they are dead), wait for a replacement up to ``restart_hold`` seconds,
        asking ``current()`` for the model's replicas again, instead of failing at once. From its first wait until a
        replica answers, the request's body counts against the budget for held bodies (``held_bytes``, shared with
        the on-demand holds); a request that finds it spent gets the 503 at once."""
        held = 0  # bytes of the held-body budget this request holds: from its first wait to a replica's answer

        def release() -> None:
            nonlocal held
            if held:
                self.held_bytes.give(held)
                held = 0

        tried: set[str] = set()
        turn = next(self._turn)
        deadline = time.monotonic() + self.limits.restart_hold
        pause = 0.1
        try:
            while True:
                now = time.monotonic()
                gone = {b for b in backends if self.gone_until.get(b, 0) > now}
                app = routing.choose(backends, in_flight=self.in_flight, tried=tried, gone=gone, turn=turn)
                if app is None:
                    if now + pause >= deadline or self.restarting.get(model, 0) >= self.restart_queue:
                        return errors.replicas_failed(model, RETRY_AFTER_S)
                    if not held:  # a waiting request's body counts against the budget for held bodies
                        if not self.held_bytes.take(len(raw)):
                            return errors.replicas_failed(model, RETRY_AFTER_S)
                        held = len(raw)
                    self.restarting[model] = self.restarting.get(model, 0) + 1
                    try:
                        await asyncio.sleep(pause)
                    finally:
                        self.restarting[model] -= 1
                    pause = min(1.0, pause * 2)
                    tried.clear()
                    if current is not None:
                        backends = current() or backends
                    continue
                tried.add(app)
                self.in_flight[app] = self.in_flight.get(app, 0) + 1
                try:
                    return await self._try(request, app=app, model=model, path=path, raw=raw, stream=stream,
                                           strip_usage=strip_usage, call=call, answered=release)
                except _Failed as failed:
                    decision = decide(failed.stage, failed.failure)
                    if decision.eject:
                        self._eject(app)
                    if decision.outcome is not Outcome.NEXT_REPLICA:
                        return self._error(decision, model)
                except _Opaque as opaque:
                    self._eject(app)
                    return errors.upstream_status(model, opaque.status)
                finally:
                    self.in_flight[app] -= 1
        finally:
            release()

    def _error(self, decision: Decision, model: str) -> GatewayError:
        if decision.outcome is Outcome.GATEWAY_TIMEOUT:
            return errors.gateway_timeout(model, self.limits.answer_timeout)
        return errors.bad_gateway(model)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept-Encoding": "identity",
                   "X-Request-Id": f"{self._id_prefix}-{next(self._ids)}"}
        if self._secret:
            headers["Authorization"] = f"Bearer {self._secret}"
        return headers

    async def _try(self, request: web.Request, *, app: str, model: str, path: str, raw: bytes, stream: bool,
                   strip_usage: bool, call: Call, answered: Callable[[], None]) -> web.StreamResponse:
        url = await self._url(app)
        limits = self.limits
        try:
            pool = self.channels if url.startswith("chan:") else self.pool
            exchange = await pool.send(url, path, self._headers(), raw, connect_timeout=limits.upstream_connect)
        except wire.Refused:
            raise _Failed(Stage.CONNECTING, Failure.REFUSED) from None
        # A stream's header, like each of its chunks, within stream_gap; a whole answer within answer_timeout.
        deadline = time.monotonic() + (limits.stream_gap if stream else limits.answer_timeout)
        try:
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    await exchange.answered()
            except TimeoutError:
                raise _Failed(Stage.WAITING, Failure.TIMEOUT) from None
            except wire.WireError:
                raise _Failed(Stage.WAITING, Failure.RESET) from None
            status, upstream = exchange.status, exchange.headers
            if status == 503 and upstream.get(ENGINE_STATE_HEADER) == "dead":
                raise _Failed(Stage.WAITING, Failure.ENGINE_DEAD)
            answered()  # a replica took the request: it is no longer held
            content_type = upstream.get("content-type", "application/json")
            headers = {"Content-Type": content_type}
            encoding = upstream.get("content-encoding", "")
            if encoding:
                headers["Content-Encoding"] = encoding
            if call.client_request_id:
                headers["X-Request-Id"] = call.client_request_id
            if content_type.startswith(EVENT_STREAM):
                return await self._relay(request, exchange, status, headers, call, app=app,
                                         strip_usage=strip_usage and not encoding)
            if stream:
                deadline = time.monotonic() + limits.answer_timeout
            try:
                async with asyncio.timeout(deadline - time.monotonic()):
                    payload = await exchange.body()
            except TimeoutError:
                raise _Failed(Stage.READING, Failure.TIMEOUT) from None
            except wire.WireError:
                raise _Failed(Stage.READING, Failure.TRUNCATED) from None
            if status >= 500 and not _is_envelope(payload, encoding):
                raise _Opaque(status)
            if status == 200:
                call.prompt, call.completion = _count_from(payload, encoding)
            return web.Response(body=payload, status=status, headers=headers)
        except BaseException:
            # Cancelled (the client left) or failed: drop the connection, so the replica sees the request end and
            # the engine aborts it rather than generating for nobody.
            exchange.abort()
            raise

    async def _relay(self, request: web.Request, exchange: wire.Exchange, status: int, headers: dict[str, str],
                     call: Call, *, app: str, strip_usage: bool) -> web.StreamResponse:
        response = web.StreamResponse(status=status, headers={**headers, "Cache-Control": "no-cache"})
        await response.prepare(request)
        await response.write(b"")  # the header goes out now: the chunks follow straight to the client's socket
        observer = self.observer
        relay = StreamRelay(request.transport, StreamTap(strip=strip_usage), exchange, on_first=lambda: (
            observer.first_token(model=call.model, key=call.key_name, seconds=time.monotonic() - call.started)))
        exchange.relay(relay.feed)
        gap = self.limits.stream_gap
        failure: Failure | None = None
        while not exchange.ended.done():
            if relay.gone:  # the client left: its handler is being cancelled
                exchange.abort()
                return response
            if relay.slow:
                if not await relay.drained(gap):  # a client that stopped reading is let go, like a silent engine
                    if request.transport is not None:
                        request.transport.close()
                    exchange.abort()
                    return response
                continue
            left = exchange.last_chunk + gap - time.monotonic()
            if left <= 0:
                failure = Failure.TIMEOUT
                break
            await relay.wait(left)
        if failure is None and exchange.error is not None:
            failure = Failure.TRUNCATED
        tap = relay.tap
        if failure is not None:
            # Bytes went out already: the client gets the failure in the stream, as vLLM reports its own.
            exchange.abort()
            if decide(Stage.STREAMING, failure).eject:
                self._eject(app)
            relay.write(errors.upstream_broke(call.model).sse() + b"data: [DONE]\n\n")
        elif rest := tap.rest():
            relay.write(rest)
        call.prompt, call.completion = tap.prompt, tap.completion
        try:
            await response.write_eof()
        except ConnectionResetError:
            # The client closed once it had the last event it needed (the openai SDK closes at `data: [DONE]`):
            # the stream was delivered, only the chunked encoding's terminator found the socket closing.
            pass
        return response

    # ----------------------------------------------------------------------------------------------- resolution

    async def _url(self, app: str) -> str:
        url = self.urls.get(app)
        if url is not None:
            return url
        pending = self._resolving.get(app)
        if pending is None:
            pending = asyncio.ensure_future(asyncio.wait_for(self._resolve(app), RESOLVE_TIMEOUT_S))
            self._resolving[app] = pending
            pending.add_done_callback(lambda _: self._resolving.pop(app, None))
        try:
            url = (await asyncio.shield(pending)).rstrip("/")
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - any failure to learn the address means the request was not sent
            raise _Failed(Stage.RESOLVING, Failure.UNKNOWN_ENDPOINT) from None
        self.urls[app] = url
        self.gone_until.pop(app, None)
        return url

    def _eject(self, app: str) -> None:
        self.urls.pop(app, None)  # Serve may have restarted it on another port: ask again next time
        self.gone_until[app] = time.monotonic() + EJECT_FOR_S


class _Opaque(Exception):
    """A replica's 5xx whose body is not OpenAI's envelope (a traceback, a framework's text)."""

    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


def _is_envelope(payload: bytes, encoding: str) -> bool:
    if encoding and encoding != "identity":
        return False
    head = payload[:64].lstrip()
    return head.startswith(b"{") and b'"error"' in head
