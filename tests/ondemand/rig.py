"""On-demand models on the session's Ray cluster, for the echo and the vLLM tests: specs written per test,
`reconciler watch` run as a process the way it runs in production, clients through the gateway with the `openai` SDK.
Assertions are on the cluster (what observation reports), the answers the clients got, and the watcher's events."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import openai
import pytest

from tests.gateway.test_gateway_ray import POOL as ALL_NODES  # the session cluster's every node, one pool
from tests.watch.test_watch_ray import Watcher as WatchProcess

# One 12 GiB GPU: two models of 8 GiB cannot both be loaded.
ONE_GPU = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: small}
spec:
  nodes: {selector: {reconciler.io/node: node-b}}
  inventory:
    - {node: node-b, gpus: [{name: sim, memory: 12Gi}]}
"""

CLASSES = """\
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: interactive}
spec: {value: 50}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: batch}
spec: {value: 10}
"""


def model(name: str, *, vram: str = "1Gi", replicas: Any, scaling: dict | None = None, **spec: Any) -> str:
    body = {"engine": "echo", "source": f"stand-in/{name}", "vram": vram, "replicas": replicas, **spec}
    if scaling is not None:
        body["scaling"] = scaling
    return json.dumps({"apiVersion": "reconciler/v1", "kind": "Model", "metadata": {"name": name}, "spec": body})


def write_specs(directory: Path, *documents: str) -> None:
    directory.mkdir(exist_ok=True)
    temp = directory / ".specs.yaml.swp"
    temp.write_text("\n---\n".join(documents) + "\n")
    temp.rename(directory / "specs.yaml")


class Watcher(WatchProcess):
    """`reconciler watch DIR` as a process, polling the cluster every half second, its events in a JSON lines file."""

    def __init__(self, specs: Path, events: Path) -> None:
        super().__init__(specs, events, "--poll", "0.5")

    def of(self, kind: str) -> list[dict]:
        return [e for e in self.events() if e.get("event") == kind]

    def log(self) -> str:
        """The human lines of the run's scale and action events, for a failing assertion's message."""
        return "\n".join(f"{e.get('time', '')} {e.get('event')}: {e.get('message', '')}" for e in self.events()
                          if e.get("event") in ("scale", "action"))


def observed(specs: Path):
    from reconciler import adapter
    from reconciler.spec import load_specs

    with adapter.connect() as cluster:
        return cluster.observe(load_specs(specs).desired)


def running_count(specs: Path, name: str) -> int:
    from reconciler.observed import ReplicaState

    return sum(1 for r in observed(specs).replicas if r.model == name and r.state is ReplicaState.RUNNING)


def wait_count(specs: Path, name: str, count: int, *, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    seen = -1
    while time.monotonic() < deadline:
        seen = running_count(specs, name)
        if seen == count:
            return
        time.sleep(0.5)
    raise AssertionError(f"{name}: {seen} replicas running, wanted {count}")


def gateway_url() -> str:
    from reconciler import adapter
    from reconciler.adapter import gateway as gateways

    with adapter.connect() as cluster:
        return gateways.wait_url(cluster)


def client(url: str, *, timeout: float = 180) -> openai.OpenAI:
    return openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=timeout)


@pytest.fixture
def specs(ray_cluster, tmp_path):
    """A spec directory; whatever the test left running is removed at the end (an empty apply)."""
    from reconciler.cli import main as cli

    directory = tmp_path / "specs"
    yield directory
    write_specs(directory, ALL_NODES)
    assert cli(["apply", str(directory), "--yes"]) == 0


@pytest.fixture
def watcher(specs, tmp_path):
    started: list[Watcher] = []

    def start() -> Watcher:
        w = Watcher(specs, tmp_path / "events.jsonl")
        started.append(w)
        w.wait_for(lambda e: e.get("event") == "cycle")
        return w

    yield start
    for w in started:
        w.stop()
