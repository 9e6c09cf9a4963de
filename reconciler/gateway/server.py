"""The gateway: one OpenAI base URL for every model, routed by ``model`` to the replicas' own endpoints.

This module holds its state and lifecycle: the route table and keys, the on-demand hold queues and demand meters, and
the listening server. What happens to a request lives with its concept: ``routes`` (the HTTP surface and the order of
a request's steps), ``admission`` (keys, limits, the body within bounds), ``upstream`` (the exchange with replicas
and the stream relay), ``retry`` (what a failure may do next) and ``errors`` (what a client is told).

On-demand models (a route with ``load_timeout``) that have no replica hold their requests instead of refusing them:
up to ``queue_limit`` per model wait (``hold.HoldQueue``) until a route table with replicas arrives, then go on as
any request, oldest first; past their loadTimeout they get 504. The first request held for a model wakes whoever
waits in ``wait_wake`` (the controller), and ``demand()`` reports each model's load (``demand.Meter``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from aiohttp import web

from reconciler.desired import ApiKey
from reconciler.demand import ModelDemand
from reconciler.gateway import errors
from reconciler.gateway.admission import HeldBytes
from reconciler.gateway.connections import GuardedRunner
from reconciler.gateway.demand import HISTORY_S, Meter
from reconciler.gateway.errors import GatewayError
from reconciler.gateway.hold import HoldQueue
from reconciler.gateway.limits import Limiter
from reconciler.gateway.observer import Observer, Silent
from reconciler.gateway.table import RUNNING, ModelRoute, RouteTable
from reconciler.gateway.upstream import RETRY_AFTER_S, Upstream
from reconciler.settings import DEFAULTS, GatewayLimits

Resolver = Callable[[str], Awaitable[str]]

IN_FLIGHT_REPORT_S = 1.0
# Why a held request's model got no replica in time, by the model's state in the latest table.
NOT_LOADED = {
    "idle": "no replica was placed for it",
    "starting": "its replica was still starting",
    "unplaced": "no GPU has room for it at its priority",
    "stopped": "it is stopped",
}


class Gateway:
    def __init__(self, resolve: Resolver, table: RouteTable | None = None, observer: Observer | None = None, *,
                 queue_limit: int = DEFAULTS.apply.gateway.queue_limit, history_s: int = HISTORY_S,
                 limits: GatewayLimits = DEFAULTS.apply.gateway.limits, secret: str | None = None) -> None:
        self.limits = limits
        self.upstream = Upstream(resolve, limits=limits, secret=secret, observer=observer or Silent())
        self.table = RouteTable()
        self.keys: dict[str, ApiKey] = {}
        self.limiter = Limiter()
        self._runner: web.AppRunner | None = None
        self.url: str | None = None
        self._reporter: asyncio.Future | None = None
        self._queue_limit = queue_limit
        self.queue_limit = queue_limit
        self._history_s = history_s
        self.holds: dict[str, HoldQueue] = {}
        self.held_bytes = HeldBytes(limits.held_bytes)
        self.upstream.held_bytes = self.held_bytes  # a request waiting for a restarted replica holds its body too
        self.meters: dict[str, Meter] = {}
        self._woken: set[str] = set()  # models whose first request was held since wait_wake last answered
        self._wake = asyncio.Event()
        self._reported: set[tuple[str, str]] = set()  # (model, replica) gauges set, so the ones that left are zeroed
        self.set_table(table or RouteTable())

    @property
    def queue_limit(self) -> int:
        """Requests held per model: for an on-demand model to load, or for a restarting model's replacement."""
        return self._queue_limit

    @queue_limit.setter
    def queue_limit(self, limit: int) -> None:
        self._queue_limit = limit
        self.upstream.restart_queue = limit

    @property
    def observer(self) -> Observer:
        return self.upstream.observer

    @observer.setter
    def observer(self, observer: Observer) -> None:
        self.upstream.observer = observer

    @property
    def in_flight(self) -> dict[str, int]:
        return self.upstream.in_flight

    # ------------------------------------------------------------------------------------------------- lifecycle

    def app(self) -> web.Application:
        from reconciler.gateway.routes import build_app

        return build_app(self)

    async def start(self, host: str, port: int, *, advertise: str | None = None) -> str:
        # handler_cancellation: a client that goes away cancels its handler, so the upstream request is closed too.
        limits = self.limits
        self._runner = GuardedRunner(self.app(), header_timeout=limits.header_timeout,
                                     write_timeout=limits.write_timeout, max_connections=limits.max_connections,
                                     access_log=None, handler_cancellation=True,
                                     keepalive_timeout=limits.keepalive_timeout)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True, backlog=1024)
        await site.start()
        bound = self._runner.addresses[0][1] if port == 0 else port
        self._reporter = asyncio.ensure_future(self._report_in_flight())
        shown = advertise or host
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{bound}/v1"
        return self.url

    async def _report_in_flight(self) -> None:
        # Sampled, not per request: a gauge is read every scrape interval, and setting it twice per request cost
        # a measurable share of the gateway's CPU.
        while True:
            reported: set[tuple[str, str]] = set()
            for model in self.table.models:
                for app in model.backends:
                    self.observer.in_flight(model=model.name, replica=app, count=self.in_flight.get(app, 0))
                    reported.add((model.name, app))
                if model.holds:
                    self.observer.queued(model=model.name, count=len(self.holds.get(model.name, ())))
            for model_name, app in self._reported - reported:  # a replica that left: its gauge must not stay up
                self.observer.in_flight(model=model_name, replica=app, count=0)
            self._reported = reported
            await asyncio.sleep(IN_FLIGHT_REPORT_S)

    async def stop(self) -> None:
        if self._reporter is not None:
            self._reporter.cancel()
        if self._runner is not None:
            await self._runner.cleanup()
        await self.upstream.close()

    def set_table(self, table: RouteTable) -> None:
        self.table = table
        self.keys = {k.sha256: k for k in table.keys}
        self.upstream.forget_apps({b for m in table.models for b in m.backends})
        now = time.time()
        for model in table.models:  # a model's history starts when the gateway first hears of it
            if model.name not in self.meters:
                self.meters[model.name] = Meter(model.name, now=now, keep_s=self._history_s)
        for name in [n for n, m in self.meters.items() if m.idle and table.model(n) is None]:
            del self.meters[name]
        for name, queue in self.holds.items():
            if queue:
                outcome = self._held_outcome(name, table)
                if outcome is not None:
                    queue.release(outcome)

    @staticmethod
    def _held_outcome(name: str, table: RouteTable) -> ModelRoute | GatewayError | None:
        """What requests held for ``name`` do under a new table: go to its replicas, fail, or (None) keep waiting."""
        route = table.model(name)
        if route is None:
            return errors.unknown_model(name, [])
        if route.backends:
            return route
        if not route.holds:  # no longer on demand: answered as any model without a replica
            return errors.no_replica(name, route.state if route.state != RUNNING else "starting", RETRY_AFTER_S)
        return None

    # ---------------------------------------------------------------------------------------------------- demand

    def demand(self) -> list[ModelDemand]:
        """Every known model's demand on this gateway, by name."""
        now = time.time()
        return [meter.report(now=now, oldest_queued=self.holds[name].oldest if name in self.holds else None)
                for name, meter in sorted(self.meters.items())]

    async def wait_wake(self, timeout: float) -> list[str]:
        """The models with requests held, once a model's first request is held (at once if one was since the last
        answer); [] when ``timeout`` passes first. A cancelled wait reports nothing, so the next one still sees it."""
        deadline = time.monotonic() + timeout
        while not self._woken:
            left = deadline - time.monotonic()
            if left <= 0:
                return []
            self._wake.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                return []
        woken, self._woken = self._woken, set()
        return sorted(woken | {name for name, queue in self.holds.items() if queue})

    def meter(self, name: str) -> Meter:
        meter = self.meters.get(name)
        if meter is None:
            meter = self.meters[name] = Meter(name, now=time.time(), keep_s=self._history_s)
        return meter

    # ------------------------------------------------------------------------------------------------------ hold

    async def hold(self, model: ModelRoute, meter: Meter, size: int) -> ModelRoute | GatewayError:
        """Wait for ``model`` to get a replica: its route with replicas, or why the request is refused."""
        assert model.load_timeout is not None
        queue = self.holds.get(model.name)
        if queue is None:
            queue = self.holds[model.name] = HoldQueue()
        if len(queue) >= self.queue_limit or not self.held_bytes.take(size):
            self.observer.refused(model=model.name, reason="queue_full")
            return errors.queue_full(model.name, self.queue_limit, RETRY_AFTER_S)
        if not queue:
            self._woken.add(model.name)
            self._wake.set()
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        now = time.time()
        queue.add(future, now)
        meter.step(now=now, queued=1)
        held_at = time.monotonic()
        try:
            async with asyncio.timeout(model.load_timeout):
                outcome = await future
        except TimeoutError:
            self.observer.refused(model=model.name, reason="load_timeout")
            latest = self.table.model(model.name) or model
            return errors.load_timeout(model.name, model.load_timeout, NOT_LOADED.get(latest.state, latest.state))
        finally:
            queue.discard(future)  # released, timed out or its client left: no longer waiting
            self.held_bytes.give(size)
            meter.step(now=time.time(), queued=-1)
        if isinstance(outcome, ModelRoute):
            self.observer.cold_start(model=model.name, seconds=time.monotonic() - held_at)
        return outcome
