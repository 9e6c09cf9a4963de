"""OpenAI's error envelope, ``{"error": {"message", "type", "param", "code"}}``, for what the gateway refuses itself.

The SDKs pick their exception from the status code (404 NotFoundError, 429 RateLimitError, ...) and show the message,
so each message says what to change.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class GatewayError:
    status: int
    message: str
    type: str = "invalid_request_error"
    param: str | None = None
    code: str | None = None
    retry_after: int | None = None  # seconds, sent as Retry-After

    def envelope(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def body(self) -> bytes:
        return json.dumps(self.envelope()).encode()

    def headers(self) -> dict[str, str]:
        headers = {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}
        if self.status == 401:  # RFC 6750: say which scheme the credentials are for
            headers["WWW-Authenticate"] = 'Bearer realm="reconciler"'
        return headers

    def sse(self) -> bytes:
        """The error as one server-sent event, for a stream that already began (vLLM sends errors so)."""
        return b"data: " + self.body() + b"\n\n"


def unknown_model(name: str, known: list[str]) -> GatewayError:
    """``known``: the models the caller may use, never more (a scoped key must not learn what else is served)."""
    listed = ", ".join(known) if known else "none"
    return GatewayError(404, f"the model {name!r} does not exist; known models: {listed}", param="model",
                        code="model_not_found")


def model_missing(known: list[str]) -> GatewayError:
    return GatewayError(400, f"the request names no `model`; set it to one of: {', '.join(known)}", param="model",
                        code="model_required")


def no_replica(name: str, state: str, retry_after: int) -> GatewayError:
    return GatewayError(503, f"the model {name!r} has no running replica ({state}); retry shortly",
                        type="service_unavailable", code="no_running_replica", retry_after=retry_after)


def replicas_failed(name: str, retry_after: int) -> GatewayError:
    return GatewayError(503, f"no replica of the model {name!r} could take the request; retry shortly",
                        type="service_unavailable", code="replicas_unavailable", retry_after=retry_after)


def bad_gateway(name: str) -> GatewayError:
    return GatewayError(502, f"the replica of the model {name!r} failed while answering; the request was not retried "
                        "because it may have run", type="server_error", code="upstream_error")


def gateway_timeout(name: str, seconds: float) -> GatewayError:
    return GatewayError(504, f"the model {name!r} did not answer within {seconds:g}s", type="timeout",
                        code="upstream_timeout")


def upstream_status(name: str, status: int) -> GatewayError:
    """An upstream 5xx whose body is not OpenAI's envelope: its own text is internal and stays behind."""
    return GatewayError(502, f"the engine of {name!r} failed on this request (it answered {status})",
                        type="server_error", code="engine_error")


def queue_full(name: str, limit: int, retry_after: int) -> GatewayError:
    return GatewayError(503, f"the model {name!r} is loading and {limit} requests already wait for it (the most this "
                        f"gateway holds); retry in {retry_after}s", type="service_unavailable", code="queue_full",
                        retry_after=retry_after)


def load_timeout(name: str, seconds: int, why: str | None = None) -> GatewayError:
    reason = f" ({why})" if why else ""
    return GatewayError(504, f"the model {name!r} could not be loaded within its loadTimeout of {seconds}s{reason}; "
                        "retry later, or raise its scaling.loadTimeout", type="timeout", code="load_timeout")


def bad_body(why: str) -> GatewayError:
    return GatewayError(400, f"the request body must be a JSON object: {why}", code="invalid_body")


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"the request body is larger than this gateway takes ({limit // 1024} KiB); send less "
                        "(fewer or shorter inputs per request)", code="request_too_large")


def body_too_slow(seconds: float) -> GatewayError:
    return GatewayError(408, f"the request body did not arrive within {seconds:g}s", code="request_timeout")


def method_not_allowed(method: str, path: str, allowed: str) -> GatewayError:
    return GatewayError(405, f"{method} is not allowed on {path}; use {allowed}", code="method_not_allowed")


def too_many_connections() -> GatewayError:
    return GatewayError(503, "the gateway has too many connections open; retry shortly", type="service_unavailable",
                        code="too_many_connections", retry_after=1)


def no_route(path: str) -> GatewayError:
    return GatewayError(404, f"no such endpoint {path}; the gateway serves /v1/chat/completions, /v1/completions, "
                        "/v1/embeddings and /v1/models", code="unknown_url")


def upstream_broke(name: str) -> GatewayError:
    return GatewayError(502, f"the replica of the model {name!r} stopped answering mid-response", type="server_error",
                        code="upstream_error")
