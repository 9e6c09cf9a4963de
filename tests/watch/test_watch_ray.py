"""`reconciler watch` against the session's local Ray cluster, as processes, the way it runs in production.

Assertions are on the cluster (what observe reports) and on the watcher's own events; never on calls made.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reconciler.observed import ReplicaState

pytestmark = pytest.mark.ray

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: homelab}
spec:
  nodes:
    selector: {pool: homelab}
  inventory:
    - {node: node-a, gpus: [{name: sim, memory: 24Gi}, {name: sim, memory: 24Gi}]}
    - {node: node-b, gpus: [{name: sim, memory: 12Gi}]}
    - {node: node-c, gpus: [{name: sim, memory: 16Gi}]}
"""

MODEL = """\
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: {name}}}
spec:
  engine: echo
  source: test/{name}
  vram: {vram}
  replicas: {replicas}
  engineArgs: {engine_args}
"""


def write_specs(directory: Path, models: dict[str, int], *, broken: dict[str, str] | None = None) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "pool.yaml").write_text(POOL)
    text = "".join(MODEL.format(name=n, vram="2Gi", replicas=r, engine_args="{}") for n, r in models.items())
    for name, error in (broken or {}).items():
        text += MODEL.format(name=name, vram="2Gi", replicas=1, engine_args=json.dumps({"startup_error": error}))
    temp = directory / ".models.yaml.swp"
    temp.write_text(text)
    temp.rename(directory / "models.yaml")


class Watcher:
    def __init__(self, specs: Path, events: Path, *extra: str) -> None:
        self.events_path = events
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", str(specs), "--yes", "--interval", "3", "--debounce", "0.2",
             "--lease-ttl", "3", "--events", str(events), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
        )

    def events(self) -> list[dict]:
        if not self.events_path.exists():
            return []
        lines = self.events_path.read_text().splitlines()
        return [json.loads(line) for line in lines if line.endswith("}")]

    def wait_for(self, predicate, *, after: int = 0, timeout: float = 240) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events()[after:]:
                if predicate(event):
                    return event
            if self.process.poll() is not None:
                break
            time.sleep(0.2)
        out = self.stop() if self.process.poll() is None else self.process.stdout.read()
        raise AssertionError(f"no such event (exit {self.process.returncode}); output:\n{out}")

    def stop(self) -> str:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        out, _ = self.process.communicate(timeout=120)
        return out


def observe(specs: Path):
    from reconciler import adapter
    from reconciler.spec import load_specs

    with adapter.connect() as cluster:
        return cluster.observe(load_specs(specs).desired)


def running(specs: Path) -> dict[tuple[str, int], str]:
    return {r.key: r.app for r in observe(specs).replicas if r.state is ReplicaState.RUNNING}


def wait_running(specs: Path, want: set[tuple[str, int]], timeout: float = 240) -> dict[tuple[str, int], str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        now = running(specs)
        if set(now) == want:
            return now
        time.sleep(0.5)
    raise AssertionError(f"running {sorted(running(specs))}, wanted {sorted(want)}")


def delete_app_by_hand(app: str) -> None:
    """What an operator does with the dashboard or `serve deploy` of a config without it."""
    from reconciler import adapter
    from reconciler.adapter.observation import foreign_configs, our_configs
    from reconciler.executor import serveconfig

    with adapter.connect() as cluster:
        details = cluster.serve_details()
        ours = {n: c for n, c in our_configs(details).items() if n != app}
        cluster.put_serve_config(serveconfig.whole_config(details, foreign_configs(details), ours))


def replica_pid(app: str) -> int | None:
    from reconciler import adapter
    from reconciler.adapter.observation import running_pid

    with adapter.connect() as cluster:
        return running_pid(cluster.serve_details(), app)


@pytest.fixture
def specs(ray_cluster, tmp_path):
    directory = tmp_path / "specs"
    yield directory
    # Leave the shared cluster as found: nothing of ours running.
    write_specs(directory, {})
    result = subprocess.run([sys.executable, "-m", "reconciler", "apply", str(directory), "--yes"],
                            capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr


def test_edits_are_applied_invalid_specs_change_nothing_and_drift_is_healed(specs, tmp_path):
    write_specs(specs, {"alpha": 1, "beta": 1})
    watcher = Watcher(specs, tmp_path / "events.jsonl")
    try:
        watcher.wait_for(lambda e: e["event"] == "applied")
        wait_running(specs, {("alpha", 0), ("beta", 0)})

        # An edit is applied.
        write_specs(specs, {"alpha": 2, "beta": 1})
        change = watcher.wait_for(lambda e: e["event"] == "plan" and e["cause"] == "spec-change")
        assert [(a["action"], a["model"], a["replica"]) for a in change["actions"]] == [("create", "alpha", 1)]
        before = wait_running(specs, {("alpha", 0), ("alpha", 1), ("beta", 0)})

        # An invalid file: diagnostics, and the cluster stays exactly as it was.
        seen = len(watcher.events())
        (specs / "models.yaml").write_text((specs / "models.yaml").read_text().replace("replicas: 2", "replicas: 2x"))
        invalid = watcher.wait_for(lambda e: e["event"] == "spec-invalid", after=seen)
        assert any(d.startswith("models.yaml:") and ": error: " in d for d in invalid["diagnostics"])
        timer = watcher.wait_for(lambda e: e["event"] == "cycle" and e["cause"] == "drift-timer", after=seen)
        assert not timer["acted"]
        assert running(specs) == before

        # Fixed again, and then an application deleted by hand: watch puts it back (its probe of Serve, or the
        # drift timer, whichever notices first).
        write_specs(specs, {"alpha": 2, "beta": 1})
        watcher.wait_for(lambda e: e["event"] == "spec-loaded", after=seen)
        seen = len(watcher.events())
        delete_app_by_hand(before[("beta", 0)])
        drift = watcher.wait_for(lambda e: e["event"] == "drift", after=seen)
        assert [(a["action"], a["model"]) for a in drift["actions"]] == [("create", "beta")]
        watcher.wait_for(lambda e: e["event"] == "applied", after=seen)
        healed = wait_running(specs, {("alpha", 0), ("alpha", 1), ("beta", 0)})

        # A replica's process killed: it runs again (a new process) and watch ends in sync without a spec change.
        pid = replica_pid(healed[("alpha", 1)])
        seen = len(watcher.events())
        os.kill(pid, signal.SIGKILL)  # a worker of the test session's own cluster
        deadline = time.monotonic() + 120
        while replica_pid(healed[("alpha", 1)]) in (pid, None):
            assert time.monotonic() < deadline, "the killed replica did not come back"
            time.sleep(0.2)
        watcher.wait_for(lambda e: e["event"] == "cycle" and e["inSync"], after=seen)
        assert running(specs) == healed
    finally:
        out = watcher.stop()
    assert watcher.process.returncode == 0, out
    assert watcher.events()[-1]["event"] == "stopped"


def test_a_second_watcher_is_refused_and_takes_over_when_the_first_is_killed(specs, tmp_path):
    write_specs(specs, {"alpha": 1})
    first = Watcher(specs, tmp_path / "first.jsonl")
    standby = None
    try:
        lease = first.wait_for(lambda e: e["event"] == "lease")
        first.wait_for(lambda e: e["event"] == "cycle")

        refused = subprocess.run(
            [sys.executable, "-m", "reconciler", "watch", str(specs), "--yes"],
            capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
        )
        assert refused.returncode == 1
        assert f"pid {first.process.pid} on" in refused.stderr and "reconciler watch" in refused.stderr

        standby = Watcher(specs, tmp_path / "standby.jsonl", "--wait-for-lock")
        standby.wait_for(lambda e: e["event"] == "lease" and e.get("waiting"))
        first.process.send_signal(signal.SIGKILL)  # no chance to release: the lease must expire
        first.process.communicate(timeout=30)
        taken = standby.wait_for(lambda e: e["event"] == "lease" and not e.get("waiting"))
        assert taken["generation"] == lease["generation"] + 1
        standby.wait_for(lambda e: e["event"] == "cycle" and e["inSync"])
        wait_running(specs, {("alpha", 0)})
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.process.communicate(timeout=30)
        if standby is not None:
            out = standby.stop()
            assert standby.process.returncode == 0, out


def test_a_crash_looping_model_backs_off_without_holding_up_the_others(specs, tmp_path):
    write_specs(specs, {"alpha": 1}, broken={"broken": "CUDA out of memory while loading (rehearsal)"})
    watcher = Watcher(specs, tmp_path / "events.jsonl")
    try:
        failed = watcher.wait_for(lambda e: e["event"] == "action" and e["model"] == "broken" and not e["ok"])
        assert "out of memory" in failed["error"]
        wait_running(specs, {("alpha", 0)})
        backoff = watcher.wait_for(lambda e: e["event"] == "backoff" and e["model"] == "broken", timeout=300)
        assert backoff["failures"] >= 2 and backoff["retryAt"] > time.time() - 60

        seen = len(watcher.events())
        write_specs(specs, {"alpha": 1, "gamma": 1}, broken={"broken": "CUDA out of memory while loading (rehearsal)"})
        watcher.wait_for(lambda e: e["event"] == "action" and e["model"] == "gamma" and e["ok"], after=seen)
        assert ("gamma", 0) in running(specs)
    finally:
        out = watcher.stop()
    assert watcher.process.returncode == 0, out
