"""Prometheus metrics of a reconciler that runs as a controller (`reconciler watch --metrics-port P`).

State metrics (VRAM per GPU, replicas per model) are a snapshot replaced whole after every cycle, exposed by a custom
collector: a model or GPU that disappears disappears from the scrape too, with no stale label sets. Event metrics
(actions, drift, durations) are ordinary counters and a histogram. Everything lives in one ``CollectorRegistry`` per
``Metrics`` object, never the process-global one, so tests and several controllers in one process stay apart.

The three people watch most: ``reconciler_last_successful_reconcile_timestamp_seconds`` (is it alive?),
``reconciler_replicas{state="failed"}`` plus ``reconciler_replicas_unplaced`` (is anything not serving?), and
``reconciler_spec_valid`` (did someone push a broken spec?).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from reconciler.desired import DesiredState
from reconciler.observed import ObservedState, ReplicaState
from reconciler.plan import APPLY_ORDER, Plan

GPU_LABELS = ("pool", "node", "gpu")


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The state metrics as plain data, computed from one cycle's desired state, observation and plan."""

    # (pool, node, gpu index) -> {"total"|"reserved"|"planned"|"used"|"foreign": bytes}
    gpus: tuple[tuple[tuple[str, str, str], dict[str, int]], ...] = ()
    desired: tuple[tuple[str, int], ...] = ()  # model -> replicas wanted (placed + unplaced for "max" models)
    replicas: tuple[tuple[tuple[str, str], int], ...] = ()  # (model, state) -> count
    unplaced: tuple[tuple[str, int], ...] = ()
    backoff: tuple[tuple[str, int], ...] = ()  # model -> replicas held back by crash-loop backoff
    jobs: tuple[tuple[str, str, int, int], ...] = ()  # (job, state, runs, preemptions), from the plan
    nodes: tuple[tuple[str, int], ...] = ()  # "alive"|"dead" -> nodes
    dead: tuple[tuple[str, float], ...] = ()  # dead node -> unix seconds it died (0 when Ray did not say)
    # (model, replica index, "planned"|"measured") -> bytes per GPU; measured only for replicas that were measured
    memory: tuple[tuple[tuple[str, str, str], int], ...] = ()


def snapshot(*, desired: DesiredState, observed: ObservedState, plan: Plan,
             backoff: Iterable[tuple[str, int]] = ()) -> Snapshot:
    """``used`` is what NVML reports when the node has it, else the VRAM our replicas hold on that GPU."""
    gpu_used = {(n.name, g.index): g.used for n in observed.nodes for g in n.gpus}
    gpus = []
    for view in plan.gpus:
        before = sum(u.vram for u in view.before)
        used = gpu_used.get((view.node, view.index))
        gpus.append(((view.pool, view.node, str(view.index)), {
            "total": view.memory,
            "reserved": view.reserve,
            "planned": sum(u.vram for u in view.after),
            "used": before if used is None else used,
            "foreign": view.foreign,
        }))
    placed: dict[str, int] = {}
    for p in plan.placement:
        placed[p.model] = placed.get(p.model, 0) + 1
    unplaced: dict[str, int] = {}
    for u in plan.unplaced:
        unplaced[u.model] = unplaced.get(u.model, 0) + 1
    wanted = tuple(
        (m.name, placed.get(m.name, 0) + unplaced.get(m.name, 0) if m.replicas is None else m.replicas)
        for m in desired.models
    )
    counts = {(m.name, str(s)): 0 for m in desired.models for s in ReplicaState}
    for r in observed.replicas:
        counts[(r.model, str(r.state))] = counts.get((r.model, str(r.state)), 0) + 1
    held: dict[str, int] = {}
    for model, _replica in backoff:
        held[model] = held.get(model, 0) + 1
    return Snapshot(
        gpus=tuple(sorted(gpus)),
        desired=wanted,
        replicas=tuple(sorted(counts.items())),
        unplaced=tuple(sorted((m.name, unplaced.get(m.name, 0)) for m in desired.models)),
        backoff=tuple(sorted((m.name, held.get(m.name, 0)) for m in desired.models)),
        jobs=tuple((j.name, j.state, j.runs, j.preemptions) for j in plan.jobs),
        nodes=(("alive", sum(1 for n in observed.nodes if n.alive)), ("dead", sum(1 for n in observed.nodes
                                                                                  if not n.alive))),
        dead=tuple(sorted((n.name, n.dead_since or 0.0) for n in observed.nodes if not n.alive)),
        memory=_memory(observed),
    )


def _memory(observed: ObservedState) -> tuple[tuple[tuple[str, str, str], int], ...]:
    """Planned and measured bytes per GPU of each replica; the highest where a replica runs twice (a restart)."""
    found: dict[tuple[str, str, str], int] = {}
    for r in observed.replicas:
        figures = [("planned", r.vram)] + ([("measured", r.measured)] if r.measured is not None else [])
        for kind, value in figures:
            key = (r.model, str(r.replica), kind)
            found[key] = max(found.get(key, 0), value)
    return tuple(sorted(found.items()))


class _StateCollector(Collector):
    def __init__(self) -> None:
        self._snapshot = Snapshot()
        self._lock = threading.Lock()

    def set(self, value: Snapshot) -> None:
        with self._lock:
            self._snapshot = value

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            snap = self._snapshot
        for kind, doc in (
            ("total", "GPU memory"),
            ("reserved", "GPU memory kept free by the pool's reserve"),
            ("planned", "GPU memory the current plan assigns to replicas"),
            ("used", "GPU memory in use (NVML, or the VRAM our replicas hold where GPUs are simulated)"),
            ("foreign", "GPU memory used by processes that are not reconciler replicas"),
        ):
            family = GaugeMetricFamily(f"reconciler_gpu_vram_{kind}_bytes", doc, labels=GPU_LABELS)
            for labels, values in snap.gpus:
                family.add_metric(labels, values[kind])
            yield family
        family = GaugeMetricFamily("reconciler_replicas_desired", "Replicas the specs ask for", labels=("model",))
        for model, count in snap.desired:
            family.add_metric((model,), count)
        yield family
        family = GaugeMetricFamily("reconciler_replicas", "Replicas observed on the cluster, by state",
                                   labels=("model", "state"))
        for (model, state), count in snap.replicas:
            family.add_metric((model, state), count)
        yield family
        family = GaugeMetricFamily("reconciler_replicas_unplaced", "Desired replicas no GPU has room for",
                                   labels=("model",))
        for model, count in snap.unplaced:
            family.add_metric((model,), count)
        yield family
        family = GaugeMetricFamily("reconciler_replicas_backoff", "Replicas held back by crash-loop backoff",
                                   labels=("model",))
        for model, count in snap.backoff:
            family.add_metric((model,), count)
        yield family
        family = GaugeMetricFamily("reconciler_nodes", "Nodes of the cluster, alive or dead", labels=("state",))
        for state, count in snap.nodes:
            family.add_metric((state,), count)
        yield family
        family = GaugeMetricFamily("reconciler_node_dead_since_timestamp_seconds",
                                   "When each dead node died (0: Ray did not say)", labels=("node",))
        for node, since in snap.dead:
            family.add_metric((node,), since)
        yield family
        family = GaugeMetricFamily("reconciler_replica_memory_bytes",
                                   "Memory per GPU of each replica: planned (its VRAM) and measured (NVML per "
                                   "process, or resident memory where GPUs are simulated)",
                                   labels=("model", "replica", "kind"))
        for labels, value in snap.memory:
            family.add_metric(labels, value)
        yield family
        yield from _job_families(snap)


JOB_STATES = ("waiting", "running", "preempted", "succeeded", "failed")


def _job_families(snap: Snapshot) -> Iterator[Metric]:
    state = GaugeMetricFamily("reconciler_job_state", "1 for the state each job is in", labels=("job", "state"))
    runs = GaugeMetricFamily("reconciler_job_runs", "Runs of each job so far (its history kept)", labels=("job",))
    preempted = GaugeMetricFamily("reconciler_job_preemptions", "Runs of each job that were preempted",
                                  labels=("job",))
    for job, current, count, preemptions in snap.jobs:
        for name in JOB_STATES:
            state.add_metric((job, name), 1 if name == current else 0)
        runs.add_metric((job,), count)
        preempted.add_metric((job,), preemptions)
    yield from (state, runs, preempted)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._state = _StateCollector()
        self.registry.register(self._state)
        self.actions_applied = Counter(
            "reconciler_actions_applied", "Plan actions applied successfully", ("action",), registry=self.registry
        )
        self.actions_failed = Counter(
            "reconciler_actions_failed", "Plan actions that failed", ("action",), registry=self.registry
        )
        for kind in APPLY_ORDER:  # every series exists from the start, so rate() works on the first failure
            self.actions_applied.labels(str(kind))
            self.actions_failed.labels(str(kind))
        self.reconcile_duration = Histogram(
            "reconciler_reconcile_duration_seconds", "One reconcile cycle: load, observe, plan and apply",
            buckets=(0.025, 0.05, 0.1, 0.2, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300), registry=self.registry,
        )
        self.drift_detected = Counter(
            "reconciler_drift_detected", "Cycles that found the cluster away from the applied desired state",
            registry=self.registry,
        )
        self.last_success = Gauge(
            "reconciler_last_successful_reconcile_timestamp_seconds",
            "Unix time of the last cycle that ended with nothing failed", registry=self.registry,
        )
        self.spec_valid = Gauge(
            "reconciler_spec_valid", "1 when the spec directory loaded without errors, 0 when the last load failed",
            registry=self.registry,
        )

        self.revision = Gauge(
            "reconciler_revision", "The number of the cluster's current revision (`reconciler history`): the last "
            "apply recorded", registry=self.registry,
        )
        self.scaling_actions = Counter(
            "reconciler_scaling_actions", "On-demand count changes applied, by model and rule (wake, idle, up, "
            "down, range)", ("model", "rule"), registry=self.registry,
        )

        self.replica_restarts = Counter(
            "reconciler_replica_restarts", "Replicas restarted because their engine died, by model and reason "
            "(killed: by a signal such as the OOM killer's; exited; error)", ("model", "reason"),
            registry=self.registry,
        )

    def engine_died(self, *, model: str, reason: str) -> None:
        kind = "killed" if reason.startswith("signal") else "exited" if reason.startswith("exit") else "error"
        self.replica_restarts.labels(model, kind).inc()

    def scaled(self, *, model: str, rule: str) -> None:
        self.scaling_actions.labels(model, rule).inc()

    def update_state(self, value: Snapshot) -> None:
        self._state.set(value)

    def action(self, kind: str, *, ok: bool) -> None:
        (self.actions_applied if ok else self.actions_failed).labels(kind).inc()

