"""Faults on the session's shared Ray cluster: processes killed mid-way, the lock held, saved plans gone stale or
edited, Serve's controller killed under watch. Each ends converged: `plan` empty, nothing running that the specs
don't name, the lock free, foreign applications untouched, and every refusal one sentence without a traceback."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from reconciler.adapter.kv import RayKV
from reconciler.adapter.lease import Holder, acquire, describe
from tests.faults.support import clean_refusal, reconciler, write_specs
from tests.watch.test_watch_ray import Watcher, delete_app_by_hand, running, wait_running

pytestmark = [pytest.mark.ray, pytest.mark.faults]

FOREIGN_APP = "someone-elses-app"


@pytest.fixture
def specs(ray_cluster, tmp_path):
    directory = tmp_path / "specs"
    yield directory
    write_specs(directory, {})
    result = reconciler("apply", str(directory), "--yes")
    assert result.returncode == 0, result.stdout + result.stderr


def serve_details() -> dict:
    from reconciler import adapter

    with adapter.connect() as cluster:
        return cluster.serve_details()


def ours(details: dict) -> dict[str, list[str]]:
    """reconciler's replica applications by (model, replica) key spelled as in their names."""
    by_key: dict[str, list[str]] = {}
    for name in details["applications"]:
        if name.startswith("reconciler--") and "--r" in name:
            model, replica = name.split("--")[1:3]
            by_key.setdefault(f"{model}[{replica.removeprefix('r')}]", []).append(name)
    return by_key


def actor_of(details: dict, app: str) -> str | None:
    for deployment in (details["applications"].get(app) or {}).get("deployments", {}).values():
        for replica in deployment["replicas"]:
            if replica.get("state") == "RUNNING":
                return replica["actor_id"]
    return None


@pytest.fixture
def foreign_app(ray_cluster):
    """An application someone else deployed declaratively; reconciler must never touch it."""
    from reconciler import adapter
    from reconciler.adapter.observation import foreign_configs, our_configs
    from reconciler.executor import serveconfig

    foreign = {"name": FOREIGN_APP, "route_prefix": "/theirs", "import_path": "reconciler.engines.app:build",
               "args": {"kind": "router", "model": "theirs"},
               "deployments": [{"name": "Router", "user_config": {"backends": []}}]}
    with adapter.connect() as cluster:
        details = cluster.serve_details()
        cluster.put_serve_config(serveconfig.whole_config(details, [*foreign_configs(details), foreign],
                                                          our_configs(details)))
        details = cluster.wait_serve(lambda d: actor_of(d, FOREIGN_APP) is not None, timeout=120)
    yield actor_of(details, FOREIGN_APP)
    with adapter.connect() as cluster:
        details = cluster.serve_details()
        theirs = [c for c in foreign_configs(details) if c["name"] != FOREIGN_APP]
        cluster.put_serve_config(serveconfig.whole_config(details, theirs, our_configs(details)))


def converged(specs: Path, want: set[str]) -> None:
    plan = reconciler("plan", str(specs), "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    by_key = ours(serve_details())
    assert set(by_key) == want, by_key
    assert all(len(apps) == 1 for apps in by_key.values()), by_key  # nothing duplicated
    from reconciler import adapter

    with adapter.connect() as cluster:
        cluster.ray_nodes()
        record = describe(RayKV())
    assert record is None or record.free(time.time()), record


def test_apply_killed_mid_apply_is_taken_over_at_once_and_converges(specs, foreign_app):
    write_specs(specs, {"alpha": 3, "beta": 2})
    process = subprocess.Popen([sys.executable, "-m", "reconciler", "apply", str(specs), "--yes"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not ours(serve_details()) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ours(serve_details()), "the apply never submitted anything"
    finally:
        process.send_signal(signal.SIGKILL)  # mid-apply: it holds the lock and cannot release it
        process.wait()
    # Its lock was left held for 15 s; its holder is dead on this host, so the next apply takes it at once.
    again = reconciler("apply", str(specs), "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    converged(specs, {"alpha[0]", "alpha[1]", "alpha[2]", "beta[0]", "beta[1]"})
    assert actor_of(serve_details(), FOREIGN_APP) == foreign_app  # the same actor: never restarted


def test_apply_waits_for_the_lock_when_asked(specs):
    write_specs(specs, {"alpha": 1})
    from reconciler import adapter

    with adapter.connect() as cluster:
        cluster.ray_nodes()
        lease = acquire(RayKV(), holder=Holder.current("reconciler watch (another operator)"), ttl=120)
    try:
        refused = reconciler("apply", str(specs), "--yes")
        message = clean_refusal(refused, must_say="reconciler watch (another operator)")
        assert "--wait-for-lock" in message
        waiting = subprocess.Popen([sys.executable, "-m", "reconciler", "apply", str(specs), "--yes",
                                    "--wait-for-lock"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   stdin=subprocess.DEVNULL)
        lines = [waiting.stderr.readline() for _ in range(20)]  # Ray may log a line of its own first
        said = next((line for line in lines if line.startswith("Waiting: ")), "")
        assert "reconciler watch (another operator)" in said, lines
        assert waiting.poll() is None
    finally:
        lease.release()
    out, err = waiting.communicate(timeout=300)
    assert waiting.returncode == 0, out + err
    converged(specs, {"alpha[0]"})


def saved_plan(specs: Path, tmp_path: Path) -> Path:
    write_specs(specs, {"alpha": 1})
    assert reconciler("apply", str(specs), "--yes").returncode == 0
    write_specs(specs, {"alpha": 2})
    saved = tmp_path / "plan.json"
    assert reconciler("plan", str(specs), "--out", str(saved)).returncode == 0
    return saved


def test_an_edited_saved_plan_is_refused(specs, tmp_path):
    saved = saved_plan(specs, tmp_path)
    # Edited by hand: a GPU index changed, fingerprints left as they were.
    text = json.dumps(json.loads(saved.read_text()))
    assert '"gpus": [0]' in text
    edited = tmp_path / "edited.json"
    edited.write_text(text.replace('"gpus": [0]', '"gpus": [1]', 1))
    before = ours(serve_details())
    clean_refusal(reconciler("apply", str(specs), "--yes", "--plan", str(edited)), must_say="was edited")
    assert ours(serve_details()) == before


def test_a_stale_saved_plan_is_refused(specs, tmp_path):
    saved = saved_plan(specs, tmp_path)
    # Stale: the cluster changed after the plan was made.
    write_specs(specs, {"alpha": 3})
    assert reconciler("apply", str(specs), "--yes").returncode == 0
    write_specs(specs, {"alpha": 2})
    stale = clean_refusal(reconciler("apply", str(specs), "--yes", "--plan", str(saved)),
                          must_say="Saved plan is stale")
    assert "Traceback" not in stale
    assert set(ours(serve_details())) == {"alpha[0]", "alpha[1]", "alpha[2]"}


def serve_controller(ray_cluster) -> psutil.Process:
    supervisor = psutil.Process(json.loads(Path(ray_cluster.state_file).read_text())["pid"])
    found = []
    for process in supervisor.children(recursive=True):
        try:
            if process.cmdline()[:1] and process.cmdline()[0].startswith("ray::ServeController"):
                found.append(process)
        except psutil.Error:
            continue  # ended while we looked
    assert len(found) == 1, found
    return found[0]


def test_watch_carries_on_when_serve_controller_is_killed(specs, tmp_path, ray_cluster):
    write_specs(specs, {"alpha": 1, "beta": 1})
    watcher = Watcher(specs, tmp_path / "events.jsonl")
    try:
        watcher.wait_for(lambda e: e["event"] == "cycle" and e["inSync"])
        apps = wait_running(specs, {("alpha", 0), ("beta", 0)})
        controller = serve_controller(ray_cluster)
        controller.send_signal(signal.SIGKILL)  # Ray restarts it (a detached actor that restarts forever)
        controller.wait(timeout=30)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            try:
                if serve_controller(ray_cluster).pid != controller.pid and ours(serve_details()):
                    break
            except Exception:  # noqa: BLE001 - the controller is not back yet
                pass
            time.sleep(0.5)
        seen = len(watcher.events())
        delete_app_by_hand(apps[("beta", 0)])  # drift after the restart: watch must still be acting
        watcher.wait_for(lambda e: e["event"] == "applied", after=seen)
        wait_running(specs, {("alpha", 0), ("beta", 0)})
        assert watcher.process.poll() is None
    finally:
        out = watcher.stop()
    assert watcher.process.returncode == 0, out
    assert "Traceback" not in out, out


def test_a_killed_watcher_is_taken_over_at_once(specs, tmp_path):
    write_specs(specs, {"alpha": 1})
    first = Watcher(specs, tmp_path / "first.jsonl", "--lease-ttl", "600")
    second = None
    try:
        first.wait_for(lambda e: e["event"] == "cycle" and e["inSync"])
        first.process.send_signal(signal.SIGKILL)  # its lease would otherwise be held for ten minutes
        first.process.communicate(timeout=30)
        second = Watcher(specs, tmp_path / "second.jsonl", "--lease-ttl", "600")
        second.wait_for(lambda e: e["event"] == "lease" and not e.get("waiting"), timeout=120)
        second.wait_for(lambda e: e["event"] == "cycle" and e["inSync"])
        assert running(specs).keys() == {("alpha", 0)}
    finally:
        if first.process.poll() is None:
            first.process.kill()
            first.process.communicate(timeout=30)
        if second is not None:
            out = second.stop()
            assert second.process.returncode == 0, out
