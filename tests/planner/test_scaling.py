"""Demand-driven replica counts (`replicas: {min, max}`): the pure decision, and what the planner makes of it."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.demand import ModelDemand
from reconciler.desired import Scaling
from reconciler.observed import ObservedState, from_inventory
from reconciler.observed import from_json as observed_from_json
from reconciler.observed import to_json as observed_to_json
from reconciler.plan import to_json as plan_to_json
from reconciler.planner import plan
from reconciler.planner.scaling import decide

from .test_planner import FAST, GiB, applied, homelab, kinds, model

NOW = 1_800_000_000.0
SCALING = Scaling(min=0, max=4, target_in_flight=4, scale_up_after=10, scale_down_after=300, idle_after=900,
                  load_timeout=600)


def ranged(name: str, vram_gib: float, *, scaling: Scaling = SCALING, priority: int = 0, **kw):
    return model(name, vram_gib, scaling.min, priority=priority, scaling=scaling, **kw)


def steady(load: float, *, since: float = NOW - 3600, model_name: str = "chat", **kw) -> ModelDemand:
    """A history with `load` held since `since` up to now."""
    return ModelDemand(model=model_name, samples=((int(NOW) - int(since), load),), **kw)


@pytest.mark.parametrize(
    ("running", "demand", "wanted", "rule", "reason"),
    [
        # wake: held requests and no replica load one at once, whatever the history says
        (0, ModelDemand("chat", queued=3, since_last=0), 1, "wake", "wake: 3 requests waiting for chat"),
        # idle for idleAfter: unload
        (2, steady(0, since_last=901), 0, "idle", "idle 15m: unload"),
        # not idle yet: a lull shorter than scaleDownAfter changes nothing
        (2, replace(steady(0, since=NOW - 100, since_last=100), samples=((3600, 8.0),
                                                                                 (100, 0.0))),
         2, "steady", ""),
        # sustained load over the target for scaleUpAfter: as many as the lowest load of the window needs
        (2, steady(19, in_flight=19, since_last=0), 4, "up",
         "scale up: 19 in flight over 2 replicas, target 4 per replica for 10s"),
        (1, steady(9, in_flight=9, since_last=0), 3, "up",
         "scale up: 9 in flight over 1 replica, target 4 per replica for 10s"),
        # max is never exceeded
        (4, steady(100, in_flight=100, since_last=0), 4, "steady", ""),
        # a burst shorter than scaleUpAfter adds nothing
        (1, replace(steady(1, in_flight=30, since_last=0), samples=((3600, 1.0),
                                                                        (3, 30.0))),
         1, "steady", ""),
        # sustained low load for scaleDownAfter: as many as the highest load of the window needs, never below one
        (4, steady(5, in_flight=5, since_last=0), 2, "down",
         "scale down: at most 5 in flight over 4 replicas for 5m, target 4 per replica"),
        (3, steady(0.4, since_last=10), 1, "down",
         "scale down: at most 0.4 in flight over 3 replicas for 5m, target 4 per replica"),
        # a history too short to tell sustained load: the count stays
        (1, steady(30, since=NOW - 5, in_flight=30, since_last=0), 1, "steady", ""),
        # the spec's range moved past what runs
        (6, steady(100, in_flight=100, since_last=0), 4, "range", "replicas: {min: 0, max: 4} (was 6)"),
    ],
)
def test_decide(running, demand, wanted, rule, reason) -> None:
    d = decide(ranged("chat", 4), demand=demand, running=running, now=NOW)
    assert (d.wanted, d.rule, d.reason) == (wanted, rule, reason)


def test_min_is_kept_when_idle_and_without_clock() -> None:
    two = replace(SCALING, min=2)
    assert decide(ranged("chat", 4, scaling=two), demand=steady(0, since_last=5000), running=3,
                  now=NOW).wanted == 2
    assert decide(ranged("chat", 4, scaling=two), demand=None, running=0, now=None).wanted == 2
    # offline (no clock): what runs stays, within the range
    assert decide(ranged("chat", 4), demand=None, running=3, now=None).wanted == 3


@settings(max_examples=300, derandomize=True, database=None, deadline=None)
@given(
    lo=st.integers(0, 3), span=st.integers(0, 4), running=st.integers(0, 8), queued=st.integers(0, 50),
    in_flight=st.integers(0, 50), idle=st.integers(0, 4000), loads=st.lists(st.floats(0, 60), min_size=1,
                                                                            max_size=6),
)
def test_count_always_within_range(lo, span, running, queued, in_flight, idle, loads) -> None:
    s = replace(SCALING, min=lo, max=max(1, lo + span))
    samples = tuple((3600 - 600 * i, round(v, 3)) for i, v in enumerate(loads))
    d = decide(ranged("chat", 4, scaling=s), running=running, now=NOW,
               demand=ModelDemand("chat", in_flight=in_flight, queued=queued, since_last=idle,
                                  samples=samples))
    assert s.min <= d.wanted <= s.max
    if queued and running == 0:
        assert d.wanted >= 1


def _observed_with(desired, demand, *, at=NOW, base=None):
    observed = base if base is not None else from_inventory(desired)
    return replace(observed, demand=tuple(demand), at=at)


def test_wake_plans_a_replica_and_a_snapshot_reproduces_the_plan_byte_for_byte() -> None:
    desired = homelab(ranged("chat", 8))
    observed = _observed_with(desired, [ModelDemand("chat", queued=2, since_last=1, held_for=1)])
    first = plan(desired, observed, FAST)
    assert kinds(first) == [("create", "chat", 0)]
    assert first.actions[0].reason.startswith("wake: 2 requests waiting for chat; new replica: 8 GiB on node-a/gpu")
    assert [(d.model, d.running, d.wanted, d.rule) for d in first.scaling] == [("chat", 0, 1, "wake")]
    assert first.model("chat").replicas == 1
    # the snapshot carries the demand and the clock: planning from it gives the same plan, byte for byte
    snapshot = json.loads(json.dumps(observed_to_json(observed)))
    again = plan(desired, observed_from_json(snapshot), FAST)
    assert json.dumps(plan_to_json(again), sort_keys=True) == json.dumps(plan_to_json(first), sort_keys=True)


def test_without_demand_an_unloaded_model_stays_unloaded() -> None:
    desired = homelab(ranged("chat", 8))
    p = plan(desired, _observed_with(desired, []), FAST)
    assert p.empty and p.model("chat").replicas == 0
    assert [d.rule for d in p.scaling] == ["steady"]


def test_idle_unloads_with_the_reason() -> None:
    desired = homelab(ranged("chat", 8))
    running = applied(homelab(model("chat", 8, 1)))
    p = plan(desired, _observed_with(desired, [steady(0, since_last=1000)], base=running), FAST)
    assert kinds(p) == [("delete", "chat", 0)]
    assert p.actions[0].reason == "idle 15m: unload"


def _one_gpu(*models):
    return homelab(*models, gpus=1, memory_gib=16)


def _running(desired, **counts) -> ObservedState:
    pinned = replace(desired, models=tuple(replace(m, replicas=counts.get(m.name, 0), scaling=None)
                                           for m in desired.models))
    return applied(pinned)


def test_higher_priority_waiting_evicts_the_idle_lower_one() -> None:
    desired = _one_gpu(ranged("chat", 10, priority=50), ranged("coder", 10, priority=20))
    base = _running(desired, coder=1)
    demand = [ModelDemand("chat", queued=3, since_last=0, held_for=2),
              steady(0, model_name="coder", since_last=600)]
    p = plan(desired, _observed_with(desired, demand, base=base), FAST)
    assert kinds(p) == [("evict", "coder", 0), ("create", "chat", 0)]
    assert p.actions[0].reason == ("evict coder[0] (priority 20, idle 10m) to load chat[0] (priority 50) for "
                                   "3 waiting requests: it needs 10 GiB on node-a/gpu0")


def test_lower_priority_waiting_stays_unplaced_and_says_why() -> None:
    desired = _one_gpu(ranged("chat", 10, priority=50), ranged("coder", 10, priority=20))
    base = _running(desired, chat=1)
    demand = [steady(2, model_name="chat", in_flight=2, since_last=0),
              ModelDemand("coder", queued=1, since_last=0, held_for=0)]
    p = plan(desired, _observed_with(desired, demand, base=base), FAST)
    assert p.empty
    assert [(u.model, u.replica) for u in p.unplaced] == [("coder", 0)]
    assert p.unplaced[0].reason == (
        "needs 10 GiB on one GPU; the most any GPU of pool homelab could offer after evicting lower priorities is "
        "6 GiB (node-a gpu0); 1 request waiting for it, held until it fits or for at most loadTimeout 10m")


def test_equal_priorities_never_evict_each_other_and_take_turns_by_idleness() -> None:
    quick = replace(SCALING, idle_after=30)
    desired = _one_gpu(ranged("chat", 10, scaling=quick, priority=20), ranged("coder", 10, scaling=quick,
                                                                             priority=20))
    base = _running(desired, chat=1)
    # coder waits while chat was used 10 s ago: no eviction of an equal
    waiting = [steady(0, model_name="chat", since_last=10),
               ModelDemand("coder", queued=1, since_last=0, held_for=0)]
    p = plan(desired, _observed_with(desired, waiting, base=base), FAST)
    assert p.empty and [u.model for u in p.unplaced] == ["coder"]
    # chat idle for idleAfter: it unloads, and coder is placed in the same plan
    later = [steady(0, model_name="chat", since_last=31),
             ModelDemand("coder", queued=1, since_last=21, held_for=21)]
    p = plan(desired, _observed_with(desired, later, base=base), FAST)
    assert kinds(p) == [("delete", "chat", 0), ("create", "coder", 0)]
    assert p.actions[0].reason == "idle 30s: unload"


def test_min_two_never_goes_below_two_and_vram_is_never_overcommitted() -> None:
    two = replace(SCALING, min=2, max=3)
    desired = homelab(ranged("chat", 10, scaling=two), gpus=1, memory_gib=24)
    p = plan(desired, _observed_with(desired, [steady(0, since_last=5000)]), FAST)
    assert p.model("chat").replicas == 2
    # only two replicas of 10 GiB fit on 24 GiB: the second is placed, none beyond capacity
    assert len(p.placement) == 2
    for gpu in p.gpus:
        assert sum(u.vram for u in gpu.after) <= gpu.capacity
    busy = plan(desired, _observed_with(desired, [steady(40, in_flight=40, since_last=0)],
                                        base=_running(desired, chat=2)), FAST)
    assert busy.model("chat").replicas == 3 and len(busy.placement) == 2
    assert [(u.model, u.replica) for u in busy.unplaced] == [("chat", 2)]
    assert busy.actions == ()


@pytest.mark.parametrize("idle_on", ["a", "b"])
def test_the_idle_replica_gives_way_before_the_busy_one(idle_on) -> None:
    """Two lower-priority replicas could each make room; the idle one is evicted, whichever GPU it runs on."""
    busy_on = "b" if idle_on == "a" else "a"
    desired = homelab(ranged("chat", 16, priority=50), ranged("a", 16, priority=20), ranged("b", 16, priority=20),
                      gpus=2, memory_gib=24)
    base = _running(desired, a=1, b=1)
    demand = [ModelDemand("chat", queued=1, since_last=0, held_for=0),
              steady(0, model_name=idle_on, since_last=60),
              steady(2, model_name=busy_on, in_flight=2, since_last=0)]
    p = plan(desired, _observed_with(desired, demand, base=base), FAST)
    assert kinds(p) == [("evict", idle_on, 0), ("create", "chat", 0)]
    # two idle ones: the least recently used goes first
    lru = [ModelDemand("chat", queued=1, since_last=0, held_for=0),
           steady(0, model_name=idle_on, since_last=300), steady(0, model_name=busy_on, since_last=30)]
    p = plan(desired, _observed_with(desired, lru, base=base), FAST)
    assert kinds(p) == [("evict", idle_on, 0), ("create", "chat", 0)]


def test_plan_observed_snapshot_reproduces_the_decision_byte_for_byte(tmp_path, capsys) -> None:
    """`reconciler plan DIR --observed snapshot.json`, twice, from the files alone: the same plan JSON."""
    from reconciler.cli import main as cli
    from reconciler.spec import load_specs

    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "all.yaml").write_text("""\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: desk}
spec:
  inventory: [{node: node-a, gpus: [{name: sim, memory: 24Gi}]}]
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: chat}
spec:
  engine: echo
  source: stand-in/chat
  vram: 4Gi
  replicas: {min: 0, max: 4}
  scaling: {targetInFlight: 4, scaleUpAfter: 10s}
""")
    desired = load_specs(specs).desired
    running = _running(desired, chat=2)
    snapshot = replace(running, at=NOW, demand=(steady(19, in_flight=19, since_last=0),))
    path = tmp_path / "observed.json"
    path.write_text(json.dumps(observed_to_json(snapshot)))
    outputs = []
    for _ in range(2):
        assert cli(["plan", str(specs), "--observed", str(path), "--format", "json"]) in (0, 2)
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    document = json.loads(outputs[0])
    assert document["scaling"] == [{"model": "chat", "running": 2, "wanted": 4, "rule": "up",
                                    "reason": "scale up: 19 in flight over 2 replicas, target 4 per replica for 10s",
                                    "inFlight": 19, "queued": 0, "lastRequest": NOW}]
    assert [(a["action"], a["replica"]) for a in document["actions"]] == [("create", 2), ("create", 3)]


@pytest.mark.parametrize(
    ("running", "demand", "wanted", "rule", "reason"),
    [
        # a gateway with requests in flight did not answer: the others' "idle 58 min" is not the whole story
        (1, steady(0, since_last=3480, partial=True), 1, "steady",
         "idle 15m as far as known, but a gateway did not report its demand in time: not unloaded"),
        (4, steady(5, in_flight=5, since_last=0, partial=True), 4, "steady",
         "a gateway did not report its demand in time: not scaled down"),
        # what partial demand does show is at least that much: it may wake a model or scale it up
        (0, ModelDemand("chat", queued=2, since_last=0, held_for=1, partial=True), 1, "wake",
         "wake: 2 requests waiting for chat"),
        (2, steady(19, in_flight=19, since_last=0, partial=True), 4, "up",
         "scale up: 19 in flight over 2 replicas, target 4 per replica for 10s"),
    ],
)
def test_partial_demand_never_scales_down(running, demand, wanted, rule, reason) -> None:
    d = decide(ranged("chat", 4), demand=demand, running=running, now=NOW)
    assert (d.wanted, d.rule, d.reason) == (wanted, rule, reason)


def test_ages_are_read_with_the_observations_time_only() -> None:
    """A model used 4 s ago stays whatever the clocks say: the planner never compares a gateway's time of day with
    its own, and the time of the last request it reports is the observation's time less the age."""
    desired = homelab(ranged("chat", 8))
    running = applied(homelab(model("chat", 8, 1)))
    for at in (NOW, NOW - 660, NOW + 660):  # the controller's clock anywhere
        p = plan(desired, _observed_with(desired, [steady(0, since_last=4)], base=running, at=at), FAST)
        assert p.empty
        assert [(d.rule, d.last_request) for d in p.scaling] == [("steady", at - 4)]
