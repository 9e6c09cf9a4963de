"""What the executor decides at each poll while an apply waits: results, timeouts and the pending grace, by table."""

from __future__ import annotations

import pytest

from reconciler.executor import waiting
from reconciler.executor.waiting import AppResult, Update
from reconciler.observed import ReplicaState as S
from reconciler.settings import ApplySettings

SETTINGS = ApplySettings(replica_timeout=100, stop_timeout=20, pending_grace=10)
CONFIG = {"deployments": [{"ray_actor_options": {"resources": {"vram_mb_a_gpu0": 2048}}}],
          "args": {"engine_config": {"node": "a"}}}


def one_poll(*, seen, at, gone=(), running=(), pending_since=()):
    w = waiting.start(gone=gone, running=running, now=0.0)
    w = waiting.Waiting(w.begun, w.running, w.gone, tuple(pending_since))
    return waiting.step(w, seen=seen, configs={"new": CONFIG}, now=at, settings=SETTINGS)


@pytest.mark.parametrize(
    ("seen", "at", "want"),
    [
        (None, 1, Update("new", "submitted")),
        ((S.STARTING, ""), 1, Update("new", "starting")),
        ((S.RUNNING, ""), 1, Update("new", "running", AppResult(True, "running"))),
        ((S.FAILED, "CUDA out of memory"), 1, Update("new", "FAILED", AppResult(False, "failed: CUDA out of memory"))),
        ((S.FAILED, ""), 1, Update("new", "FAILED", AppResult(False, "failed: Serve reported the deployment failed"))),
        ((S.STARTING, "loading"), 101, Update("new", "TIMED OUT", AppResult(False, "not running after 100s: loading"))),
        ((S.PENDING, ""), 5, Update("new", "pending (no room on its GPU)")),
    ],
)
def test_a_starting_application(seen, at, want):
    w, updates = one_poll(seen={"new": seen}, at=at, running=["new"])
    assert updates == [want]
    assert w.done == (want.result is not None)


def test_pending_past_its_grace_fails_naming_what_it_needs():
    w, updates = one_poll(seen={"new": (S.PENDING, "")}, at=11, running=["new"], pending_since=[("new", 0.5)])
    assert w.done and updates[0].progress == "PENDING"
    assert updates[0].result.message.startswith("pending: Ray has not placed it after 10s; it needs vram_mb_a_gpu0=2048")
    # Pending since only 5 s: still inside the grace; starting again clears the clock.
    w, _ = one_poll(seen={"new": (S.PENDING, "")}, at=11, running=["new"], pending_since=[("new", 6.0)])
    assert not w.done
    w, _ = waiting.step(w, seen={"new": (S.STARTING, "")}, configs={}, now=12, settings=SETTINGS)
    assert w.pending_since == ()


@pytest.mark.parametrize(
    ("seen", "at", "want"),
    [
        (None, 1, Update("old", "stopped", AppResult(True, "stopped"))),
        ((S.STOPPING, ""), 1, Update("old", "stopping")),
        ((S.STOPPING, ""), 21, Update("old", "stop timed out", AppResult(False, "still stopping after 20s"))),
    ],
)
def test_a_stopping_application(seen, at, want):
    w, updates = one_poll(seen={"old": seen}, at=at, gone=["old"])
    assert updates == [want] and w.done == (want.result is not None)


def test_an_unreachable_serve_is_waited_out_until_every_timeout_passed():
    w = waiting.start(gone=["old"], running=["new"], now=0.0)
    assert not waiting.give_up_unreachable(w, now=99, settings=SETTINGS)
    assert waiting.give_up_unreachable(w, now=101, settings=SETTINGS)


def test_a_cluster_that_is_gone_is_not_waited_for():
    # Its GCS port refuses connections: nothing submitted goes on, and Ray would end a driver waiting on it.
    w = waiting.start(gone=["old"], running=["new"], now=0.0)
    assert waiting.give_up_unreachable(w, now=1, settings=SETTINGS, gone=True)
