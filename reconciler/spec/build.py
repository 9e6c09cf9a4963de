"""The desired state from validated documents: defaults filled in, references resolved, everything sorted.

Runs only when the rules found no error, so every reference resolves here.
"""

from __future__ import annotations

from typing import Any

from reconciler.sizing.estimate import Estimate

from reconciler.desired import (
    IMPLICIT_PRIORITY,
    ApiKey,
    Gateway,
    DesiredState,
    Engine,
    GpuSpec,
    InventoryNode,
    Job,
    Model,
    Placement,
    Pool,
    Preemption,
    PriorityClass,
    Scaling,
    Spread,
    canonical_json,
)
from reconciler.spec.models import ReplicaRange, ScalingSpec
from reconciler.spec.parsed import Parsed
from reconciler.spec.rules import Catalog, default_class, resolve_pool, route_of


def _pool(doc: Parsed) -> Pool:
    spec = doc.spec
    selector = spec.nodes.selector
    return Pool(
        name=doc.name,
        placement=Placement(spec.placement),
        reserve=spec.reserve,
        selector=None if selector is None else tuple(sorted(selector.items())),
        inventory=tuple(
            InventoryNode(node=inv.node, gpus=tuple(GpuSpec(name=g.name, memory=g.memory) for g in inv.gpus))
            for inv in spec.inventory
        ),
        max_moves=spec.disruption.max_moves,
    )


def _class(doc: Parsed) -> PriorityClass:
    spec = doc.spec
    return PriorityClass(
        name=doc.name,
        value=spec.value,
        preemption=Preemption(spec.preemption),
        preemptible=spec.preemptible,
        default=spec.default,
    )


def _placed_by(doc: Parsed, catalog: Catalog, classes: dict[str, PriorityClass],
               fallback: PriorityClass) -> dict[str, Any]:
    """What a Model and a Job share: their name, pool, and priority class with its rules."""
    pool = resolve_pool(doc, catalog)
    if pool is None:
        raise ValueError(f"{doc.kind.lower()} {doc.name} has no pool: the rules should have reported it")
    klass = classes[doc.spec.priority_class] if doc.spec.priority_class is not None else fallback
    return {"name": doc.name, "pool": pool.name, "priority_class": klass.name, "priority": klass.value,
            "preemption": klass.preemption, "preemptible": klass.preemptible}


def _scaling(bounds: ReplicaRange, spec: ScalingSpec | None) -> Scaling:
    spec = spec if spec is not None else ScalingSpec()
    return Scaling(
        min=bounds.min,
        max=bounds.max,
        target_in_flight=spec.target_in_flight,
        scale_up_after=spec.scale_up_after,
        scale_down_after=spec.scale_down_after,
        idle_after=spec.idle_after,
        load_timeout=spec.load_timeout,
    )


def _model(doc: Parsed, catalog: Catalog, classes: dict[str, PriorityClass], fallback: PriorityClass,
           sizing: Estimate | None) -> Model:
    spec = doc.spec
    auto = isinstance(spec.vram, str)
    if auto and sizing is None:
        raise ValueError(f"model {doc.name} has vram: auto and no estimate: sizing should have reported it")
    # A range starts at its min; the planner replaces the count with the one the observed demand asks for.
    scaling = _scaling(spec.replicas, spec.scaling) if isinstance(spec.replicas, ReplicaRange) else None
    return Model(
        **_placed_by(doc, catalog, classes, fallback),
        engine=Engine(spec.engine),
        source=spec.source,
        vram=sizing.per_gpu_bytes if auto and sizing is not None else spec.vram,
        replicas=scaling.min if scaling is not None else spec.replicas,
        tensor_parallel=spec.tensor_parallel,
        spread=Spread(spec.spread),
        route=route_of(doc),
        labels=tuple(sorted(doc.document.metadata.labels.items())),
        engine_args_json=canonical_json(spec.engine_args),
        scaling=scaling,
        vram_auto=auto,
        kv_cache_tokens=spec.kv_cache_tokens,
        sizing=sizing,
    )


def _job(doc: Parsed, catalog: Catalog, classes: dict[str, PriorityClass], fallback: PriorityClass) -> Job:
    spec = doc.spec
    return Job(
        **_placed_by(doc, catalog, classes, fallback),
        vram=spec.vram,
        gpus=spec.gpus,
        entrypoint=spec.entrypoint,
        working_dir=spec.working_dir,
        env=tuple(sorted(spec.env.items())),
        retries=spec.retries,
        active_deadline=spec.active_deadline,
        schedule=spec.schedule,
    )


def _gateway(doc: Parsed) -> Gateway:
    spec = doc.spec
    keys = tuple(
        ApiKey(
            name=key.name,
            sha256=key.sha256,
            models=tuple(dict.fromkeys(key.models)),
            requests_per_minute=key.limits.requests_per_minute,
            concurrent_requests=key.limits.concurrent_requests,
            tokens_per_minute=key.limits.tokens_per_minute,
        )
        for key in spec.keys
    )
    return Gateway(name=doc.name, host=spec.host, port=spec.port, keys=tuple(sorted(keys, key=lambda k: k.name)),
                   allow_anonymous=spec.allow_anonymous)


def build(catalog: Catalog, sizes: dict[str, Estimate] | None = None) -> DesiredState:
    """The desired state; ``sizes`` holds the estimate of each model whose files could be read (spec.sizes)."""
    sizes = sizes or {}
    classes = {doc.name: _class(doc) for doc in catalog.classes}
    default = default_class(catalog)
    fallback = classes[default.name] if default is not None else IMPLICIT_PRIORITY
    return DesiredState(
        pools=tuple(sorted((_pool(d) for d in catalog.pools), key=lambda p: p.name)),
        priority_classes=tuple(sorted(classes.values(), key=lambda c: c.name)),
        models=tuple(sorted((_model(d, catalog, classes, fallback, sizes.get(d.name)) for d in catalog.models),
                            key=lambda m: m.name)),
        jobs=tuple(sorted((_job(d, catalog, classes, fallback) for d in catalog.jobs), key=lambda j: j.name)),
        gateway=_gateway(catalog.gateways[0]) if catalog.gateways else None,
    )
