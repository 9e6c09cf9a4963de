"""From the specs to the question: every replica of a pool's models that must fit, as the packer's items."""

from __future__ import annotations

from reconciler.advise.problem import NodeType, Request
from reconciler.desired import DesiredState, Model, Preemption
from reconciler.packer import Item


def replicas_wanted(model: Model) -> int:
    """Counts as written; a `{min, max}` range at its max; `max` (as many as fit) as one replica."""
    if model.scaling is not None:
        return model.scaling.max
    return 1 if model.replicas is None else model.replicas


def items_for(desired: DesiredState, pool: str, min_priority: int | None = None) -> tuple[Item, ...]:
    """The replicas of the pool's models whose class is worth at least `min_priority` (all without one)."""
    return tuple(
        Item(model=m.name, replica=r, vram=m.vram, gpus=m.tensor_parallel, priority=m.priority,
             preempts=m.preemption == Preemption.LOWER_PRIORITY, preemptible=m.preemptible, spread=m.spread)
        for m in desired.models_in(pool)
        if min_priority is None or m.priority >= min_priority
        for r in range(replicas_wanted(m))
    )


def request_for(desired: DesiredState, *, pool: str, types: tuple[NodeType, ...], min_priority: int | None = None,
                tolerate: int = 0, keep: bool = False) -> Request:
    spec = desired.pool(pool)
    return Request(items=items_for(desired, pool, min_priority), types=types, reserve=spec.reserve,
                   tolerate=tolerate, existing=spec.inventory if keep else ())
