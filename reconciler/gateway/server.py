"""The gateway's HTTP server (aiohttp): one base URL, requests routed by ``model`` to the replicas' own endpoints.

What it does per request: read the body, pick the model (``routing.pick_model``) and the replica with the fewest
requests in flight (``routing.choose``), forward the body unchanged to the replica's endpoint, and pass the answer
back: JSON whole, Server-Sent Events chunk by chunk as they arrive. A replica that can't be reached, or breaks off
before anything was sent to the client, is skipped and the next one tried; once bytes went out, a failure becomes an
error event in the stream. A client that disconnects cancels the handler, which closes the upstream connection, and
the engine aborts the request.

It knows replicas by their Serve application names (from the route table) and asks ``resolve(app)`` for each one's
endpoint URL when it first needs it, and again after the endpoint stopped answering (Serve may have restarted the
replica on another port). ``resolve`` is injected: the Ray side lives in the adapter.

On-demand models (a route with ``load_timeout``) that have no replica hold their requests instead of refusing them:
up to ``queue_limit`` per model wait (``hold.HoldQueue``) until a route table with replicas arrives, then go on as
any request, oldest first; past their loadTimeout they get 504. The first request held for a model wakes whoever
waits in ``wait_wake`` (the controller), and ``demand()`` reports each model's load (``demand.Meter``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import aiohttp
from aiohttp import web

from reconciler.desired import ApiKey
from reconciler.demand import ModelDemand
from reconciler.gateway import errors, keys, routing
from reconciler.gateway.demand import HISTORY_S, Meter
from reconciler.gateway.errors import GatewayError
from reconciler.gateway.hold import HoldQueue
from reconciler.gateway.limits import Limiter
from reconciler.gateway.observer import Observer, Silent
from reconciler.gateway.table import RUNNING, ModelRoute, RouteTable
from reconciler.settings import DEFAULTS

Resolver = Callable[[str], Awaitable[str]]

RESOLVE_TIMEOUT_S = 5.0  # a replica still starting may take a moment to say where it listens
GONE_FOR_S = 2.0  # after a failed connection, other replicas go first for this long
RETRY_AFTER_S = 5
CONNECT_TIMEOUT_S = 5.0
IN_FLIGHT_REPORT_S = 1.0
POST_ENDPOINTS = ("chat/completions", "completions", "embeddings")
# Answer headers worth passing on; hop-by-hop ones (length, encoding, connection) are aiohttp's to set.
PASS_HEADERS = ("Content-Type", "X-Request-Id")
EVENT_STREAM = "text/event-stream"
# Why a held request's model got no replica in time, by the model's state in the latest table.
NOT_LOADED = {
    "idle": "no replica was placed for it",
    "starting": "its replica was still starting",
    "unplaced": "no GPU has room for it at its priority",
    "stopped": "it is stopped",
}


@dataclass
class _Call:
    """One request's bookkeeping for the metrics."""

    started: float
    model: str = "-"
    key_name: str = "-"
    key: ApiKey | None = None
    status: int = 500
    prompt: int = 0
    completion: int = 0


class _Retry(Exception):
    """This replica did not take the request and nothing was sent to the client: try another."""


class Gateway:
    def __init__(self, resolve: Resolver, table: RouteTable | None = None, observer: Observer | None = None, *,
                 queue_limit: int = DEFAULTS.apply.gateway.queue_limit, history_s: int = HISTORY_S) -> None:
        self._resolve = resolve
        self.observer: Observer = observer or Silent()
        self.table = RouteTable()
        self._keys: dict[str, ApiKey] = {}
        self.limiter = Limiter()
        self.urls: dict[str, str] = {}
        self._resolving: dict[str, asyncio.Future] = {}
        self.gone_until: dict[str, float] = {}
        self.in_flight: dict[str, int] = {}
        self._turn = itertools.count()
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self._reporter: asyncio.Future | None = None
        self.queue_limit = queue_limit
        self._history_s = history_s
        self.holds: dict[str, HoldQueue] = {}
        self.meters: dict[str, Meter] = {}
        self._woken: set[str] = set()  # models whose first request was held since wait_wake last answered
        self._wake = asyncio.Event()
        self.set_table(table or RouteTable())

    # ------------------------------------------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 << 20)
        app.router.add_get("/v1/models", self.list_models)
        app.router.add_get("/v1/models/{id:.+}", self.get_model)
        app.router.add_post("/v1/{endpoint:.+}", self.forward)
        app.router.add_get("/healthz", self.healthz)
        return app

    async def start(self, host: str, port: int, *, advertise: str | None = None) -> str:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=None, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
            auto_decompress=False,
            skip_auto_headers=("User-Agent",),
        )
        # handler_cancellation: a client that goes away cancels its handler, so the upstream request is closed too.
        self._runner = web.AppRunner(self.app(), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        bound = self._runner.addresses[0][1] if port == 0 else port
        self._reporter = asyncio.ensure_future(self._report_in_flight())
        shown = advertise or host
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound}/v1"
        return self.url

    async def _report_in_flight(self) -> None:
        # Sampled, not per request: a gauge is read every scrape interval, and setting it twice per request cost
        # a measurable share of the gateway's CPU.
        while True:
            for model in self.table.models:
                for app in model.backends:
                    self.observer.in_flight(model=model.name, replica=app, count=self.in_flight.get(app, 0))
                if model.holds:
                    self.observer.queued(model=model.name, count=len(self.holds.get(model.name, ())))
            await asyncio.sleep(IN_FLIGHT_REPORT_S)

    async def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def set_table(self, table: RouteTable) -> None:
        self.table = table
        self._keys = {k.sha256: k for k in table.keys}
        known = {b for m in table.models for b in m.backends}
        for app in [a for a in self.urls if a not in known]:
            del self.urls[app]  # a replica that left the table: its port may be someone else's soon
        now = time.time()
        for model in table.models:  # a model's history starts when the gateway first hears of it
            if model.name not in self.meters:
                self.meters[model.name] = Meter(model.name, now=now, keep_s=self._history_s)
        for name in [n for n, m in self.meters.items() if m.idle and table.model(n) is None]:
            del self.meters[name]
        for name, queue in self.holds.items():
            if queue:
                outcome = self._held_outcome(name, table)
                if outcome is not None:
                    queue.release(outcome)

    @staticmethod
    def _held_outcome(name: str, table: RouteTable) -> ModelRoute | GatewayError | None:
        """What requests held for ``name`` do under a new table: go to its replicas, fail, or (None) keep waiting."""
        route = table.model(name)
        if route is None:
            return errors.unknown_model(name, table.names)
        if route.backends:
            return route
        if not route.holds:  # no longer on demand: answered as any model without a replica
            return errors.no_replica(name, route.state if route.state != RUNNING else "starting", RETRY_AFTER_S)
        return None

    # ---------------------------------------------------------------------------------------------------- demand

    def demand(self) -> list[ModelDemand]:
        """Every known model's demand on this gateway, by name."""
        now = time.time()
        return [meter.report(now=now, oldest_queued=self.holds[name].oldest if name in self.holds else None)
                for name, meter in sorted(self.meters.items())]

    async def wait_wake(self, timeout: float) -> list[str]:
        """The models with requests held, once a model's first request is held (at once if one was since the last
        answer); [] when ``timeout`` passes first. A cancelled wait reports nothing, so the next one still sees it."""
        deadline = time.monotonic() + timeout
        while not self._woken:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wake.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                return []
        woken, self._woken = self._woken, set()
        return sorted(woken | {name for name, queue in self.holds.items() if queue})

    def _meter(self, name: str) -> Meter:
        meter = self.meters.get(name)
        if meter is None:
            meter = self.meters[name] = Meter(name, now=time.time(), keep_s=self._history_s)
        return meter

    # ---------------------------------------------------------------------------------------------------- models

    def _model_object(self, m: ModelRoute) -> dict[str, Any]:
        now = time.monotonic()
        reachable = [b for b in m.backends if self.gone_until.get(b, 0) <= now]
        return {
            "id": m.name,
            "object": "model",
            "created": self.table.created,
            "owned_by": "reconciler",
            "state": m.state if m.state != RUNNING or reachable else "starting",
            "replicas": {"running": len(reachable), "desired": m.desired},
            "max_model_len": m.max_model_len,
            "route": m.route,
            "engine": m.engine,
        }

    def _caller(self, request: web.Request) -> ApiKey | GatewayError | None:
        """The key of the request (None when the gateway is open), or why it is refused."""
        if self.table.open:
            return None
        return keys.authenticate(self._keys, request.headers.get("Authorization"))

    async def list_models(self, request: web.Request) -> web.Response:
        key = self._caller(request)
        if isinstance(key, GatewayError):
            return _error(key)
        shown = [m for m in self.table.models if key is None or keys.may_use(key, m.name)]
        return web.json_response({"object": "list", "data": [self._model_object(m) for m in shown]})

    async def get_model(self, request: web.Request) -> web.Response:
        key = self._caller(request)
        if isinstance(key, GatewayError):
            return _error(key)
        name = request.match_info["id"]
        found = self.table.model(name)
        if found is None:
            return _error(errors.unknown_model(name, self.table.names))
        if key is not None and (denied := keys.authorize(key, name)) is not None:
            return _error(denied)
        return web.json_response(self._model_object(found))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"models": len(self.table.models)})

    # --------------------------------------------------------------------------------------------------- forward

    async def forward(self, request: web.Request) -> web.StreamResponse:
        call = _Call(started=time.monotonic())
        try:
            answer = await self._forward(request, call)
        except asyncio.CancelledError:
            call.status = 499  # the client went away (nginx's word for it): counted, then the cancel goes on
            raise
        else:
            call.status = answer.status
            return answer
        finally:
            self.observer.request(model=call.model, key=call.key_name, status=call.status,
                                  seconds=time.monotonic() - call.started)
            if call.prompt or call.completion:
                self.observer.tokens(model=call.model, key=call.key_name, prompt=call.prompt,
                                     completion=call.completion)

    async def _forward(self, request: web.Request, call: "_Call") -> web.StreamResponse:
        endpoint = request.match_info["endpoint"]
        if endpoint not in POST_ENDPOINTS:
            return _error(errors.no_route(request.path))
        key = self._caller(request)
        if isinstance(key, GatewayError):
            return _error(key)
        call.key, call.key_name = key, key.name if key is not None else "-"
        raw = await request.read()
        try:
            body = json.loads(raw)
        except ValueError as exc:
            return _error(errors.bad_body(str(exc)))
        if not isinstance(body, dict):
            return _error(errors.bad_body(f"got {type(body).__name__}"))
        model = routing.pick_model(self.table, body)
        if isinstance(model, GatewayError):
            return _error(model)
        call.model = model.name
        if body.get("model") != model.name:
            raw = json.dumps({**body, "model": model.name}).encode()
        if key is None:
            return await self._send(request, model, f"/v1/{endpoint}", raw, call)
        refused = keys.authorize(key, model.name) or self.limiter.admit(key, time.monotonic())
        if refused is not None:
            return _error(refused)
        try:
            return await self._send(request, model, f"/v1/{endpoint}", raw, call)
        finally:
            self.limiter.release(key)

    async def _send(self, request: web.Request, model: ModelRoute, path: str, raw: bytes,
                    call: "_Call") -> web.StreamResponse:
        meter = self._meter(model.name)
        began = time.time()
        meter.arrived(began)
        if not model.backends:
            if not model.holds:
                state = model.state if model.state != RUNNING else "starting"
                return _error(errors.no_replica(model.name, state, RETRY_AFTER_S))
            held = await self._hold(model, meter)
            if isinstance(held, GatewayError):
                return _error(held)
            model, began = held, time.time()
        meter.step(now=began, in_flight=1)
        try:
            tried: set[str] = set()
            reasons: list[str] = []
            turn = next(self._turn)
            while True:
                now = time.monotonic()
                gone = {b for b in model.backends if self.gone_until.get(b, 0) > now}
                app = routing.choose(model.backends, in_flight=self.in_flight, tried=tried, gone=gone, turn=turn)
                if app is None:
                    return _error(errors.replicas_failed(model.name, reasons, RETRY_AFTER_S))
                tried.add(app)
                self.in_flight[app] = self.in_flight.get(app, 0) + 1
                try:
                    url = await self._url(app)
                    return await self._exchange(request, app, url + path, raw, call)
                except _Retry as why:
                    reasons.append(f"{app}: {why}")
                finally:
                    self.in_flight[app] -= 1
        finally:
            meter.step(now=time.time(), in_flight=-1)

    async def _hold(self, model: ModelRoute, meter: Meter) -> ModelRoute | GatewayError:
        """Wait for ``model`` to get a replica: its route with replicas, or why the request is refused."""
        assert model.load_timeout is not None
        queue = self.holds.get(model.name)
        if queue is None:
            queue = self.holds[model.name] = HoldQueue()
        if len(queue) >= self.queue_limit:
            self.observer.refused(model=model.name, reason="queue_full")
            return errors.queue_full(model.name, self.queue_limit, RETRY_AFTER_S)
        if not queue:
            self._woken.add(model.name)
            self._wake.set()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        now = time.time()
        queue.add(future, now)
        meter.step(now=now, queued=1)
        held_at = time.monotonic()
        try:
            async with asyncio.timeout(model.load_timeout):
                outcome = await future
        except TimeoutError:
            self.observer.refused(model=model.name, reason="load_timeout")
            latest = self.table.model(model.name) or model
            return errors.load_timeout(model.name, model.load_timeout, NOT_LOADED.get(latest.state, latest.state))
        finally:
            queue.discard(future)  # released, timed out or its client left: no longer waiting
            meter.step(now=time.time(), queued=-1)
        if isinstance(outcome, ModelRoute):
            self.observer.cold_start(model=model.name, seconds=time.monotonic() - held_at)
        return outcome

    async def _exchange(self, request: web.Request, app: str, url: str, raw: bytes,
                        call: "_Call") -> web.StreamResponse:
        assert self._session is not None
        headers = {"Content-Type": "application/json"}
        if "X-Request-Id" in request.headers:
            headers["X-Request-Id"] = request.headers["X-Request-Id"]
        try:
            upstream = await self._session.post(url, data=raw, headers=headers)
        except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
            self._forget(app)
            raise _Retry(f"{type(exc).__name__}: {exc}") from None
        try:
            answer_headers = {h: upstream.headers[h] for h in PASS_HEADERS if h in upstream.headers}
            if not upstream.headers.get("Content-Type", "").startswith(EVENT_STREAM):
                try:
                    payload = await upstream.read()
                except (aiohttp.ClientConnectionError, asyncio.TimeoutError) as exc:
                    self._forget(app)
                    raise _Retry(f"broke off: {type(exc).__name__}: {exc}") from None
                answer = web.Response(body=payload, status=upstream.status, headers=answer_headers)
                if upstream.status == 200:
                    self._count(call, payload)
            else:
                answer = await self._stream(request, upstream, answer_headers, call)
        except BaseException:
            # Cancelled (the client left) or failed: drop the connection, so the replica sees the request end and
            # the engine aborts it rather than generating for nobody.
            upstream.close()
            raise
        upstream.release()
        return answer

    async def _stream(self, request: web.Request, upstream: aiohttp.ClientResponse,
                      headers: dict[str, str], call: "_Call") -> web.StreamResponse:
        response = web.StreamResponse(status=upstream.status, headers={**headers, "Cache-Control": "no-cache"})
        await response.prepare(request)
        first = True
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                if first:
                    first = False
                    self.observer.first_token(model=call.model, key=call.key_name,
                                              seconds=time.monotonic() - call.started)
                if b'"usage"' in chunk:
                    self._count(call, chunk)
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as exc:
            # Bytes went out already: the client gets the failure in the stream, as vLLM reports its own errors.
            await response.write(errors.upstream_broke(f"{type(exc).__name__}: {exc}").sse())
            await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response

    def _count(self, call: "_Call", payload: bytes) -> None:
        """Tokens from the answer's usage: for the metrics, and against the key's tokens per minute."""
        prompt, completion = _usage(payload)
        call.prompt += prompt
        call.completion += completion
        if call.key is not None and call.key.tokens_per_minute is not None:
            self.limiter.charge(call.key, prompt + completion, time.monotonic())

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
        except Exception as exc:
            self.gone_until[app] = time.monotonic() + GONE_FOR_S
            raise _Retry(f"its endpoint is unknown: {type(exc).__name__}: {exc}"[:300]) from None
        self.urls[app] = url
        self.gone_until.pop(app, None)
        return url

    def _forget(self, app: str) -> None:
        self.urls.pop(app, None)
        self.gone_until[app] = time.monotonic() + GONE_FOR_S


_PROMPT_TOKENS = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')


def _usage(payload: bytes) -> tuple[int, int]:
    """(prompt, completion) tokens of the `usage` objects in a JSON answer or a stream chunk's events; zeros if none.

    Searched, not parsed: an embeddings answer is mostly floats, and decoding it whole for two counters cost more
    than the rest of the gateway's work on the request."""
    prompt = completion = 0
    at = payload.find(b'"usage"')
    while at != -1:
        end = payload.find(b"}", at)
        window = payload[at:end if end != -1 else len(payload)]
        if found := _PROMPT_TOKENS.search(window):
            prompt += int(found.group(1))
        if found := _COMPLETION_TOKENS.search(window):
            completion += int(found.group(1))
        at = payload.find(b'"usage"', at + 7)
    return prompt, completion


def _error(error: GatewayError) -> web.Response:
    return web.Response(body=error.body(), status=error.status, content_type="application/json",
                        headers=error.headers())
