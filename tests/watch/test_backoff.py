from dataclasses import replace

from reconciler.observed import ObservedReplica, ReplicaState, from_inventory
from reconciler.plan import Action, ActionKind, Location
from reconciler.watch.backoff import Backoff, split

from .fakes import desired, model, simple_plan

HERE = Location("node-a", (0,))


def failed(m, replica=0, message="OOM"):
    return ObservedReplica(model=m.name, replica=replica, node="node-a", gpus=(0,), vram=m.vram,
                           restart_hash=m.restart_hash, config_hash=m.config_hash, state=ReplicaState.FAILED,
                           message=message)


def cluster(want, *replicas):
    return replace(from_inventory(want), replicas=replicas)


def test_delay_doubles_up_to_the_cap():
    b = Backoff(base=5, cap=60)
    assert [b.delay(n) for n in range(1, 8)] == [0, 5, 10, 20, 40, 60, 60]


def test_a_failure_seen_again_without_a_new_attempt_counts_once():
    b = Backoff(base=5)
    key = ("llm", 0)
    b.note_failure(key, restart_hash="h", reason="OOM", now=0)
    assert b.held(0) == ()  # the first failure is retried at once
    b.note_started(key, restart_hash="h")
    b.note_failure(key, restart_hash="h", reason="OOM", now=1)
    b.note_failure(key, restart_hash="h", reason="OOM", now=2)
    assert b.held(3)[0].failures == 2
    b.note_started(key, restart_hash="h")
    b.note_failure(key, restart_hash="h", reason="OOM again", now=10)
    (held,) = b.held(11)
    assert (held.failures, held.retry_at, held.reason) == (3, 20, "OOM again")
    assert b.held(20) == ()  # due for its next try
    assert b.failing()[0].failures == 3  # but still on record for status


def test_only_the_crash_looping_replica_is_deferred():
    good, bad = model("good"), model("bad")
    want = desired(good, bad)
    b = Backoff(base=5)
    for now in (0, 1):  # failed, re-created, failed again
        b.observe(desired=want, observed=cluster(want, failed(bad)), plan=simple_plan(want, cluster(want)), now=now)
        b.note_started(("bad", 0), restart_hash=bad.restart_hash)
    actions = simple_plan(want, cluster(want)).actions
    run, deferred = split(actions, b.held(2))
    assert [(a.model, a.kind) for a in run] == [("good", ActionKind.CREATE)]
    assert [(a.model, a.kind) for a in deferred] == [("bad", ActionKind.CREATE)]
    delete = Action(ActionKind.DELETE, "bad", 0, HERE, None, 1, "not desired")
    assert split([delete], b.held(2)) == ((delete,), ())  # freeing VRAM is never held back


def test_a_replica_that_vanishes_after_each_start_backs_off():
    m = model("llm")
    want = desired(m)
    b = Backoff(base=5)
    empty = cluster(want)
    plan = simple_plan(want, empty)  # wants a create: nothing known about it yet, not a failure
    b.observe(desired=want, observed=empty, plan=plan, now=0)
    assert b.held(0) == ()
    for now in (30, 40):  # started, and gone again, twice
        b.note_started(("llm", 0), restart_hash=m.restart_hash)
        b.observe(desired=want, observed=empty, plan=plan, now=now)
    (held,) = b.held(41)
    assert held.failures == 2 and held.retry_at == 45 and "gone again" in held.reason


def test_a_spec_change_or_a_stable_run_forgives():
    m = model("llm")
    b = Backoff(base=5, stable=60)
    b.observe(desired=desired(m), observed=cluster(desired(m), failed(m)),
              plan=simple_plan(desired(m), cluster(desired(m))), now=0)
    assert b.failing()
    fixed = model("llm", vram=4 << 30)
    b.observe(desired=desired(fixed), observed=cluster(desired(fixed)),
              plan=simple_plan(desired(fixed), cluster(desired(fixed))), now=2)
    assert b.failing() == ()

    b.note_failure(("llm", 0), restart_hash=fixed.restart_hash, reason="x", now=10)
    b.note_started(("llm", 0), restart_hash=fixed.restart_hash)
    up = cluster(desired(fixed), ObservedReplica("llm", 0, "node-a", (0,), fixed.vram, fixed.restart_hash,
                                                 fixed.config_hash))
    no_actions = simple_plan(desired(fixed), up)
    b.observe(desired=desired(fixed), observed=up, plan=no_actions, now=20)
    assert b.failing()
    b.observe(desired=desired(fixed), observed=up, plan=no_actions, now=80)
    assert b.failing() == ()


def test_holding_back_keeps_the_end_state_consistent_for_the_executor():
    from reconciler.watch.controller import hold_back

    good, bad, failing = model("good"), model("bad"), model("failing")
    want = desired(good, bad, failing)
    seen = cluster(want, failed(failing))
    plan = simple_plan(want, seen)
    kinds = {a.model: a.kind for a in plan.actions}
    assert kinds == {"good": ActionKind.CREATE, "bad": ActionKind.CREATE, "failing": ActionKind.REPLACE}
    deferred = [a for a in plan.actions if a.model in ("bad", "failing")]
    held = hold_back(plan, deferred)
    assert [a.model for a in held.actions] == ["good"]
    placed = {p.model: (p.node, p.gpus) for p in held.placement}
    assert "bad" not in placed  # a held create: not started at all
    assert placed["failing"] == ("node-a", (0,))  # a held replace: left where it is, as it is
    assert hold_back(plan, []) is plan
