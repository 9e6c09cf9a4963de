"""The session's local Ray cluster: three simulated GPU nodes of mixed sizes, on 127.0.0.1 with free ports.

Started once per test session by the same supervisor `reconciler up` uses (``reconciler.adapter.localcluster``), with token
auth on, and shut down at the end. Nodes carry the reconciler node label, the pool label ``pool=homelab`` and one
VRAM resource per GPU (``vram_mb_<node>_gpu<i>``, MiB):

- node-a: two 24 GiB GPUs
- node-b: one 12 GiB GPU
- node-c: one 16 GiB GPU

``RAY_ADDRESS`` and ``RAY_AUTH_TOKEN_PATH`` point at it while it runs, so `reconciler.adapter.connect()` and the CLI
find it without arguments.
"""

from __future__ import annotations

import os

# Must precede any import of ray: without it Ray rewrites 127.0.0.1 addresses to the host's IP and the connection
# hangs on a machine whose only usable interface is loopback.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import settings

# Every property test draws from a fixed seed, keeps no example database and has no per-example deadline: CI sees the
# same examples on every run on any machine, so a failure is a bug (raise max_examples locally to search wider).
settings.register_profile("reproducible", derandomize=True, database=None, deadline=None)
settings.load_profile("reproducible")

GIB = 1 << 30

# (node, GPU sizes): what the session cluster simulates. Specs that test against it use this inventory.
NODES: tuple[tuple[str, tuple[int, ...]], ...] = (
    ("node-a", (24 * GIB, 24 * GIB)),
    ("node-b", (12 * GIB,)),
    ("node-c", (16 * GIB,)),
)
POOL_LABELS = {"pool": "homelab"}


@dataclass(frozen=True)
class LocalRayCluster:
    address: str  # GCS HOST:PORT
    dashboard_url: str
    http_url: str  # Serve's HTTP proxy
    auth_token_path: str
    state_file: Path
    nodes: tuple[tuple[str, tuple[int, ...]], ...]


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory):
    from reconciler.adapter import localcluster
    from reconciler.naming import GPU_SOURCE_INVENTORY, GPU_SOURCE_LABEL
    from reconciler.observed import NODE_NAME_LABEL

    spec = localcluster.ClusterSpec(
        nodes=[
            localcluster.NodeSpec(
                name=name,
                labels={**POOL_LABELS, NODE_NAME_LABEL: name, GPU_SOURCE_LABEL: GPU_SOURCE_INVENTORY},
                num_gpus=len(gpus),
                resources=localcluster.node_resources(name, list(gpus)),
            )
            for name, gpus in NODES
        ]
    )
    state_file = tmp_path_factory.mktemp("ray-cluster") / "cluster.json"
    state = localcluster.start(spec, state_file, timeout=180)
    saved = {k: os.environ.get(k) for k in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH", "RAY_AUTH_MODE")}
    os.environ["RAY_ADDRESS"] = state["address"]
    os.environ["RAY_AUTH_TOKEN_PATH"] = state["auth_token_path"]
    os.environ["RAY_AUTH_MODE"] = "token"
    try:
        yield LocalRayCluster(
            address=state["address"],
            dashboard_url=state["dashboard_url"],
            http_url=state["http_url"],
            auth_token_path=state["auth_token_path"],
            state_file=state_file,
            nodes=NODES,
        )
    finally:
        try:
            import ray

            if ray.is_initialized() and ray.get_runtime_context().gcs_address == state["address"]:
                ray.shutdown()
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            localcluster.stop_pid(state["pid"])


# The suite's process imports vLLM, and through it torch and triton. Once every result is known, the interpreter's own
# teardown of those native extensions once ended the process with SIGSEGV (exit 139) after pytest had reported every
# test passed. Under scripts/test.sh (what CI runs) the process leaves with pytest's own status as soon as pytest has
# finished (its report written, its fixtures, Ray clusters included, torn down), without that teardown.
_EXIT_STATUS = pytest.StashKey[int]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    session.config.stash[_EXIT_STATUS] = int(exitstatus)


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config):
    if os.environ.get("RECONCILER_TEST_EXIT_AT_ONCE") == "1" and _EXIT_STATUS in config.stash:
        import sys

        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(config.stash[_EXIT_STATUS])
