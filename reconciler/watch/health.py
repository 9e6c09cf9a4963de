"""`/healthz` of `reconciler watch`, served beside `/metrics` for a supervisor's probes (Kubernetes, systemd).

Healthy means the watcher does its job or is ready to: starting up, standing by for the apply lock
(``--wait-for-lock``), or running cycles that finish. Unhealthy means restarting it would help: it is stopping, or
no cycle has finished for ``stall_after`` seconds (a call into the cluster that never returns). The drift timer runs
a cycle every ``--interval`` seconds, and an apply's waits are bounded by the executor's timeouts, so a live watcher
finishes a cycle well within the default. ``judge`` is the decision, pure; ``HealthServer`` only serves it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer


class Phase(StrEnum):
    STARTING = "starting"  # connecting, taking the lock
    STANDBY = "standby"  # waiting for another reconciler's lock (--wait-for-lock)
    RUNNING = "running"  # the loop runs cycles
    STOPPING = "stopping"  # a signal or a lost lock: the process is about to exit


@dataclass(frozen=True, slots=True)
class Health:
    ok: bool
    phase: Phase
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"ok": self.ok, "phase": str(self.phase), "reason": self.reason}


STALL_AFTER = 1800.0  # seconds without a finished cycle; above the executor's 600 s start timeout, several waves


def judge(*, phase: Phase, now: float, since: float, last_cycle: float | None,
          stall_after: float = STALL_AFTER) -> Health:
    """``since``: when the phase began; ``last_cycle``: when the last cycle finished (None: none yet)."""
    if phase is Phase.STOPPING:
        return Health(False, phase, "stopping")
    if phase is not Phase.RUNNING:
        return Health(True, phase, str(phase))
    quiet = now - max(since, last_cycle if last_cycle is not None else since)
    if quiet > stall_after:
        return Health(False, phase, f"no cycle finished for {quiet:.0f} s (limit {stall_after:.0f} s)")
    return Health(True, phase, "cycles finish")


def _page(page: Any, path: str, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """``page`` has ``html()`` and ``document()``; a failure is a 503 with one line, never a traceback or an
    internal address."""
    if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
        start_response("405 Method Not Allowed", [("Allow", "GET, HEAD"), ("Content-Type", "text/plain")])
        return [b"read-only\n"]
    try:
        if path == "/":
            body, kind = page.html().encode(), "text/html; charset=utf-8"
        else:
            body, kind = json.dumps(page.document(), indent=2).encode(), "application/json"
    except Exception as exc:  # noqa: BLE001 - the page must not take the metrics server down
        start_response("503 Service Unavailable", [("Content-Type", "text/plain; charset=utf-8")])
        return [f"the status is not available right now ({type(exc).__name__})\n".encode()]
    start_response("200 OK", [("Content-Type", kind), ("Cache-Control", "no-store"),
                              ("Content-Security-Policy", "default-src 'none'; style-src 'unsafe-inline'")])
    return [body]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        pass  # scrapes and probes every few seconds would drown the watcher's own log


class HealthServer:
    """``/healthz`` (200 or 503, the verdict as JSON), the status page on ``/`` and its data on ``/status.json``
    when ``page`` is given (read-only: only GET), and the Prometheus metrics on every other path."""

    def __init__(self, registry: CollectorRegistry, health: Callable[[], Health], *, port: int,
                 host: str = "127.0.0.1", page: Any = None) -> None:
        metrics = make_wsgi_app(registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            path = environ.get("PATH_INFO")
            if page is not None and path in ("/", "/status.json"):
                return _page(page, path, environ, start_response)
            if path != "/healthz":
                return metrics(environ, start_response)
            verdict = health()
            start_response("200 OK" if verdict.ok else "503 Service Unavailable",
                           [("Content-Type", "application/json")])
            return [json.dumps(verdict.to_json()).encode()]

        self._server = make_server(host, port, app, ThreadingWSGIServer, handler_class=_Quiet)
        self.host = host
        self.port: int = self._server.server_port
        self._thread = threading.Thread(target=self._server.serve_forever, name="reconciler-http", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> "HealthServer":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
