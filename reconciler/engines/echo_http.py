"""The echo engine's OpenAI HTTP app (Starlette): what its replica serves on its own endpoint."""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route


def build_app(engine: Any) -> Starlette:
    async def post(request: Request) -> Response:
        endpoint = request.path_params["endpoint"]
        try:
            body = json.loads(await request.body())
        except ValueError:
            return JSONResponse({"error": {"message": "the request body is not JSON", "type": "BadRequestError",
                                           "param": None, "code": 400}}, status_code=400)
        if body.get("stream") and endpoint in ("completions", "chat/completions"):
            return StreamingResponse(engine.stream(endpoint, body), media_type="text/event-stream")
        status, payload = await engine.openai(endpoint, body)
        return JSONResponse(payload, status_code=status)

    async def models(request: Request) -> Response:
        status, payload = await engine.openai("models", {})
        return JSONResponse(payload, status_code=status)

    async def health(request: Request) -> Response:
        return Response(status_code=200)

    return Starlette(routes=[
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/{endpoint:path}", post, methods=["POST"]),
        Route("/health", health, methods=["GET"]),
    ])
