"""`/healthz`: the verdict as a table, the server on loopback, and a watching process answering it."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from reconciler.watch.metrics import Metrics
from reconciler.watch.health import STALL_AFTER, Health, HealthServer, Phase, judge

from .test_cli import free_port, start, stop

NOW = 1_000_000.0


@pytest.mark.parametrize(
    ("phase", "since", "last_cycle", "ok", "reason"),
    [
        (Phase.STARTING, NOW - 5000, None, True, "starting"),
        (Phase.STANDBY, NOW - 86400, None, True, "standby"),  # a standby may wait for days
        (Phase.RUNNING, NOW - 10, None, True, "cycles finish"),  # the first cycle is still running
        (Phase.RUNNING, NOW - 5000, NOW - 30, True, "cycles finish"),
        (Phase.RUNNING, NOW - 5000, None, False, "no cycle finished for 5000 s (limit 1800 s)"),
        (Phase.RUNNING, NOW - 5000, NOW - STALL_AFTER - 1, False, "no cycle finished for 1801 s (limit 1800 s)"),
        # a standby that just took the lock is judged from when it started running, not from its last cycle
        (Phase.RUNNING, NOW - 10, NOW - 9000, True, "cycles finish"),
        (Phase.STOPPING, NOW - 1, NOW - 1, False, "stopping"),
    ],
)
def test_judge(phase, since, last_cycle, ok, reason):
    assert judge(phase=phase, now=NOW, since=since, last_cycle=last_cycle) == Health(ok, phase, reason)


def get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_the_server_answers_healthz_with_the_verdict_and_metrics_elsewhere():
    verdict = [Health(True, Phase.RUNNING, "cycles finish")]
    metrics = Metrics()
    metrics.spec_valid.set(1)
    with HealthServer(metrics.registry, lambda: verdict[0], port=0) as server:
        base = f"http://127.0.0.1:{server.port}"
        assert get(f"{base}/healthz") == (200, b'{"ok": true, "phase": "running", "reason": "cycles finish"}')
        verdict[0] = Health(False, Phase.STOPPING, "stopping")
        status, body = get(f"{base}/healthz")
        assert (status, json.loads(body)["phase"]) == (503, "stopping")
        status, body = get(f"{base}/metrics")
        assert status == 200 and b"reconciler_spec_valid 1.0" in body


def test_a_watching_process_is_healthy_on_its_metrics_port(tmp_path):
    port = free_port()
    process, events, _ = start(tmp_path, "--metrics-port", str(port))
    try:
        events.wait_for(lambda e: e["event"] == "cycle")
        status, body = get(f"http://127.0.0.1:{port}/healthz")
    finally:
        stop(process)
    assert status == 200 and json.loads(body) == {"ok": True, "phase": "running", "reason": "cycles finish"}
