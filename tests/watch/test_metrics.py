"""Metrics are scraped over HTTP on 127.0.0.1, the way Prometheus reads them."""

import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from reconciler.watch.health import Health, HealthServer, Phase
from reconciler.watch.metrics import Metrics, snapshot
from reconciler.observed import ObservedReplica, ReplicaState

from .fakes import GiB, FakeCluster, desired, model, simple_plan


def scrape(port: int) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_state_and_event_metrics_are_exposed_over_http():
    llm, emb = model("llm", 2, vram=6 * GiB), model("emb", 1, vram=GiB)
    want = desired(llm, emb)
    cluster = FakeCluster.shaped_like(want)
    cluster.apply(simple_plan(want, cluster.state), want, cluster.state)
    failed = ObservedReplica("emb", 0, "node-a", (0,), GiB, emb.restart_hash, emb.config_hash, ReplicaState.FAILED)
    cluster.state = cluster.state.__class__(nodes=cluster.state.nodes, replicas=tuple(
        failed if r.key == ("emb", 0) else r for r in cluster.state.replicas))
    plan = simple_plan(want, cluster.state)

    metrics = Metrics()
    metrics.update_state(snapshot(desired=want, observed=cluster.state, plan=plan))
    metrics.action("create", ok=True)
    metrics.action("create", ok=False)
    metrics.drift_detected.inc()
    metrics.reconcile_duration.observe(0.12)
    metrics.last_success.set(1_700_000_000)
    metrics.spec_valid.set(1)

    server = HealthServer(metrics.registry, lambda: Health(ok=True, phase=Phase.RUNNING, reason="ok"), port=0)
    try:
        assert server.host == "127.0.0.1"
        got = scrape(server.port)
    finally:
        server.close()
    gpu = (("gpu", "0"), ("node", "node-a"), ("pool", "default"))
    assert got[("reconciler_gpu_vram_total_bytes", gpu)] == 24 * GiB
    assert got[("reconciler_gpu_vram_reserved_bytes", gpu)] == GiB
    assert got[("reconciler_gpu_vram_planned_bytes", gpu)] == 13 * GiB
    # Simulated GPU: used is what our replicas hold; the failed one holds nothing.
    assert got[("reconciler_gpu_vram_used_bytes", gpu)] == 12 * GiB
    assert got[("reconciler_gpu_vram_foreign_bytes", gpu)] == 0
    assert got[("reconciler_replicas_desired", (("model", "llm"),))] == 2
    assert got[("reconciler_replicas", (("model", "llm"), ("state", "running")))] == 2
    assert got[("reconciler_replicas", (("model", "emb"), ("state", "failed")))] == 1
    assert got[("reconciler_replicas", (("model", "emb"), ("state", "running")))] == 0
    assert got[("reconciler_replicas_unplaced", (("model", "llm"),))] == 0
    assert got[("reconciler_actions_applied_total", (("action", "create"),))] == 1
    assert got[("reconciler_actions_failed_total", (("action", "create"),))] == 1
    assert got[("reconciler_actions_failed_total", (("action", "evict"),))] == 0
    assert got[("reconciler_drift_detected_total", ())] == 1
    assert got[("reconciler_reconcile_duration_seconds_count", ())] == 1
    assert got[("reconciler_reconcile_duration_seconds_bucket", (("le", "0.2"),))] == 1
    assert got[("reconciler_reconcile_duration_seconds_bucket", (("le", "0.1"),))] == 0
    assert got[("reconciler_last_successful_reconcile_timestamp_seconds", ())] == 1_700_000_000
    assert got[("reconciler_spec_valid", ())] == 1


def test_a_deleted_model_disappears_from_the_scrape_and_registries_are_separate():
    a, b = Metrics(), Metrics()
    want = desired(model("llm", 1))
    cluster = FakeCluster.shaped_like(want)
    a.update_state(snapshot(desired=want, observed=cluster.state, plan=simple_plan(want, cluster.state)))
    assert a.registry.get_sample_value("reconciler_replicas_desired", {"model": "llm"}) == 1
    assert b.registry.get_sample_value("reconciler_replicas_desired", {"model": "llm"}) is None
    empty = desired()
    a.update_state(snapshot(desired=empty, observed=cluster.state, plan=simple_plan(empty, cluster.state)))
    assert a.registry.get_sample_value("reconciler_replicas_desired", {"model": "llm"}) is None


def test_jobs_are_in_the_scrape_with_their_state_runs_and_preemptions():
    from dataclasses import replace

    from reconciler.desired import Job, Preemption
    from reconciler.observed import JobRunState, ObservedJobRun, from_inventory
    from reconciler.planner import plan

    base = desired(model("llm", 1, vram=6 * GiB))
    job = Job(name="embed", pool=base.pools[0].name, priority_class="", priority=0,
              preemption=Preemption.LOWER_PRIORITY, preemptible=True, vram=GiB, entrypoint="python embed.py")
    want = replace(base, jobs=(job,))
    state = replace(from_inventory(want), at=1_700_000_000.0, jobs=(
        ObservedJobRun("embed", 1, job.revision, JobRunState.PREEMPTED, "node-a", (0,), GiB),))
    metrics = Metrics()
    metrics.update_state(snapshot(desired=want, observed=state, plan=plan(want, state)))
    server = HealthServer(metrics.registry, lambda: Health(ok=True, phase=Phase.RUNNING, reason="ok"), port=0)
    try:
        seen = scrape(server.port)
    finally:
        server.close()
    assert seen[("reconciler_job_state", (("job", "embed"), ("state", "preempted")))] == 1
    assert seen[("reconciler_job_state", (("job", "embed"), ("state", "running")))] == 0
    assert seen[("reconciler_job_runs", (("job", "embed"),))] == 1
    assert seen[("reconciler_job_preemptions", (("job", "embed"),))] == 1
