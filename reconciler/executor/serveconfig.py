"""Serve application configs for reconciler's replicas and routers, and the whole-cluster config around them. Pure."""

from __future__ import annotations

from typing import Any

from reconciler.engines import EngineConfig
from reconciler import naming
from reconciler.observed import NODE_NAME_LABEL
from reconciler.plan import Location, ModelRuntime
from reconciler.settings import DEFAULTS
from reconciler.sizing.estimate import estimate_to_json


def replica_app_name(model: ModelRuntime, replica: int, location: Location) -> str:
    return naming.replica_app(model.name, replica, naming.generation(model.restart_hash, location))


def replica_app(*, model: ModelRuntime, replica: int, location: Location, gpu_memory: int) -> dict[str, Any]:
    """One placed replica: pinned to its node by label, to its GPUs by VRAM resources and CUDA_VISIBLE_DEVICES."""
    engine = EngineConfig(
        model=model.name,
        replica=replica,
        engine=model.engine,
        source=model.source,
        vram_bytes=model.vram,
        gpu_memory_bytes=gpu_memory,
        tensor_parallel=model.tensor_parallel,
        node=location.node,
        gpus=location.gpus,
        engine_args=model.engine_args,
        sizing=None if model.sizing is None else estimate_to_json(model.sizing),
    )
    resources = {naming.vram_resource(location.node, gpu): naming.vram_mib(model.vram) for gpu in location.gpus}
    return {
        "name": replica_app_name(model, replica, location),
        "route_prefix": None,  # reached through the model's router only
        "import_path": naming.IMPORT_PATH,
        "args": {
            "managed_by": naming.MANAGED_BY,
            "kind": str(naming.AppKind.REPLICA),
            "engine_config": engine.to_dict(),
            "restart_hash": model.restart_hash,
        },
        "deployments": [
            {
                "name": naming.REPLICA_DEPLOYMENT,
                "num_replicas": 1,
                "user_config": {"config_hash": model.config_hash},
                "health_check_period_s": DEFAULTS.serve.health_check_period,
                "graceful_shutdown_wait_loop_s": DEFAULTS.serve.graceful_shutdown_wait_loop,
                "ray_actor_options": {
                    "num_cpus": 0,
                    "num_gpus": 0,
                    "resources": resources,
                    "label_selector": {NODE_NAME_LABEL: location.node},
                    "runtime_env": {"env_vars": {"CUDA_VISIBLE_DEVICES": naming.cuda_visible_devices(location.gpus)}},
                },
            }
        ],
    }


def router_app(*, model: ModelRuntime, backends: list[str]) -> dict[str, Any]:
    return {
        "name": naming.router_app(model.name),
        "route_prefix": model.route,
        "import_path": naming.IMPORT_PATH,
        "args": {"managed_by": naming.MANAGED_BY, "kind": str(naming.AppKind.ROUTER), "model": model.name},
        "deployments": [
            {
                "name": naming.ROUTER_DEPLOYMENT,
                "num_replicas": 1,
                "user_config": {"backends": sorted(backends), "config_hash": model.config_hash},
            }
        ],
    }


def with_backends(router: dict[str, Any], backends: list[str]) -> dict[str, Any]:
    """The same router config with another backend list (a user_config change: the router does not restart)."""
    deployments = []
    for deployment in router["deployments"]:
        user_config = {**(deployment.get("user_config") or {}), "backends": sorted(backends)}
        deployments.append({**deployment, "user_config": user_config})
    return {**router, "deployments": deployments}


def whole_config(details: dict[str, Any], foreign: list[dict[str, Any]], ours: dict[str, dict[str, Any]]) -> dict:
    """What to PUT: Serve's cluster-wide options as they are, foreign applications exactly as deployed, then ours."""
    config: dict[str, Any] = {"applications": [*foreign, *(ours[name] for name in sorted(ours))]}
    if details.get("proxy_location"):
        config["proxy_location"] = details["proxy_location"]
    http = {k: v for k, v in (details.get("http_options") or {}).items() if v is not None}
    if http:
        config["http_options"] = http
    return config
