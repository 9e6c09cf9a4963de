"""Engines: the Ray Serve deployments that run one placed replica of a model.

The contract every engine deployment class keeps (the per-model router and the executor rely on nothing else):

- ``__init__(self, config: dict)``: ``config`` is ``EngineConfig.to_dict()``. The replica is already pinned by the
  executor to its node and GPU(s) (Ray resources and ``CUDA_VISIBLE_DEVICES``); the engine must keep its memory use
  within ``vram_bytes`` per GPU.
- ``async def openai(self, endpoint: str, body: dict) -> tuple[int, dict]``: answer one OpenAI-compatible request;
  ``endpoint`` is ``"completions"``, ``"chat/completions"``, ``"embeddings"`` or ``"models"``. Returns the HTTP status
  and the JSON body (an OpenAI-style ``{"error": {...}}`` body for failures).
- ``async def info(self) -> dict``: who and where the replica is, as the replica itself sees it: ``model``,
  ``replica``, ``node`` (spec name), ``ray_node_id``, ``cuda_visible_devices``, ``pid``, ``engine``.
- ``check_health(self)``: Serve's health check; raises when the engine is dead.
- ``http_app(self)`` (may be async): the engine's own OpenAI-compatible ASGI app (``/v1/...``, streaming as Server-Sent
  Events, a client disconnect cancels the request). The replica serves it on its own endpoint for the gateway.
- ``running_requests(self) -> int``: requests the engine holds right now.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str
    replica: int
    engine: str  # "vllm" | "echo"
    source: str
    vram_bytes: int  # planned VRAM per GPU of this replica
    gpu_memory_bytes: int  # total memory of the (smallest) GPU it runs on, to derive vLLM's utilisation fraction
    tensor_parallel: int
    node: str
    gpus: tuple[int, ...]
    engine_args: dict[str, Any] = field(default_factory=dict)
    sizing: dict[str, Any] | None = None  # the plan's estimate (sizing.estimate_to_json): the terms inside vram_bytes

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["gpus"] = list(self.gpus)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EngineConfig":
        return cls(**{**data, "gpus": tuple(data["gpus"])})
