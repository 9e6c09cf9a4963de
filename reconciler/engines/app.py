"""The Serve application builder every reconciler application names as its import path.

``build(args)`` returns either one placed replica of a model (``args["kind"] == "replica"``) or a model's router
(``"router"``). The executor writes these args; observe reads them back from Serve's deployed config, which is how it
recognises applications reconciler created (``managed_by``) and which spec a replica was started from.

Replica args: ``{"managed_by", "kind": "replica", "engine_config": EngineConfig.to_dict(), "restart_hash"}``. The
replica's ``user_config`` carries what may change without a restart (``config_hash``); Serve hands it to
``reconfigure`` without restarting the replica.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import time
from typing import Any

from ray import serve

from reconciler.desired import Engine
from reconciler.engines.router import Router
from reconciler.naming import REPLICA_DEPLOYMENT, AppKind

ENGINES = {
    Engine.ECHO: "reconciler.engines.echo:EchoEngine",
    Engine.VLLM: "reconciler.engines.vllm:VllmEngine",
}


def engine_class(name: str) -> type:
    """The engine class for `name`, imported only when a replica of that engine starts (vLLM is heavy)."""
    try:
        module, attr = ENGINES[name].split(":")
    except KeyError:
        raise ValueError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None
    return getattr(importlib.import_module(module), attr)


@serve.deployment(name=REPLICA_DEPLOYMENT, num_replicas=1, max_ongoing_requests=64)
class Replica:
    def __init__(self, engine_config: dict[str, Any], restart_hash: str) -> None:
        started = time.monotonic()
        self._engine = engine_class(engine_config["engine"])(engine_config)
        # How long the engine took to load: a cold start's share that is the engine's, not Serve's nor ours.
        self._load_seconds = time.monotonic() - started
        self._restart_hash = restart_hash
        self._config_hash = ""
        self._endpoint: Any = None
        self._endpoint_task: asyncio.Future | None = None
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return
        # Listening before Serve reports RUNNING means the gateway's first request finds the endpoint up.
        self._endpoint_task = asyncio.ensure_future(self._start_endpoint())

    async def _start_endpoint(self) -> str:
        from reconciler.engines.endpoint import Endpoint, node_ip
        from reconciler.engines.secret import cluster_secret

        app = self._engine.http_app()
        if inspect.isawaitable(app):
            app = await app
        secret = await asyncio.to_thread(cluster_secret)
        death = getattr(self._engine, "death", None)
        if death is not None:
            from reconciler.engines.guard import EngineGuard

            app = EngineGuard(app, death=death, name=f"{self._engine.config.model}[{self._engine.config.replica}]",
                              on_death=self._record_death)
        self._endpoint = Endpoint(app, node_ip(), secret=secret)
        return await self._endpoint.start()

    async def endpoint(self) -> str:
        """The base URL of this replica's own OpenAI HTTP endpoint (``http://IP:PORT``, paths under ``/v1``)."""
        if self._endpoint_task is None or (self._endpoint_task.done() and self._endpoint_task.exception()):
            self._endpoint_task = asyncio.ensure_future(self._start_endpoint())
        return await asyncio.shield(self._endpoint_task)

    async def channel(self) -> str:
        """Where the gateway's channel to the same app connects (``chan://IP:PORT``; ``engines.channel``)."""
        await self.endpoint()
        return str(self._endpoint.channel_url)

    async def running_requests(self) -> int:
        """Requests the engine holds right now (a cancelled stream leaves this count)."""
        return int(self._engine.running_requests())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self._config_hash = str(user_config.get("config_hash", ""))

    async def openai(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        return await self._engine.openai(endpoint, body)

    async def info(self) -> dict[str, Any]:
        import ray

        info = await self._engine.info()
        context = ray.get_runtime_context()
        return {
            **info,
            "actor_id": context.get_actor_id(),
            "app": serve.get_replica_context().app_name,
            "restart_hash": self._restart_hash,
            "config_hash": self._config_hash,
            "engine_load_seconds": round(self._load_seconds, 3),
        }

    def check_health(self) -> None:
        death = getattr(self._engine, "death", None)
        if death is not None and (why := death()) is not None:
            self._record_death(why)
        self._engine.check_health()

    def _record_death(self, why: str) -> None:
        """Tell the controller, once, that this replica's engine died and why (it names it in status and events)."""
        if getattr(self, "_death_recorded", False):
            return
        self._death_recorded = True
        try:
            from reconciler.engines.deaths import record

            record(app=serve.get_replica_context().app_name, config=self._engine.config, reason=why)
        except Exception:  # noqa: BLE001 - the death is still seen by Serve's health check; the record is a courtesy
            pass

    def __del__(self) -> None:
        # Serve calls this when it stops the replica. Dropping the engine here ends vLLM's engine-core process with
        # the replica rather than whenever the garbage collector gets to it.
        if self._endpoint is not None:
            self._endpoint.stop()
        self._engine = None


def build(args: dict[str, Any]) -> Any:
    kind = args.get("kind")
    if kind == AppKind.REPLICA:
        return Replica.bind(args["engine_config"], args.get("restart_hash", ""))
    if kind == AppKind.ROUTER:
        return Router.bind(args["model"])
    raise ValueError(f"reconciler application args need kind {', '.join(map(repr, map(str, AppKind)))}, got {kind!r}")
