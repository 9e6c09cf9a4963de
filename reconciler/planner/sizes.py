"""Sizes from the models, the planner's first stage: each `vram: auto` model's figure for this plan. Pure.

The loader sized every `vram: auto` model from its files (``Basis.SAFETENSORS`` or ``Basis.CONFIG``). Here a model
of a kind that has run before (same source, engine, engine args, GPU model and tensorParallel: ``peak_key``) takes
its measured peak instead of the estimated activation and overhead terms (``sizing.estimate.measured``), so the
figure a plan packs is the one replicas of that kind were seen to use. Where the pool has GPUs of several models,
the highest peak among them counts: a replica may land on any of them.
"""

from __future__ import annotations

from dataclasses import replace

from reconciler.desired import DesiredState, Model
from reconciler.observed import ObservedState, peak_key
from reconciler.planner.pools import pool_nodes
from reconciler.settings import SizingSettings
from reconciler.sizing.estimate import measured


def _gpu_names(desired: DesiredState, observed: ObservedState) -> dict[str, tuple[str, ...]]:
    """The GPU models of each pool: observed where observed, else its inventory."""
    members = pool_nodes(desired, observed)
    names: dict[str, tuple[str, ...]] = {}
    for pool in desired.pools:
        seen = {g.name for node in members.get(pool.name, ()) for g in node.gpus}
        seen |= {g.name for inv in pool.inventory for g in inv.gpus}
        names[pool.name] = tuple(sorted(seen))
    return names


def _peak(model: Model, gpu_names: tuple[str, ...], observed: ObservedState) -> int | None:
    found = [p.peak_bytes for name in gpu_names
             if (p := observed.peak(peak_key(source=model.source, engine=str(model.engine),
                                             engine_args_json=model.engine_args_json, gpu_name=name,
                                             tensor_parallel=model.tensor_parallel))) is not None]
    return max(found) if found else None


def resolve(desired: DesiredState, observed: ObservedState, settings: SizingSettings = SizingSettings()
            ) -> DesiredState:
    """The desired state with each `vram: auto` model sized from its measured peak, where one was kept."""
    if not observed.memory_peaks or not any(m.vram_auto for m in desired.models):
        return desired
    gpu_names = _gpu_names(desired, observed)
    models = []
    for model in desired.models:
        peak = _peak(model, gpu_names.get(model.pool, ()), observed) if model.vram_auto and model.sizing else None
        if peak is None or model.sizing is None:
            models.append(model)
            continue
        sizing = measured(model.sizing, peak_bytes=peak, step=settings.measured_step)
        models.append(replace(model, vram=sizing.per_gpu_bytes, sizing=sizing))
    return replace(desired, models=tuple(models))
