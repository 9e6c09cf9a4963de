"""The replica's copy of vLLM's app keeps what serves the gateway and drops what serves a public server (CORS,
per-request HTTP metrics, elastic scaling), whose work would be the replica's on every request."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.middleware.cors import CORSMiddleware

from reconciler.engines.vllm import _strip_public_middleware


class Stamp:
    """A middleware the replica keeps: it marks every answer."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send):
        async def stamped(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message["headers"], (b"x-stamp", b"1")]}
            await send(message)

        await self.app(scope, receive, stamped)


def _app() -> FastAPI:
    app = FastAPI()
    app.add_middleware(Stamp)
    app.add_middleware(CORSMiddleware, allow_origins=["*"], allow_methods=["*"])

    @app.post("/v1/chat/completions")
    async def chat() -> dict:
        return {"ok": True}

    return app


def test_cors_is_gone_and_the_rest_of_the_app_answers_as_before():
    full, lean = _app(), _app()
    lean.middleware_stack = lean.build_middleware_stack()  # as vLLM's build leaves it
    _strip_public_middleware(lean)
    preflight = {"Origin": "http://elsewhere", "Access-Control-Request-Method": "POST"}
    assert TestClient(full).options("/v1/chat/completions", headers=preflight).status_code == 200
    refused = TestClient(lean).options("/v1/chat/completions", headers=preflight)
    assert refused.status_code == 405 and "access-control-allow-origin" not in refused.headers
    answer = TestClient(lean).post("/v1/chat/completions", json={}, headers={"Origin": "http://elsewhere"})
    assert answer.json() == {"ok": True} and answer.headers["x-stamp"] == "1"
    assert "access-control-allow-origin" not in answer.headers
    assert [m.cls for m in lean.user_middleware] == [Stamp]
