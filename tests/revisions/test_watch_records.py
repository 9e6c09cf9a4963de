"""Watch records every apply it makes as a revision, with its cause and outcome, and exports the number; the status
page serves the status document as HTML and JSON, read-only."""

from __future__ import annotations

import io
import json
import urllib.error
import urllib.request

from prometheus_client import generate_latest

from reconciler.adapter import revisions
from reconciler.adapter.kv import MemoryKV
from reconciler.executor.record import Recorder
from reconciler.revision import Outcome, Source
from reconciler.watch.controller import Controller, WatchSettings
from reconciler.watch.debounce import Cause
from reconciler.watch.events import EventLog
from reconciler.watch.health import Health, HealthServer, Phase
from reconciler.watch.metrics import Metrics
from reconciler.watch.page import StatusPage
from reconciler.watch.target import WatchTarget

from tests.watch.fakes import FakeCluster, Loaded, SpecDir, desired, model


class _Recording:
    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder

    def begin(self, plan, desired, *, cause):
        return self.recorder.begin(plan, desired, cause=cause)

    def end(self, revision, **ended):
        return self.recorder.end(revision, **ended)


def _controller(specs, cluster, kv, metrics):
    recorder = Recorder(kv, command="reconciler watch specs", source=lambda: Source(directory="specs"))
    return Controller(load=specs.load, observe=cluster.observe, plan=_plan, apply=cluster.apply,
                      events=EventLog(json_sink=io.StringIO()), settings=WatchSettings(), metrics=metrics,
                      recording=_Recording(recorder))


def _plan(desired, observed):
    from tests.watch.fakes import simple_plan

    return simple_plan(desired, observed)


def test_each_apply_of_watch_is_a_revision_and_a_quiet_cycle_is_not():
    kv, metrics = MemoryKV(), Metrics()
    llm = model("llm", 2)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    controller = _controller(specs, cluster, kv, metrics)
    assert controller.cycle(Cause.STARTUP).acted
    assert not controller.cycle(Cause.DRIFT_TIMER).acted
    specs.set(desired(model("llm", 3)))
    assert controller.cycle(Cause.SPEC_CHANGE).acted
    found = revisions.history(kv, now=0)
    assert [(r.number, r.cause, r.outcome, len(r.plan.actions)) for r in found] == [
        (1, "watch: startup", Outcome.CONVERGED, 2),
        (2, "watch: spec-change", Outcome.CONVERGED, 1),
    ]
    assert found[1].desired == desired(model("llm", 3))
    assert found[1].by.command == "reconciler watch specs"
    assert "reconciler_revision 2.0" in generate_latest(metrics.registry).decode()


def test_the_page_serves_the_status_document_as_html_and_json_and_refuses_writes():
    kv, metrics = MemoryKV(), Metrics()
    llm = model("llm", 2)
    specs, cluster = SpecDir(Loaded(desired(llm))), FakeCluster.shaped_like(desired(llm))
    controller = _controller(specs, cluster, kv, metrics)
    page = StatusPage(title="reconciler watch specs")
    page.bind(controller, WatchTarget(observe=cluster.observe, apply=cluster.apply, kv=kv, describe="fake"))
    server = HealthServer(metrics.registry, lambda: Health(ok=True, phase=Phase.RUNNING, reason="ok"), port=0,
                          page=page)
    base = f"http://127.0.0.1:{server.port}"
    try:
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            assert "Waiting for the first cycle" in response.read().decode()
        controller.cycle(Cause.STARTUP)
        controller.cycle(Cause.DRIFT_TIMER)  # the page shows the last observation: this one sees the apply's result
        with urllib.request.urlopen(f"{base}/", timeout=10) as response:
            html = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in response.headers["Content-Security-Policy"]
        with urllib.request.urlopen(f"{base}/status.json", timeout=10) as response:
            document = json.load(response)
        assert document["revision"]["revision"] == 1 and document["revision"]["outcome"] == "converged"
        assert [r["revision"] for r in document["revisions"]] == [1]
        assert {(r["model"], r["replica"]) for r in document["replicas"]} == {("llm", 0), ("llm", 1)}
        for replica in ("llm[0]", "llm[1]"):
            assert f'data-replica="{replica}"' in html
        assert 'data-revision="1"' in html and 'data-gpu="node-a/gpu0"' in html
        assert "<script" not in html and "http-equiv=\"refresh\"" in html
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base}/", data=b"x", method="POST"), timeout=10)
            raise AssertionError("a POST was accepted")
        except urllib.error.HTTPError as refused:
            assert refused.code == 405
        with urllib.request.urlopen(f"{base}/metrics", timeout=10) as response:
            assert b"reconciler_revision" in response.read()
    finally:
        server.close()
