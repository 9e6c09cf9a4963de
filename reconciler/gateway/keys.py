"""API keys: who a request is from (by the SHA-256 of its bearer key) and which models that key may use. Pure.

The specs and the route table hold only hashes; the key itself exists in the client's hands and, for the length of
one request, in the gateway's memory. Neither is ever written to a log, an event or a metric: only key names are.
"""

from __future__ import annotations

import hashlib
from typing import Mapping

from reconciler.desired import ApiKey
from reconciler.gateway.errors import GatewayError

KEY_PREFIX = "sk-rc-"  # recognisable in a leaked file, as the big providers' keys are


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def bearer(header: str | None) -> str | None:
    if not header:
        return None
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def authenticate(keys: Mapping[str, ApiKey], header: str | None) -> ApiKey | GatewayError:
    """The key a request's ``Authorization`` header names, from ``keys`` (by hash), or a 401."""
    key = bearer(header)
    if key is None:
        return GatewayError(401, "this gateway needs an API key: send `Authorization: Bearer <key>` (the SDKs' "
                            "api_key)", code="missing_api_key")
    found = keys.get(digest(key))
    if found is None:
        return GatewayError(401, "the API key is not valid here: check it, or ask for a new one "
                            "(`reconciler keys new NAME`)", code="invalid_api_key")
    return found


def may_use(key: ApiKey, model: str) -> bool:
    return "*" in key.models or model in key.models


def authorize(key: ApiKey, model: str) -> GatewayError | None:
    if may_use(key, model):
        return None
    return GatewayError(403, f"the key `{key.name}` may not use the model {model!r}; it may use: "
                        f"{', '.join(key.models)}", type="permission_error", param="model", code="model_not_allowed")
