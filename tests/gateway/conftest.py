"""Gateways and echo replicas as real HTTP servers on 127.0.0.1, without Ray: each replica is the echo engine's own
app served by the same `Endpoint` a replica uses, and the gateway finds them through a plain lookup."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field
from typing import Any, Iterator

import pytest

from reconciler.engines import EngineConfig
from reconciler.engines.echo import EchoEngine
from reconciler.engines.endpoint import Endpoint
from reconciler.gateway.server import Gateway
from reconciler.gateway.table import ModelRoute, RouteTable
from reconciler.settings import DEFAULTS, GatewayLimits


def echo(model: str, replica: int = 0, **engine_args: Any) -> EchoEngine:
    return EchoEngine(EngineConfig(model=model, replica=replica, engine="echo", source="", vram_bytes=1,
                                   gpu_memory_bytes=1, tensor_parallel=1, node="n", gpus=(0,),
                                   engine_args=engine_args).to_dict())


@dataclass
class Rig:
    loop: asyncio.AbstractEventLoop
    gateway: Gateway
    url: str
    engines: dict[str, EchoEngine] = field(default_factory=dict)
    endpoints: dict[str, Endpoint] = field(default_factory=dict)
    lookups: list[str] = field(default_factory=list)
    secret: str | None = None

    def call(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def publish(self, *models: ModelRoute) -> None:
        self.loop.call_soon_threadsafe(self.gateway.set_table, RouteTable(models=models, created=1700000000))

    def add_replica(self, app: str, engine: EchoEngine) -> str:
        async def start() -> str:
            endpoint = Endpoint(engine.http_app(), "127.0.0.1", secret=self.secret)
            self.endpoints[app] = endpoint
            return await endpoint.start()

        self.engines[app] = engine
        return self.call(start())

    def stop_replica(self, app: str) -> None:
        endpoint = self.endpoints.pop(app)

        async def stop() -> None:
            endpoint.stop()
            while not endpoint._task.done():
                await asyncio.sleep(0.01)

        self.call(stop())


def route(name: str, *backends: str, state: str = "running", desired: int | None = None,
          load_timeout: int | None = None) -> ModelRoute:
    return ModelRoute(name=name, state=state, desired=len(backends) if desired is None else desired,
                      backends=tuple(backends), route=f"/{name}", engine="echo", load_timeout=load_timeout)


@contextlib.contextmanager
def running_rig(*, limits: GatewayLimits | None = None, secret: str | None = None) -> Iterator[Rig]:
    """A gateway on its own loop and thread, with replicas added as real endpoints (``secret``: replicas and gateway
    share it, as on a cluster)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    holder: dict[str, Rig] = {}

    async def resolve(app: str) -> str:
        holder["rig"].lookups.append(app)
        endpoint = holder["rig"].endpoints.get(app)
        if endpoint is None:
            raise LookupError(f"no application {app}")
        return endpoint.url

    gateway = Gateway(resolve, limits=limits or DEFAULTS.apply.gateway.limits, secret=secret)
    url = asyncio.run_coroutine_threadsafe(gateway.start("127.0.0.1", 0), loop).result(10)
    holder["rig"] = Rig(loop=loop, gateway=gateway, url=url, secret=secret)
    try:
        yield holder["rig"]
    finally:
        for app in list(holder["rig"].endpoints):
            holder["rig"].stop_replica(app)
        asyncio.run_coroutine_threadsafe(gateway.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)


@pytest.fixture()
def rig():
    with running_rig() as started:
        yield started
