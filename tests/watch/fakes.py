"""Plain-data stand-ins for the cluster *state* and the spec directory, for fast tests of the watch loop.

``FakeCluster`` holds an ObservedState; ``apply`` moves it to the plan's end state (as the executor does), and a test
changes it behind the loop's back (a replica dies) to see the loop heal it. ``simple_plan`` is a tiny planner for the
loop's tests: create what is missing on gpu0 of the first node, delete what is no longer desired. The real planner is
exercised by its own tests and by the Ray tests of watch.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reconciler.desired import DesiredState, Engine, GpuSpec, InventoryNode, Model, Pool, Preemption
from reconciler.observed import ObservedReplica, ObservedState, ReplicaState, from_inventory, normalised
from reconciler.plan import Action, ActionKind, GpuUse, GpuView, Location, PlacedReplica, Plan
from reconciler.watch.controller import ActionResult

GiB = 1 << 30


def model(name: str, replicas: int = 1, *, vram: int = 2 * GiB, source: str = "echo") -> Model:
    return Model(name=name, pool="default", priority_class="", priority=0, preemption=Preemption.LOWER_PRIORITY,
                 preemptible=True, engine=Engine.ECHO, source=source, vram=vram, replicas=replicas)


def desired(*models: Model) -> DesiredState:
    pool = Pool(name="default", inventory=(InventoryNode("node-a", (GpuSpec("A10", 24 * GiB),)),))
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
    have = {r.key: r for r in seen.replicas if r.state is not ReplicaState.FAILED}
    here = Location("node-a", (0,))
    placement, actions = [], []
    for m in want.models:
        for i in range(m.replicas or 0):
            placement.append(PlacedReplica(m.name, i, "node-a", (0,), m.vram))
            old = have.get((m.name, i))
            if old is None:
                actions.append(Action(ActionKind.CREATE, m.name, i, None, here, m.vram, "missing"))
            elif old.restart_hash != m.restart_hash:
                actions.append(Action(ActionKind.REPLACE, m.name, i, here, here, m.vram, "spec changed"))
    names = {(p.model, p.replica) for p in placement}
    for key, r in sorted(have.items()):
        if key not in names:
            actions.insert(0, Action(ActionKind.DELETE, r.model, r.replica, here, None, r.vram, "not desired"))
    view = GpuView(pool="default", node="node-a", index=0, name="A10", memory=24 * GiB, reserve=GiB, foreign=0,
                   before=tuple(GpuUse(r.model, r.replica, r.vram) for r in seen.replicas),
                   after=tuple(GpuUse(p.model, p.replica, p.vram) for p in placement))
    return Plan(actions=tuple(actions), placement=tuple(placement), unplaced=(), gpus=(view,),
                fingerprint=seen.fingerprint, desired_fingerprint=want.fingerprint)


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
