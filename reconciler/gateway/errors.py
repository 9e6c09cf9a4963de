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
        return {"Retry-After": str(self.retry_after)} if self.retry_after is not None else {}

    def sse(self) -> bytes:
        """The error as one server-sent event, for a stream that already began (vLLM sends errors so)."""
        return b"data: " + self.body() + b"\n\n"


def unknown_model(name: str, known: list[str]) -> GatewayError:
    listed = ", ".join(known) if known else "none (no Model in the specs)"
    return GatewayError(404, f"the model {name!r} does not exist; known models: {listed}", param="model",
                        code="model_not_found")


def model_missing(known: list[str]) -> GatewayError:
    return GatewayError(400, f"the request names no `model`; set it to one of: {', '.join(known)}", param="model",
                        code="model_required")


def no_replica(name: str, state: str, retry_after: int) -> GatewayError:
    return GatewayError(503, f"the model {name!r} has no running replica ({state}); retry shortly",
                        type="service_unavailable", code="no_running_replica", retry_after=retry_after)


def replicas_failed(name: str, reasons: list[str], retry_after: int) -> GatewayError:
    return GatewayError(503, f"no replica of the model {name!r} answered: {'; '.join(reasons)[:500]}",
                        type="service_unavailable", code="replicas_unavailable", retry_after=retry_after)


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


def no_route(path: str) -> GatewayError:
    return GatewayError(404, f"no such endpoint {path}; the gateway serves /v1/chat/completions, /v1/completions, "
                        "/v1/embeddings and /v1/models", code="unknown_url")


def upstream_broke(message: str) -> GatewayError:
    return GatewayError(502, f"the replica stopped answering mid-response: {message}"[:500], type="server_error",
                        code="upstream_error")
