"""A request for an unloaded model while `reconciler watch` is in the middle of a long apply (a drain waiting for a
stream to end) gets its replica started at once, not after that apply: it is answered while the drain still waits,
and the drained stream still arrives whole.

The drain lasts as long as the stream keeps its replica busy (about 40 s here, within the default 120 s
drain_timeout), which is the same property as a 60 s drain: the apply is still waiting when the wake comes."""

from __future__ import annotations

import threading
import time

import pytest

from tests.faults.test_silent_gateway import _in_flight
from tests.ondemand.rig import ALL_NODES, client, gateway_url, model, specs, wait_count, watcher, write_specs  # noqa: F401

pytestmark = pytest.mark.ray

WORDS = 40  # streamed one a second


def test_a_wake_during_a_drain_is_answered_before_the_drain_ends(specs, watcher):  # noqa: F811
    sleepy = model("sleepy", replicas={"min": 0, "max": 1}, scaling={"idleAfter": "10m", "loadTimeout": "2m"})
    write_specs(specs, ALL_NODES, model("long", replicas=1, engineArgs={"stream_delay_s": 1.0}), sleepy)
    w = watcher()
    wait_count(specs, "long", 1)
    url = gateway_url()
    streamed: dict[str, str] = {}

    def stream() -> None:
        chunks = client(url).chat.completions.create(
            model="long", stream=True, messages=[{"role": "user", "content": " ".join(f"w{n}" for n in range(WORDS))}])
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
    drain_still_running = reader.is_alive()
    assert answer.choices[0].message.content == "wake up"
    assert drain_still_running, "the woken model was answered only after the drain had ended:\n" + w.log()
    reader.join(120)
    assert streamed.get("text") == " ".join(f"w{n}" for n in range(WORDS))
