"""The Grafana dashboard in examples/grafana: every query names only metrics reconciler really exports, from the
controller's registry (`watch --metrics-port`) and the gateway's metrics (through Ray's metrics agent)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.metrics_core import Metric

from reconciler.adapter.gateway import RayMetrics
from reconciler.watch.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "examples" / "grafana" / "reconciler-dashboard.json"
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
# Ray's agent exports a metric as ray_<name>, a counter with _total (ray.util.metrics class -> Prometheus type).
RAY_TYPES = {"Counter": "counter", "Histogram": "histogram", "Gauge": "gauge"}


def _series(name: str, kind: str) -> set[str]:
    return {name + suffix for suffix in SUFFIXES.get(kind, ("",))}


def exported() -> set[str]:
    names: set[str] = set()
    family: Metric
    for family in Metrics().registry.collect():
        names |= _series(family.name, family.type)
    for metric in vars(RayMetrics()).values():
        names |= _series(f"ray_{metric._name}", RAY_TYPES[type(metric).__name__])
    return names


def queries() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    found = []

    def walk(panels: list[dict]) -> None:
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return found


def test_every_query_names_an_exported_metric():
    names = exported()
    assert "reconciler_revision" in names and "ray_reconciler_gateway_requests_total" in names
    used = set()
    for expr in queries():
        # Metric names are identifiers outside label matchers and quoted strings.
        bare = re.sub(r'\{[^}]*\}|"[^"]*"', "", expr)
        mentioned = {n for n in re.findall(r"[A-Za-z_:][A-Za-z0-9_:]*", bare) if n.startswith(("reconciler_", "ray_"))}
        assert mentioned, f"a query without a reconciler metric: {expr}"
        unknown = mentioned - names
        assert not unknown, f"{expr}: {sorted(unknown)} not exported (exported: {sorted(names)})"
        used |= mentioned
    # The dashboard covers both sides and the revision.
    assert any(n.startswith("ray_reconciler_gateway_") for n in used)
    assert {"reconciler_revision", "reconciler_last_successful_reconcile_timestamp_seconds"} <= used

