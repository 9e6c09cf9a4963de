"""The cluster's upstream secret: how a replica's own endpoint tells the gateway from anyone else on the network.

A replica's endpoint listens on its node's address so gateways on other nodes reach it; without a check, anyone who
can reach the node could walk around the gateway's keys. The secret is made once per cluster, kept in Ray's internal
KV (readable only by what already holds the cluster), read by replicas and gateways when they start, and never
printed, logged, planned or put in a snapshot.
"""

from __future__ import annotations

import hmac
import json
import secrets
from typing import Any, Awaitable, Callable

from reconciler.naming import KV_NAMESPACE as NAMESPACE

SECRET_KEY = b"gateway/upstream-secret"
ENGINE_STATE_HEADER = b"x-engine-state"


def cluster_secret() -> str:
    """The cluster's secret, made by whoever asks first (a put that never overwrites, then a read: all agree)."""
    from ray.experimental import internal_kv

    internal_kv._internal_kv_put(SECRET_KEY, secrets.token_urlsafe(32), overwrite=False, namespace=NAMESPACE)
    stored = internal_kv._internal_kv_get(SECRET_KEY, namespace=NAMESPACE)
    if not stored:
        raise RuntimeError("the cluster's upstream secret could not be stored in Ray's KV")
    return stored.decode()


def _refusal(status: int, message: str, code: str) -> tuple[dict[str, Any], bytes]:
    body = json.dumps({"error": {"message": message, "type": "authentication_error", "param": None,
                                 "code": code}}).encode()
    return {"type": "http.response.start", "status": status,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                        (b"www-authenticate", b'Bearer realm="reconciler-replica"')]}, body


class RequireSecret:
    """ASGI middleware: every HTTP request must carry ``Authorization: Bearer <secret>``, else 401 in OpenAI's
    envelope, before the engine's app sees it. Compared in constant time."""

    def __init__(self, app: Callable[..., Awaitable[None]], secret: str) -> None:
        self.app = app
        self._expected = f"Bearer {secret}".encode()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self._expected):
                start, body = _refusal(401, "this endpoint takes requests from the reconciler gateway only; use the "
                                       "gateway's base URL", "gateway_only")
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)
