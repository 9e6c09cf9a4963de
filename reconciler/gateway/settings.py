"""Where the gateway listens. Frozen; the defaults are written here once."""

from __future__ import annotations

from dataclasses import dataclass

PORT_AFTER_SERVE = 1  # default port: Serve's HTTP port + this, so the two endpoints sit side by side


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    enabled: bool = True
    host: str | None = None  # None: the host Serve's HTTP proxy binds (loopback on a local cluster)
    port: int | None = None  # None: Serve's HTTP port + PORT_AFTER_SERVE

    def listen(self, *, serve_host: str | None, serve_port: int | None) -> tuple[str, int]:
        host = self.host or serve_host or "127.0.0.1"
        if self.port is not None:
            return host, self.port
        return host, (serve_port or 8000) + PORT_AFTER_SERVE
