"""Whether the gateway is open to more than this machine. Pure."""

from __future__ import annotations

import ipaddress
from urllib.parse import urlparse

from reconciler.desired import Gateway


def is_loopback(host: str | None) -> bool:
    if not host or host == "localhost":
        return host == "localhost"
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def open_endpoint_warning(urls: list[str], gateway: Gateway | None) -> str | None:
    """A warning when a gateway listens beyond loopback and no key is required to use it; None otherwise."""
    if gateway is not None and gateway.keys:
        return None
    exposed = [u for u in urls if not is_loopback(urlparse(u).hostname)]
    if not exposed:
        return None
    return (f"the OpenAI endpoint {exposed[0]} listens beyond this machine and takes requests without an API key: "
            "add a Gateway spec with keys (`reconciler keys new NAME`), or listen on 127.0.0.1")
