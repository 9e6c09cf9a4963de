"""A gateway that stops answering (its actor's process paused with SIGSTOP) while it has a request in flight: the
model's idle time passes and nothing unloads it, and a drain that must stop the replica waits for the gateway to come
back and finish the request, so the client gets its whole answer.

On the session's cluster (all its nodes share one address, so one gateway serves them all). The drain keeps its
default timeout: the gateway is paused for less than that, which is the property (unknown counts as busy until the
gateway answers)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from tests.ondemand.rig import ALL_NODES, client, gateway_url, model, specs, write_specs  # noqa: F401 - a fixture

pytestmark = pytest.mark.ray

WORDS = 24  # streamed one a second: the answer outlives the pause, so stopping its replica early would cut it
SCALING = {"idleAfter": "1s", "scaleDownAfter": "1s", "loadTimeout": "2m"}


def _gateway_pid() -> int:
    import ray

    from reconciler import adapter
    from reconciler.adapter import gateway as gateways

    with adapter.connect() as cluster:
        actor = gateways._running(cluster._driver())[0]
        return int(ray.get(actor.__ray_call__.remote(lambda self: os.getpid()), timeout=30))


def _in_flight(name: str) -> int:
    from reconciler import adapter
    from reconciler.adapter import gateway as gateways

    with adapter.connect() as cluster:
        return sum(d.in_flight for d in gateways.demand(cluster) if d.model == name)


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reconciler", *args], capture_output=True, text=True, timeout=300,
                          stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})


def test_a_paused_gateway_with_a_request_in_flight_unloads_nothing_and_loses_nothing(specs):  # noqa: F811
    write_specs(specs, ALL_NODES, model("held", replicas=1, engineArgs={"stream_delay_s": 1.0}))
    done = _cli("apply", str(specs), "--yes")
    assert done.returncode == 0, done.stdout + done.stderr
    url = gateway_url()
    answer: dict[str, object] = {}
    answering = threading.Event()

    def stream() -> None:
        try:
            chunks = client(url).chat.completions.create(
                model="held", stream=True,
                messages=[{"role": "user", "content": " ".join(f"w{n}" for n in range(WORDS))}])
            text = []
            for chunk in chunks:
                text.extend(c.delta.content or "" for c in chunk.choices)
                answering.set()
            answer["text"] = "".join(text)
        except Exception as exc:  # noqa: BLE001 - the assertion below shows it
            answer["error"] = repr(exc)
        finally:
            answering.set()

    reader = threading.Thread(target=stream, daemon=True)
    reader.start()
    assert answering.wait(60), "the stream never began"  # the replica is answering it: in flight for real
    deadline = time.monotonic() + 60
    while _in_flight("held") != 1:
        assert time.monotonic() < deadline, answer or "the request never showed in flight"
        time.sleep(0.2)
    # On demand now, idle after 1 s: read from the other gateways alone (none), it would unload at once.
    write_specs(specs, ALL_NODES, model("held", replicas={"min": 0, "max": 1}, scaling=SCALING,
                                        engineArgs={"stream_delay_s": 1.0}))
    pid = _gateway_pid()
    os.kill(pid, signal.SIGSTOP)
    # Back while the drain runs and the answer is still streaming: the drain then waits for the request to end.
    resumed = threading.Timer(14.0, os.kill, (pid, signal.SIGCONT))
    try:
        time.sleep(1.5)  # the model's idle time passes while the gateway is silent
        planned = _cli("plan", str(specs), "--format", "json")
        assert planned.returncode in (0, 2), planned.stdout + planned.stderr
        document = json.loads(planned.stdout)
        stops = [a for a in document["actions"] if a["model"] == "held" and a["action"] in ("delete", "evict")]
        assert stops == [], planned.stdout
        # Now a spec that does stop the replica: its drain must wait for the silent gateway.
        write_specs(specs, ALL_NODES, model("held", replicas=0, engineArgs={"stream_delay_s": 1.0}))
        resumed.start()
        applied = _cli("apply", str(specs), "--yes")
        assert applied.returncode == 0, applied.stdout + applied.stderr
    finally:
        resumed.cancel()
        os.kill(pid, signal.SIGCONT)
    reader.join(60)
    assert answer.get("text") == " ".join(f"w{n}" for n in range(WORDS)), answer
