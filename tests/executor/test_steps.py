"""The pure parts of the executor: names, the Serve configs, the phases of an apply, reading Serve's answers."""

from __future__ import annotations

from reconciler.adapter.observation import build_replicas, pending_apps, replica_state
from reconciler.desired import DesiredState, Engine, Model, Pool, Preemption
from reconciler import naming
from reconciler.executor import serveconfig, steps
from reconciler.observed import ObservedReplica, ObservedState, ReplicaState
from reconciler.plan import Action, ActionKind, Location, PlacedReplica, Plan
from reconciler.planner.runtime import model_runtime, self_contained

GIB = 1 << 30


def model(name: str, vram: int = 4 * GIB, **kw) -> Model:
    return Model(name=name, pool="p", priority_class="", priority=0, preemption=Preemption.NEVER, preemptible=True,
                 engine=Engine.ECHO, source="s", vram=vram, replicas=1, **kw)


def runtime(name: str, **kw):
    return model_runtime(model(name, **kw))


def test_resource_names_are_what_ray_accepts_and_distinct():
    assert naming.vram_resource("node-a", 1) == "vram_mb_node-a_gpu1"
    assert naming.sanitise("gpu box/1") != naming.sanitise("gpu_box_1")
    assert naming.vram_mib(GIB + 1) == 1025  # a replica never asks for less than planned
    assert naming.capacity_mib(GIB + (1 << 19)) == 1024  # a GPU never advertises more than it has


def test_replica_app_is_pinned_to_node_and_gpus():
    app = serveconfig.replica_app(model=runtime("m", vram=6 * GIB), replica=0, location=Location("node-b", (1, 2)),
                                  gpu_memory=24 * GIB)
    options = app["deployments"][0]["ray_actor_options"]
    assert options["resources"] == {"vram_mb_node-b_gpu1": 6144, "vram_mb_node-b_gpu2": 6144}
    assert options["num_gpus"] == 0
    assert options["label_selector"] == {"reconciler.io/node": "node-b"}
    assert options["runtime_env"]["env_vars"]["CUDA_VISIBLE_DEVICES"] == "1,2"
    assert app["route_prefix"] is None and app["args"]["managed_by"] == "reconciler"


def test_generation_changes_with_spec_or_place_only():
    m = model("m")
    a = serveconfig.replica_app_name(m, 0, Location("n", (0,)))
    assert a == serveconfig.replica_app_name(m, 0, Location("n", (0,)))
    assert a != serveconfig.replica_app_name(m, 0, Location("n", (1,)))
    assert a != serveconfig.replica_app_name(model("m", vram=5 * GIB), 0, Location("n", (0,)))


def _serve_app(config: dict, *, status: str, replica_state: str | None, message: str = "") -> dict:
    replicas = [] if replica_state is None else [{"state": replica_state, "actor_name": "x", "node_id": None}]
    return {"status": status, "message": "", "deployed_app_config": config,
            "deployments": {"Replica": {"status": "UPDATING", "message": message, "replicas": replicas}}}


def test_pending_is_read_from_unmet_demand_by_shape_and_count():
    m = model("m", vram=4 * GIB)
    configs = [serveconfig.replica_app(model=model_runtime(m), replica=i, location=Location("n", (0,)),
                                       gpu_memory=8 * GIB) for i in range(3)]
    serve = {"applications": {c["name"]: _serve_app(c, status="DEPLOYING", replica_state="STARTING")
                              for c in configs}}
    assert len(pending_apps(serve, [({"vram_mb_n_gpu0": 4096.0}, 1)])) == 1
    assert pending_apps(serve, [({"vram_mb_n_gpu1": 4096.0}, 3)]) == set()
    state, _ = replica_state(serve["applications"][configs[0]["name"]], True)
    assert state == ReplicaState.PENDING


def test_serve_states_map_to_replica_states():
    c = serveconfig.replica_app(model=runtime("m"), replica=0, location=Location("n", (0,)), gpu_memory=8 * GIB)
    assert replica_state(_serve_app(c, status="RUNNING", replica_state="RUNNING"), False)[0] == ReplicaState.RUNNING
    failed = _serve_app(c, status="DEPLOY_FAILED", replica_state=None, message="CUDA out of memory")
    assert replica_state(failed, False) == (ReplicaState.FAILED, "CUDA out of memory")
    assert replica_state(_serve_app(c, status="DELETING", replica_state=None), False)[0] == ReplicaState.STOPPING
    observed = build_replicas({"applications": {c["name"]: failed}}, {}, set())
    assert observed[0].model == "m" and observed[0].node == "n" and observed[0].vram == 4 * GIB
    assert observed[0].restart_hash == model("m").restart_hash


def _move_plan(make_before_break: bool):
    m = model("m")
    desired = DesiredState(pools=(Pool(name="p"),), models=(m,))
    old_loc, new_loc = Location("a", (0,)), Location("b", (0,))
    old = serveconfig.replica_app(model=model_runtime(m), replica=0, location=old_loc, gpu_memory=0)
    observed = ObservedState(replicas=(ObservedReplica("m", 0, "a", (0,), m.vram, m.restart_hash, m.config_hash,
                                                       app=old["name"]),))
    move = Action(ActionKind.MOVE, "m", 0, old_loc, new_loc, m.vram, "why", make_before_break=make_before_break)
    plan = self_contained(Plan((move,), (PlacedReplica("m", 0, "b", (0,), m.vram),), (), (), "f", "d"),
                          desired=desired, observed=observed)
    router = serveconfig.router_app(model=model_runtime(m), backends=[old["name"]])
    current = {old["name"]: old, router["name"]: router}
    return plan, desired, observed, current, old["name"]


def test_make_before_break_keeps_the_old_replica_until_the_new_one_runs():
    plan, desired, observed, current, old = _move_plan(True)
    tgt = steps.target(plan)
    new = tgt.new_app[0]
    free = steps.phase_free(plan, tgt, current)
    assert old in free.apps and not free.wait_gone
    start = steps.phase_start(plan, tgt, free)
    assert start.wait_running == [new] and old in start.apps
    switched = steps.phase_switch(plan, tgt, start, running={new})
    assert old not in switched.apps and switched.wait_gone == [old]
    router = switched.apps[naming.router_app("m")]
    assert router["deployments"][0]["user_config"]["backends"] == [new]
    # The new one failed: the old one stays, and stays in the router.
    kept = steps.phase_switch(plan, tgt, start, running=set())
    assert steps.failed_replacements(plan, tgt, running=set()) == {old: new}
    assert steps.failed_replacements(plan, tgt, running={new}) == {}
    final = steps.phase_create(plan, tgt, kept, {old: new})
    assert old in final.apps
    assert old in final.apps[naming.router_app("m")]["deployments"][0]["user_config"]["backends"]


def test_break_before_make_stops_the_old_replica_first():
    plan, desired, observed, current, old = _move_plan(False)
    tgt = steps.target(plan)
    free = steps.phase_free(plan, tgt, current)
    assert free.wait_gone == [old] and old not in free.apps
    assert free.apps[naming.router_app("m")]["deployments"][0]["user_config"]["backends"] == []


def test_stale_generations_are_cleaned_up():
    plan, desired, observed, current, old = _move_plan(True)
    stale = serveconfig.replica_app(model=runtime("m", vram=GIB), replica=0, location=Location("a", (0,)),
                                    gpu_memory=0)
    current[stale["name"]] = stale
    orphan = serveconfig.router_app(model=runtime("gone"), backends=[])
    current[orphan["name"]] = orphan
    free = steps.phase_free(plan, steps.target(plan), current)
    assert stale["name"] in free.wait_gone and old not in free.wait_gone
    assert orphan["name"] in free.wait_gone and orphan["name"] not in free.apps


def _one_replica_and_its_router():
    """Model m with one replica on a/gpu0: the model, desired state, location, replica app and router naming it."""
    m = model("m")
    loc = Location("a", (0,))
    app = serveconfig.replica_app(model=model_runtime(m), replica=0, location=loc, gpu_memory=0)
    router = serveconfig.router_app(model=model_runtime(m), backends=[app["name"]])
    return m, DesiredState(pools=(Pool(name="p"),), models=(m,)), loc, app, router


def test_a_vanished_backend_is_not_dropped_from_its_router_before_it_is_created_again():
    """Healing an application deleted by hand: the router keeps naming it, so the apply needs no router update."""
    m, desired, loc, app, router = _one_replica_and_its_router()
    current = {router["name"]: router}  # the replica's application is gone
    plan = self_contained(Plan((Action(ActionKind.CREATE, "m", 0, None, loc, m.vram, "why"),),
                               (PlacedReplica("m", 0, "a", (0,), m.vram),), (), (), "f", "d"),
                          desired=desired, observed=ObservedState())
    tgt = steps.target(plan)
    free = steps.phase_free(plan, tgt, current)
    assert free.apps == current and not free.wait_gone
    switch = steps.phase_switch(plan, tgt, steps.phase_start(plan, tgt, free), set())
    assert switch.apps == current
    create = steps.phase_create(plan, tgt, switch, {})
    assert create.wait_running == [app["name"]]
    assert create.apps[router["name"]] == router  # unchanged: the executor waits for no router


def test_the_serve_fingerprint_changes_with_states_not_with_messages():
    from reconciler.adapter.observation import serve_fingerprint

    c = serveconfig.replica_app(model=runtime("m"), replica=0, location=Location("n", (0,)), gpu_memory=8 * GIB)
    running = {"applications": {c["name"]: _serve_app(c, status="RUNNING", replica_state="RUNNING")}}
    talkative = {"applications": {c["name"]: _serve_app(c, status="RUNNING", replica_state="RUNNING",
                                                        message="autoscaling metrics")}}
    restarting = {"applications": {c["name"]: _serve_app(c, status="RUNNING", replica_state="STARTING")}}
    assert serve_fingerprint(running) == serve_fingerprint(talkative)
    assert serve_fingerprint(running) != serve_fingerprint(restarting)
    assert serve_fingerprint(running) != serve_fingerprint({"applications": {}})


def test_a_replica_serve_gave_up_on_is_deleted_then_started_again_under_its_own_name():
    m, desired, loc, app, router = _one_replica_and_its_router()
    observed = ObservedState(replicas=(ObservedReplica("m", 0, "a", (0,), m.vram, m.restart_hash, m.config_hash,
                                                       app=app["name"], state=ReplicaState.FAILED),))
    plan = self_contained(
        Plan((Action(ActionKind.REPLACE, "m", 0, loc, loc, m.vram, "failed: restart", make_before_break=True),),
             (PlacedReplica("m", 0, "a", (0,), m.vram),), (), (), "f", "d"),
        desired=desired, observed=observed)
    tgt = steps.target(plan)
    free = steps.phase_free(plan, tgt, {app["name"]: app, router["name"]: router})
    assert free.wait_gone == [app["name"]] and app["name"] not in free.apps
    start = steps.phase_start(plan, tgt, free)
    assert start.wait_running == [app["name"]] and start.apps[app["name"]] == app


def test_an_unhealthy_replica_that_serve_is_replacing_is_starting_not_failed():
    c = serveconfig.replica_app(model=runtime("m"), replica=0, location=Location("n", (0,)), gpu_memory=8 * GIB)
    recovering = _serve_app(c, status="UNHEALTHY", replica_state="STARTING", message="health check failed")
    state, message = replica_state(recovering, False)
    assert state == ReplicaState.STARTING and "health check failed" in message
    assert replica_state(_serve_app(c, status="UNHEALTHY", replica_state=None), False)[0] == ReplicaState.FAILED


def test_many_new_replicas_start_a_few_per_node_at_a_time_and_routers_change_once():
    m = model("m")
    desired = DesiredState(pools=(Pool(name="p"),), models=(m,))
    placement = tuple(PlacedReplica("m", i, "a" if i < 5 else "b", (0,), m.vram) for i in range(7))
    plan = self_contained(
        Plan(tuple(Action(ActionKind.CREATE, "m", p.replica, None, p.location, m.vram, "new") for p in placement),
             placement, (), (), "f", "d"),
        desired=desired, observed=ObservedState())
    tgt = steps.target(plan)
    old_router = serveconfig.router_app(model=model_runtime(m), backends=[])
    current = {old_router["name"]: old_router}
    free = steps.phase_free(plan, tgt, current)
    create = steps.phase_create(plan, tgt, steps.phase_switch(plan, tgt, steps.phase_start(plan, tgt, free), set()),
                                {})
    rounds = steps.batches(create, free.apps, per_node=2)
    assert [len(starting) for _, starting in rounds] == [4, 2, 1]  # a: 2+2+1, b: 2
    assert sorted(n for _, starting in rounds for n in starting) == sorted(create.wait_running)
    for k, (apps, starting) in enumerate(rounds):
        started_so_far = {n for _, s in rounds[: k + 1] for n in s}
        assert {n for n in apps if n in create.wait_running} == started_so_far
        router = apps[old_router["name"]]
        assert router == (create.apps[old_router["name"]] if k == len(rounds) - 1 else old_router)
    assert steps.batches(create, free.apps, per_node=0) == [(create.apps, create.wait_running)]
