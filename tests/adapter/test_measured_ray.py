"""Measured memory on the session's real local Ray cluster: what a replica's processes use shows in `status --format
json`, a replica that holds more than its plan raises the `overrun` event of a running `watch` (and its metric), the
peak is kept in the cluster's KV store, and `plan` suggests a figure from it.

Two echo models share node-b's one simulated GPU: `chat` plans 1 GiB and holds only what a Serve replica holds; `hog`
plans 256 MiB and fills 768 MiB (``allocate_bytes``), so its resident memory is above its plan whatever the worker's
own baseline.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from reconciler.cli import main as cli

pytestmark = pytest.mark.ray

MiB, GiB = 1 << 20, 1 << 30
HOG_BYTES = 768 * MiB

SPECS = f"""\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {{name: homelab}}
spec:
  nodes: {{selector: {{reconciler.io/node: node-b}}}}
  inventory:
    - {{node: node-b, gpus: [{{name: sim, memory: 12Gi}}]}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: chat}}
spec: {{engine: echo, source: test/chat, vram: 1Gi, replicas: 1}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: hog}}
spec: {{engine: echo, source: test/hog, vram: 256Mi, replicas: 1, engineArgs: {{allocate_bytes: {HOG_BYTES}}}}}
"""


@pytest.fixture(scope="module")
def specs(ray_cluster, tmp_path_factory):
    from reconciler.adapter import connect
    from reconciler.adapter.kv import RayKV
    from reconciler.adapter.peaks import KEY

    directory = tmp_path_factory.mktemp("measured")
    (directory / "specs.yaml").write_text(SPECS)
    with connect(ray_cluster.address) as cluster:
        cluster.ray_nodes()  # connects the driver: the KV store is the cluster's
        RayKV().delete(KEY)
        assert cli(["apply", str(directory), "--yes", "--timeout", "180"]) == 0
        try:
            yield directory
        finally:
            # Leave the shared cluster as we found it: none of our applications, no peaks.
            details = cluster.serve_details()
            cluster.put_serve_config({k: details[k] for k in ("proxy_location", "http_options") if details.get(k)}
                                     | {"applications": []})
            cluster.wait_serve(lambda d: not d.get("applications"), timeout=60)
            RayKV().delete(KEY)


def test_status_json_shows_what_each_replica_really_uses_and_warns_of_the_overrun(specs, capsys):
    capsys.readouterr()
    assert cli(["status", str(specs), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    replicas = {r["model"]: r for r in document["replicas"]}
    assert set(replicas) == {"chat", "hog"}
    assert all(r["state"] == "running" and r["node"] == "node-b" and r["measuredSource"] == "rss"
               for r in replicas.values())
    chat, hog = replicas["chat"]["measured"], replicas["hog"]["measured"]
    assert 0 < chat < GiB  # a Serve replica holding nothing of its own: its worker's baseline
    assert hog >= HOG_BYTES and hog - chat >= HOG_BYTES * 9 // 10  # the bytes it was told to hold are resident
    (warning,) = [w for w in document["warnings"] if w.startswith("overrun:")]
    assert warning.startswith("overrun: hog[0] on node-b/gpu0 uses ") and "planned 256 MiB" in warning
    assert warning.endswith("at risk on its GPU: chat[0]")

    assert cli(["status", str(specs)]) == 0
    text = capsys.readouterr().out
    assert "Replicas using more memory than planned:" in text
    assert [line for line in text.splitlines() if "hog[0]" in line and "256 MiB  running  measured" in line]


def test_the_peak_is_kept_in_the_cluster_and_plan_suggests_a_figure_that_holds_it(specs, capsys):
    from reconciler.adapter import connect
    from reconciler.observed import peak_key
    from reconciler.spec import load_specs

    desired = load_specs(specs).desired
    hog = desired.model("hog")
    key = peak_key(source=hog.source, engine=str(hog.engine), engine_args_json=hog.engine_args_json, gpu_name="sim",
                   tensor_parallel=hog.tensor_parallel)
    with connect() as cluster:
        first = cluster.observe(desired)
        second = cluster.observe(desired)
    peak = second.peak(key)
    assert peak is not None and peak.peak_bytes >= HOG_BYTES
    assert peak.samples >= first.peak(key).samples + 1 and peak.first_seen <= first.at <= peak.last_seen
    capsys.readouterr()
    assert cli(["plan", str(specs)]) == 0
    out = capsys.readouterr().out
    (line,) = [line for line in out.splitlines() if line.strip().startswith("hog: vram 256Mi, measured peak")]
    assert ": raise it to " in line


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_running_watch_logs_the_overrun_and_exposes_both_figures(specs, tmp_path):
    events, port = tmp_path / "events.jsonl", free_port()
    watcher = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "watch", str(specs), "--yes", "--interval", "3", "--events", str(events),
         "--metrics-port", str(port), "--lease-ttl", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
        env={**os.environ, "NO_COLOR": "1"},
    )
    try:
        overrun = None
        deadline = time.monotonic() + 180
        while overrun is None and time.monotonic() < deadline and watcher.poll() is None:
            lines = events.read_text().splitlines() if events.exists() else []
            found = [e for e in map(json.loads, (x for x in lines if x.endswith("}"))) if e["event"] == "overrun"]
            overrun = found[0] if found else None
            time.sleep(0.3)
        assert overrun is not None, "no overrun event"
        assert (overrun["model"], overrun["replica"], overrun["node"], overrun["planned"], overrun["source"],
                overrun["neighbours"]) == ("hog", 0, "node-b", 256 * MiB, "rss", ["chat[0]"])
        assert overrun["measured"] >= HOG_BYTES
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            scrape = response.read().decode()
        assert 'reconciler_replica_memory_bytes{kind="planned",model="hog",replica="0"} 2.68435456e+08' in scrape
        (measured,) = [line for line in scrape.splitlines()
                       if line.startswith('reconciler_replica_memory_bytes{kind="measured",model="hog",replica="0"}')]
        assert float(measured.split()[-1]) >= HOG_BYTES
    finally:
        if watcher.poll() is None:
            watcher.send_signal(signal.SIGTERM)
        out, _ = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, out
