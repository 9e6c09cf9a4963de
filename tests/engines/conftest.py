"""Fixtures for the engine tests: the tiny LLaMA, and a Ray cluster with Serve for the real-vLLM tests.

The cluster is the session's shared one when the pytest process is already connected to Ray (its simulated GPUs'
VRAM resources are reused); otherwise a one-node cluster of its own on 127.0.0.1 with a simulated GPU, torn down
when the module's tests end.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass

import pytest

from reconciler.engines import tinymodel

SIM_GPU_RESOURCE = "vram_mb_enginetest_gpu0"
SIM_GPU_MIB = 1024


@dataclass(frozen=True)
class EngineCluster:
    gpu_resource: str  # a Ray custom resource standing for one GPU's VRAM, in MiB
    gpu_mib: int


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return tinymodel.build(tmp_path_factory.mktemp("models") / "tiny-llama")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _shared_gpu_resource(need_mib: int) -> tuple[str, int] | None:
    import ray

    for name, amount in sorted(ray.cluster_resources().items()):
        if name.startswith("vram_mb_") and amount >= need_mib:
            return name, int(amount)
    return None


@pytest.fixture(scope="module")
def engine_cluster():
    import ray
    from ray import serve

    if ray.is_initialized():
        shared = _shared_gpu_resource(need_mib=768)
        if shared is None:
            pytest.fail("the session's Ray cluster has no simulated GPU with 768 MiB of VRAM resource")
        yield EngineCluster(*shared)
        return

    from ray.cluster_utils import Cluster

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    previous_auth = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"  # a throwaway cluster, reachable on loopback only
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "node_ip_address": "127.0.0.1",
            "gcs_server_port": _free_port(),
            "include_dashboard": False,
            "num_cpus": 4,
            "num_gpus": 0,
            "resources": {SIM_GPU_RESOURCE: SIM_GPU_MIB},
            "object_store_memory": 80 * 1024 * 1024,
        },
    )
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        serve.start(http_options={"host": "127.0.0.1", "port": _free_port()})
        yield EngineCluster(SIM_GPU_RESOURCE, SIM_GPU_MIB)
    finally:
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
            cluster.shutdown()
            if previous_auth is None:
                os.environ.pop("RAY_AUTH_MODE", None)
            else:
                os.environ["RAY_AUTH_MODE"] = previous_auth
