"""Measured memory against the plan, as plain data: overruns with the neighbours they put at risk, and right-size
suggestions from the peaks kept per kind of replica."""

from __future__ import annotations

from dataclasses import replace

from reconciler.desired import DesiredState, Engine, GpuSpec, InventoryNode, Model, Pool, Preemption
from reconciler.observed import (
    MemoryPeak,
    ObservedGpu,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    peak_key,
)
from reconciler.planner.memory import Overrun, RightSize, fitting, overruns, suggest
from reconciler.settings import MemorySettings

GiB, MiB = 1 << 30, 1 << 20
DAY = 86400.0


def replica(model: str, index: int, *, gpus=(0,), vram=2 * GiB, measured=None, node="node-a",
            state=ReplicaState.RUNNING) -> ObservedReplica:
    return ObservedReplica(model=model, replica=index, node=node, gpus=gpus, vram=vram, restart_hash="r",
                           config_hash="c", state=state, app=f"reconciler--{model}--r{index}", measured=measured,
                           measured_source="" if measured is None else "nvml")


NODE = ObservedNode(name="node-a", gpus=(ObservedGpu(0, "L4", 24 * GiB), ObservedGpu(1, "L4", 24 * GiB)))


def test_a_replica_above_its_plan_is_an_overrun_naming_who_shares_its_gpu():
    observed = ObservedState(nodes=(NODE,), replicas=(
        replica("chat", 0, gpus=(0, 1), measured=2 * GiB + 1),
        replica("embed", 0, gpus=(1,), measured=GiB),
        replica("coder", 0, gpus=(0,), measured=None),
        replica("other", 0, gpus=(0,), state=ReplicaState.PENDING),  # holds nothing: not at risk
        replica("far", 0, gpus=(0,), node="node-b"),
    ))
    assert overruns(observed) == (Overrun(model="chat", replica=0, app="reconciler--chat--r0", node="node-a",
                                          gpus=(0, 1), planned=2 * GiB, measured=2 * GiB + 1, source="nvml",
                                          neighbours=("coder[0]", "embed[0]")),)


def test_at_or_below_its_plan_or_unmeasured_is_no_overrun():
    observed = ObservedState(nodes=(NODE,), replicas=(replica("chat", 0, measured=2 * GiB), replica("b", 0),
                                                      replica("c", 0, measured=3 * GiB, state=ReplicaState.FAILED)))
    assert overruns(observed) == ()


def test_the_figure_a_peak_needs_is_the_peak_and_its_margin_rounded_up_to_the_step():
    settings = MemorySettings(margin=0.10, step=256 * MiB)
    assert fitting(int(1.1 * GiB), settings) == 1280 * MiB  # 1.21 GiB -> 1.25 GiB
    assert fitting(0, settings) == 0
    assert fitting(int(1.25 * GiB / 1.1), settings) == 1280 * MiB  # exactly on the step stays there


def model(name: str = "tiny-chat", *, vram: int = 2 * GiB, replicas: int | None = 2, tp: int = 1) -> Model:
    return Model(name=name, pool="p", priority_class="", priority=0, preemption=Preemption.LOWER_PRIORITY,
                 preemptible=True, engine=Engine.ECHO, source="acme/tiny-chat", vram=vram, replicas=replicas,
                 tensor_parallel=tp, engine_args_json='{"max_model_len":512}')


def desired(m: Model, gpu_names=("L4",)) -> DesiredState:
    inventory = tuple(InventoryNode(f"node-{i}", (GpuSpec(n, 24 * GiB),)) for i, n in enumerate(gpu_names))
    return DesiredState(pools=(Pool(name="p", inventory=inventory),), models=(m,))


def with_peak(observed: ObservedState, m: Model, peak: int, span: float, gpu: str = "L4") -> ObservedState:
    key = peak_key(source=m.source, engine=str(m.engine), engine_args_json=m.engine_args_json, gpu_name=gpu,
                   tensor_parallel=m.tensor_parallel)
    return replace(observed, memory_peaks=(MemoryPeak(key, peak, 1000.0, 1000.0 + span, 40),))


def test_a_figure_well_above_its_peak_watched_long_enough_is_lowered():
    """The example of the docs: 2Gi, peak 1.1 GiB over 3 days, on 2 GPUs -> 1.25Gi frees 0.75 GiB on each."""
    m = model()
    running = ObservedState(nodes=(NODE,), replicas=(replica("tiny-chat", 0, gpus=(0,)),
                                                     replica("tiny-chat", 1, gpus=(1,))))
    (s,) = suggest(desired(m), with_peak(running, m, int(1.1 * GiB), 3 * DAY), settings=MemorySettings())
    assert s == RightSize(model="tiny-chat", vram=2 * GiB, peak=int(1.1 * GiB), span=3 * DAY, samples=40,
                          suggested=1280 * MiB, gpus=2, gpu_name="L4")
    assert s.freed == 768 * MiB


def test_a_peak_not_watched_for_long_lowers_nothing_but_a_peak_above_the_figure_raises_it_at_once():
    m = model()
    idle = ObservedState(nodes=(NODE,))
    assert suggest(desired(m), with_peak(idle, m, int(1.1 * GiB), 600.0), settings=MemorySettings()) == ()
    (s,) = suggest(desired(m), with_peak(idle, m, int(2.3 * GiB), 600.0), settings=MemorySettings())
    # Nothing runs: the pool's one GPU model, and the GPUs its count takes.
    assert (s.suggested, s.freed, s.gpus) == (2816 * MiB, -768 * MiB, 2)


def test_a_figure_within_a_step_of_its_need_is_left_alone():
    m = model(vram=1280 * MiB + 255 * MiB)
    assert suggest(desired(m), with_peak(ObservedState(), m, int(1.1 * GiB), 3 * DAY), settings=MemorySettings()) == ()


def test_only_the_peak_of_the_same_kind_counts():
    m = model()
    other_args = replace(m, engine_args_json='{"max_model_len":4096}')
    assert suggest(desired(m), with_peak(ObservedState(), other_args, int(1.1 * GiB), 3 * DAY),
                   settings=MemorySettings()) == ()
    assert suggest(desired(m), with_peak(ObservedState(), m, int(1.1 * GiB), 3 * DAY, gpu="A100"),
                   settings=MemorySettings()) == ()
    # A pool of two GPU models with nothing running: where the replicas would go is the packer's, not ours.
    assert suggest(desired(m, ("L4", "A100")), with_peak(ObservedState(), m, int(1.1 * GiB), 3 * DAY),
                   settings=MemorySettings()) == ()


def test_a_model_sized_with_vram_auto_gets_no_suggestion():
    m = replace(model(), vram_auto=True)
    assert suggest(desired(m), with_peak(ObservedState(), m, int(2.3 * GiB), 3 * DAY), settings=MemorySettings()) == ()
