"""The gateway's route table: every Model of the specs, its state and the replica applications that serve it. Pure.

The executor builds it from the Serve applications it just put (each model's router names the replicas that may take
traffic, which is how make-before-break switches) and publishes it to every gateway, which routes from it and answers
``GET /v1/models`` from it. It travels as plain JSON (``to_dict``/``from_dict``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from reconciler.desired import ApiKey, Gateway

RUNNING, STARTING, UNPLACED, STOPPED = "running", "starting", "unplaced", "stopped"
IDLE = "idle"  # `replicas: {min: 0, ...}` with no replica now: the first request loads it


@dataclass(frozen=True, slots=True)
class ModelRoute:
    name: str
    state: str  # running | starting | unplaced | stopped, as of the publication
    desired: int | None  # replicas the spec asks for (None: as many as fit)
    backends: tuple[str, ...]  # Serve applications of the replicas that take traffic
    route: str  # the model's own Serve route prefix, which keeps working
    engine: str
    max_model_len: int | None = None
    # On-demand models (`replicas: {min, max}`): a request that finds no replica is held this many seconds for one
    # to start (the spec's loadTimeout). None: answered 503 at once, as for a model pinned at a count.
    load_timeout: int | None = None

    @property
    def holds(self) -> bool:
        return self.load_timeout is not None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "state": self.state, "desired": self.desired, "backends": list(self.backends),
                "route": self.route, "engine": self.engine, "max_model_len": self.max_model_len,
                "load_timeout": self.load_timeout}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelRoute":
        return cls(name=data["name"], state=data["state"], desired=data.get("desired"),
                   backends=tuple(data.get("backends", ())), route=data.get("route", ""),
                   engine=data.get("engine", ""), max_model_len=data.get("max_model_len"),
                   load_timeout=data.get("load_timeout"))


def _key_to_dict(key: ApiKey) -> dict[str, Any]:
    return {"name": key.name, "sha256": key.sha256, "models": list(key.models),
            "requests_per_minute": key.requests_per_minute, "concurrent_requests": key.concurrent_requests,
            "tokens_per_minute": key.tokens_per_minute}


def _key_from_dict(data: Mapping[str, Any]) -> ApiKey:
    return ApiKey(name=data["name"], sha256=data["sha256"], models=tuple(data.get("models") or ("*",)),
                  requests_per_minute=data.get("requests_per_minute"),
                  concurrent_requests=data.get("concurrent_requests"),
                  tokens_per_minute=data.get("tokens_per_minute"))


@dataclass(frozen=True, slots=True)
class RouteTable:
    models: tuple[ModelRoute, ...] = ()
    created: int = 0  # unix time of the publication: OpenAI's `created` of every listed model
    keys: tuple[ApiKey, ...] = ()  # hashes only; with none, the gateway is open

    def model(self, name: str) -> ModelRoute | None:
        for m in self.models:
            if m.name == name:
                return m
        return None

    @property
    def names(self) -> list[str]:
        return [m.name for m in self.models]

    @property
    def open(self) -> bool:
        return not self.keys

    def same_routes(self, other: "RouteTable") -> bool:
        """Equal but for the publication time: nothing a gateway would do differently."""
        return (self.models, self.keys) == (other.models, other.keys)

    def to_dict(self) -> dict[str, Any]:
        return {"models": [m.to_dict() for m in self.models], "created": self.created,
                "keys": [_key_to_dict(k) for k in self.keys]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "RouteTable":
        return cls(models=tuple(ModelRoute.from_dict(m) for m in data.get("models", ())),
                   created=int(data.get("created", 0)),
                   keys=tuple(_key_from_dict(k) for k in data.get("keys", ())))


def model_state(*, desired: int | None, backends: int, unplaced: bool, on_demand: bool = False) -> str:
    if desired == 0:
        return IDLE if on_demand and not backends else STOPPED
    if backends:
        return RUNNING
    return UNPLACED if unplaced else STARTING


def build_table(
    *,
    models: Iterable[Any],
    apps: Mapping[str, Mapping[str, Any]],
    unplaced: Iterable[str] = (),
    created: int = 0,
    gateway: Gateway | None = None,
) -> RouteTable:
    """The table for ``models`` (desired Models) given our Serve application configs ``apps`` (name -> config).

    A model's backends are those its router names; a model without a router (no replica yet) has none.
    """
    backends: dict[str, tuple[str, ...]] = {}
    for config in apps.values():
        args = config.get("args") or {}
        if args.get("kind") != "router":
            continue
        names: list[str] = []
        for deployment in config.get("deployments") or ():
            names.extend((deployment.get("user_config") or {}).get("backends") or ())
        backends[str(args.get("model"))] = tuple(sorted(set(names)))
    short = set(unplaced)
    routes = []
    for model in sorted(models, key=lambda m: m.name):
        mine = backends.get(model.name, ())
        max_len = model.engine_args.get("max_model_len", model.engine_args.get("max-model-len"))
        scaling = model.scaling
        routes.append(ModelRoute(
            name=model.name,
            state=model_state(desired=model.replicas, backends=len(mine), unplaced=model.name in short,
                              on_demand=scaling is not None),
            desired=model.replicas,
            backends=mine,
            route=model.route or f"/{model.name}",
            engine=str(model.engine),
            max_model_len=int(max_len) if isinstance(max_len, int) or str(max_len).isdigit() else None,
            load_timeout=scaling.load_timeout if scaling is not None else None,
        ))
    return RouteTable(models=tuple(routes), created=created, keys=gateway.keys if gateway is not None else ())
