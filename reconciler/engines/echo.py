"""The `echo` engine: an OpenAI-compatible responder with no model behind it.

What it is for: control-plane tests and capacity drills. It loads nothing and uses no GPU memory, so a CPU box can run
dozens of "replicas" placed exactly as real ones would be, and every replica can say where it runs (`info()`), which
is how the tests check placement. What it answers: completions and chat completions repeat the prompt (or the last
user message); embeddings are a deterministic unit vector derived from the text; `models` lists the model.

Engine args (all optional, for drills):
- ``startup_delay_s``: seconds the constructor sleeps, to stand in for a model load;
- ``startup_error``: a message the constructor raises, to rehearse a replica that fails at load (e.g. "out of memory");
- ``startup_error_while_exists``: a path; ``startup_error`` is raised only while it exists on the replica's node, to
  rehearse a failure that gets fixed (a driver reinstalled, a disk freed) and the retry that follows;
- ``dimensions``: the embedding size (default 8);
- ``stream_delay_s``: seconds between streamed chunks (default 0), to hold a stream open long enough to watch it;
- ``answer_delay_s``: seconds every completion, chat or embedding request takes before it is answered (default 0),
  to stand in for generation time, so that concurrent clients build up requests in flight as a real engine's do;
- ``allocate_bytes``: bytes the replica fills and holds for its lifetime, to stand in for a model's weights and
  cache (its measured memory grows by that much; a figure beyond its `vram` rehearses an overrun).

With ``stream: true`` completions and chat stream one chunk per word, in vLLM's chunk format (``include_usage``
honoured); ``running_requests()`` counts the streams in progress, so a test can see a cancelled one go.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import time
from typing import Any, AsyncIterator

from reconciler.engines import EngineConfig

ENDPOINTS = ("completions", "chat/completions", "embeddings", "models")


class EchoStartupError(RuntimeError):
    """Raised at start when the `startup_error` engine arg asks for it."""


class EchoEngine:
    def __init__(self, config: dict[str, Any]) -> None:
        self.config = EngineConfig.from_dict(config)
        args = self.config.engine_args
        if args.get("startup_delay_s"):
            time.sleep(float(args["startup_delay_s"]))
        fixed = args.get("startup_error_while_exists") and not os.path.exists(str(args["startup_error_while_exists"]))
        if args.get("startup_error") and not fixed:
            raise EchoStartupError(str(args["startup_error"]))
        # Written, not just reserved: untouched pages are not resident and would not show in what is measured.
        self.ballast = b"\x5a" * int(args.get("allocate_bytes", 0))
        self.dimensions = int(args.get("dimensions", 8))
        self.stream_delay_s = float(args.get("stream_delay_s", 0))
        self.answer_delay_s = float(args.get("answer_delay_s", 0))
        self.started = time.time()
        self.running = 0

    async def openai(self, endpoint: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        created = int(time.time())
        name = self.config.model
        if endpoint == "models":
            return 200, {"object": "list", "data": [{"id": name, "object": "model", "owned_by": "reconciler-echo"}]}
        if self.answer_delay_s and not body.get("stream"):
            await asyncio.sleep(self.answer_delay_s)
        if endpoint == "completions":
            prompt = body.get("prompt", "")
            text = prompt if isinstance(prompt, str) else " ".join(map(str, prompt))
            return 200, {
                "id": f"cmpl-echo-{created}",
                "object": "text_completion",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "text": text, "finish_reason": "stop", "logprobs": None}],
                "usage": _usage(text, text),
            }
        if endpoint == "chat/completions":
            messages = body.get("messages") or []
            users = [m for m in messages if isinstance(m, dict) and m.get("role") == "user"]
            text = str(users[-1].get("content", "")) if users else ""
            return 200, {
                "id": f"chatcmpl-echo-{created}",
                "object": "chat.completion",
                "created": created,
                "model": name,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": _usage(text, text),
            }
        if endpoint == "embeddings":
            inputs = body.get("input", "")
            items = [inputs] if isinstance(inputs, str) else list(inputs)
            data = [
                {"object": "embedding", "index": i, "embedding": _embedding(str(text), self.dimensions)}
                for i, text in enumerate(items)
            ]
            return 200, {"object": "list", "model": name, "data": data, "usage": _usage(" ".join(map(str, items)), "")}
        return 404, {"error": {"message": f"unknown endpoint {endpoint!r}", "type": "invalid_request_error"}}

    async def stream(self, endpoint: str, body: dict[str, Any]) -> AsyncIterator[bytes]:
        """Server-sent events for a streamed completion or chat: one word a chunk, then usage if asked, then DONE."""
        status, whole = await self.openai(endpoint, {**body, "stream": False})
        if status != 200:
            yield _sse(whole)
            yield b"data: [DONE]\n\n"
            return
        chat = endpoint == "chat/completions"
        choice = whole["choices"][0]
        text = choice["message"]["content"] if chat else choice["text"]
        base = {"id": whole["id"], "object": "chat.completion.chunk" if chat else "text_completion",
                "created": whole["created"], "model": whole["model"]}
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        words = text.split(" ")
        self.running += 1
        try:
            if chat:
                yield _sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                                 "logprobs": None, "finish_reason": None}]})
            for i, word in enumerate(words):
                if self.stream_delay_s:
                    await asyncio.sleep(self.stream_delay_s)
                piece = word if i == 0 else " " + word
                last = i == len(words) - 1
                finish = "stop" if last else None
                if chat:
                    delta = {"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": finish}
                else:
                    delta = {"index": 0, "text": piece, "logprobs": None, "finish_reason": finish}
                yield _sse({**base, "choices": [delta]})
            if include_usage:
                yield _sse({**base, "choices": [], "usage": whole["usage"]})
            yield b"data: [DONE]\n\n"
        finally:
            self.running -= 1

    def running_requests(self) -> int:
        return self.running

    def http_app(self) -> Any:
        from reconciler.engines.echo_http import build_app

        return build_app(self)

    async def info(self) -> dict[str, Any]:
        import ray  # inside the replica only: keeps this module importable without a cluster

        context = ray.get_runtime_context()
        return {
            "model": self.config.model,
            "replica": self.config.replica,
            "node": self.config.node,
            "gpus": list(self.config.gpus),
            "ray_node_id": context.get_node_id(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
            "engine": "echo",
        }

    def check_health(self) -> None:
        return None


def _sse(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"


def _usage(prompt: str, completion: str) -> dict[str, int]:
    p, c = len(prompt.split()), len(completion.split())
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def _embedding(text: str, dimensions: int) -> list[float]:
    digest = hashlib.sha256(text.encode()).digest()
    raw = [(digest[i % len(digest)] - 127.5) / 127.5 for i in range(dimensions)]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [x / norm for x in raw]
