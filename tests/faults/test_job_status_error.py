"""Ray's job API fails to say how a run is while a model preempts that run, on the session's real local Ray cluster.

The fault sits on the wire: the controller's connection reaches the dashboard through a small proxy that passes
everything on and answers 503 to the status of the run being preempted while told to. The test then reads the world:
Ray's own state of the run, the reconciler's mark in the GCS KV, and the replicas Serve runs.

- Status errors throughout an apply: the run is not taken for gone. It is not stopped, keeps its VRAM (the replica
  that needs its GPU does not run), is not marked, and the eviction fails as temporary.
- The next apply, with status errors right after the stop: they are asked again until Ray answers; the mark stays
  "preempting" while the stop is unconfirmed and becomes "preempted" once it is, and every replica then runs."""

from __future__ import annotations

import re
import threading
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from reconciler.adapter.jobs import STOPPED_BY
from reconciler.naming import job_submission_id
from reconciler.observed import JobRunState
from reconciler.planner import plan
from reconciler.settings import DEFAULTS
from reconciler.spec import load_specs
from tests.jobs.test_live import QUICK, reports, runs_of, until, write

pytestmark = pytest.mark.ray

SETTINGS = replace(DEFAULTS.apply, replica_timeout=120, pending_grace=5.0, stop_timeout=30.0)
RUN = job_submission_id("batch", 1)


class FaultyDashboard:
    """Passes requests on to the dashboard; answers 503 to GET of the run's status while ``failing`` says so (a
    count; -1: until told otherwise), or for the next ``after_stop`` such reads once its stop was asked for. At each
    failure it writes down what the world was: the run's mark in the KV, and Ray's own status of the run."""

    def __init__(self, target: str, run: str, kv) -> None:
        self.target, self.run, self.kv = target.rstrip("/"), run, kv
        self.failing = 0
        self.after_stop = 0
        self.seen: list[tuple[bytes | None, str]] = []  # (mark, Ray's status) at each failure
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _relay(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.command == "POST" and self.path == f"/api/jobs/{proxy.run}/stop":
                    proxy.failing = proxy.after_stop or proxy.failing
                if self.command == "GET" and re.fullmatch(rf"/api/jobs/{re.escape(proxy.run)}/?", self.path) \
                        and proxy.failing:
                    proxy.failing -= proxy.failing > 0
                    proxy.seen.append((proxy.kv.get(STOPPED_BY + proxy.run), proxy.status()))
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")}
                answer = requests.request(self.command, proxy.target + self.path, headers=headers, data=body,
                                          timeout=60)
                self.send_response(answer.status_code)
                for k, v in answer.headers.items():
                    if k.lower() not in ("content-length", "transfer-encoding", "content-encoding", "connection"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.headers: dict[str, str] = {}
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def status(self) -> str:
        answer = requests.get(f"{self.target}/api/jobs/{self.run}", headers=self.headers, timeout=30)
        return answer.json().get("status", "") if answer.ok else str(answer.status_code)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def _apply(cluster, directory: Path):
    from reconciler.executor.run import Executor

    desired = load_specs(directory).desired
    p = plan(desired, cluster.observe(desired), QUICK)
    return p, Executor(cluster, settings=SETTINGS, spec_dir=directory).apply(p)


def _chat_running(cluster, directory: Path) -> int:
    from reconciler.observed import ReplicaState

    observed = cluster.observe(load_specs(directory).desired)
    return sum(1 for r in observed.replicas if r.model == "chat" and r.state is ReplicaState.RUNNING)


@pytest.fixture
def faulty(ray_cluster, monkeypatch):
    from reconciler.adapter import connect
    from reconciler.adapter.kv import RayKV

    with connect(ray_cluster.address) as cluster:
        cluster.ray_nodes()  # the driver, and with it the dashboard's address
        proxy = FaultyDashboard(cluster.dashboard_url, RUN, RayKV())
        if cluster.endpoint.token:
            proxy.headers["Authorization"] = f"Bearer {cluster.endpoint.token}"
        # Serve's REST API and the job API, both through the proxy (Ray's job client takes the environment's
        # address over the one it is given)
        cluster.dashboard_url = proxy.url
        monkeypatch.setenv("RAY_API_SERVER_ADDRESS", proxy.url)
        try:
            yield cluster, proxy
        finally:
            proxy.failing = proxy.after_stop = 0
            proxy.close()


def test_a_status_error_during_preemption_is_temporary_and_the_mark_waits_for_the_confirmed_stop(faulty, tmp_path):
    cluster, proxy = faulty
    env = {"STATE": str(tmp_path / "state"), "REPORT": str(tmp_path / "report"), "SLEEP_FIRST": "600"}
    jobs = {"batch": {"vram": "13Gi", "env": env}}
    specs = write(tmp_path / "specs", jobs=jobs)
    try:
        _, report = _apply(cluster, specs)
        assert report.ok, [(o.action.describe(), o.message) for o in report.failed]
        assert until(lambda: reports(tmp_path / "report"))  # the run has started its long sleep
        # A 13 GiB model of priority 90 on every GPU that can hold 13 GiB: the run must make room.
        write(specs, jobs=jobs, models={"chat": {"priorityClass": "interactive", "vram": "13Gi", "replicas": 3}})

        proxy.failing = -1  # Ray's job API does not say how the run is, all through this apply
        p, report = _apply(cluster, specs)
        proxy.failing = 0
        assert ("evict", "job/batch", 1) in [(str(a.kind), a.model, a.replica) for a in p.actions]
        (evict,) = [o for o in report.outcomes if o.action.model == "job/batch"]
        assert not evict.ok and "tried again on the next apply" in evict.message
        assert proxy.seen and all(mark is None and status == "RUNNING" for mark, status in proxy.seen)
        assert [(r.run, r.state) for r in runs_of(cluster, "batch")] == [(1, JobRunState.RUNNING)]  # not stopped
        assert proxy.kv.get(STOPPED_BY + RUN) is None
        assert _chat_running(cluster, specs) == 2  # the third needs the run's GPU, which it still holds

        proxy.seen.clear()
        proxy.after_stop = 3  # the next apply: the status fails three times right after the stop is asked for
        p, report = _apply(cluster, specs)
        assert ("evict", "job/batch", 1) in [(str(a.kind), a.model, a.replica) for a in p.actions]
        assert report.ok, [(o.action.describe(), o.message) for o in report.failed]
        assert len(proxy.seen) == 3 and all(mark == b"preempting" for mark, _ in proxy.seen)  # asked again
        assert proxy.kv.get(STOPPED_BY + RUN) == b"preempted"  # once the stop was confirmed
        assert [(r.run, r.state) for r in runs_of(cluster, "batch")] == [(1, JobRunState.PREEMPTED)]
        assert until(lambda: _chat_running(cluster, specs) == 3)
    finally:
        write(specs, jobs={})
        proxy.failing = proxy.after_stop = 0
        _apply(cluster, specs)
