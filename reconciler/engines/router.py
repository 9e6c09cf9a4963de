"""The per-model router: the only reconciler application exposed over HTTP, at the model's route.

Replicas run as separate Serve applications (one per placed replica, so each can be pinned to its own GPU and fail
alone); the router forwards OpenAI-compatible requests to them through Serve handles, round-robin over the backends
whose application Serve reports RUNNING. Its backend list arrives through ``user_config`` so the executor can switch
it (make-before-break) without restarting anything.

Its route is a second door to the model, so it checks the same API keys and scopes as the gateway: it reads the
gateway's route table from Ray's KV (where the executor publishes it, keys as hashes) at most every ``KEYS_TTL_S``,
so a revoked key stops working here as soon as at the gateway. Until a table was published it refuses everything.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from reconciler.naming import KV_NAMESPACE, ROUTE_TABLE_KEY, ROUTER_DEPLOYMENT

api = FastAPI(title="reconciler model router")

REQUEST_TIMEOUT_S = 300.0  # generation can be slow on CPU; a stuck backend must not hold a client forever
INFO_TIMEOUT_S = 10.0
STATUS_TTL_S = 2.0
KEYS_TTL_S = 2.0


def _error(status: int, message: str, kind: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind, "code": status}},
                        headers=headers)


def _read_table() -> dict[str, Any] | None:
    import json

    from ray.experimental import internal_kv

    raw = internal_kv._internal_kv_get(ROUTE_TABLE_KEY, namespace=KV_NAMESPACE)
    return json.loads(raw) if raw else None


@serve.deployment(name=ROUTER_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
@serve.ingress(api)
class Router:
    def __init__(self, model: str) -> None:
        self._model = model
        self._backends: list[str] = []
        self._handles: dict[str, Any] = {}
        self._turn = itertools.count()
        self._running: set[str] = set()
        self._status_at = 0.0
        self._status_lock = asyncio.Lock()
        self._keys: Any = None  # {sha256: ApiKey} from the published table; {} open; None: not read yet
        self._keys_at = 0.0

    async def _denied(self, request: Request) -> JSONResponse | None:
        """None when the request may use this model (the same keys and scopes as the gateway), else the refusal."""
        from reconciler.gateway import keys
        from reconciler.gateway.table import RouteTable

        if time.monotonic() - self._keys_at >= KEYS_TTL_S:
            try:
                data = await asyncio.to_thread(_read_table)
            except Exception:  # noqa: BLE001 - the GCS briefly away: keep the keys last read (or refuse, if none)
                pass
            else:
                self._keys = None if data is None else {k.sha256: k for k in RouteTable.from_dict(data).keys}
                self._keys_at = time.monotonic()
        if self._keys is None:
            return _error(503, "the model's keys are not known yet; retry shortly", "service_unavailable")
        if not self._keys:
            return None
        key = keys.authenticate(self._keys, request.headers.get("Authorization"))
        if not isinstance(key, keys.ApiKey):
            return _error(key.status, key.message, "authentication_error", key.headers())
        if (refused := keys.authorize(key, self._model)) is not None:
            return _error(refused.status, refused.message, refused.type)
        return None

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._backends = [str(b) for b in user_config.get("backends", [])]
        self._status_at = 0.0  # a new list: ask Serve afresh before routing

    def _handle(self, app: str) -> Any:
        if app not in self._handles:
            self._handles[app] = serve.get_app_handle(app)
        return self._handles[app]

    async def _refresh_status(self) -> None:
        async with self._status_lock:
            if time.monotonic() - self._status_at < STATUS_TTL_S:
                return
            status = await asyncio.to_thread(serve.status)
            self._running = {
                name for name, app in status.applications.items() if str(app.status).endswith("RUNNING")
            }
            self._status_at = time.monotonic()

    async def _healthy(self) -> list[str]:
        try:
            await self._refresh_status()
        except Exception:  # the controller being briefly unreachable must not stop traffic: try every backend
            return list(self._backends)
        return [b for b in self._backends if b in self._running]

    async def _forward(self, endpoint: str, body: dict[str, Any]) -> JSONResponse:
        backends = await self._healthy()
        if not backends:
            return _error(503, f"model {self._model!r} has no running replica", "service_unavailable")
        start = next(self._turn) % len(backends)
        for app in backends[start:] + backends[:start]:
            try:
                response = self._handle(app).openai.remote(endpoint, body)
                status, payload = await asyncio.wait_for(response, REQUEST_TIMEOUT_S)
            except Exception:  # noqa: BLE001 - a backend that died or is stopping: the next one may answer
                self._handles.pop(app, None)
                continue
            return JSONResponse(status_code=status, content=payload)
        return _error(503, f"no replica of the model {self._model!r} could take the request; retry shortly",
                      "service_unavailable")

    @api.post("/v1/completions")
    async def completions(self, request: Request) -> JSONResponse:
        if (denied := await self._denied(request)) is not None:
            return denied
        return await self._forward("completions", await request.json())

    @api.post("/v1/chat/completions")
    async def chat_completions(self, request: Request) -> JSONResponse:
        if (denied := await self._denied(request)) is not None:
            return denied
        return await self._forward("chat/completions", await request.json())

    @api.post("/v1/embeddings")
    async def embeddings(self, request: Request) -> JSONResponse:
        if (denied := await self._denied(request)) is not None:
            return denied
        return await self._forward("embeddings", await request.json())

    @api.get("/v1/models")
    async def models(self, request: Request) -> JSONResponse:
        if (denied := await self._denied(request)) is not None:
            return denied
        return await self._forward("models", {})

    @api.get("/replicas")
    async def replicas(self, request: Request) -> JSONResponse:
        """What every backend says about itself: the tests' and people's way to check where replicas really run."""
        if (denied := await self._denied(request)) is not None:
            return denied

        async def one(app: str) -> dict[str, Any]:
            try:
                info = await asyncio.wait_for(self._handle(app).info.remote(), INFO_TIMEOUT_S)
                return {"app": app, "ok": True, "info": info}
            except Exception as exc:
                self._handles.pop(app, None)
                return {"app": app, "ok": False, "error": f"{type(exc).__name__}: {exc}"[:500]}

        healthy = set(await self._healthy())
        results = await asyncio.gather(*(one(app) for app in self._backends if app in healthy))
        return JSONResponse({"model": self._model, "backends": self._backends, "replicas": list(results)})

    @api.get("/healthz")
    async def healthz(self) -> JSONResponse:
        # Answered without a key (health probes carry none), so it says only how many replicas run, not which.
        healthy = await self._healthy()
        code = 200 if healthy else 503
        return JSONResponse(status_code=code, content={"model": self._model, "running": len(healthy)})
