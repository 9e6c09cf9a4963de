"""`reconciler status` as people read it: pinned by a golden file (`UPDATE_GOLDEN=1 pytest tests/render` rewrites it)."""

from __future__ import annotations

from pathlib import Path

from golden import check as check_golden

from reconciler.observed import ObservedGpu, ObservedNode, ObservedReplica, ObservedState, ReplicaState
from reconciler.render.status import render_status

GOLDEN = Path(__file__).parent / "golden"
GiB = 1 << 30


def _replica(model: str, replica: int, node: str, gpu: int, vram: int, state=ReplicaState.RUNNING, message=""):
    return ObservedReplica(model, replica, node, (gpu,), vram, "r", "c", state=state, message=message,
                           app=f"reconciler--{model}--r{replica}--x")


def test_status_golden():
    observed = ObservedState(
        nodes=(
            ObservedNode("node-a", labels=(("pool", "homelab"),), gpus=(
                ObservedGpu(0, "RTX 3090", 24 * GiB, foreign=2 * GiB), ObservedGpu(1, "RTX 3090", 24 * GiB))),
            ObservedNode("node-b", gpus=(ObservedGpu(0, "RTX 3060", 12 * GiB),)),
        ),
        replicas=(
            _replica("chat", 0, "node-a", 0, 9 * GiB),
            _replica("embeddings", 0, "node-a", 0, 2 * GiB),
            _replica("chat", 1, "node-a", 1, 9 * GiB, ReplicaState.STARTING),
            _replica("coder", 0, "node-b", 0, 10 * GiB, ReplicaState.PENDING, "no room on its GPU"),
        ),
    )
    reserves = {("node-a", 0): GiB, ("node-a", 1): GiB, ("node-b", 0): GiB}
    out = render_status(observed, routes=["/chat", "/embeddings", "/coder"], http_url="http://127.0.0.1:8000",
                        gateway_url="http://127.0.0.1:8001/v1", reserves=reserves)
    check_golden(GOLDEN / "status.txt", out)


def test_free_memory_leaves_the_pool_reserve_out():
    observed = ObservedState(nodes=(ObservedNode("n", gpus=(ObservedGpu(0, "A10", 24 * GiB),)),),
                             replicas=(_replica("m", 0, "n", 0, 20 * GiB),))
    assert "1 GiB reserve, 3 GiB free of 24 GiB" in render_status(observed, reserves={("n", 0): GiB})
    assert "foreign, 4 GiB free of 24 GiB" in render_status(observed)
