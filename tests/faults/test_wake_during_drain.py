"""A request for an unloaded model while `reconciler watch` is in the middle of a long apply gets its replica started
at once, not after that apply. The apply stops one replica and starts another: first a 60 s drain (the stopping
replica waits for a stream through it to end), then a slow engine start. A model woken during the drain is answered
while the drain still holds the apply, and the drained stream arrives whole; one woken during the engine start is
answered while that engine still starts.

The order is what is checked, not a time: when a woken model's answer comes, the stream (or the engine start) is
still under way and the watcher has not logged the end of the apply."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.test_silent_gateway import _in_flight
from tests.ondemand.rig import (  # noqa: F401 - fixtures
    ALL_NODES, client, gateway_url, model, observed, running_count, specs, wait_count, watcher, write_specs)

pytestmark = pytest.mark.ray

WORDS = 60  # streamed one a second: the drain lasts a minute
STARTUP_S = 30  # the engine started after the drain
TEXT = " ".join(f"w{n}" for n in range(WORDS))


def _on_demand(name: str) -> str:
    return model(name, replicas={"min": 0, "max": 1}, scaling={"idleAfter": "10m", "loadTimeout": "2m"})


def _starting(specs, name: str) -> bool:
    from reconciler.observed import ReplicaState

    return any(r.model == name and r.state is ReplicaState.STARTING for r in observed(specs).replicas)


def test_wakes_during_a_drain_and_an_engine_start_are_answered_before_the_apply_ends(specs, watcher):  # noqa: F811
    sleepy, drowsy = _on_demand("sleepy"), _on_demand("drowsy")
    write_specs(specs, ALL_NODES, model("long", replicas=1, engineArgs={"stream_delay_s": 1.0}), sleepy, drowsy)
    w = watcher()
    wait_count(specs, "long", 1)
    url = gateway_url()
    streamed: dict[str, str] = {}

    def stream() -> None:
        chunks = client(url).chat.completions.create(
            model="long", stream=True, messages=[{"role": "user", "content": TEXT}])
        streamed["text"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    deadline = time.monotonic() + 60
    while _in_flight("long") != 1:
        assert time.monotonic() < deadline, "the stream never showed in flight"
        time.sleep(0.2)
    before = len(w.events())
    slow = model("slow", replicas=1, engineArgs={"startup_delay_s": STARTUP_S})
    write_specs(specs, ALL_NODES, model("long", replicas=0, engineArgs={"stream_delay_s": 1.0}), sleepy, drowsy, slow)
    w.wait_for(lambda e: e.get("event") == "apply", after=before, timeout=60)
    assert reader.is_alive()  # the apply is draining the stream's replica

    answer = client(url, timeout=120).chat.completions.create(
        model="sleepy", messages=[{"role": "user", "content": "wake up"}])
    stream_running = reader.is_alive()
    applies_ended = [e for e in w.events()[before:] if e.get("event") == "applied"]
    assert answer.choices[0].message.content == "wake up"
    assert stream_running and not applies_ended, "the woken model was answered only after the drain:\n" + w.log()
    reader.join(120)
    assert streamed.get("text") == TEXT  # the drained stream lost nothing

    deadline = time.monotonic() + 60
    while not _starting(specs, "slow"):  # the same apply, past its drain, now waits for the slow engine
        assert time.monotonic() < deadline, "the slow engine never showed starting:\n" + w.log()
        time.sleep(0.2)
    answer = client(url, timeout=120).chat.completions.create(
        model="drowsy", messages=[{"role": "user", "content": "wake up too"}])
    slow_starting = _starting(specs, "slow")
    applies_ended = [e for e in w.events()[before:] if e.get("event") == "applied"]
    assert answer.choices[0].message.content == "wake up too"
    assert slow_starting and not applies_ended, "answered only after the engine start:\n" + w.log()
    assert running_count(specs, "long") == 0 and running_count(specs, "sleepy") == 1
