"""What an apply in progress may start for models woken meanwhile: a fresh plan's creates for woken models, on GPUs
the running plan does not fill and the fresh plan need not free first. Pure: plans in, Serve applications out."""

from __future__ import annotations

from dataclasses import replace

from reconciler.demand import ModelDemand
from reconciler.desired import Scaling
from reconciler.executor import steps
from reconciler.planner import plan
from tests.planner.test_planner import FAST, applied, homelab, model

ON_DEMAND = Scaling(min=0, max=1)
NOW = 1_800_000_000.0


def _woken(desired, base, *names):
    demand = tuple(ModelDemand(n, queued=1, since_last=0, held_for=0) for n in names)
    return plan(desired, replace(base, demand=demand, at=NOW), FAST)


def test_two_woken_models_start_at_once_where_the_running_apply_touches_nothing():
    wanted = (model("a", 8, 0, scaling=ON_DEMAND), model("b", 8, 0, scaling=ON_DEMAND))
    base = applied(homelab(model("busy", 20, 1), gpus=2))  # on one GPU, the other free
    running = plan(homelab(*wanted, gpus=2), replace(base, at=NOW), FAST)  # `busy` leaves: its GPU drains
    assert [(str(a.kind), a.model) for a in running.actions] == [("delete", "busy")]
    fresh = _woken(homelab(*wanted, model("busy", 20, 1), gpus=2), base, "a", "b")
    started = steps.wake_apps(fresh, running)
    tgt = steps.target(fresh)
    assert set(started) == {tgt.replica_of[("a", 0)], tgt.replica_of[("b", 0)]}
    assert {tuple(p.location.gpus) for p in fresh.placement if p.model in ("a", "b")} != {
        running.actions[0].source.gpus}


def test_a_woken_model_that_needs_an_eviction_the_running_apply_does_not_make_waits_for_the_next_plan():
    wanted = model("a", 20, 0, scaling=ON_DEMAND, priority=50)
    base = applied(homelab(model("busy", 20, 1, priority=10), gpus=1))
    desired = homelab(wanted, model("busy", 20, 1, priority=10), gpus=1)
    running = plan(desired, replace(base, at=NOW), FAST)
    assert running.actions == ()  # say, an apply of something elsewhere: it evicts nothing here
    fresh = _woken(desired, base, "a")
    assert [(str(a.kind), a.model) for a in fresh.actions] == [("evict", "busy"), ("create", "a")]
    assert steps.wake_apps(fresh, running) == {}


def test_nothing_starts_without_a_wake():
    desired = homelab(model("a", 8, 0, scaling=ON_DEMAND))
    base = applied(homelab(gpus=2))
    fresh = plan(desired, replace(base, at=NOW), FAST)
    assert steps.wake_apps(fresh, fresh) == {}


def test_a_gpu_the_running_apply_only_frees_takes_a_woken_model_it_has_room_for_already():
    wanted = model("a", 2, 0, scaling=ON_DEMAND)
    base = applied(homelab(model("busy", 8, 1), gpus=1))
    running = plan(homelab(wanted, gpus=1), replace(base, at=NOW), FAST)  # busy leaves: a drain under way
    fresh = _woken(homelab(wanted, model("busy", 8, 1), gpus=1), base, "a")  # busy still counted: room all the same
    assert steps.wake_apps(fresh, running) == {steps.target(fresh).replica_of[("a", 0)]:
                                               steps.target(fresh).apps[steps.target(fresh).replica_of[("a", 0)]]}


def test_a_gpu_the_running_apply_fills_is_left_to_it():
    wanted = (model("a", 2, 0, scaling=ON_DEMAND), model("new", 8, 1))
    base = applied(homelab(gpus=1))
    running = plan(homelab(*wanted, gpus=1), replace(base, at=NOW), FAST)  # starting `new`, not observed yet
    fresh = _woken(homelab(*wanted, gpus=1), base, "a")
    assert steps.wake_apps(fresh, running) == {}


def test_a_stop_the_running_apply_already_carries_out_does_not_hold_a_wake_back():
    """Mid-drain, the fresh plan deletes the leaving replica too (it is still observed): that is the running apply's
    work, not a stop the woken model has to wait for."""
    wanted = model("a", 2, 0, scaling=ON_DEMAND)
    base = applied(homelab(model("long", 1, 1), gpus=1))
    running = plan(homelab(wanted, gpus=1), replace(base, at=NOW), FAST)
    fresh = _woken(homelab(wanted, gpus=1), base, "a")
    assert [(str(a.kind), a.model) for a in fresh.actions] == [("delete", "long"), ("create", "a")]
    assert set(steps.wake_apps(fresh, running)) == {steps.target(fresh).replica_of[("a", 0)]}
