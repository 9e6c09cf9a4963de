"""Jobs on the session's real local Ray cluster (simulated GPUs): submitted where the plan put them, retried,
preempted and requeued. The job scripts report what they saw into files; the tests read the world, not the calls."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from reconciler.observed import JobRunState
from reconciler.planner import PlanSettings, plan
from reconciler.planner.jobs import JobSettings
from reconciler.settings import DEFAULTS
from reconciler.spec import load_specs

pytestmark = pytest.mark.ray

QUICK = PlanSettings(jobs=JobSettings(backoff_base=1.0, backoff_max=2.0))

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: homelab}
spec:
  nodes: {selector: {pool: homelab}}
  inventory:
    - {node: node-a, gpus: [{name: RTX 3090, memory: 24Gi}, {name: RTX 3090, memory: 24Gi}]}
    - {node: node-b, gpus: [{name: RTX 3060, memory: 12Gi}]}
    - {node: node-c, gpus: [{name: RTX 4060 Ti, memory: 16Gi}]}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: batch}
spec: {value: 10, default: true}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: interactive}
spec: {value: 90}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: pinned}
spec: {value: 10, preemptible: false}
"""

# Reports where it ran, counts its attempts in a state file, fails the first FAIL_TIMES of them and sleeps
# SLEEP_FIRST seconds on the first.
SCRIPT = """\
import json, os, re, sys, time
import psutil
state = os.environ["STATE"]
attempts = (int(open(state).read()) if os.path.exists(state) else 0) + 1
open(state, "w").write(str(attempts))
# The node: the raylet this run descends from advertises its node's VRAM resources on its command line.
raylet = next((" ".join(p.cmdline()) for p in psutil.Process().parents() if p.name() == "raylet"), "")
nodes = sorted(set(re.findall(r"vram_mb_([A-Za-z0-9.-]+?)_gpu[0-9]", raylet)))
seen = {"attempt": attempts, "cuda": os.environ.get("CUDA_VISIBLE_DEVICES"), "nodes": nodes}
if not nodes:
    seen["parents"] = [p.name() for p in psutil.Process().parents()]
with open(os.environ["REPORT"], "a") as out:
    out.write(json.dumps(seen) + "\\n")
if attempts == 1:
    time.sleep(float(os.environ.get("SLEEP_FIRST", "0")))
if attempts <= int(os.environ.get("FAIL_TIMES", "0")):
    print("attempt", attempts, "fails on purpose", flush=True)
    sys.exit(3)
print("done", flush=True)
"""


def write(directory: Path, *, jobs: dict[str, dict], models: dict[str, dict] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "pool.yaml").write_text(POOL)
    (directory / "work").mkdir(exist_ok=True)
    (directory / "work" / "job.py").write_text(SCRIPT)
    docs = [json.dumps({"apiVersion": "reconciler/v1", "kind": "Job", "metadata": {"name": name},
                        "spec": {"entrypoint": f"{sys.executable} job.py", "workingDir": "work", **spec}})
            for name, spec in jobs.items()]
    docs += [json.dumps({"apiVersion": "reconciler/v1", "kind": "Model", "metadata": {"name": name},
                         "spec": {"engine": "echo", "source": f"stand-in/{name}", **spec}})
             for name, spec in (models or {}).items()]
    (directory / "specs.yaml").write_text("\n---\n".join(docs) + "\n")
    return directory


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    from reconciler.adapter import connect

    with connect(ray_cluster.address) as connected:
        yield connected


def apply(cluster, directory: Path, settings: PlanSettings = QUICK):
    from reconciler.executor.run import Executor

    result = load_specs(directory)
    assert result.ok, [str(d) for d in result.diagnostics]
    observed = cluster.observe(result.desired)
    p = plan(result.desired, observed, settings)
    report = Executor(cluster, settings=replace(DEFAULTS.apply, replica_timeout=120), spec_dir=directory).apply(p)
    assert report.ok, [(o.action.describe(), o.message) for o in report.failed]
    return p


def runs_of(cluster, job: str):
    return [r for r in cluster.jobs.runs() if r.job == job]


def until(predicate, timeout: float = 90.0, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def reports(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_job_runs_where_planned_succeeds_and_is_not_run_again(cluster, tmp_path):
    specs = write(tmp_path / "specs", jobs={"where": {"vram": "13Gi", "env": {
        "STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report")}}})
    p = apply(cluster, specs)
    (planned,) = p.jobs
    assert [(str(a.kind), a.model, a.replica) for a in p.actions] == [("create", "job/where", 1)]
    ended = until(lambda: [r for r in runs_of(cluster, "where") if not r.active])
    assert [(r.run, r.state) for r in ended] == [(1, JobRunState.SUCCEEDED)], ended
    (report,) = reports(tmp_path / "report")
    assert report["cuda"] == ",".join(map(str, planned.gpus))
    assert report["nodes"] == [planned.node]
    again = apply(cluster, specs)
    assert [a for a in again.actions if a.model == "job/where"] == []
    assert again.job("where").state == "succeeded"
    assert len(reports(tmp_path / "report")) == 1


def test_fails_twice_then_succeeds_with_retries(cluster, tmp_path):
    env = {"STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report"), "FAIL_TIMES": "2"}
    specs = write(tmp_path / "specs", jobs={"flaky": {"vram": "2Gi", "retries": 2, "env": env}})
    for _ in range(12):
        p = apply(cluster, specs)
        if p.job("flaky").state == "succeeded":
            break
        until(lambda: not any(r.active for r in runs_of(cluster, "flaky")))
        time.sleep(1.0)
    runs = runs_of(cluster, "flaky")
    assert [(r.run, r.state) for r in runs] == [(1, JobRunState.FAILED), (2, JobRunState.FAILED),
                                                (3, JobRunState.SUCCEEDED)]
    assert "fails on purpose" in runs[0].message


def test_always_failing_ends_failed_with_its_log_tail(cluster, tmp_path):
    env = {"STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report"), "FAIL_TIMES": "99"}
    specs = write(tmp_path / "specs", jobs={"broken": {"vram": "2Gi", "retries": 1, "env": env}})
    for _ in range(10):
        p = apply(cluster, specs)
        if p.job("broken").state == "failed":
            break
        until(lambda: not any(r.active for r in runs_of(cluster, "broken")))
        time.sleep(1.0)
    assert p.job("broken").state == "failed"
    assert p.job("broken").reason.startswith("run 2 failed: attempt 2 fails on purpose after 1 retries")
    assert len(runs_of(cluster, "broken")) == 2


def test_a_priority_90_model_preempts_the_job_which_completes_once_the_model_is_gone(cluster, tmp_path):
    env = {"STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report"), "SLEEP_FIRST": "600"}
    jobs = {"batch": {"vram": "13Gi", "env": env}}
    specs = write(tmp_path / "specs", jobs=jobs)
    apply(cluster, specs)
    assert until(lambda: [r for r in runs_of(cluster, "batch") if r.state is JobRunState.RUNNING])
    assert until(lambda: reports(tmp_path / "report"))  # the first run has started its long sleep
    # A 13 GiB model of priority 90 on every GPU that can hold 13 GiB: the job must make room.
    write(specs, jobs=jobs, models={"chat": {"priorityClass": "interactive", "vram": "13Gi", "replicas": 3}})
    p = apply(cluster, specs)
    kinds = [(str(a.kind), a.model, a.replica) for a in p.actions]
    assert ("evict", "job/batch", 1) in kinds
    assert [(r.run, r.state) for r in runs_of(cluster, "batch")] == [(1, JobRunState.PREEMPTED)]
    again = apply(cluster, specs)
    assert again.job("batch").state == "preempted" and again.job("batch").preemptions == 1
    write(specs, jobs=jobs, models={"chat": {"priorityClass": "interactive", "vram": "13Gi", "replicas": 0}})
    p = apply(cluster, specs)
    assert ("create", "job/batch", 2) in [(str(a.kind), a.model, a.replica) for a in p.actions]
    ended = until(lambda: [r for r in runs_of(cluster, "batch") if r.run == 2 and not r.active])
    assert [(r.run, r.state) for r in ended] == [(2, JobRunState.SUCCEEDED)]


def test_a_non_preemptible_job_is_never_preempted(cluster, tmp_path):
    env = {"STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report"), "SLEEP_FIRST": "600"}
    jobs = {"keep": {"vram": "13Gi", "priorityClass": "pinned", "env": env}}
    specs = write(tmp_path / "specs", jobs=jobs)
    apply(cluster, specs)
    assert until(lambda: [r for r in runs_of(cluster, "keep") if r.state is JobRunState.RUNNING])
    write(specs, jobs=jobs, models={"chat": {"priorityClass": "interactive", "vram": "13Gi", "replicas": 3}})
    p = apply(cluster, specs)
    assert [a for a in p.actions if a.model == "job/keep"] == []
    assert [u.model for u in p.unplaced] == ["chat"]
    assert [(r.run, r.state) for r in runs_of(cluster, "keep")] == [(1, JobRunState.RUNNING)]
    write(specs, jobs={})  # the job leaves the specs: its run is stopped
    p = apply(cluster, specs)
    assert ("delete", "job/keep", 1) in [(str(a.kind), a.model, a.replica) for a in p.actions]
    assert [r.state for r in runs_of(cluster, "keep")] == [JobRunState.STOPPED]


def test_reconciler_run_submits_an_adhoc_job_that_status_shows_and_apply_keeps(cluster, tmp_path, capsys,
                                                                             monkeypatch):
    from reconciler.cli import main as cli

    specs = write(tmp_path / "specs", jobs={})
    work = tmp_path / "here"
    work.mkdir()
    (work / "job.py").write_text(SCRIPT)
    monkeypatch.chdir(work)
    try:
        assert cli(["run", "--vram", "2Gi", "--priority-class", "batch", "--name", "adhoc", "--specs", str(specs),
                    "--env", f"STATE={tmp_path / 'state'}", "--env", f"REPORT={tmp_path / 'report'}",
                    "--env", "SLEEP_FIRST=3", "--", sys.executable, "job.py"]) == 0
        assert "job adhoc run 1 on node-" in capsys.readouterr().out
        p = apply(cluster, specs)  # the specs do not name it: it stays desired, recorded in the cluster
        assert [a for a in p.actions if a.model == "job/adhoc"] == []
        assert until(lambda: [r for r in runs_of(cluster, "adhoc") if r.state is JobRunState.SUCCEEDED])
        assert cli(["status", str(specs), "--format", "json"]) == 0
        (entry,) = [j for j in json.loads(capsys.readouterr().out)["jobs"] if j["name"] == "adhoc"]
        assert (entry["state"], entry["runs"]) == ("succeeded", 1)
        assert cli(["logs", "job/adhoc"]) == 0
        assert "done" in capsys.readouterr().out
        assert len(reports(tmp_path / "report")) == 1
        assert cli(["forget", "job/adhoc"]) == 0
        assert "adhoc" not in [j.name for j in cluster.jobs.recorded()]
        assert ("delete", "job/adhoc", 1) in [(str(a.kind), a.model, a.replica) for a in apply(cluster, specs).actions]
        assert runs_of(cluster, "adhoc") == []  # a finished run of a job no longer desired is forgotten
    finally:
        cluster.jobs.unrecord("adhoc")


def test_a_schedule_starts_one_run_per_scheduled_time(cluster, tmp_path):
    env = {"STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report")}
    specs = write(tmp_path / "specs", jobs={"minutely": {"vram": "1Gi", "schedule": "* * * * *", "env": env}})
    if time.time() % 60 > 45:
        time.sleep(61 - time.time() % 60)  # both applies below fall in one minute
    first = apply(cluster, specs)
    slot = first.job("minutely").slot
    assert slot is not None and slot == time.time() // 60 * 60
    assert ("create", "job/minutely", 1) in [(str(a.kind), a.model, a.replica) for a in first.actions]
    assert until(lambda: [r for r in runs_of(cluster, "minutely") if r.state is JobRunState.SUCCEEDED])
    same_minute = apply(cluster, specs)
    assert [a for a in same_minute.actions if a.model == "job/minutely"] == []
    time.sleep(slot + 61 - time.time())
    next_minute = apply(cluster, specs)
    assert ("create", "job/minutely", 2) in [(str(a.kind), a.model, a.replica) for a in next_minute.actions]
    assert next_minute.job("minutely").slot == slot + 60
    ended = until(lambda: [r for r in runs_of(cluster, "minutely") if r.run == 2 and not r.active])
    assert [(r.slot, r.state) for r in ended] == [(slot + 60, JobRunState.SUCCEEDED)]


def test_watch_runs_a_job_once_and_keeps_an_adhoc_job(cluster, tmp_path, monkeypatch, capsys):
    from reconciler.cli import main as cli

    from watch.test_watch_ray import Watcher  # tests/ is on the path: its folders are top-level packages

    env = {"STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report")}
    specs = write(tmp_path / "specs", jobs={"once": {"vram": "2Gi", "env": env}})
    work = tmp_path / "here"
    work.mkdir()
    (work / "job.py").write_text(SCRIPT)
    monkeypatch.chdir(work)
    adhoc_env = ["--env", f"STATE={tmp_path / 'adhoc-state'}", "--env", f"REPORT={tmp_path / 'adhoc-report'}",
                 "--env", "SLEEP_FIRST=600"]
    try:
        assert cli(["run", "--vram", "1Gi", "--name", "long", "--specs", str(specs), *adhoc_env, "--",
                    sys.executable, "job.py"]) == 0
        capsys.readouterr()
        watcher = Watcher(specs, tmp_path / "events.jsonl")
        try:
            assert until(lambda: [r for r in runs_of(cluster, "once") if r.state is JobRunState.SUCCEEDED], 120)
            seen = len(watcher.events())
            for _ in range(2):  # two more drift cycles after the job succeeded
                watcher.wait_for(lambda e: e["event"] == "cycle" and e["cause"] == "drift-timer", after=seen)
                seen = len(watcher.events())
        finally:
            watcher.stop()
        assert [(r.run, r.state) for r in runs_of(cluster, "once")] == [(1, JobRunState.SUCCEEDED)]
        assert [(r.run, r.state) for r in runs_of(cluster, "long")] == [(1, JobRunState.RUNNING)]
    finally:
        cluster.jobs.unrecord("long")
        write(specs, jobs={})
        apply(cluster, specs)  # the ad-hoc run, no longer recorded, is stopped


def test_reconciler_run_takes_the_apply_lock_or_waits_for_it(cluster, tmp_path, capsys, monkeypatch):
    import threading

    from reconciler.adapter.kv import RayKV
    from reconciler.adapter.lease import Holder, acquire
    from reconciler.cli import main as cli

    specs = write(tmp_path / "specs", jobs={})
    work = tmp_path / "here"
    work.mkdir()
    (work / "job.py").write_text(SCRIPT)
    monkeypatch.chdir(work)
    args = ["run", "--vram", "1Gi", "--name", "locked", "--specs", str(specs), "--env", f"STATE={tmp_path / 's'}",
            "--env", f"REPORT={tmp_path / 'report'}", "--", sys.executable, "job.py"]
    held = acquire(RayKV(), holder=Holder.current("reconciler apply elsewhere"), ttl=60)
    try:
        assert cli(args) == 1  # an apply holds the lock: nothing recorded, nothing submitted
        assert "reconciler apply elsewhere" in capsys.readouterr().err
        assert "locked" not in [j.name for j in cluster.jobs.recorded()] and runs_of(cluster, "locked") == []
        done: list[int] = []
        waiting = threading.Thread(target=lambda: done.append(cli([*args[:1], "--wait-for-lock", *args[1:]])))
        waiting.start()
        assert until(lambda: "Waiting: " in capsys.readouterr().err, timeout=30)
        assert runs_of(cluster, "locked") == []  # still waiting: submitted only once the lock is free
        held.release()
        waiting.join(120)
        assert done == [0]
        assert until(lambda: [r for r in runs_of(cluster, "locked") if r.state is JobRunState.SUCCEEDED])
    finally:
        held.release()
        cluster.jobs.unrecord("locked")
        for r in runs_of(cluster, "locked"):
            cluster.jobs.forget("locked", r.run)
