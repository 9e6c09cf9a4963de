"""How reconciler names what it creates on a Ray cluster: Serve applications and per-GPU VRAM resources.

Pure: the executor, observe, `reconciler up` and `reconciler node-resources` all spell names through here, so a
resource that a node advertises is exactly the one a replica asks for.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum

from reconciler.desired import short_hash
from reconciler.plan import Location

APP_PREFIX = "reconciler--"
MANAGED_BY = "reconciler"  # the `managed_by` marker in the args of every application reconciler creates
IMPORT_PATH = "reconciler.engines.app:build"
REPLICA_DEPLOYMENT = "Replica"
ROUTER_DEPLOYMENT = "Router"
KV_NAMESPACE = "reconciler"  # reconciler's namespace in Ray's internal KV
ROUTE_TABLE_KEY = b"gateway/route-table"  # the gateways' route table (keys as hashes): gateways and routers read it


class AppKind(StrEnum):
    """The ``kind`` in the args of every application reconciler creates."""

    REPLICA = "replica"  # one placed replica of a model
    ROUTER = "router"  # a model's route, forwarding to its replicas

# Labels of nodes that `reconciler up` simulates: observe takes their GPUs from the pool inventory without asking
# NVML, which has nothing to say about them.
GPU_SOURCE_LABEL = "reconciler.io/gpu-source"
GPU_SOURCE_INVENTORY = "inventory"

MIB = 1 << 20


def sanitise(name: str) -> str:
    """A node name as it may appear inside a Ray resource name (letters, digits, `_`, `-`, `.`: DNS names fit)."""
    clean = re.sub(r"[^A-Za-z0-9_.-]", "_", name)
    # Two names that only differ in the characters replaced must not share resources.
    return clean if clean == name else f"{clean}_{short_hash(name, 6)}"


def vram_resource(node: str, gpu: int) -> str:
    return f"vram_mb_{sanitise(node)}_gpu{gpu}"


def vram_mib(memory: int) -> int:
    """Whole MiB a replica asks for: rounded up, so a replica never gets less than it was planned with."""
    return -(-memory // MIB)


def capacity_mib(memory: int) -> int:
    """Whole MiB a GPU advertises: rounded down, so Ray never admits more than the GPU has."""
    return memory // MIB


def node_resources(node: str, gpu_memory: list[int], reserve: int = 0) -> dict[str, float]:
    """One VRAM resource per GPU, in MiB, named after the node: Ray then refuses over-commit GPU by GPU."""
    return {vram_resource(node, i): float(capacity_mib(max(0, memory - reserve))) for i, memory in enumerate(gpu_memory)}


def ray_start_args(node: str, gpu_memory: list[int], *, reserve: int = 0, labels: dict[str, str]) -> list[str]:
    """The `ray start` flags that make a node advertise its GPUs as reconciler asks for them (``labels`` must hold
    the node's name label). No argument contains a space, so the list can be joined into a shell command."""
    resources = {k: int(v) for k, v in node_resources(node, gpu_memory, reserve).items()}
    return [
        f"--num-gpus={len(gpu_memory)}",
        f"--resources={json.dumps(resources, separators=(',', ':'))}",
        f"--labels={','.join(f'{k}={v}' for k, v in sorted(labels.items()))}",
    ]


def generation(restart_hash: str, location: Location) -> str:
    """Differs whenever the replica must be started anew (new spec or new GPU), so old and new can coexist."""
    return short_hash({"restart": restart_hash, "node": location.node, "gpus": list(location.gpus)}, 8)


def replica_app(model: str, replica: int, gen: str) -> str:
    return f"{APP_PREFIX}{model}--r{replica}--{gen}"


def router_app(model: str) -> str:
    return f"{APP_PREFIX}{model}"


def cuda_visible_devices(gpus: tuple[int, ...]) -> str:
    return ",".join(str(i) for i in gpus)


JOB_SUBMISSION_PREFIX = "reconciler--job--"
JOB_METADATA = "reconciler.io/job"  # the job's name, in the metadata of every run reconciler submits


def job_submission_id(job: str, run: int) -> str:
    """One id per run: submitting a run twice (an apply interrupted and repeated) is refused by Ray, not doubled."""
    return f"{JOB_SUBMISSION_PREFIX}{job}--{run}"
