"""A replica's endpoint while its engine is dead: 503 at once, in OpenAI's envelope, saying so in a header.

An engine can die under a live replica process (vLLM's engine-core process killed by the OOM killer or a driver
fault): the replica's HTTP server keeps accepting requests, and the engine's own error path answers them with
internal text. The guard checks the engine before each request and answers ``503`` with ``X-Engine-State: dead``
(the gateway then knows the request never ran, and tries another replica or waits for the replacement); a request
that was already inside the engine when it died and fails with a 5xx gets the same envelope instead of the engine's
text, without the header (it may have run). The first death is reported once through ``on_death`` (the replica
records it for the controller).
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

ENGINE_STATE_HEADER = b"x-engine-state"


def _answer(message: str, *, dead_header: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    body = json.dumps({"error": {"message": message, "type": "service_unavailable", "param": None,
                                 "code": "engine_dead"}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
               (b"retry-after", b"2")]
    if dead_header:
        headers.append((ENGINE_STATE_HEADER, b"dead"))
    return ({"type": "http.response.start", "status": 503, "headers": headers},
            {"type": "http.response.body", "body": body})


class EngineGuard:
    """ASGI middleware over an engine's app. ``death()`` says why the engine is dead, or None while it lives."""

    def __init__(self, app: Callable[..., Awaitable[None]], *, death: Callable[[], str | None], name: str,
                 on_death: Callable[[str], None] | None = None) -> None:
        self.app = app
        self._death = death
        self._name = name
        self._on_death = on_death
        self._reported = False

    def _dead(self) -> str | None:
        why = self._death()
        if why is not None and not self._reported:
            self._reported = True
            if self._on_death is not None:
                self._on_death(why)
        return why

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self._dead() is not None:
            start, body = _answer(f"the engine of {self._name} stopped; a replacement is starting", dead_header=True)
            await send(start)
            await send(body)
            return
        passing = False  # the answer's start went out as the engine's: its body chunks go straight to ``send``
        replaced = False

        async def replace() -> None:
            start, body = _answer(f"the engine of {self._name} stopped while answering", dead_header=False)
            await send(start)
            await send(body)

        async def swallow() -> None:
            pass  # the engine's own body of a replaced answer stays here

        # A plain function handing back ``send``'s awaitable: a streamed answer's every chunk passes through here,
        # and a coroutine of its own per chunk is CPU the replica spends on each token.
        def guarded_send(message: dict[str, Any]) -> Awaitable[None]:
            nonlocal passing, replaced
            if passing:
                return send(message)
            if replaced:
                return swallow()
            if message["type"] == "http.response.start":
                if message["status"] >= 500 and self._dead() is not None:
                    replaced = True
                    return replace()
                passing = True
            return send(message)

        await self.app(scope, receive, guarded_send)
