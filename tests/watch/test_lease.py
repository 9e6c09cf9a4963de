"""The lease's logic against an in-memory store with the same put-if-absent contract as Ray's GCS KV.

The Ray tests of watch take the same lease through the real GCS (a second watcher refused, SIGKILL then takeover).
"""

import threading

import pytest

from reconciler.adapter.keeper import LeaseKeeper, retake_after
from reconciler.adapter.kv import MemoryKV
from reconciler.adapter.lease import Holder, LeaseHeld, LeaseLost, LeaseRecord, acquire, describe
from reconciler.render.status import lock_lines as status_lines


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def holder(command="reconciler watch specs/"):
    return Holder.current(command)


def test_a_second_reconciler_is_refused_with_who_holds_the_lock():
    kv, clock = MemoryKV(), Clock()
    first = holder()
    acquire(kv, holder=first, ttl=15, clock=clock)
    with pytest.raises(LeaseHeld) as refused:
        acquire(kv, holder=holder("reconciler apply specs/"), ttl=15, clock=clock)
    message = str(refused.value)
    assert f"pid {first.pid} on {first.host}" in message
    assert "`reconciler watch specs/`" in message and "expires in 15 s" in message
    assert refused.value.record.holder == first


def test_an_expired_lease_is_taken_over_and_the_old_holder_finds_out():
    kv, clock = MemoryKV(), Clock()
    old = acquire(kv, holder=holder(), ttl=15, clock=clock)
    clock.now += 16  # the holder died (or stalled) without renewing
    new = acquire(kv, holder=holder(), ttl=15, clock=clock)
    assert new.generation == old.generation + 1
    with pytest.raises(LeaseLost):
        old.renew()
    assert describe(kv).holder == new.record.holder
    assert kv.keys("lease/apply/") == ["lease/apply/000000000002"]  # old generations are cleaned up


def test_a_holder_that_renewed_too_late_stops_even_if_nobody_took_over():
    kv, clock = MemoryKV(), Clock()
    lease = acquire(kv, holder=holder(), ttl=15, clock=clock)
    clock.now += 14  # inside the ttl but past the safety margin (ttl/5): others may see it expired soon
    assert not lease.valid()
    with pytest.raises(LeaseLost):
        lease.renew()


def test_renewal_keeps_it_and_publishes_status():
    kv, clock = MemoryKV(), Clock()
    lease = acquire(kv, holder=holder(), ttl=15, clock=clock)
    for _ in range(10):
        clock.now += 5
        lease.renew(status={"backoff": [{"model": "llm", "replica": 0}]})
    assert lease.valid()
    record = describe(kv)
    assert record.expires == clock.now + 15
    assert record.status["backoff"][0]["model"] == "llm"
    with pytest.raises(LeaseHeld):
        acquire(kv, holder=holder(), ttl=15, clock=clock)


def test_release_lets_the_next_one_in_at_once():
    kv, clock = MemoryKV(), Clock()
    lease = acquire(kv, holder=holder(), ttl=15, clock=clock)
    lease.release()
    lease.release()  # idempotent
    assert describe(kv).released
    assert acquire(kv, holder=holder(), ttl=15, clock=clock).generation == 2


def test_of_many_racing_for_an_expired_lease_exactly_one_wins():
    kv, clock = MemoryKV(), Clock()
    acquire(kv, holder=holder(), ttl=15, clock=clock)
    clock.now += 100
    winners, refused = [], []
    start = threading.Barrier(8)

    def contend():
        start.wait()
        try:
            winners.append(acquire(kv, holder=holder(), ttl=15, clock=clock))
        except LeaseHeld as exc:
            refused.append(exc)

    threads = [threading.Thread(target=contend) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(winners) == 1 and len(refused) == 7
    assert describe(kv).holder == winners[0].record.holder


def test_the_keeper_renews_in_the_background_and_reports_a_loss():
    kv = MemoryKV()
    lease = acquire(kv, holder=holder(), ttl=1.5)
    first_expiry = lease.record.expires
    lost = threading.Event()
    keeper = LeaseKeeper(lease, on_lost=lambda exc: lost.set(), status=lambda: {"inSync": True}).start()
    try:
        for _ in range(100):
            if describe(kv).expires > first_expiry:
                break
            threading.Event().wait(0.1)
        assert describe(kv).expires > first_expiry
        assert describe(kv).status == {"inSync": True}
        # Someone breaks in by force (e.g. an operator deleting the record): the keeper notices at its next renewal.
        for key in kv.keys("lease/apply/"):
            kv.delete(key)
        assert lost.wait(5)
    finally:
        keeper.stop()


def test_a_keeper_that_stalled_past_its_lease_takes_it_again_when_nobody_else_did():
    kv, clock = MemoryKV(), Clock()
    retaken = []
    keeper = LeaseKeeper(acquire(kv, holder=holder(), ttl=15, clock=clock), on_lost=lambda exc: None,
                         on_retaken=retaken.append)
    clock.now += 40  # e.g. a GCS too busy to answer the renewals in time
    keeper.confirm()  # before acting: the lease ran out, nobody took it, so it is taken again
    assert keeper.lease.generation == 2 and retaken == [keeper.lease] and keeper.valid()
    assert describe(kv).holder == keeper.lease.record.holder


def test_a_keeper_whose_lease_was_taken_over_or_broken_stays_out():
    kv, clock = MemoryKV(), Clock()
    keeper = LeaseKeeper(acquire(kv, holder=holder(), ttl=15, clock=clock), on_lost=lambda exc: None)
    clock.now += 40
    other = acquire(kv, holder=holder("reconciler apply specs/"), ttl=15, clock=clock)
    with pytest.raises(LeaseLost):
        keeper.confirm()
    assert describe(kv).holder == other.record.holder

    kv, clock = MemoryKV(), Clock()
    keeper = LeaseKeeper(acquire(kv, holder=holder(), ttl=15, clock=clock), on_lost=lambda exc: None)
    for key in kv.keys("lease/apply/"):  # an operator breaking the lock by hand
        kv.delete(key)
    clock.now += 40
    with pytest.raises(LeaseLost):
        keeper.confirm()
    assert describe(kv) is None


def test_status_lines_show_the_holder_and_its_crash_looping_replicas():
    kv, clock = MemoryKV(), Clock()
    assert status_lines(describe(kv), clock.now) == ["apply lock: free (no reconciler has taken it)"]
    first = holder()
    lease = acquire(kv, holder=first, ttl=15, clock=clock)
    lease.renew(status={"specValid": True, "backoff": [
        {"model": "llm", "replica": 1, "failures": 3, "retryAt": clock.now + 20, "reason": "CUDA out of memory"}]})
    lines = status_lines(describe(kv), clock.now)
    assert lines[0].startswith(f"apply lock: held by `reconciler watch specs/` (pid {first.pid} on {first.host}")
    assert lines[1] == "  crash loop: llm[1]: 3 failures, next try in 20 s; last: CUDA out of memory"
    lease.release()
    assert status_lines(describe(kv), clock.now)[0].startswith("apply lock: free (last released by")


MINE = Holder(host="h", pid=1, command="reconciler watch specs/", since=0.0, token="mine")
OTHER = Holder(host="h", pid=2, command="reconciler apply specs/", since=0.0, token="other")


@pytest.mark.parametrize(
    ("stored", "taken_over", "now", "want"),
    [
        (LeaseRecord(1, MINE, renewed=0, expires=100), False, 110, 0.0),  # ran out, nobody took it: now
        (LeaseRecord(1, MINE, renewed=0, expires=100), False, 99, pytest.approx(1.05)),  # inside the margin: wait
        (LeaseRecord(1, MINE, renewed=0, expires=100), False, 50, None),  # still valid by our clock: nothing to do
        (LeaseRecord(1, MINE, renewed=0, expires=100), True, 110, None),  # someone took the next generation
        (None, False, 110, None),  # an operator removed the record: stay out
        (LeaseRecord(1, MINE, renewed=0, expires=100, released=True), False, 110, None),  # released on purpose
        (LeaseRecord(1, OTHER, renewed=0, expires=100), False, 110, None),  # not ours
    ],
)
def test_when_a_lost_lease_may_be_taken_again(stored, taken_over, now, want):
    mine = LeaseRecord(1, MINE, renewed=0, expires=100)
    assert retake_after(mine=mine, stored=stored, taken_over=taken_over, now=now, margin=3) == want
