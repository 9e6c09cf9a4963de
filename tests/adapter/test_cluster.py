"""The adapter against the session's real local Ray cluster: what it reads of nodes, GPUs and Serve, and the GCS
key-value store the apply lock lives in."""

from __future__ import annotations

import uuid

import pytest

from reconciler.desired import DesiredState, GpuSpec, InventoryNode, Pool

pytestmark = pytest.mark.ray


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    from reconciler.adapter import connect

    with connect(ray_cluster.address) as connected:
        yield connected


def inventory(ray_cluster) -> DesiredState:
    nodes = tuple(InventoryNode(name, tuple(GpuSpec(f"GPU {i}", memory) for i, memory in enumerate(gpus)))
                  for name, gpus in ray_cluster.nodes)
    return DesiredState(pools=(Pool(name="homelab", inventory=nodes),))


def test_nodes_without_nvml_keep_their_inventory_gpus(cluster, ray_cluster):
    """The NVML probe really runs on every node (a Ray task pinned there); none has NVML here, so each node keeps
    the GPUs the pool's inventory gives it."""
    from reconciler.adapter.observation import RayNode, build_nodes
    from reconciler.planner.runtime import assumed_gpus

    nodes = [RayNode(n.node_id, n.alive, {k: v for k, v in n.labels.items() if k != "reconciler.io/gpu-source"},
                     n.resources, n.hostname) for n in cluster.ray_nodes()]
    probes = cluster._probes(nodes, {})
    assert set(probes) == {n.node_id for n in nodes if n.alive}
    assert all(p["available"] is False and p["error"] for p in probes.values())
    observed = build_nodes(nodes, probes, assumed_gpus(inventory(ray_cluster)))
    assert {(n.name, tuple(g.memory >> 30 for g in n.gpus), n.simulated) for n in observed} == {
        ("node-a", (24, 24), True), ("node-b", (12,), True), ("node-c", (16,), True)}


def test_observe_names_every_node_with_the_gpus_its_plan_assumed(cluster, ray_cluster):
    desired = inventory(ray_cluster)
    observed = cluster.observe(desired)
    assert {(n.name, tuple(g.name for g in n.gpus)) for n in observed.nodes} == {
        ("node-a", ("GPU 0", "GPU 1")), ("node-b", ("GPU 0",)), ("node-c", ("GPU 0",))}
    # A saved plan observes with the inventory it carries: the same state, so the same fingerprint.
    from reconciler.planner.runtime import assumed_gpus

    assert cluster.observe(assumed=assumed_gpus(desired)).fingerprint == observed.fingerprint


def test_the_serve_proxy_url_is_read_from_serve(cluster, ray_cluster):
    assert cluster.http_url == ray_cluster.http_url


def test_the_gcs_store_creates_a_key_once(cluster):
    from reconciler.adapter.kv import RayKV

    cluster.ray_nodes()  # connects the driver
    kv, key = RayKV(), f"test/{uuid.uuid4().hex}"
    try:
        assert kv.put_if_absent(key, b"first") is True
        assert kv.put_if_absent(key, b"second") is False  # the lease's takeover race is decided here
        assert kv.get(key) == b"first"
        assert kv.keys("test/") and key in kv.keys("test/")
    finally:
        kv.delete(key)
    assert kv.get(key) is None


def test_a_cluster_is_gone_only_when_its_gcs_port_refuses_connections(cluster):
    import socket

    from reconciler.adapter.cluster import Cluster, Endpoint

    assert not cluster.gone()
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there now
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    stopped = Cluster(Endpoint(address=f"127.0.0.1:{port}", token=None))
    try:
        assert stopped.gone()
    finally:
        stopped.close()


def test_the_bounded_node_table_reads_what_ray_nodes_reads(cluster):
    """The node table comes from the driver's GCS client with a timeout (``ray.nodes()`` has none); its rows carry the
    same values as ``ray.nodes()``'s under every key the package reads."""
    import ray

    from reconciler.adapter.nodetable import node_table

    cluster.ray_nodes()  # the driver is connected
    keys = ("NodeID", "Alive", "NodeManagerAddress", "NodeManagerHostname", "NodeName", "Resources", "Labels",
            "DeathReasonMessage")
    ours = sorted(({k: row[k] for k in keys} for row in node_table(timeout=5)), key=lambda row: row["NodeID"])
    theirs = sorted(({k: row.get(k, "") for k in keys} for row in ray.nodes()), key=lambda row: row["NodeID"])
    assert ours == theirs
    assert len(ours) >= 3


def test_many_calls_are_waited_for_together_and_the_silent_ones_cancelled(cluster):
    """Probes and memory readings go to every node at once and are waited for together: three nodes that never answer
    cost the timeout once, not once each (9 s here), and their tasks are cancelled, not left running."""
    import time

    import ray

    from reconciler.adapter.reach import gathered

    cluster.ray_nodes()  # the driver is connected

    @ray.remote(num_cpus=0, max_retries=0)
    def answer(value):
        if value is None:
            time.sleep(120)  # a node that never answers
        if value == "broken":
            raise RuntimeError("NVML: driver/library version mismatch")
        return value

    refs = {"quick": answer.remote(1), "broken": answer.remote("broken"),
            **{f"silent-{n}": answer.remote(None) for n in range(3)}}
    ray.get(refs["quick"], timeout=60)  # the workers are up: what follows measures the wait, not their start
    began = time.monotonic()
    found, failed = gathered(ray, refs, timeout=3, force=True)
    assert time.monotonic() - began < 8
    assert found == {"quick": 1}
    assert {key: why for key, why in failed.items() if key.startswith("silent")} == {
        f"silent-{n}": "no answer within 3 s" for n in range(3)}
    assert "NVML: driver/library version mismatch" in failed["broken"]
    for n in range(3):
        with pytest.raises(ray.exceptions.TaskCancelledError):
            ray.get(refs[f"silent-{n}"], timeout=30)
