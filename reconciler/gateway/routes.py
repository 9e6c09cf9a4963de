"""The gateway's HTTP surface: which paths exist, and the order of a request's steps.

A model request goes: the key (before anything is read) → the key's request limits → the body, bounded → the model
and the key's scope → the key's token reservation → a replica (held first for an on-demand model with none) → the
reservation settled from the answer's usage. Every answer the gateway makes itself is OpenAI's error envelope;
unknown paths are 404 and wrong methods 405 in it too. A key sees only the models it may use, in lists and in the
404 that names the models there are.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from reconciler.gateway import admission, errors, keys, routing, usage
from reconciler.gateway.connections import SERVER
from reconciler.gateway.errors import GatewayError
from reconciler.gateway.table import RUNNING, ModelRoute
from reconciler.gateway.upstream import RETRY_AFTER_S, Call

if TYPE_CHECKING:
    from reconciler.gateway.server import Gateway

POST_ENDPOINTS = ("chat/completions", "completions", "embeddings")


def error_response(error: GatewayError) -> web.Response:
    return web.Response(body=error.body(), status=error.status, content_type="application/json",
                        headers=error.headers())


def build_app(gateway: "Gateway") -> web.Application:
    app = web.Application(client_max_size=gateway.limits.body_bytes, middlewares=[_envelope])
    app.on_response_prepare.append(_plain_server_header)
    handlers = _Handlers(gateway)
    app.router.add_get("/v1/models", handlers.list_models)
    app.router.add_get("/v1/models/{id:.+}", handlers.get_model)
    app.router.add_post("/v1/{endpoint:.+}", handlers.forward)
    app.router.add_get("/healthz", handlers.healthz)
    return app


async def _plain_server_header(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["Server"] = SERVER  # not aiohttp's name and versions


@web.middleware
async def _envelope(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own 404/405 (plain text) become OpenAI's envelope; nothing else is touched."""
    try:
        return await handler(request)
    except web.HTTPMethodNotAllowed as exc:
        return error_response(errors.method_not_allowed(request.method, request.path,
                                                        ", ".join(sorted(exc.allowed_methods))))
    except web.HTTPNotFound:
        return error_response(errors.no_route(request.path))


class _Handlers:
    def __init__(self, gateway: "Gateway") -> None:
        self.gw = gateway

    def _caller(self, request: web.Request) -> Any:
        return admission.caller(self.gw.table.open, self.gw.keys, request)

    def _visible(self, key: Any) -> list[ModelRoute]:
        return [m for m in self.gw.table.models if key is None or keys.may_use(key, m.name)]

    def _model_object(self, m: ModelRoute) -> dict[str, Any]:
        now = time.monotonic()
        gone = self.gw.upstream.gone_until
        reachable = [b for b in m.backends if gone.get(b, 0) <= now]
        return {
            "id": m.name,
            "object": "model",
            "created": self.gw.table.created,
            "owned_by": "reconciler",
            "state": m.state if m.state != RUNNING or reachable else "starting",
            "replicas": {"running": len(reachable), "desired": m.desired},
            "max_model_len": m.max_model_len,
            "route": m.route,
            "engine": m.engine,
        }

    async def list_models(self, request: web.Request) -> web.Response:
        key = self._caller(request)
        if isinstance(key, GatewayError):
            return error_response(key)
        return web.json_response({"object": "list", "data": [self._model_object(m) for m in self._visible(key)]})

    async def get_model(self, request: web.Request) -> web.Response:
        key = self._caller(request)
        if isinstance(key, GatewayError):
            return error_response(key)
        name = request.match_info["id"]
        visible = self._visible(key)
        found = next((m for m in visible if m.name == name), None)
        if found is None:
            return error_response(errors.unknown_model(name, [m.name for m in visible]))
        return web.json_response(self._model_object(found))

    async def healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def forward(self, request: web.Request) -> web.StreamResponse:
        call = Call(started=time.monotonic(), client_request_id=request.headers.get("X-Request-Id"))
        try:
            answer = await self._forward(request, call)
            if isinstance(answer, GatewayError):
                answer = (admission.too_large_answer(answer) if answer.status == 413 else error_response(answer))
        except asyncio.CancelledError:
            call.status = 499  # the client went away (nginx's word for it): counted, then the cancel goes on
            raise
        else:
            call.status = answer.status
            return answer
        finally:
            observer = self.gw.observer
            observer.request(model=call.model, key=call.key_name, status=call.status,
                             seconds=time.monotonic() - call.started)
            if call.prompt or call.completion:
                observer.tokens(model=call.model, key=call.key_name, prompt=call.prompt, completion=call.completion)

    async def _forward(self, request: web.Request, call: Call) -> web.StreamResponse | GatewayError:
        gw = self.gw
        endpoint = request.match_info["endpoint"]
        if endpoint not in POST_ENDPOINTS:
            return errors.no_route(request.path)
        key = self._caller(request)
        if isinstance(key, GatewayError):
            return key
        call.key, call.key_name = key, key.name if key is not None else "-"
        if key is not None and (refused := gw.limiter.admit(key, time.monotonic())) is not None:
            return refused
        try:
            return await self._admitted(request, call, endpoint)
        finally:
            if key is not None:
                gw.limiter.release(key)

    async def _admitted(self, request: web.Request, call: Call, endpoint: str) -> web.StreamResponse | GatewayError:
        gw = self.gw
        key = call.key
        raw = await admission.read_body(request, gw.limits)
        if isinstance(raw, GatewayError):
            return raw
        body = await admission.parse_body(raw, gw.limits)
        if isinstance(body, GatewayError):
            return body
        model = routing.pick_model(gw.table, body)
        if isinstance(model, GatewayError):
            if model.status == 404 and key is not None:  # name only what this key may use
                return errors.unknown_model(str(body.get("model")), [m.name for m in self._visible(key)])
            return model
        call.model = model.name
        reserved = 0
        if key is not None:
            if (denied := keys.authorize(key, model.name)) is not None:
                return denied
            reserved = usage.reservation(body, len(raw), default_max_tokens=gw.limits.default_max_tokens)
            if (refused := gw.limiter.reserve(key, reserved, time.monotonic())) is not None:
                return refused
        try:
            sent, strip = usage.ask_for_usage(body)
            if sent is not body or body.get("model") != model.name:
                raw = json.dumps({**sent, "model": model.name}).encode()
            return await self._send(request, call, model, f"/v1/{endpoint}", raw, stream=body.get("stream") is True,
                                    strip=strip)
        finally:
            if key is not None:
                used = call.prompt + call.completion
                gw.limiter.settle(key, reserved=reserved, used=used if used else reserved, now=time.monotonic())

    async def _send(self, request: web.Request, call: Call, model: ModelRoute, path: str, raw: bytes, *,
                    stream: bool, strip: bool) -> web.StreamResponse | GatewayError:
        gw = self.gw
        meter = gw.meter(model.name)
        began = time.time()
        meter.arrived(began)
        if not model.backends:
            if not model.holds:
                state = model.state if model.state != RUNNING else "starting"
                return errors.no_replica(model.name, state, RETRY_AFTER_S)
            held = await gw.hold(model, meter, len(raw))
            if isinstance(held, GatewayError):
                return held
            model, began = held, time.time()
        meter.step(now=began, in_flight=1)
        try:
            name = model.name
            return await gw.upstream.send(request, model=name, backends=model.backends, path=path, raw=raw,
                                          stream=stream, strip_usage=strip, call=call,
                                          current=lambda: getattr(gw.table.model(name), "backends", ()))
        finally:
            meter.step(now=time.time(), in_flight=-1)
