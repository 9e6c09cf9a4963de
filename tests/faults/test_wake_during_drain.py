"""A request for an unloaded model while `reconciler watch` is in the middle of a 60 s drain (the apply stopping a
replica waits for a stream through it to end) gets its replica started at once, not after that apply: it is answered
while the drain still holds the apply, and the drained stream still arrives whole.

The order is what is checked, not a time: when the woken model's answer comes, the stream is still running and the
watcher has not logged the end of the apply that drains it."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.test_silent_gateway import _in_flight
from tests.ondemand.rig import (  # noqa: F401 - fixtures
    ALL_NODES, client, gateway_url, model, running_count, specs, wait_count, watcher, write_specs)

pytestmark = pytest.mark.ray

WORDS = 60  # streamed one a second: the drain lasts a minute
TEXT = " ".join(f"w{n}" for n in range(WORDS))


def test_a_wake_during_a_drain_is_answered_before_the_drain_ends(specs, watcher):  # noqa: F811
    sleepy = model("sleepy", replicas={"min": 0, "max": 1}, scaling={"idleAfter": "10m", "loadTimeout": "2m"})
    write_specs(specs, ALL_NODES, model("long", replicas=1, engineArgs={"stream_delay_s": 1.0}), sleepy)
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
    write_specs(specs, ALL_NODES, model("long", replicas=0, engineArgs={"stream_delay_s": 1.0}), sleepy)
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
    wait_count(specs, "long", 0)
    assert running_count(specs, "sleepy") == 1  # the next cycles keep the replica the wake started
