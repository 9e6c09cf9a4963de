"""Whether the gateway is open to more than this machine. Pure."""

from __future__ import annotations

from urllib.parse import urlparse

from reconciler.desired import Gateway, is_loopback

__all__ = ["is_loopback", "open_endpoint_warning", "refusal"]


def refusal(host: str | None, gateway: Gateway | None) -> str | None:
    """Why the gateway must not listen on ``host`` (None: loopback) under this Gateway spec, or None when it may.

    Beyond loopback, no keys means refused unless the spec says ``allowAnonymous: true``; without a Gateway spec the
    gateway listens on loopback only, so there is nothing to refuse."""
    if gateway is None:
        return None if is_loopback(host or "127.0.0.1") else (
            f"the gateway would listen on {host} without a Gateway spec, so without keys: add a Gateway spec with "
            "keys, or listen on 127.0.0.1")
    if not gateway.anonymous_exposure(host):
        return None
    return (f"the gateway would listen on {host}, beyond this machine, and take requests without an API key: add "
            "keys to the Gateway spec (`reconciler keys new NAME`), listen on 127.0.0.1, or write "
            "`allowAnonymous: true` in it if anyone who reaches it may use every model")


def open_endpoint_warning(urls: list[str], gateway: Gateway | None) -> str | None:
    """A warning when a gateway listens beyond loopback and no key is required to use it; None otherwise."""
    if gateway is not None and gateway.keys:
        return None
    exposed = [u for u in urls if not is_loopback(urlparse(u).hostname)]
    if not exposed:
        return None
    return (f"the OpenAI endpoint {exposed[0]} listens beyond this machine and takes requests without an API key: "
            "add a Gateway spec with keys (`reconciler keys new NAME`), or listen on 127.0.0.1")
