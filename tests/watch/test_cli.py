"""`reconciler watch` as a process, in --plan-only mode against a snapshot: no cluster needed.

The file watcher, debouncer, event log, metrics endpoint and signal handling are all the real ones; the Ray tests
(test_watch_ray.py) cover acting on a live cluster.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ci"

NEW_MODEL = """
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: embeddings}
spec: {engine: echo, source: BAAI/bge-small-en-v1.5, vram: 6Gi}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Events:
    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]

    def wait_for(self, predicate, timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.all():
                if predicate(event):
                    return event
            time.sleep(0.1)
        raise AssertionError(f"no such event; got: {[e['message'] for e in self.all()]}")


def start(tmp_path: Path, *extra: str) -> tuple[subprocess.Popen, Events, Path]:
    specs = tmp_path / "specs"
    shutil.copytree(EXAMPLE / "specs", specs)
    events = tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "watch", str(specs), "--plan-only",
         "--observed", str(EXAMPLE / "cluster" / "observed.json"), "--events", str(events),
         "--interval", "3600", "--debounce", "0.2", *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return process, Events(events), specs


def stop(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    out, _ = process.communicate(timeout=30)
    return out


def test_plan_only_reports_each_change_and_keeps_the_last_good_state(tmp_path):
    process, events, specs = start(tmp_path)
    try:
        events.wait_for(lambda e: e["event"] == "cycle" and e["cause"] == "startup")
        with (specs / "models.yaml").open("a") as f:
            f.write(NEW_MODEL)
        plan = events.wait_for(lambda e: e["event"] == "plan" and e["cause"] == "spec-change")
        assert [(a["action"], a["model"]) for a in plan["actions"]] == [("create", "embeddings")]
        skipped = events.wait_for(lambda e: e["event"] == "skipped")
        assert skipped["why"] == "plan-only"

        (specs / "pool.yaml").write_text((specs / "pool.yaml").read_text().replace("memory: 24Gi", "memory: 24 GB!"))
        invalid = events.wait_for(lambda e: e["event"] == "spec-invalid")
        assert invalid["diagnostics"] and all(d.startswith("pool.yaml:") for d in invalid["diagnostics"])
        assert "keeping the last good desired state" in invalid["message"]
    finally:
        out = stop(process)
    assert process.returncode == 0, out
    assert "pool.yaml:" in out and "specs invalid" in out  # the human log on stdout names the file and line
    assert events.all()[-1]["event"] == "stopped"


def test_metrics_are_served_on_loopback_while_watching(tmp_path):
    port = free_port()
    process, events, _ = start(tmp_path, "--metrics-port", str(port))
    try:
        events.wait_for(lambda e: e["event"] == "cycle")
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
    finally:
        stop(process)
    assert 'reconciler_replicas{model="support-chat",state="running"} 1.0' in text
    assert "reconciler_spec_valid 1.0" in text
    total = next(line for line in text.splitlines()
                 if line.startswith('reconciler_gpu_vram_total_bytes{gpu="0",node="rack-1",pool="inference"}'))
    assert float(total.split()[-1]) == 24 * 2**30


def test_acting_without_a_terminal_needs_yes(tmp_path):
    shutil.copytree(EXAMPLE / "specs", tmp_path / "specs")
    result = subprocess.run([sys.executable, "-m", "reconciler", "watch", str(tmp_path / "specs"), "--offline"],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "add --plan-only" in result.stderr
    result = subprocess.run([sys.executable, "-m", "reconciler", "watch", str(tmp_path / "specs")],
                            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "pass --yes" in result.stderr


@pytest.mark.parametrize("flags", [["--no-heal", "--plan-only"], ["--interval", "0"]])
def test_bad_option_combinations_are_refused(flags, tmp_path):
    result = subprocess.run([sys.executable, "-m", "reconciler", "watch", str(tmp_path), *flags],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
