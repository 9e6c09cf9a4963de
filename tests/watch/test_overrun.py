"""Measured memory in the watch loop, against plain data: an overrun is logged once per replica until it is back
within its plan, and both figures of every replica are in the scrape."""

from __future__ import annotations

import io
import json
from dataclasses import replace

from reconciler.watch.controller import Controller
from reconciler.watch.debounce import Cause
from reconciler.watch.events import EventLog
from reconciler.watch.metrics import Metrics

from .fakes import GiB, FakeCluster, SpecDir, Loaded, desired, model, simple_plan


def measured(cluster: FakeCluster, **figures: int | None) -> None:
    """What the next observation reads of each model's replica 0."""
    cluster.state = replace(cluster.state, replicas=tuple(
        replace(r, measured=figures.get(r.model), measured_source="rss" if figures.get(r.model) is not None else "")
        for r in cluster.state.replicas))


def test_an_overrun_is_logged_once_until_the_replica_is_back_within_its_plan():
    want = desired(model("chat", vram=2 * GiB), model("hog", vram=GiB))
    cluster = FakeCluster.shaped_like(want)
    sink = io.StringIO()
    metrics = Metrics()
    controller = Controller(load=SpecDir(Loaded(want)).load, observe=cluster.observe, plan=simple_plan,
                            apply=cluster.apply, events=EventLog(json_sink=sink), metrics=metrics)
    controller.cycle(Cause.STARTUP)
    assert len(cluster.state.replicas) == 2

    def overrun_events() -> list[dict]:
        return [e for e in map(json.loads, sink.getvalue().splitlines()) if e["event"] == "overrun"]

    measured(cluster, chat=GiB, hog=GiB + 1)
    controller.cycle(Cause.DRIFT_TIMER)
    controller.cycle(Cause.DRIFT_TIMER)
    (event,) = overrun_events()
    assert {k: event[k] for k in ("model", "replica", "node", "gpus", "planned", "measured", "source", "neighbours")} \
        == {"model": "hog", "replica": 0, "node": "node-a", "gpus": [0], "planned": GiB, "measured": GiB + 1,
            "source": "rss", "neighbours": ["chat[0]"]}
    assert event["message"].startswith("overrun: hog[0] on node-a/gpu0 uses 1 GiB per GPU (rss), planned 1 GiB")
    assert metrics.registry.get_sample_value("reconciler_replica_memory_bytes",
                                             {"model": "hog", "replica": "0", "kind": "measured"}) == GiB + 1
    assert metrics.registry.get_sample_value("reconciler_replica_memory_bytes",
                                             {"model": "chat", "replica": "0", "kind": "planned"}) == 2 * GiB

    measured(cluster, chat=GiB, hog=GiB // 2)
    controller.cycle(Cause.DRIFT_TIMER)
    measured(cluster, chat=GiB, hog=2 * GiB)
    controller.cycle(Cause.DRIFT_TIMER)
    assert [e["measured"] for e in overrun_events()] == [GiB + 1, 2 * GiB]


def test_a_replica_not_measured_has_only_its_planned_series():
    want = desired(model("chat", vram=2 * GiB))
    cluster = FakeCluster.shaped_like(want)
    metrics = Metrics()
    controller = Controller(load=SpecDir(Loaded(want)).load, observe=cluster.observe, plan=simple_plan,
                            apply=cluster.apply, events=EventLog(json_sink=io.StringIO()), metrics=metrics)
    controller.cycle(Cause.STARTUP)
    controller.cycle(Cause.DRIFT_TIMER)
    labels = {"model": "chat", "replica": "0"}
    assert metrics.registry.get_sample_value("reconciler_replica_memory_bytes", {**labels, "kind": "planned"}) == 2 * GiB
    assert metrics.registry.get_sample_value("reconciler_replica_memory_bytes", {**labels, "kind": "measured"}) is None
