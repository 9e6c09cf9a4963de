"""The watch loop against plain data: a spec directory and a cluster state that apply moves and tests disturb.

Assertions are on the world the loop leaves behind (which replicas run, with which spec) and on the event log it
writes, never on which calls it made.
"""

import io
import json
import threading

import pytest

from reconciler.adapter.keeper import LeaseKeeper
from reconciler.adapter.kv import MemoryKV
from reconciler.adapter.lease import Holder, LeaseLost, acquire
from reconciler.errors import TransientError
from reconciler.watch.metrics import Metrics
from reconciler.watch.backoff import Backoff
from reconciler.watch.controller import Controller, Loop, WatchSettings
from reconciler.watch.debounce import Cause
from reconciler.watch.events import EventLog

from .fakes import FakeCluster, Loaded, SpecDir, desired, model, simple_plan


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def make(specs, cluster, *, settings=WatchSettings(), guard=None, clock=None, metrics=None, backoff=None,
         observe=None, confirm_first=None):
    sink = io.StringIO()
    controller = Controller(
        load=specs.load, observe=observe or cluster.observe, plan=simple_plan, apply=cluster.apply,
        events=EventLog(json_sink=sink), settings=settings, guard=guard, clock=clock or Clock(), metrics=metrics,
        backoff=backoff, confirm_first=confirm_first,
    )
    return controller, sink


def events(sink, kind=None):
    found = [json.loads(line) for line in sink.getvalue().splitlines()]
    return [e for e in found if kind is None or e["event"] == kind]


def test_startup_converges_then_a_spec_edit_is_applied():
    llm = model("llm", 2)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    c, sink = make(specs, cluster)
    assert c.cycle(Cause.STARTUP).acted
    assert set(cluster.running()) == {("llm", 0), ("llm", 1)}
    assert not c.cycle(Cause.DRIFT_TIMER).acted  # level-based: nothing to do is nothing done

    bigger = model("llm", 3, vram=4 << 30)
    specs.set(desired(bigger))
    result = c.cycle(Cause.SPEC_CHANGE, changes=2)
    assert result.acted and not result.drift
    assert cluster.running() == {("llm", i): bigger.restart_hash for i in range(3)}
    plans = events(sink, "plan")
    assert plans[-1]["cause"] == "spec-change" and plans[-1]["summary"]["replace"] == 2


def test_an_invalid_spec_changes_nothing_and_says_so_until_fixed():
    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    metrics = Metrics()
    c, sink = make(specs, cluster, metrics=metrics)
    c.cycle(Cause.STARTUP)
    before = cluster.state

    specs.break_it("specs/llm.yaml:4:11: error: replicas must be a whole number or \"max\", got \"tw\"")
    result = c.cycle(Cause.SPEC_CHANGE)
    assert not result.acted and cluster.state == before
    (invalid,) = events(sink, "spec-invalid")
    assert invalid["diagnostics"] == [
        "specs/llm.yaml:4:11: error: replicas must be a whole number or \"max\", got \"tw\""]
    assert invalid["keeping"] == desired(llm).fingerprint
    assert "keeping the last good desired state" in invalid["message"]
    assert metrics.registry.get_sample_value("reconciler_spec_valid") == 0

    c.cycle(Cause.DRIFT_TIMER)  # the same errors again: not repeated on every tick
    assert len(events(sink, "spec-invalid")) == 1

    specs.set(desired(model("llm", 2)))
    assert c.cycle(Cause.SPEC_CHANGE).acted
    assert set(cluster.running()) == {("llm", 0), ("llm", 1)}
    assert metrics.registry.get_sample_value("reconciler_spec_valid") == 1


def test_invalid_specs_before_any_good_state_do_nothing():
    specs, cluster = SpecDir(Loaded(None, ("a.yaml:1:1: error: not a mapping",))), FakeCluster()
    c, sink = make(specs, cluster)
    result = c.cycle(Cause.STARTUP)
    assert not result.acted and cluster.applies == 0
    assert "no valid desired state yet" in events(sink, "spec-invalid")[0]["message"]


def test_a_killed_replica_is_healed_on_the_timer_and_counted_as_drift():
    llm = model("llm", 2)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    metrics = Metrics()
    c, sink = make(specs, cluster, metrics=metrics)
    c.cycle(Cause.STARTUP)
    cluster.kill("llm", 1)
    result = c.cycle(Cause.DRIFT_TIMER)
    assert result.drift and result.acted
    assert set(cluster.running()) == {("llm", 0), ("llm", 1)}
    assert events(sink, "drift")[0]["actions"][0]["action"] == "create"
    assert metrics.registry.get_sample_value("reconciler_drift_detected_total") == 1
    assert metrics.registry.get_sample_value("reconciler_actions_applied_total", {"action": "create"}) == 3


def test_no_heal_reports_drift_but_still_applies_spec_changes():
    llm = model("llm", 2)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    cluster.apply(simple_plan(desired(llm), cluster.state), desired(llm), cluster.state)
    c, sink = make(specs, cluster, settings=WatchSettings(heal=False))
    assert not c.cycle(Cause.STARTUP).acted  # the cluster as found is the baseline

    cluster.kill("llm", 0)
    result = c.cycle(Cause.DRIFT_TIMER)
    assert result.drift and not result.acted
    assert ("llm", 0) not in cluster.running()
    assert events(sink, "skipped")[0]["why"] == "no-heal"

    specs.set(desired(model("llm", 3)))
    assert c.cycle(Cause.SPEC_CHANGE).acted
    assert set(cluster.running()) == {("llm", 0), ("llm", 1), ("llm", 2)}


def test_plan_only_never_acts():
    llm = model("llm", 2)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    c, sink = make(specs, cluster, settings=WatchSettings(plan_only=True))
    c.cycle(Cause.STARTUP)
    specs.set(desired(model("llm", 3)))
    c.cycle(Cause.SPEC_CHANGE)
    assert cluster.applies == 0 and cluster.running() == {}
    assert {e["why"] for e in events(sink, "skipped")} == {"plan-only"}
    assert len(events(sink, "plan")) == 2


def test_a_crash_looping_replica_backs_off_without_blocking_the_others():
    good, bad = model("good", 1), model("bad", 1)
    want = desired(good, bad)
    specs, cluster = SpecDir(Loaded(want)), FakeCluster.shaped_like(want, )
    cluster.crashing.add("bad")
    clock = Clock()
    c, sink = make(specs, cluster, clock=clock, backoff=Backoff(base=10, cap=300))
    c.cycle(Cause.STARTUP)
    assert ("good", 0) in cluster.running()
    failures = [e for e in events(sink, "action") if not e["ok"]]
    assert failures[0]["model"] == "bad" and "out of memory" in failures[0]["error"]

    clock.now += 1  # the first failure is retried at once; it fails again and now backs off
    c.cycle(Cause.DRIFT_TIMER)
    assert c.backoff.held(clock.now)[0].failures == 2
    applies = cluster.applies
    clock.now += 5  # within the delay: the failed replica is left alone
    c.cycle(Cause.DRIFT_TIMER)
    assert cluster.applies == applies
    assert events(sink, "backoff")[-1]["failures"] == 2
    assert c.status()["backoff"][0]["reason"].startswith("engine exited")

    specs.set(desired(good, bad, model("other", 1)))  # other models still get through
    c.cycle(Cause.SPEC_CHANGE)
    assert ("other", 0) in cluster.running()
    assert ("bad", 0) not in cluster.running()

    clock.now += 10  # due again: retried, fails, next delay doubles
    c.cycle(Cause.DRIFT_TIMER)
    assert c.backoff.held(clock.now)[0].failures == 3
    assert c.backoff.held(clock.now)[0].retry_at == clock.now + 20


def test_scaling_down_and_up_again_is_not_a_crash_loop():
    specs, cluster = SpecDir(Loaded(desired(model("llm", 2)))), FakeCluster.shaped_like(desired(model("llm", 2)))
    clock = Clock()
    c, sink = make(specs, cluster, clock=clock)
    c.cycle(Cause.STARTUP)
    for _ in range(3):  # well within the time that forgives a replica for running stably
        clock.now += 1
        specs.set(desired(model("llm", 1)))
        c.cycle(Cause.SPEC_CHANGE)
        assert set(cluster.running()) == {("llm", 0)}
        clock.now += 1
        specs.set(desired(model("llm", 2)))
        c.cycle(Cause.SPEC_CHANGE)
        assert set(cluster.running()) == {("llm", 0), ("llm", 1)}
    assert not events(sink, "backoff") and not c.backoff.failing()


def test_a_temporary_observe_failure_is_retried_with_backoff_and_reported():
    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    down = {"yes": True}

    def observe(want):
        if down["yes"]:
            raise TransientError("Ray GCS at 127.0.0.1:6379 is not answering")
        return cluster.observe(want)

    c, sink = make(specs, cluster, observe=observe, settings=WatchSettings(retry_base=2, interval=30))
    assert c.cycle(Cause.STARTUP).retry_in == 2
    assert c.cycle(Cause.RETRY).retry_in == 4
    (first, second) = events(sink, "failure")
    assert first["stage"] == "observe" and first["temporary"] is True and "not answering" in first["error"]
    down["yes"] = False
    assert c.cycle(Cause.RETRY).acted
    assert c.failures_in_a_row == 0


def test_a_lost_lease_stops_the_loop_before_it_acts():
    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    kv = MemoryKV()
    clock = Clock()
    lease = acquire(kv, holder=Holder.current("reconciler watch"), ttl=15, clock=clock)
    keeper = LeaseKeeper(lease, on_lost=lambda lost: None)
    c, _ = make(specs, cluster, guard=keeper, clock=clock)
    clock.now += 60  # the holder stalled past its expiry: someone else may hold the cluster now
    acquire(kv, holder=Holder.current("reconciler apply"), ttl=15, clock=clock)
    with pytest.raises(LeaseLost):
        c.cycle(Cause.STARTUP)
    assert cluster.applies == 0


def test_the_loop_runs_cycles_one_at_a_time_and_stops_cleanly():
    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    c, sink = make(specs, cluster)
    settings = WatchSettings(interval=3600, debounce=0.05)
    loop = Loop(c, settings)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        for _ in range(200):  # wait for the startup cycle
            if events(sink, "cycle"):
                break
            threading.Event().wait(0.05)
        specs.set(desired(model("llm", 2)))
        for _ in range(10):
            loop.changed()
        for _ in range(200):
            if len(events(sink, "cycle")) >= 2:
                break
            threading.Event().wait(0.05)
    finally:
        loop.stop("test over")
        thread.join(10)
    assert not thread.is_alive()
    causes = [e["cause"] for e in events(sink, "cycle")]
    assert causes == ["startup", "spec-change"]
    assert set(cluster.running()) == {("llm", 0), ("llm", 1)}


def test_event_lines_are_json_with_time_kind_and_message():
    sink, text = io.StringIO(), io.StringIO()
    log = EventLog(json_sink=sink, text_sink=text, clock=lambda: 0.0)
    log.emit("drift", "drift: 1 action", detail=["+ create llm#0"], actions=[{"action": "create"}])
    record = json.loads(sink.getvalue())
    assert record == {"time": "1970-01-01T00:00:00.000Z", "event": "drift", "message": "drift: 1 action",
                      "actions": [{"action": "create"}]}
    assert text.getvalue().splitlines()[0].endswith(" drift: 1 action")
    assert text.getvalue().splitlines()[1].strip() == "+ create llm#0"


def wait_until(predicate, timeout: float = 30) -> None:
    deadline = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if predicate():
            return
        deadline.wait(0.05)
    raise AssertionError("condition not reached")


def test_a_change_during_an_apply_is_planned_after_it_finishes():
    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    inside, release = threading.Event(), threading.Event()
    real_apply = cluster.apply

    def slow_apply(plan, want, seen):
        inside.set()
        release.wait(30)
        return real_apply(plan, want, seen)

    sink = io.StringIO()
    c = Controller(load=specs.load, observe=cluster.observe, plan=simple_plan, apply=slow_apply,
                   events=EventLog(json_sink=sink))
    loop = Loop(c, WatchSettings(interval=3600, debounce=0.01))
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        assert inside.wait(30)  # the startup apply is in progress...
        specs.set(desired(model("llm", 3)))  # ...when the specs change
        loop.changed()
        wait_until(lambda: loop.schedule.debouncer.pending)
        release.set()
        wait_until(lambda: set(cluster.running()) == {("llm", 0), ("llm", 1), ("llm", 2)})
    finally:
        release.set()
        loop.stop()
        thread.join(10)
    kinds = [e["event"] for e in events(sink) if e["event"] in ("apply", "applied")]
    assert kinds == ["apply", "applied", "apply", "applied"]  # strictly one after the other


def test_a_change_the_probe_sees_is_healed_without_waiting_for_the_timer():
    llm = model("llm", 2)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    c, sink = make(specs, cluster)
    seen = dict(cluster.running())

    def probe() -> bool:
        return cluster.running() != seen

    loop = Loop(c, WatchSettings(interval=3600, poll=0.02), probe=probe)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        wait_until(lambda: len(cluster.running()) == 2)
        seen.update(cluster.running())
        cluster.kill("llm", 1)
        wait_until(lambda: set(cluster.running()) == {("llm", 0), ("llm", 1)})
    finally:
        loop.stop()
        thread.join(10)
    assert [e["cause"] for e in events(sink, "cycle")][:2] == ["startup", "cluster-change"]
    assert events(sink, "drift")[0]["actions"][0]["action"] == "create"


def test_a_probe_that_fails_leaves_it_to_the_timer():
    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    c, sink = make(specs, cluster)
    calls = []

    def probe() -> bool:
        calls.append(1)
        raise TransientError("dashboard restarting")

    loop = Loop(c, WatchSettings(interval=3600, poll=0.01), probe=probe)
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        wait_until(lambda: len(calls) >= 5)
    finally:
        loop.stop()
        thread.join(10)
    assert [e["cause"] for e in events(sink, "cycle")] == ["startup"]


def test_a_burst_of_file_writes_becomes_one_reconcile(tmp_path):
    from reconciler.watch.debounce import SpecWatcher

    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    c, sink = make(specs, cluster)
    # A generous quiet period: the burst below must not be split by a slow moment of a busy machine.
    loop = Loop(c, WatchSettings(interval=3600, debounce=1.0, max_debounce=30))
    watcher = SpecWatcher(tmp_path, loop.changed)
    watcher.start()
    thread = threading.Thread(target=loop.run)
    thread.start()
    try:
        wait_until(lambda: events(sink, "cycle"))
        for i in range(20):  # a git pull touching twenty files, one of them through a temp file and a rename
            (tmp_path / f"model-{i}.yaml").write_text(f"replicas: {i}\n")
        (tmp_path / ".model-0.yaml.tmp").write_text("replicas: 0\n")
        (tmp_path / ".model-0.yaml.tmp").rename(tmp_path / "model-0.yaml")
        wait_until(lambda: len(events(sink, "cycle")) >= 2)
        threading.Event().wait(2.5)  # more than twice the quiet period: a second reconcile would have run by now
    finally:
        loop.stop()
        thread.join(10)
        watcher.stop()
    changes = [e for e in events(sink, "cycle") if e["cause"] == "spec-change"]
    assert len(changes) == 1


def test_a_bug_is_reported_with_its_traceback_and_not_retried_as_if_temporary():
    llm = model("llm", 1)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))

    def observe(want):
        raise KeyError("a bug in observation")

    c, sink = make(specs, cluster, observe=observe)
    result = c.cycle(Cause.STARTUP)
    assert result.failed and result.retry_in is None  # the drift timer or a spec change tries again, not a backoff
    (failure,) = events(sink, "failure")
    assert failure["temporary"] is False and failure["retryIn"] is None
    assert "a bug in observation" in failure["error"]
