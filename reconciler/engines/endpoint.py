"""A replica's own HTTP endpoint: the engine's OpenAI app served by uvicorn inside the replica process.

The gateway sends requests straight here instead of through Serve's proxy, router and handles: on a small machine
that path spent more CPU per request than the model (see bench/gateway.py). Serve still places the replica, checks
its health and stops it; this endpoint only lives as long as the replica does.

The server runs on the event loop the replica's engine uses (vLLM's output handler must share it), on a port the
operating system picks, bound to the node's IP so gateways on other nodes can reach it. It serves only requests that
carry the cluster's secret (``engines.secret``), which only gateways hold. The same app is also served on a second
port as a channel (``engines.channel``): the gateway's requests share one connection there, and the pieces of all
answers of one turn of the loop go out in one write, where HTTP/1.1 writes each token of each stream on its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

# uvicorn's proxy-header middleware and Server header are off: the gateway is the only client (it sends no
# forwarding headers a replica would use), and each costs the replica CPU on every request.
# Keep-alive longer than the gateway's pooled connections live, so the replica never closes one the gateway is
# about to reuse (that race turns into a spurious connection error on a request).
KEEP_ALIVE_S = 75


class _QuietServer:
    """uvicorn's server without its signal handlers: the process belongs to Ray, which handles signals itself."""

    def __new__(cls, config: Any) -> Any:
        import uvicorn

        class Server(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self):  # type: ignore[override]
                yield

        return Server(config)


class Endpoint:
    """Serves one ASGI app on ``host`` at a free port; ``url`` is set once it listens. With a ``secret``, only
    requests that carry it are served (``secret.RequireSecret``): the gateway is the only way in."""

    def __init__(self, app: Any, host: str, *, secret: str | None = None) -> None:
        import uvicorn

        from reconciler.engines.secret import RequireSecret

        if secret is not None:
            app = RequireSecret(app, secret)
        self.host = host
        self._sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, 0))
        self.port = self._sock.getsockname()[1]
        config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False,
                                timeout_keep_alive=KEEP_ALIVE_S, proxy_headers=False, server_header=False)
        self._server = _QuietServer(config)
        self._task: asyncio.Task | None = None
        self._app = app
        self._channel_sock = socket.socket(self._sock.family, socket.SOCK_STREAM)
        self._channel_sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._channel_sock.bind((host, 0))
        self._channel_sock.listen(socket.SOMAXCONN)
        self.channel_port = self._channel_sock.getsockname()[1]
        self._channel: asyncio.AbstractServer | None = None

    @property
    def url(self) -> str:
        return f"http://{self._netloc(self.port)}"

    @property
    def channel_url(self) -> str:
        """Where the gateway's channel connects (``chan://IP:PORT``)."""
        return f"chan://{self._netloc(self.channel_port)}"

    def _netloc(self, port: int) -> str:
        return f"[{self.host}]:{port}" if ":" in self.host else f"{self.host}:{port}"

    async def start(self) -> str:
        self._task = asyncio.get_running_loop().create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                self._task.result()  # raises why it could not start
                raise RuntimeError("the replica's HTTP endpoint stopped before it started")
            await asyncio.sleep(0.01)
        from reconciler.engines import channel

        self._channel = await channel.serve(self._app, self._channel_sock)
        freeze_heap()
        return self.url

    def stop(self) -> None:
        self._server.should_exit = True
        if self._channel is not None:
            self._channel.close()


def freeze_heap() -> None:
    """Move everything alive now (the engine, Ray, the libraries) out of the garbage collector's sight.

    A serving process allocates many short-lived objects per request; without this, every full collection walks the
    whole loaded heap again. vLLM's own server does the same once it is up."""
    import gc

    gc.collect()
    gc.freeze()


def node_ip() -> str:
    """The IP other nodes reach this one at (loopback on a one-machine cluster)."""
    import ray

    return ray.util.get_node_ip_address()
