"""What an apply in progress may start for models woken meanwhile: a fresh plan's creates for woken models, on GPUs
the running plan does not fill and the fresh plan need not free first, with the router naming them; and the route
table that apply publishes once they run. Pure: plans in, Serve applications and tables out."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.demand import ModelDemand
from reconciler.desired import Scaling
from reconciler.executor import steps
from reconciler.executor.run import route_table
from reconciler.naming import router_app
from reconciler.plan import ActionKind, Location
from reconciler.planner import plan
from tests.planner.test_planner import FAST, applied, homelab, model

ON_DEMAND = Scaling(min=0, max=1)
NOW = 1_800_000_000.0


def _woken(desired, base, *names):
    demand = tuple(ModelDemand(n, queued=1, since_last=0, held_for=0) for n in names)
    return plan(desired, replace(base, demand=demand, at=NOW), FAST)


def _replica(fresh, name):
    return steps.target(fresh).replica_of[(name, 0)]


def test_two_woken_models_start_together_where_the_running_apply_touches_nothing():
    wanted = (model("a", 8, 0, scaling=ON_DEMAND), model("b", 8, 0, scaling=ON_DEMAND))
    base = applied(homelab(model("busy", 20, 1), gpus=2))  # on one GPU, the other free
    running = plan(homelab(*wanted, gpus=2), replace(base, at=NOW), FAST)  # `busy` leaves: its GPU drains
    assert [(str(a.kind), a.model) for a in running.actions] == [("delete", "busy")]
    fresh = _woken(homelab(*wanted, model("busy", 20, 1), gpus=2), base, "a", "b")
    woken = steps.wake_apps(fresh, running)
    assert set(woken.apps) == {_replica(fresh, "a"), _replica(fresh, "b"), router_app("a"), router_app("b")}
    assert steps.router_backends(woken.apps[router_app("a")]) == [_replica(fresh, "a")]
    assert [(m.name, m.replicas) for m in woken.models] == [("a", 1), ("b", 1)]


def test_the_table_routes_a_woken_model_to_its_running_replica_though_the_running_plan_wants_none():
    """The running plan's own router for the model names nothing and its runtime asks for 0 replicas: the woken
    model's route comes from the fresh plan, never from the stale one."""
    sleepy = model("sleepy", 2, 0, scaling=ON_DEMAND)
    base = applied(homelab(sleepy, model("long", 1, 1), gpus=1))
    running = plan(homelab(sleepy, model("long", 1, 0), gpus=1), replace(base, at=NOW), FAST)
    fresh = _woken(homelab(sleepy, model("long", 1, 0), gpus=1), base, "sleepy")
    woken = steps.wake_apps(fresh, running)
    stale = steps.target(running).apps
    assert steps.router_backends(stale[router_app("sleepy")]) == []
    before = route_table(running, stale).model("sleepy")
    assert (before.backends, before.state) == ((), "idle")
    after = route_table(running, {**stale, **woken.apps}, models=woken.models).model("sleepy")
    assert (after.backends, after.state, after.desired) == ((_replica(fresh, "sleepy"),), "running", 1)


def test_a_woken_model_that_needs_an_eviction_the_running_apply_does_not_make_waits_for_the_next_plan():
    wanted = model("a", 20, 0, scaling=ON_DEMAND, priority=50)
    base = applied(homelab(model("busy", 20, 1, priority=10), gpus=1))
    desired = homelab(wanted, model("busy", 20, 1, priority=10), gpus=1)
    running = plan(desired, replace(base, at=NOW), FAST)
    assert running.actions == ()  # say, an apply of something elsewhere: it evicts nothing here
    fresh = _woken(desired, base, "a")
    assert [(str(a.kind), a.model) for a in fresh.actions] == [("evict", "busy"), ("create", "a")]
    assert not steps.wake_apps(fresh, running)


def test_nothing_starts_without_a_wake():
    desired = homelab(model("a", 8, 0, scaling=ON_DEMAND))
    base = applied(homelab(gpus=2))
    fresh = plan(desired, replace(base, at=NOW), FAST)
    assert not steps.wake_apps(fresh, fresh)


def test_a_gpu_the_running_apply_only_frees_takes_a_woken_model_it_has_room_for_already():
    wanted = model("a", 2, 0, scaling=ON_DEMAND)
    base = applied(homelab(model("busy", 8, 1), gpus=1))
    running = plan(homelab(wanted, gpus=1), replace(base, at=NOW), FAST)  # busy leaves: a drain under way
    fresh = _woken(homelab(wanted, model("busy", 8, 1), gpus=1), base, "a")  # busy still counted: room all the same
    assert set(steps.wake_apps(fresh, running).apps) == {_replica(fresh, "a"), router_app("a")}


def test_a_gpu_the_running_apply_is_about_to_fill_and_the_fresh_plan_packs_otherwise_is_left_to_it():
    """The running apply starts `new` (20 GiB) where the fresh plan, which does not see it yet, put `a` (8 GiB): the
    two would not fit together."""
    wanted = (model("a", 8, 0, scaling=ON_DEMAND), model("new", 20, 1))
    base = applied(homelab(gpus=2))
    fresh = _woken(homelab(*wanted, gpus=2), base, "a")
    (a_gpu,) = {p.gpus for p in fresh.placement if p.model == "a"}
    (new_gpu,) = {p.gpus for p in fresh.placement if p.model == "new"}
    assert a_gpu != new_gpu
    running = plan(homelab(*wanted, gpus=2), replace(base, at=NOW), FAST)
    (start,) = running.actions
    running = replace(running, actions=(replace(start, target=Location("node-a", a_gpu)),))
    assert not steps.wake_apps(fresh, running)


def test_a_gpu_the_running_apply_is_about_to_fill_as_the_fresh_plan_packs_it_takes_a_woken_model_beside_it():
    """The fresh plan places the running apply's replica where that apply is starting it: its packing counts that
    VRAM."""
    wanted = (model("a", 2, 0, scaling=ON_DEMAND), model("new", 8, 1))
    base = applied(homelab(gpus=1))
    running = plan(homelab(*wanted, gpus=1), replace(base, at=NOW), FAST)  # starting `new`, not observed yet
    fresh = _woken(homelab(*wanted, gpus=1), base, "a")
    assert set(steps.wake_apps(fresh, running).apps) == {_replica(fresh, "a"), router_app("a")}


def test_a_gpu_the_running_apply_fills_with_an_engine_already_submitted_takes_a_woken_model_beside_it():
    """A slow engine start: its application is in Serve, so the fresh plan's observation counts its VRAM."""
    wanted = (model("a", 2, 0, scaling=ON_DEMAND), model("new", 8, 1))
    running = plan(homelab(*wanted, gpus=1), replace(applied(homelab(gpus=1)), at=NOW), FAST)
    starting = steps.target(running).new_app[0]
    fresh = _woken(homelab(*wanted, gpus=1), applied(homelab(*wanted, gpus=1)), "a")  # `new` observed
    assert [(str(a.kind), a.model) for a in fresh.actions] == [("create", "a")]
    assert set(steps.wake_apps(fresh, running, submitted={starting}).apps) == {_replica(fresh, "a"), router_app("a")}


def test_a_model_the_running_apply_starts_itself_is_left_to_it():
    """An apply that is itself a wake (its replica not observed yet): a second wake must not start another one."""
    wanted = model("a", 2, 0, scaling=ON_DEMAND)
    base = applied(homelab(wanted, gpus=2))
    running = _woken(homelab(wanted, gpus=2), base, "a")
    assert [(str(a.kind), a.model) for a in running.actions] == [("create", "a")]
    assert not steps.wake_apps(running, running)


def test_a_stop_the_running_apply_already_carries_out_does_not_hold_a_wake_back():
    """Mid-drain, the fresh plan deletes the leaving replica too (it is still observed): that is the running apply's
    work, not a stop the woken model has to wait for."""
    wanted = model("a", 2, 0, scaling=ON_DEMAND)
    base = applied(homelab(model("long", 1, 1), gpus=1))
    running = plan(homelab(wanted, gpus=1), replace(base, at=NOW), FAST)
    fresh = _woken(homelab(wanted, gpus=1), base, "a")
    assert [(str(a.kind), a.model) for a in fresh.actions] == [("delete", "long"), ("create", "a")]
    assert set(steps.wake_apps(fresh, running).apps) == {_replica(fresh, "a"), router_app("a")}


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(
    sizes=st.lists(st.sampled_from([2, 6, 10, 14, 20]), min_size=2, max_size=5),
    fixed=st.lists(st.booleans(), min_size=5, max_size=5),
    was=st.lists(st.booleans(), min_size=5, max_size=5),
    woken=st.lists(st.booleans(), min_size=5, max_size=5),
    gpus=st.integers(min_value=1, max_value=3),
)
def test_woken_replicas_never_race_the_running_apply_and_their_routers_name_only_them(sizes, fixed, was, woken, gpus):
    """Whatever runs, is being applied, and wakes: what starts is a fresh create of a woken model the running apply
    leaves alone, never on a GPU that apply is about to fill with a replica the fresh plan packs elsewhere, and each
    woken model's router names exactly its replicas that start."""
    def models(now: bool):
        return [model(f"m{i}", size, (1 if (was[i] if now else fixed[i]) else 0) if fixed[i] else 0,
                      **({} if fixed[i] else {"scaling": ON_DEMAND})) for i, size in enumerate(sizes)]

    base = applied(homelab(*models(True), gpus=gpus))
    desired = homelab(*models(False), gpus=gpus)
    running = plan(desired, replace(base, at=NOW), FAST)
    names = [f"m{i}" for i in range(len(sizes)) if not fixed[i] and woken[i]]
    fresh = _woken(desired, base, *names)
    out = steps.wake_apps(fresh, running)
    tgt = steps.target(fresh)
    acted = {a.model for a in running.actions}
    packed = {(p.model, p.replica): (p.node, p.gpus) for p in fresh.placement}
    about_to_fill = {(a.target.node, g) for a in running.actions if a.target is not None
                     and packed.get((a.model, a.replica)) != (a.target.node, a.target.gpus) for g in a.target.gpus}
    creates = {tgt.new_app[i]: a for i, a in enumerate(fresh.actions)
               if a.kind is ActionKind.CREATE and i in tgt.new_app}
    replicas = {n: c for n, c in out.apps.items() if c["args"]["kind"] == steps.REPLICA_KIND}
    for name in replicas:
        a = creates[name]
        assert a.model in names and a.model not in acted
        assert not {(a.target.node, g) for g in a.target.gpus} & about_to_fill
    for m in out.models:
        mine = sorted(n for n in replicas if creates[n].model == m.name)
        assert mine and steps.router_backends(out.apps[router_app(m.name)]) == mine
