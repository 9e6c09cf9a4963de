"""Apply against the session's real local Ray cluster (echo models): the world ends as the plan said, and nothing else
moves. Each test builds the state it starts from (`start_from` applies its specs, a no-op when they already run), so
any one of them runs alone or in any order; each checks the state of the world itself, not the calls that were made."""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest
import requests

from reconciler.cli import main as cli
from reconciler.plan import ActionKind, Location, Plan, PlacedReplica
from reconciler.plan import to_json as plan_to_json

pytestmark = pytest.mark.ray

FOREIGN_APP = "someone-elses-app"

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: homelab}
spec:
  reserve: 1Gi
  nodes: {selector: {pool: homelab}}
  inventory:
    - {node: node-a, gpus: [{name: RTX 3090, memory: 24Gi}, {name: RTX 3090, memory: 24Gi}]}
    - {node: node-b, gpus: [{name: RTX 3060, memory: 12Gi}]}
    - {node: node-c, gpus: [{name: RTX 4060 Ti, memory: 16Gi}]}
  disruption: {maxMoves: 1}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: critical}
spec: {value: 100, preemptible: false}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: standard}
spec: {value: 50, default: true}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: background}
spec: {value: 0, preemption: Never}
"""

MODELS = {
    "assistant": {"priorityClass": "critical", "vram": "9Gi", "replicas": 2, "spread": "gpu", "route": "/chat"},
    "coder": {"vram": "10Gi", "replicas": 1},
    "embeddings": {"vram": "1536Mi", "replicas": 1},
    "summaries": {"priorityClass": "background", "vram": "8Gi", "replicas": 3},
}


def write_specs(directory: Path, models: dict[str, dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pool.yaml").write_text(POOL)
    docs = []
    for name, spec in models.items():
        body = {"engine": "echo", "source": f"stand-in/{name}", **spec}
        docs.append(json.dumps({"apiVersion": "reconciler/v1", "kind": "Model", "metadata": {"name": name},
                                "spec": body}))
    (directory / "models.yaml").write_text("\n---\n".join(docs) + "\n")  # JSON is YAML
    return directory


@pytest.fixture(scope="module")
def world(ray_cluster, tmp_path_factory):
    from reconciler.adapter import connect

    cluster = connect(ray_cluster.address)
    specs = tmp_path_factory.mktemp("specs")
    state = {"cluster": cluster, "specs": specs, "models": copy.deepcopy(MODELS), "http": ray_cluster.http_url}
    deploy_foreign_app(state)
    state["foreign_actor"] = replica_actors(state)[FOREIGN_APP]
    yield state
    # Leave the shared cluster as we found it: none of our applications, the foreign one gone too.
    details = cluster.serve_details()
    cluster.put_serve_config({k: details[k] for k in ("proxy_location", "http_options") if details.get(k)}
                             | {"applications": []})
    cluster.wait_serve(lambda d: not d.get("applications"), timeout=60)
    cluster.close()


def start_from(world, models: dict[str, dict] = MODELS, **changes: dict) -> None:
    """Apply these specs (MODELS, with some models' fields changed) so that a test starts where it says; the test
    then edits ``world["models"]`` from there."""
    world["models"] = copy.deepcopy(models)
    for name, fields in changes.items():
        world["models"][name].update(fields)
    assert apply_cli(world) == 0


def desired_of(world):
    from reconciler.spec import load_specs

    result = load_specs(write_specs(world["specs"], world["models"]))
    assert result.ok, [str(d) for d in result.diagnostics]
    return result.desired


def plan_now(world):
    from reconciler.planner import plan

    desired = desired_of(world)
    observed = world["cluster"].observe(desired)
    return desired, observed, plan(desired, observed)


def apply_cli(world, *extra: str) -> int:
    write_specs(world["specs"], world["models"])
    return cli(["apply", str(world["specs"]), "--yes", "--pending-grace", "8", "--timeout", "180", *extra])


def replica_actors(world) -> dict[str, str]:
    """Every running Serve replica's actor id, by application."""
    out = {}
    for name, app in world["cluster"].serve_details()["applications"].items():
        for deployment in app["deployments"].values():
            for replica in deployment["replicas"]:
                if replica.get("state") == "RUNNING":
                    out[name] = replica["actor_id"]
    return out


def by_model(actors: dict[str, str], model: str) -> dict[str, str]:
    return {app: actor for app, actor in actors.items() if app.startswith(f"reconciler--{model}--r")}


def what_replicas_say(world, route: str) -> list[dict]:
    deadline = time.monotonic() + 30
    while True:
        body = requests.get(f"{world['http']}{route}/replicas", timeout=30).json()
        infos = [r["info"] for r in body["replicas"] if r["ok"]]
        if len(infos) == len(body["backends"]) or time.monotonic() > deadline:
            return infos
        time.sleep(1)  # the router refreshes Serve's status every 2 s


def assert_matches_plan(world, plan: Plan, desired) -> None:
    want = {(p.model, p.replica): p for p in plan.placement}
    seen = {}
    for model in desired.models:
        for info in what_replicas_say(world, model.route or f"/{model.name}"):
            seen[(info["model"], info["replica"])] = info
    assert set(seen) == set(want)
    nodes = {n.node_id: n.name for n in world["cluster"].observe(desired).nodes}
    for key, placed in want.items():
        info = seen[key]
        assert nodes[info["ray_node_id"]] == placed.node, key  # where Ray really put it
        assert info["cuda_visible_devices"] == ",".join(map(str, placed.gpus)), key


def deploy_foreign_app(world) -> None:
    """An application reconciler did not create (declaratively deployed, at its own route)."""
    cluster = world["cluster"]
    details = cluster.serve_details()
    foreign = {
        "name": FOREIGN_APP,
        "route_prefix": "/theirs",
        "import_path": "reconciler.engines.app:build",
        "args": {"kind": "router", "model": "theirs"},
        "deployments": [{"name": "Router", "user_config": {"backends": []}}],
    }
    apps = [a["deployed_app_config"] for a in details["applications"].values() if a.get("deployed_app_config")]
    cluster.put_serve_config({k: details[k] for k in ("proxy_location", "http_options") if details.get(k)}
                             | {"applications": [*apps, foreign]})
    cluster.wait_serve(lambda d: d["applications"].get(FOREIGN_APP, {}).get("status") == "RUNNING", timeout=120)


def test_apply_places_every_replica_where_the_plan_says(world):
    start_from(world, {})  # none of ours runs
    world["models"] = copy.deepcopy(MODELS)
    desired, _, plan = plan_now(world)
    assert {a.kind for a in plan.actions} == {ActionKind.CREATE}

    assert apply_cli(world) == 0

    assert_matches_plan(world, plan, desired)
    _, _, again = plan_now(world)
    assert again.empty, [str(a) for a in again.actions]
    answer = requests.post(f"{world['http']}/chat/v1/chat/completions",
                           json={"messages": [{"role": "user", "content": "hello there"}]}, timeout=30).json()
    assert answer["choices"][0]["message"]["content"] == "hello there"


def test_dry_run_changes_nothing(world, capsys):
    start_from(world)
    before = replica_actors(world)
    world["models"]["embeddings"]["replicas"] = 2
    assert apply_cli(world, "--dry-run") == 0
    assert "Dry run" in capsys.readouterr().out
    time.sleep(2)
    assert replica_actors(world) == before


def test_stale_saved_plan_is_refused_and_scale_up_touches_nothing_else(world, tmp_path, capsys, monkeypatch):
    start_from(world)
    world["models"]["embeddings"]["replicas"] = 2
    desired, _, plan = plan_now(world)  # embeddings 1 -> 2
    saved = tmp_path / "plan.json"
    saved.write_text(json.dumps(plan_to_json(plan)))
    assert [(a.kind, a.model) for a in plan.actions] == [(ActionKind.CREATE, "embeddings")]
    before = replica_actors(world)

    edited = json.loads(saved.read_text())
    edited["placement"][0]["gpus"] = [1 - edited["placement"][0]["gpus"][0]]  # fingerprints left as they were
    (tmp_path / "edited.json").write_text(json.dumps(edited))
    capsys.readouterr()
    assert cli(["apply", "--plan", str(tmp_path / "edited.json"), "--yes"]) == 1
    assert "was edited" in capsys.readouterr().err
    assert replica_actors(world) == before

    # The plan carries all it needs: no spec directory is read (the working directory has none).
    monkeypatch.chdir(tmp_path)
    assert cli(["apply", "--plan", str(saved), "--yes", "--pending-grace", "8", "--timeout", "180"]) == 0
    after = replica_actors(world)
    assert len(by_model(after, "embeddings")) == 2
    assert {k: v for k, v in after.items() if k in before} == before  # nothing restarted

    world["models"]["embeddings"]["replicas"] = 1
    capsys.readouterr()
    assert apply_cli(world, "--plan", str(saved)) == 1  # the cluster changed since: refused
    assert "Saved plan is stale" in capsys.readouterr().err
    assert replica_actors(world) == after


def test_apply_is_refused_while_another_reconciler_holds_the_lock(world, capsys):
    from reconciler.adapter.kv import RayKV
    from reconciler.adapter.lease import Holder, acquire

    start_from(world)
    world["cluster"].ray_nodes()  # the lease lives in this cluster's GCS: connect the driver first
    lease = acquire(RayKV(), holder=Holder.current("reconciler watch (another operator)"), ttl=120)
    try:
        before = replica_actors(world)
        world["models"]["embeddings"]["replicas"] += 1
        capsys.readouterr()
        assert apply_cli(world) == 1
        err = capsys.readouterr().err
        assert "reconciler watch (another operator)" in err, err
        assert replica_actors(world) == before  # nothing was applied
    finally:
        world["models"]["embeddings"]["replicas"] -= 1
        lease.release()
    assert apply_cli(world) == 0  # the lock is free again: apply goes ahead (and the specs match: no-op)


def test_move_is_make_before_break(world):
    """A hand-made plan (the planner only moves to make room): an embeddings replica to another GPU."""
    from reconciler.executor.progress import Progress
    from reconciler.executor.run import Executor
    from reconciler.plan import Action
    from reconciler.planner.runtime import self_contained
    from reconciler.settings import ApplySettings

    start_from(world)
    desired, observed, _ = plan_now(world)
    moving = next(r for r in observed.replicas if r.model == "embeddings")
    def free(node, gpu):
        used = sum(r.vram for r in observed.replicas if r.node == node.name and gpu.index in r.gpus)
        return gpu.memory - (1 << 30) - used

    target = next(
        Location(node.name, (gpu.index,))
        for node in observed.nodes
        for gpu in node.gpus
        if free(node, gpu) >= moving.vram and (node.name, (gpu.index,)) != (moving.node, moving.gpus)
    )
    placement = tuple(
        PlacedReplica(r.model, r.replica, *(
            (target.node, target.gpus) if r is moving else (r.node, r.gpus)), r.vram)
        for r in observed.replicas
    )
    move = Action(ActionKind.MOVE, "embeddings", moving.replica, Location(moving.node, moving.gpus), target, moving.vram,
                  "test: move", make_before_break=True)
    plan = self_contained(Plan((move,), placement, (), (), observed.fingerprint, desired.fingerprint),
                          desired=desired, observed=observed)
    before = replica_actors(world)
    report = Executor(world["cluster"], settings=ApplySettings(pending_grace=8), progress=Progress(live=False)).apply(
        plan)
    assert report.ok, report.failed
    after = replica_actors(world)
    untouched = {k: v for k, v in before.items() if not k.startswith("reconciler--embeddings--")}
    assert {k: after.get(k) for k in untouched} == untouched
    assert_matches_plan(world, plan, desired)
    assert plan_now(world)[2].empty


def test_delete_removes_only_what_the_plan_names(world):
    start_from(world, embeddings={"replicas": 2})
    del world["models"]["embeddings"]
    _, _, plan = plan_now(world)
    assert sorted((a.kind, a.model) for a in plan.actions) == [
        (ActionKind.DELETE, "embeddings"), (ActionKind.DELETE, "embeddings")]
    before = replica_actors(world)
    assert apply_cli(world) == 0
    after = replica_actors(world)
    assert not by_model(after, "embeddings")
    gone = {app for app in before if app not in after}
    assert gone == {app for app in before if app.startswith("reconciler--embeddings")}  # 2 replicas, its router
    assert len(by_model(before, "embeddings")) == 2
    assert {k: v for k, v in before.items() if k not in gone} == after
    assert requests.get(f"{world['http']}/embeddings/v1/models", timeout=10).status_code == 404
    assert plan_now(world)[2].empty


def test_replace_restarts_only_the_changed_model(world):
    start_from(world)
    world["models"]["coder"]["engineArgs"] = {"dimensions": 4}
    desired, _, plan = plan_now(world)
    assert [(a.kind, a.model) for a in plan.actions] == [(ActionKind.REPLACE, "coder")]
    before = replica_actors(world)
    assert apply_cli(world) == 0
    after = replica_actors(world)
    assert by_model(after, "coder") and set(by_model(after, "coder")) != set(by_model(before, "coder"))
    untouched = {k: v for k, v in before.items() if not k.startswith("reconciler--coder--")}
    assert {k: after.get(k) for k in untouched} == untouched
    emb = requests.post(f"{world['http']}/coder/v1/embeddings", json={"input": "x"}, timeout=30).json()
    assert len(emb["data"][0]["embedding"]) == 4  # the new engine args are live
    assert_matches_plan(world, plan, desired)


def test_priority_eviction_evicts_what_the_plan_says(world):
    start_from(world)
    world["models"]["urgent"] = {"priorityClass": "critical", "vram": "14Gi", "replicas": 2, "spread": "gpu"}
    desired, observed_before, plan = plan_now(world)
    evicted = {(a.model, a.replica) for a in plan.actions if a.kind == ActionKind.EVICT}
    assert evicted, "the scenario must need an eviction: " + str(plan.actions)
    before = replica_actors(world)
    assert apply_cli(world) == 0
    after = replica_actors(world)
    observed = world["cluster"].observe(desired)
    running = {(r.model, r.replica) for r in observed.replicas}
    assert not evicted & running
    assert len(by_model(after, "urgent")) == 2
    touched = {(a.model, a.replica) for a in plan.actions}
    keys = {r.app: (r.model, r.replica) for r in observed_before.replicas}
    untouched = {app: actor for app, actor in before.items() if app in keys and keys[app] not in touched}
    assert untouched and {app: after.get(app) for app in untouched} == untouched
    assert_matches_plan(world, plan, desired)


def test_overcommit_is_refused_by_ray_and_reported(world):
    """A replica forced onto a GPU with no room for it (a hand-made plan) stays pending; healthy ones stay up."""
    from reconciler.executor.progress import Progress
    from reconciler.executor.run import Executor
    from reconciler.plan import Action
    from reconciler.planner.runtime import self_contained
    from reconciler.settings import ApplySettings

    start_from(world)
    desired, observed, _ = plan_now(world)
    crowded = max(
        ((r.node, r.gpus) for r in observed.replicas),
        key=lambda loc: sum(r.vram for r in observed.replicas if (r.node, r.gpus) == loc),
    )
    model = desired.model("summaries")
    extra = PlacedReplica("summaries", 9, crowded[0], crowded[1], model.vram)
    placement = tuple(PlacedReplica(r.model, r.replica, r.node, r.gpus, r.vram) for r in observed.replicas) + (extra,)
    create = Action(ActionKind.CREATE, "summaries", 9, None, extra.location, model.vram, "test: over-commit")
    plan = self_contained(Plan((create,), placement, (), (), observed.fingerprint, desired.fingerprint),
                          desired=desired, observed=observed)
    before = replica_actors(world)
    report = Executor(world["cluster"], settings=ApplySettings(pending_grace=5), progress=Progress(live=False)).apply(
        plan)
    assert not report.ok
    assert "pending" in report.failed[0].message
    state = {(r.model, r.replica): r.state for r in world["cluster"].observe(desired).replicas}
    assert str(state[("summaries", 9)]) == "pending"
    assert {k: v for k, v in replica_actors(world).items() if k in before} == before
    # The next regular apply removes what the specs do not want.
    assert apply_cli(world) == 0
    assert ("summaries", 9) not in {(r.model, r.replica) for r in world["cluster"].observe(desired).replicas}


def test_killed_replica_is_running_again_after_apply(world):
    start_from(world)
    details = world["cluster"].serve_details()
    app = next(n for n in sorted(details["applications"]) if n.startswith("reconciler--assistant--r"))
    replica = next(iter(details["applications"][app]["deployments"].values()))["replicas"][0]
    os.kill(replica["pid"], signal.SIGKILL)
    assert apply_cli(world) == 0
    world["cluster"].wait_serve(
        lambda d: any(r.get("state") == "RUNNING" and r["pid"] != replica["pid"]
                      for dep in d["applications"][app]["deployments"].values() for r in dep["replicas"]),
        timeout=120,
    )
    assert replica_actors(world)[app] != replica["actor_id"]
    assert plan_now(world)[2].empty


def test_replica_failing_at_load_is_reported_hurts_no_other_and_is_retried_once_fixed(world, capsys, tmp_path):
    broken = tmp_path / "driver-broken"  # the failure lasts while this file exists (all nodes share this host)
    broken.touch()
    start_from(world)
    world["models"]["broken"] = {"vram": "1Gi", "replicas": 1,
                                 "engineArgs": {"startup_error": "CUDA out of memory (rehearsal)",
                                                "startup_error_while_exists": str(broken)}}
    before = replica_actors(world)
    capsys.readouterr()
    assert apply_cli(world) == 1
    out = capsys.readouterr().out
    assert "FAIL create broken[0]" in out and "CUDA out of memory (rehearsal)" in out
    assert {k: v for k, v in replica_actors(world).items() if k in before} == before
    desired, observed, plan = plan_now(world)
    assert [(a.kind, a.model) for a in plan.actions] == [(ActionKind.REPLACE, "broken")]
    # Fixed: the next apply starts the failed application again, under its own name and on its own GPU.
    broken.unlink()
    assert apply_cli(world) == 0
    assert len(by_model(replica_actors(world), "broken")) == 1
    assert plan_now(world)[2].empty
    assert {k: v for k, v in replica_actors(world).items() if k in before} == before
    del world["models"]["broken"]
    assert apply_cli(world) == 0
    assert not [n for n in world["cluster"].serve_details()["applications"] if n.startswith("reconciler--broken")]


def test_foreign_application_is_never_touched(world):
    start_from(world, {})  # every application of ours removed, ...
    start_from(world, embeddings={"replicas": 2})  # ... created again and scaled
    assert replica_actors(world)[FOREIGN_APP] == world["foreign_actor"]



def test_application_deleted_by_hand_is_recreated_and_orphans_go(world):
    start_from(world)
    cluster = world["cluster"]
    details = cluster.serve_details()
    victim = next(n for n in sorted(details["applications"]) if n.startswith("reconciler--summaries--r"))
    count = len(by_model(replica_actors(world), "summaries"))
    orphan = copy.deepcopy(details["applications"]["reconciler--summaries"]["deployed_app_config"])
    orphan.update(name="reconciler--gone-model", route_prefix="/gone-model")
    orphan["args"]["model"] = "gone-model"
    apps = [a["deployed_app_config"] for n, a in details["applications"].items()
            if a.get("deployed_app_config") and n != victim]
    cluster.put_serve_config({k: details[k] for k in ("proxy_location", "http_options") if details.get(k)}
                             | {"applications": [*apps, orphan]})
    cluster.wait_serve(lambda d: victim not in d["applications"], timeout=60)
    desired, _, plan = plan_now(world)
    assert [(a.kind, a.model) for a in plan.actions] == [(ActionKind.CREATE, "summaries")]
    assert apply_cli(world) == 0
    assert "reconciler--gone-model" not in cluster.serve_details()["applications"]  # ours, of no desired model
    assert len(by_model(replica_actors(world), "summaries")) == count
    assert plan_now(world)[2].empty
