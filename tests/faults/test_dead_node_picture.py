"""A dead node, from what Ray reports to what people read: the observed state, its snapshot and schema, `status`,
`plan`'s note, watch's metrics, and the planner's move budget. Pure: the Ray side is in test_local_cluster."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from reconciler.adapter.observation import RayNode, build_observed
from reconciler.desired import DesiredState, Engine, GpuSpec, InventoryNode, Model, Pool, Preemption
from reconciler.naming import GPU_SOURCE_INVENTORY, GPU_SOURCE_LABEL
from reconciler.observed import (
    NODE_NAME_LABEL,
    ObservedReplica,
    ObservedState,
    from_inventory,
    from_json,
    to_json,
)
from reconciler.plan import ActionKind
from reconciler.planner import plan
from reconciler.planner.runtime import assumed_gpus
from reconciler.render.status import dead_node_lines, render_status
from reconciler.schemas.read import read_snapshot
from reconciler.watch.metrics import snapshot

pytestmark = pytest.mark.faults

GiB = 1 << 30
DIED = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def ray_node(name: str, node_id: str, *, alive: bool = True, died: float | None = None) -> RayNode:
    return RayNode(node_id=node_id, alive=alive, resources={},
                   labels={NODE_NAME_LABEL: name, GPU_SOURCE_LABEL: GPU_SOURCE_INVENTORY, "pool": "homelab"},
                   death_reason="" if alive else "the raylet died unexpectedly", died=died)


def model(name: str, vram_gib: int, replicas: int, *, priority: int = 1, **kw) -> Model:
    return Model(name=name, pool="homelab", priority_class="", priority=priority,
                 preemption=kw.pop("preemption", Preemption.LOWER_PRIORITY), preemptible=True, engine=Engine.ECHO,
                 source="s", vram=vram_gib * GiB, replicas=replicas, **kw)


def homelab(*models: Model, max_moves: int = 0, nodes=("node-a", "node-b")) -> DesiredState:
    pool = Pool(name="homelab", max_moves=max_moves, selector=(("pool", "homelab"),),
                inventory=tuple(InventoryNode(n, (GpuSpec("sim", 24 * GiB),)) for n in nodes))
    return DesiredState(pools=(pool,), models=tuple(sorted(models, key=lambda m: m.name)))


def replica_app(model: Model, replica: int, node: str) -> tuple[str, dict]:
    name = f"reconciler--{model.name}--r{replica}"
    return name, {
        "status": "DEPLOYING",
        "deployed_app_config": {
            "args": {"managed_by": "reconciler", "kind": "replica", "restart_hash": model.restart_hash,
                     "engine_config": {"model": model.name, "replica": replica, "node": node, "gpus": [0],
                                       "vram_bytes": model.vram}},
            "deployments": [{"name": "Replica", "user_config": {"config_hash": model.config_hash}}],
        },
        "deployments": {"Replica": {"status": "UPDATING", "replicas": []}},
    }


def observed_with_dead_node() -> tuple[DesiredState, ObservedState]:
    chat = model("chat", 8, 2)
    desired = homelab(chat)
    serve = {"applications": dict([replica_app(chat, 0, "node-a"), replica_app(chat, 1, "node-b")])}
    nodes = [ray_node("node-a", "a" * 8), ray_node("node-b", "b0" * 4, alive=False, died=DIED - 600),
             ray_node("node-b", "b1" * 4, alive=False, died=DIED)]  # it died twice: the last death is the one kept
    return desired, build_observed(nodes=nodes, probes={}, serve=serve, assumed=assumed_gpus(desired))


def test_a_dead_node_is_observed_with_when_and_why():
    _, observed = observed_with_dead_node()
    node_b = observed.node("node-b")
    assert (node_b.alive, node_b.dead_since, node_b.node_id) == (False, DIED, "b1" * 4)
    assert node_b.death_reason == "the raylet died unexpectedly"
    assert [(r.model, r.replica, r.node) for r in observed.replicas] == [("chat", 0, "node-a"), ("chat", 1, "node-b")]


def test_a_dead_node_survives_the_snapshot_and_its_schema(tmp_path):
    _, observed = observed_with_dead_node()
    path = tmp_path / "observed.json"
    path.write_text(json.dumps(to_json(observed)))
    again = read_snapshot(path)
    assert again == replace(observed, source=again.source)
    assert from_json(to_json(observed)).fingerprint == observed.fingerprint


def test_status_names_the_dead_node_since_when_and_what_ran_there():
    _, observed = observed_with_dead_node()
    text = render_status(observed)
    assert ("node-b  DEAD since 2026-09-21T14:13:20Z (the raylet died unexpectedly); ran: chat[1]" in text), text
    assert text.rstrip().endswith("on 1 node(s); 1 node(s) dead: node-b"), text
    assert dead_node_lines(observed) == [
        "node node-b: DEAD since 2026-09-21T14:13:20Z (the raylet died unexpectedly); ran: chat[1]"]


def test_metrics_count_dead_nodes_and_say_since_when():
    desired, observed = observed_with_dead_node()
    snap = snapshot(desired=desired, observed=observed, plan=plan(desired, observed))
    assert dict(snap.nodes) == {"alive": 1, "dead": 1}
    assert snap.dead == (("node-b", DIED),)


def test_the_replica_of_a_dead_node_is_placed_on_a_live_one():
    desired, observed = observed_with_dead_node()
    result = plan(desired, observed)
    assert {(p.model, p.replica, p.node) for p in result.placement} == {("chat", 0, "node-a"), ("chat", 1, "node-a")}


def dead_node_world(max_moves: int) -> tuple[DesiredState, ObservedState]:
    """node-b died with x[0] on it; low[0..2] fill half of node-a, -c and -d; `big` (20 GiB, never preempts) fits
    only if low[0] moves over to node-c: a voluntary move, on top of the forced one of x[0]."""
    nodes = ("node-a", "node-b", "node-c", "node-d")
    desired = homelab(model("low", 12, 3), model("x", 12, 1),
                      model("big", 20, 1, priority=5, preemption=Preemption.NEVER), max_moves=max_moves, nodes=nodes)
    inventory = from_inventory(desired)

    def running(name: str, replica: int, node: str) -> ObservedReplica:
        m = desired.model(name)
        return ObservedReplica(model=name, replica=replica, node=node, gpus=(0,), vram=m.vram,
                               restart_hash=m.restart_hash, config_hash=m.config_hash, app=f"{name}-{replica}")

    observed = ObservedState(
        nodes=tuple(replace(n, alive=n.name != "node-b", dead_since=DIED if n.name == "node-b" else None)
                    for n in inventory.nodes),
        replicas=(running("low", 0, "node-a"), running("low", 1, "node-c"), running("low", 2, "node-d"),
                  running("x", 0, "node-b")),
        source=inventory.source,
    )
    return desired, observed


@pytest.mark.parametrize("max_moves", [1, 2, 3])
def test_moves_off_a_dead_node_count_against_max_moves(max_moves):
    desired, observed = dead_node_world(max_moves)
    moves = [a for a in plan(desired, observed).actions if a.kind is ActionKind.MOVE]
    assert ("x", 0) in {(a.model, a.replica) for a in moves}  # it cannot stay on a dead node
    assert len(moves) <= max_moves
    if max_moves == 1:
        assert [(a.model, a.source.node) for a in moves] == [("x", "node-b")]
