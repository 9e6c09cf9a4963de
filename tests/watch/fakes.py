"""Plain-data stand-ins for the cluster *state* and the spec directory, for fast tests of the watch loop.

``FakeCluster`` holds an ObservedState; ``apply`` moves it to the plan's end state (as the executor does), and a test
changes it behind the loop's back (a replica dies) to see the loop heal it. ``simple_plan``, the planner of the
loop's tests is the real, pure planner.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reconciler.desired import DesiredState, Engine, GpuSpec, InventoryNode, Model, Pool, Preemption
from reconciler.observed import ObservedReplica, ObservedState, ReplicaState, from_inventory, normalised
from reconciler.plan import ActionKind, Plan
from reconciler.planner import PlanSettings, plan
from reconciler.watch.controller import ActionResult

GiB = 1 << 30


def model(name: str, replicas: int = 1, *, vram: int = 2 * GiB, source: str = "echo") -> Model:
    return Model(name=name, pool="default", priority_class="", priority=0, preemption=Preemption.LOWER_PRIORITY,
                 preemptible=True, engine=Engine.ECHO, source=source, vram=vram, replicas=replicas)


def desired(*models: Model) -> DesiredState:
    pool = Pool(name="default", reserve=GiB, inventory=(InventoryNode("node-a", (GpuSpec("A10", 24 * GiB),)),))
    return DesiredState(pools=(pool,), models=tuple(sorted(models, key=lambda m: m.name)))


@dataclass
class Loaded:
    desired: DesiredState | None
    diagnostics: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.diagnostics


@dataclass
class SpecDir:
    """What the spec directory currently holds: a valid desired state, or diagnostics."""

    current: Loaded

    def load(self) -> Loaded:
        return self.current

    def set(self, state: DesiredState) -> None:
        self.current = Loaded(state)

    def break_it(self, *diagnostics: str) -> None:
        self.current = Loaded(None, diagnostics)


def simple_plan(want: DesiredState, seen: ObservedState) -> Plan:
    """The real planner with default settings: pure, so it needs no stand-in."""
    return plan(want, seen, PlanSettings())


@dataclass
class FakeCluster:
    state: ObservedState = field(default_factory=ObservedState)
    crashing: set[str] = field(default_factory=set)  # models whose replicas fail at start
    applies: int = 0

    @classmethod
    def shaped_like(cls, want: DesiredState) -> "FakeCluster":
        return cls(state=from_inventory(want))

    def observe(self, want: DesiredState) -> ObservedState:
        return self.state

    def apply(self, plan: Plan, want: DesiredState, seen: ObservedState) -> list[ActionResult]:
        self.applies += 1
        replicas = {r.key: r for r in self.state.replicas}
        results = []
        for a in plan.actions:
            if a.kind in (ActionKind.DELETE, ActionKind.EVICT):
                replicas.pop((a.model, a.replica), None)
                results.append(ActionResult(a, True))
                continue
            m = want.model(a.model)
            failing = a.model in self.crashing
            replicas[(a.model, a.replica)] = ObservedReplica(
                model=a.model, replica=a.replica, node=a.target.node, gpus=a.target.gpus, vram=m.vram,
                restart_hash=m.restart_hash, config_hash=m.config_hash,
                state=ReplicaState.FAILED if failing else ReplicaState.RUNNING,
                message="engine exited: CUDA out of memory" if failing else "",
            )
            results.append(ActionResult(a, not failing, "engine exited: CUDA out of memory" if failing else ""))
        self.state = normalised(replace(self.state, replicas=tuple(replicas.values())))
        return results

    def kill(self, model: str, replica: int) -> None:
        self.state = replace(self.state, replicas=tuple(r for r in self.state.replicas
                                                        if r.key != (model, replica)))

    def running(self) -> dict[tuple[str, int], str]:
        return {r.key: r.restart_hash for r in self.state.replicas if r.state is ReplicaState.RUNNING}
