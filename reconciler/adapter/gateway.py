"""The gateways as Ray actors: one per node address, detached, each serving the gateway on the same port.

``publish(cluster, table)`` stores the route table in Ray's internal KV (a gateway that restarts reads it back),
starts the gateways that are missing and hands each the table; it returns their base URLs. Inside a gateway,
replica endpoints are found through Serve handles (``Replica.endpoint``): the only Ray calls the gateway makes.

For on-demand models the controller asks the gateways for their ``demand`` (merged across gateways) and waits in
``wait_wake`` for the first request held for a model with no replica, which ends its poll interval at once.

A gateway that does not answer in time (paused, overloaded, its node in trouble) is never read as having nothing: its
demand makes the merged report ``partial`` and its requests in flight are unknown (``InFlight.silent``), so neither
an idle rule nor a drain stops a replica under it. Calls left pending are not cancelled where their effect is still
wanted (a route table lands when the gateway resumes).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from reconciler.adapter.reach import StillRunning, bounded, gathered
from reconciler.demand import ModelDemand, from_json, merge, to_json
from reconciler.errors import TransientError
from reconciler.naming import KV_NAMESPACE, ROUTE_TABLE_KEY
from reconciler.settings import DEFAULTS, GatewayLimits, GatewaySettings
from reconciler.gateway.table import RouteTable

NAMESPACE = KV_NAMESPACE
TABLE_KEY = ROUTE_TABLE_KEY
ACTOR_PREFIX = "gateway-"
START_TIMEOUT_S = 60.0
CALL_TIMEOUT_S = 10.0
RESOLVE_TIMEOUT_S = 5.0
WILDCARD_HOSTS = ("0.0.0.0", "::", "")
DEMAND_TIMEOUT_S = 2.0  # a gateway slower than this to say its demand or in-flight count is silent this round
# Calls at once on one gateway actor: a controller's wait_wake stays pending while tables and demand go through.
MAX_CONCURRENCY = 16


LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
COLD_START_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)  # an engine loads in seconds to minutes


class RayMetrics:
    """The gateway's metrics through Ray's metrics agent: every node's gateway shows up in one Prometheus scrape
    config (Ray's service discovery), with the usual ``ray_`` prefix."""

    def __init__(self) -> None:
        from ray.util import metrics

        self._requests = metrics.Counter(
            "reconciler_gateway_requests", "Requests through the gateway, by model, key name and HTTP status",
            tag_keys=("model", "key", "status"))
        self._latency = metrics.Histogram(
            "reconciler_gateway_request_seconds", "Time from request to the end of the answer, by model and key name",
            boundaries=list(LATENCY_BUCKETS), tag_keys=("model", "key"))
        self._first = metrics.Histogram(
            "reconciler_gateway_time_to_first_token_seconds", "Streams: time from request to the first chunk",
            boundaries=list(LATENCY_BUCKETS), tag_keys=("model", "key"))
        self._tokens = metrics.Counter(
            "reconciler_gateway_tokens", "Tokens of answered requests (from their usage), by model, key name and kind",
            tag_keys=("model", "key", "kind"))
        self._in_flight = metrics.Gauge(
            "reconciler_gateway_in_flight", "Requests this gateway has in flight to each replica",
            tag_keys=("model", "replica"))
        self._queued = metrics.Gauge(
            "reconciler_gateway_queued", "Requests this gateway holds for a model until it has a replica",
            tag_keys=("model",))
        self._cold_start = metrics.Histogram(
            "reconciler_gateway_cold_start_seconds", "Time a request was held before a replica took it, by model",
            boundaries=list(COLD_START_BUCKETS), tag_keys=("model",))
        self._refused = metrics.Counter(
            "reconciler_gateway_held_refused", "Requests refused instead of held, by model and reason "
            "(queue_full, load_timeout)", tag_keys=("model", "reason"))

    def request(self, *, model: str, key: str, status: int, seconds: float) -> None:
        tags = {"model": model, "key": key}
        self._requests.inc(1, {**tags, "status": str(status)})
        self._latency.observe(seconds, tags)

    def first_token(self, *, model: str, key: str, seconds: float) -> None:
        self._first.observe(seconds, {"model": model, "key": key})

    def tokens(self, *, model: str, key: str, prompt: int, completion: int) -> None:
        if prompt:
            self._tokens.inc(prompt, {"model": model, "key": key, "kind": "prompt"})
        if completion:
            self._tokens.inc(completion, {"model": model, "key": key, "kind": "completion"})

    def in_flight(self, *, model: str, replica: str, count: int) -> None:
        self._in_flight.set(count, {"model": model, "replica": replica})

    def queued(self, *, model: str, count: int) -> None:
        self._queued.set(count, {"model": model})

    def cold_start(self, *, model: str, seconds: float) -> None:
        self._cold_start.observe(seconds, {"model": model})

    def refused(self, *, model: str, reason: str) -> None:
        self._refused.inc(1, {"model": model, "reason": reason})


class GatewayActor:
    """Runs the gateway on its own thread and event loop (uvloop), apart from the actor's method calls.

    Ray runs the methods on the actor's own event loop (the class has async methods), concurrently; whatever reads
    or changes the gateway's state runs on the gateway's loop, so the two threads never share it."""

    def __init__(self, host: str, port: int, advertise: str,
                 queue_limit: int = DEFAULTS.apply.gateway.queue_limit,
                 limits: GatewayLimits = DEFAULTS.apply.gateway.limits) -> None:
        from reconciler.gateway.server import Gateway

        self._handles: dict[str, Any] = {}
        self._listen = (host, port)
        from reconciler.engines.secret import cluster_secret

        self._gateway = Gateway(self._resolve, _stored_table(), RayMetrics(), queue_limit=queue_limit,
                                limits=limits, secret=cluster_secret())
        self._loop = _new_loop()
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(self._loop)
            try:
                self._loop.run_until_complete(self._gateway.start(host, port, advertise=advertise))
            except BaseException as exc:  # reported to the constructor below
                failure.append(exc)
                started.set()
                return
            started.set()
            self._loop.run_forever()

        threading.Thread(target=run, name="gateway", daemon=True).start()
        started.wait(START_TIMEOUT_S)
        if failure:
            raise RuntimeError(f"the gateway cannot listen on {host}:{port}: {failure[0]}")
        from reconciler.engines.endpoint import freeze_heap

        freeze_heap()

    def url(self) -> str:
        return str(self._gateway.url)

    def listen(self) -> tuple[str, int]:
        return self._listen

    def set_table(self, data: dict[str, Any]) -> int:
        table = RouteTable.from_dict(data)
        self._loop.call_soon_threadsafe(self._gateway.set_table, table)
        return len(table.models)

    def set_queue_limit(self, limit: int) -> int:
        self._loop.call_soon_threadsafe(setattr, self._gateway, "queue_limit", limit)
        return limit

    async def in_flight(self) -> dict[str, int]:
        return await self._on_loop(lambda: {app: n for app, n in self._gateway.in_flight.items() if n})

    async def demand(self) -> list[dict[str, Any]]:
        """Every model's demand on this gateway, as ``reconciler.demand.to_json`` writes it."""
        return await self._on_loop(lambda: [to_json(d) for d in self._gateway.demand()])

    async def wait_wake(self, timeout: float) -> list[str]:
        """The models with held requests once one more model has some; [] after ``timeout``."""
        return await asyncio.wrap_future(
            asyncio.run_coroutine_threadsafe(self._gateway.wait_wake(timeout), self._loop))

    async def _on_loop(self, read: Any) -> Any:
        async def call() -> Any:
            return read()

        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(call(), self._loop))

    async def _resolve(self, app: str) -> str:
        return await asyncio.to_thread(self._endpoint_of, app)

    def _endpoint_of(self, app: str) -> str:
        from ray import serve

        handle = self._handles.get(app)
        if handle is None:
            handle = self._handles[app] = serve.get_app_handle(app)
        try:
            # The replica's channel: the gateway's requests to it share one connection (``engines.channel``).
            return str(handle.channel.remote().result(timeout_s=RESOLVE_TIMEOUT_S))
        except Exception:
            self._handles.pop(app, None)
            raise


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # uvloop is an optimisation, not a requirement
        return asyncio.new_event_loop()


def _stored_table() -> RouteTable:
    from reconciler.adapter.kv import RayKV

    raw = RayKV(namespace=NAMESPACE).get(TABLE_KEY.decode())
    return RouteTable.from_dict(json.loads(raw)) if raw else RouteTable()


def _gateway_nodes() -> dict[str, str]:
    """One node per distinct node address (address -> node id): gateways on one address would share the port."""
    chosen: dict[str, str] = {}
    from reconciler.adapter.nodetable import node_table

    for node in sorted(node_table(), key=lambda n: n["NodeID"]):
        if node.get("Alive") and node.get("NodeManagerAddress"):
            chosen.setdefault(node["NodeManagerAddress"], node["NodeID"])
    return chosen


def _actor_name(address: str) -> str:
    return ACTOR_PREFIX + address.replace(":", "_")


def ensure(cluster: Any, settings: GatewaySettings = DEFAULTS.apply.gateway) -> tuple[dict[str, Any], frozenset[str]]:
    """The gateway actors, one per node address, started where missing (address -> actor handle), and the addresses
    of those that exist but did not answer within ``CALL_TIMEOUT_S`` (kept: they may hold requests in flight)."""
    ray = cluster._driver()
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    http = cluster.serve_details().get("http_options") or {}
    host, port = settings.listen(serve_host=http.get("host"), serve_port=http.get("port"))
    actors: dict[str, Any] = {}
    silent: set[str] = set()
    nodes = _gateway_nodes()
    existing: dict[str, Any] = {}
    for address in nodes:
        if (actor := _named(ray, _actor_name(address))) is not None:
            existing[address] = actor
    listening = _answers(ray, {address: actor.listen.remote() for address, actor in existing.items()},
                         timeout=CALL_TIMEOUT_S)
    for address, node_id in nodes.items():
        name = _actor_name(address)
        if address in existing:
            if address not in listening:
                # Silent (paused, busy): it may hold requests in flight, so it is kept as it is, never replaced.
                actors[address] = existing[address]
                silent.add(address)
                continue
            if tuple(listening[address]) == (host or "0.0.0.0", port):
                existing[address].set_queue_limit.remote(settings.queue_limit)
                actors[address] = existing[address]
                continue
            ray.kill(existing[address])  # the Gateway spec moved it: a new one listens where asked
            _wait_gone(ray, name)
        advertise = address if host in WILDCARD_HOSTS else host
        actors[address] = (
            ray.remote(GatewayActor)
            .options(
                name=name,
                namespace=NAMESPACE,
                lifetime="detached",
                get_if_exists=True,
                num_cpus=0,
                max_restarts=-1,
                max_concurrency=MAX_CONCURRENCY,
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            )
            .remote(host or "0.0.0.0", port, advertise, settings.queue_limit, settings.limits)
        )
    return actors, frozenset(silent)


def stored_table(cluster: Any) -> RouteTable:
    """The route table last published (empty when none was)."""
    cluster._driver()
    return _stored_table()


def _wait_gone(ray: Any, name: str) -> None:
    deadline = time.monotonic() + CALL_TIMEOUT_S
    while time.monotonic() < deadline:
        if _named(ray, name) is None:
            return
        time.sleep(0.1)


def publish(cluster: Any, table: RouteTable, settings: GatewaySettings = DEFAULTS.apply.gateway) -> list[str]:
    """Store `table`, make sure every gateway runs and holds it; the gateways' base URLs (ending in /v1)."""
    ray = cluster._driver()
    from reconciler.adapter.kv import RayKV

    data = table.to_dict()
    RayKV(namespace=NAMESPACE).put(TABLE_KEY.decode(), json.dumps(data).encode())
    if not settings.enabled:
        return []
    actors, silent = ensure(cluster, settings)
    # A silent gateway is not waited for: the call stays queued and lands when it answers again (a drain meanwhile
    # counts it as busy, see ``in_flight``).
    refs = {address: actor.set_table.remote(data) for address, actor in actors.items()}
    taken = _answers(ray, {a: ref for a, ref in refs.items() if a not in silent}, timeout=START_TIMEOUT_S,
                     cancel=False)
    if not taken and actors:
        raise TimeoutError("no gateway answered in time to take the route table (it is queued for when they do)")
    found = _answers(ray, {address: actors[address].url.remote() for address in taken}, timeout=CALL_TIMEOUT_S)
    return sorted(found.values())


def _answers(ray: Any, refs: dict[str, Any], *, timeout: float, cancel: bool = True) -> dict[str, Any]:
    """The results of the calls that answered within ``timeout`` (key -> result); the others are cancelled unless
    their effect is still wanted when they land, and calls that failed are left out (a gateway that failed the call
    says nothing this round)."""
    return gathered(ray, refs, timeout=timeout, cancel=cancel)[0]


def _running(ray: Any) -> list[Any]:
    """Handles of the gateway actors that exist now."""
    found = [_named(ray, _actor_name(address)) for address in _gateway_nodes()]
    return [actor for actor in found if actor is not None]


def _named(ray: Any, name: str, timeout: float = DEFAULTS.cluster.gcs_timeout) -> Any:
    """The handle of the gateway actor ``name``, or None where there is none.

    ``ray.get_actor`` takes no timeout: on a GCS that stopped answering it waits until Ray ends the driver, long
    after a watch should have let its connection go. It runs here on a thread of its own, given up after
    ``timeout`` seconds like every other GCS call (the thread stays in Ray's call until Ray's own timer ends it)."""

    def look() -> Any:
        try:
            return ray.get_actor(name, namespace=NAMESPACE)
        except ValueError:  # no actor by that name
            return None

    try:
        return bounded(look, timeout, name="gateway-lookup")
    except StillRunning:
        raise TransientError(f"the cluster's GCS did not answer a lookup of the gateway actor {name!r} within "
                             f"{timeout:g} s") from None


def urls(cluster: Any) -> list[str]:
    """The base URLs of the running gateways (empty when none was started yet)."""
    ray = cluster._driver()
    found = []
    for actor in _running(ray):
        try:
            found.append(ray.get(actor.url.remote(), timeout=CALL_TIMEOUT_S))
        except Exception:  # noqa: BLE001 - its node is going away: not a URL to hand out
            continue
    return sorted(found)


@dataclass(frozen=True, slots=True)
class InFlight:
    """Requests in flight per replica application over the gateways that answered, and how many did not."""

    counts: dict[str, int] = field(default_factory=dict)
    silent: int = 0  # gateways that did not answer in time: what they have in flight is unknown


def in_flight(cluster: Any) -> InFlight:
    """Requests in flight per replica application, summed over the gateways; those that do not answer within
    ``DEMAND_TIMEOUT_S`` are counted as silent, not as idle."""
    ray = cluster._driver()
    actors = _running(ray)
    answered = _answers(ray, {str(n): actor.in_flight.remote() for n, actor in enumerate(actors)},
                        timeout=DEMAND_TIMEOUT_S)
    totals: dict[str, int] = {}
    for counts in answered.values():
        for app, n in counts.items():
            totals[app] = totals.get(app, 0) + n
    return InFlight(counts=totals, silent=len(actors) - len(answered))


def stop(cluster: Any) -> None:
    """Stop every gateway (the specs asked for no endpoint, or the cluster is being taken down)."""
    ray = cluster._driver()
    for actor in _running(ray):
        ray.kill(actor)


def wait_url(cluster: Any, timeout: float = START_TIMEOUT_S) -> str:
    """The first gateway's base URL, once one answers."""
    deadline = time.monotonic() + timeout
    while True:
        found = urls(cluster)
        if found or time.monotonic() > deadline:
            if not found:
                raise TimeoutError(f"no gateway answered within {timeout:.0f}s")
            return found[0]
        time.sleep(0.2)


def demand(cluster: Any) -> tuple[ModelDemand, ...]:
    """Every model's demand over all gateways, merged (sorted by model). A gateway that does not answer within
    ``DEMAND_TIMEOUT_S`` (or fails) makes it partial: what the others saw is a lower bound."""
    ray = cluster._driver()
    actors = _running(ray)
    answered = _answers(ray, {str(n): actor.demand.remote() for n, actor in enumerate(actors)},
                        timeout=DEMAND_TIMEOUT_S)
    parts = [from_json(d) for report in answered.values() for d in report]
    return merge(parts, partial=len(answered) < len(actors))


def wait_wake(cluster: Any, timeout: float) -> list[str]:
    """Wait until some gateway holds requests for a model that had none (its models with held requests), or
    ``timeout`` seconds ([]). The waits left pending are cancelled, so their gateways report on the next call."""
    ray = cluster._driver()
    started = time.monotonic()
    pending = [actor.wait_wake.remote(timeout) for actor in _running(ray)]
    deadline = started + timeout + DEMAND_TIMEOUT_S
    woken: set[str] = set()
    while pending and not woken:
        ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
        if not ready:
            break
        try:
            woken.update(ray.get(ready[0]))
        except Exception:  # noqa: BLE001 - a gateway that died while waiting says nothing
            continue
    for ref in pending:
        ray.cancel(ref)
    if not woken:
        # No gateway, or every one failed at once: still wait out the time, as callers loop on this.
        time.sleep(max(0.0, started + timeout - time.monotonic()))
    return sorted(woken)
