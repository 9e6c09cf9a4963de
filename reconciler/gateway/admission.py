"""Admission: who a request is from, whether its key's limits let it in, and its body, read within bounds.

Everything that can refuse a request without its body runs first (key, requests per minute, requests at once, an
empty token bucket), so a client that is refused costs no body read; the body is then read up to
``GatewayLimits.body_bytes`` (413 past it, without reading the rest) within ``body_timeout``, and parsed on a worker
thread when it is large, so the event loop keeps relaying other streams meanwhile.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, Mapping

from aiohttp import web

from reconciler.desired import ApiKey
from reconciler.gateway import errors, keys
from reconciler.gateway.errors import GatewayError
from reconciler.settings import GatewayLimits


def caller(table_open: bool, known: Mapping[str, ApiKey], request: web.Request) -> ApiKey | GatewayError | None:
    """The key of the request (None when the gateway is open), or why it is refused."""
    if table_open:
        return None
    return keys.authenticate(known, request.headers.get("Authorization"))


async def read_body(request: web.Request, limits: GatewayLimits) -> bytes | GatewayError:
    """The request body, or 413 (too large: the rest is never read) / 408 (too slow)."""
    declared = request.content_length
    if declared is not None and declared > limits.body_bytes:
        return errors.body_too_large(limits.body_bytes)
    parts: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(limits.body_timeout):
            while True:
                part = await request.content.readany()
                if not part:
                    break
                size += len(part)
                if size > limits.body_bytes:
                    return errors.body_too_large(limits.body_bytes)
                parts.append(part)
    except TimeoutError:
        return errors.body_too_slow(limits.body_timeout)
    return parts[0] if len(parts) == 1 else b"".join(parts)


def _parse(raw: bytes) -> dict[str, Any] | GatewayError:
    try:
        body = json.loads(raw)
    except json.JSONDecodeError as exc:
        return errors.bad_body(f"not valid JSON (line {exc.lineno}, column {exc.colno})")
    except (ValueError, UnicodeDecodeError):
        return errors.bad_body("not valid JSON text")
    except RecursionError:
        return errors.bad_body("nested too deeply")
    if not isinstance(body, dict):
        return errors.bad_body(f"got a JSON {type(body).__name__}")
    return body


async def parse_body(raw: bytes, limits: GatewayLimits) -> dict[str, Any] | GatewayError:
    if len(raw) >= limits.parse_in_thread_bytes:
        return await asyncio.to_thread(_parse, raw)
    return _parse(raw)


def too_large_answer(error: GatewayError) -> web.Response:
    """A 413 that also closes the connection: the unread rest of the body must not be taken for the next request."""
    headers = {**error.headers(), "Connection": "close"}
    return web.Response(body=error.body(), status=error.status, content_type="application/json", headers=headers)


class HeldBytes:
    """Bytes of request bodies held for models with no replica yet: bounded, so a burst of large held requests cannot
    exhaust the gateway's memory while a model loads."""

    __slots__ = ("limit", "held")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.held = 0

    def take(self, n: int) -> bool:
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        self.held = max(0, self.held - n)
