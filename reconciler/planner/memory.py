"""What replicas really use against what they were given: overruns now, and right-sized figures from the peaks kept.

Pure: the observation (each replica's measured memory, the peaks per kind of replica) and the settings in, plain data
out. The watch loop logs the overruns, `status` warns of them, `plan` lists the suggestions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from reconciler.desired import DesiredState, Model
from reconciler.observed import ObservedReplica, ObservedState, ReplicaState, peak_key
from reconciler.plan import replica_id
from reconciler.settings import MemorySettings

_GONE = (ReplicaState.PENDING, ReplicaState.STOPPING, ReplicaState.FAILED)  # holding no memory on its GPUs


@dataclass(frozen=True, slots=True)
class Overrun:
    """A replica whose processes use more than the VRAM planned for it on each GPU: its neighbours may run out."""

    model: str
    replica: int
    app: str
    node: str
    gpus: tuple[int, ...]
    planned: int  # bytes per GPU
    measured: int  # bytes per GPU
    source: str  # "nvml" or "rss"
    neighbours: tuple[str, ...]  # the replicas sharing one of its GPUs, `model[i]`

    @property
    def replica_id(self) -> str:
        return replica_id(self.model, self.replica)

    @property
    def key(self) -> tuple[str, int, str]:
        return (self.model, self.replica, self.app)


def _shares_gpu(a: ObservedReplica, b: ObservedReplica) -> bool:
    return a.node == b.node and bool(set(a.gpus) & set(b.gpus))


def overruns(observed: ObservedState) -> tuple[Overrun, ...]:
    """Every replica measured above its planned VRAM, in replica order, with the neighbours at risk."""
    found = []
    for r in observed.replicas:
        if r.measured is None or r.measured <= r.vram or r.state in _GONE:
            continue
        neighbours = sorted({replica_id(o.model, o.replica) for o in observed.replicas
                             if o is not r and o.key != r.key and o.state not in _GONE and _shares_gpu(r, o)})
        found.append(Overrun(model=r.model, replica=r.replica, app=r.app, node=r.node, gpus=r.gpus, planned=r.vram,
                             measured=r.measured, source=r.measured_source, neighbours=tuple(neighbours)))
    return tuple(found)


@dataclass(frozen=True, slots=True)
class RightSize:
    """A fixed `vram` figure set beside the peak measured for replicas of its kind, and the figure that fits it."""

    model: str
    vram: int  # the spec's figure, bytes per GPU
    peak: int  # the most measured, bytes per GPU
    span: float  # seconds from the first reading to the latest
    samples: int  # observations the peak was read from
    suggested: int  # bytes per GPU
    gpus: int  # GPUs the model's replicas take (each changes by the difference)
    gpu_name: str

    @property
    def freed(self) -> int:
        """Bytes per GPU the suggestion frees; negative: what it adds."""
        return self.vram - self.suggested


def fitting(peak: int, settings: MemorySettings) -> int:
    """The figure a peak needs: the peak and its margin, rounded up to the step."""
    step = max(1, settings.step)
    return math.ceil(math.ceil(peak * (1 + settings.margin)) / step) * step


def _gpu_name(observed: ObservedState, replica: ObservedReplica) -> str | None:
    try:
        return observed.node(replica.node).gpu(replica.gpus[0]).name
    except (KeyError, IndexError):
        return None


def _gpu_names(desired: DesiredState, observed: ObservedState, model: Model) -> dict[str, int]:
    """The GPU models the model's replicas run on, with the GPUs they take; where none runs, its pool's one GPU model
    with the GPUs its count would take (a pool of mixed GPUs is left out: where they would run is the packer's)."""
    names: dict[str, int] = {}
    for r in observed.replicas:
        if r.model == model.name and r.state not in _GONE:
            name = _gpu_name(observed, r)
            if name is not None:
                names[name] = names.get(name, 0) + len(r.gpus)
    if names:
        return names
    pool = next((p for p in desired.pools if p.name == model.pool), None)
    inventory = {g.name for n in pool.inventory for g in n.gpus} if pool is not None else set()
    if len(inventory) == 1:
        return {inventory.pop(): (model.replicas or 0) * model.tensor_parallel}
    return {}


def suggest(desired: DesiredState, observed: ObservedState, *, settings: MemorySettings) -> tuple[RightSize, ...]:
    """Right-size suggestions for the models whose peak is known for the kind of replica they run.

    A figure is raised as soon as a peak with its margin exceeds it; it is lowered only by at least one step and once
    the peak has been watched for ``settings.min_span``, so a replica that has not yet been busy is not shrunk.
    """
    found = []
    for model in sorted(desired.models, key=lambda m: m.name):
        if model.vram_auto:  # sized from the model, and from the same peaks once measured: nothing to suggest
            continue
        for name, gpus in sorted(_gpu_names(desired, observed, model).items()):
            peak = observed.peak(peak_key(source=model.source, engine=str(model.engine),
                                          engine_args_json=model.engine_args_json, gpu_name=name,
                                          tensor_parallel=model.tensor_parallel))
            if peak is None:
                continue
            target = fitting(peak.peak_bytes, settings)
            span = max(0.0, peak.last_seen - peak.first_seen)
            lower = model.vram - target >= settings.step and span >= settings.min_span
            if target > model.vram or lower:
                found.append(RightSize(model=model.name, vram=model.vram, peak=peak.peak_bytes, span=span,
                                       samples=peak.samples, suggested=target, gpus=gpus, gpu_name=name))
    return tuple(found)
