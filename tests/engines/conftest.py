"""Fixtures for the engine tests: the tiny LLaMA, and the session's Ray cluster (tests/conftest.py) for real vLLM.

The vLLM replicas are pinned to one of the session cluster's simulated GPUs through its VRAM resource, the way the
executor pins them, and hold a share of it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import pytest

from reconciler.engines import tinymodel

# Ray reads this when it is first imported: without it, `ray.init(address="127.0.0.1:port")` rewrites loopback to
# the host's IP, where the session cluster (bound to 127.0.0.1) is not listening, and the connection hangs.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

ENGINE_TEST_NODE = "node-b"  # the session cluster's 12 GiB GPU


@dataclass(frozen=True)
class EngineCluster:
    node: str
    gpu_resource: str  # the Ray custom resource standing for that GPU's VRAM, in MiB
    gpu_mib: int


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return tinymodel.build(tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.fixture(scope="module")
def engine_cluster(ray_cluster):
    import ray

    from reconciler.naming import vram_resource

    owns_driver = not ray.is_initialized()
    if owns_driver:
        if ray._private.ray_constants.ENABLE_RAY_CLUSTER:
            pytest.fail("Ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 was set: loopback addresses "
                        "would be rewritten to the host IP (set it in tests/conftest.py)")
        ray.init(address=ray_cluster.address, _node_ip_address="127.0.0.1", logging_level="WARNING",
                 log_to_driver=False)
    try:
        resource = vram_resource(ENGINE_TEST_NODE, 0)
        capacity = int(ray.cluster_resources().get(resource, 0))
        assert capacity > 0, f"the session cluster has no {resource} resource"
        yield EngineCluster(ENGINE_TEST_NODE, resource, capacity)
    finally:
        if owns_driver:
            ray.shutdown()
