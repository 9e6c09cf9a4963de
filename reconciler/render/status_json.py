"""`reconciler status --format json`: the whole status as one JSON document for scripts. Renders only.

The document's shape is ``schemas/status.schema.json`` (``reconciler.schemas.status``). Sizes are bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from reconciler.desired import DesiredState
from reconciler.gateway.table import model_state
from reconciler.observed import ObservedState, ReplicaState
from reconciler.planner.memory import overruns
from reconciler.render.memory import overrun_line


def status_document(
    observed: ObservedState,
    *,
    desired: DesiredState | None = None,
    gateway_urls: list[str] | None = None,
    http_url: str | None = None,
    unplaced: Iterable[Any] = (),
    warnings: Iterable[str] = (),
) -> dict[str, Any]:
    urls = sorted(gateway_urls or [])
    short = list(unplaced)
    running: dict[str, int] = {}
    for replica in observed.replicas:
        if replica.state == ReplicaState.RUNNING:
            running[replica.model] = running.get(replica.model, 0) + 1
    models = []
    names = [m.name for m in desired.models] if desired is not None else sorted({r.model for r in observed.replicas})
    for name in names:
        model = desired.model(name) if desired is not None else None
        wanted = model.replicas if model is not None else None
        up = running.get(name, 0)
        route = (model.route or f"/{name}") if model is not None else f"/{name}"
        models.append({
            "name": name,
            "state": model_state(desired=wanted, backends=up, unplaced=any(u.model == name for u in short),
                                 on_demand=model is not None and model.on_demand),
            "replicas": {"running": up, "desired": wanted},
            "route": route,
            "url": f"{http_url}{route}" if http_url else None,
        })
    planned: dict[tuple[str, int], int] = {}
    for replica in observed.replicas:
        for gpu in replica.gpus:
            planned[(replica.node, gpu)] = planned.get((replica.node, gpu), 0) + replica.vram
    return {
        "gateway": {
            "url": urls[0] if urls else None,
            "urls": urls,
            "keysRequired": bool(desired is not None and desired.gateway is not None and desired.gateway.keys),
        },
        "models": models,
        "replicas": [
            {"model": r.model, "replica": r.replica, "node": r.node, "gpus": list(r.gpus), "vram": r.vram,
             "state": str(r.state), "message": r.message, "measured": r.measured,
             "measuredSource": r.measured_source or None}
            for r in observed.replicas
        ],
        "nodes": [
            {
                "name": n.name,
                "alive": n.alive,
                "deadSince": n.dead_since,
                "simulated": n.simulated,
                "gpus": [
                    {"index": g.index, "name": g.name, "total": g.memory, "planned": planned.get((n.name, g.index), 0),
                     "used": g.used, "foreign": g.foreign}
                    for g in n.gpus
                ],
            }
            for n in observed.nodes
        ],
        "unplaced": [{"model": u.model, "replica": u.replica, "reason": u.reason} for u in short],
        "warnings": list(warnings) + [overrun_line(o) for o in overruns(observed)],
    }
