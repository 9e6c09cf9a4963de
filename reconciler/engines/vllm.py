"""The ``vllm`` engine: one placed replica of a model, served by vLLM's async engine inside a Ray Serve replica.

``VllmEngine`` is a plain class (the executor wraps it with ``serve.deployment``). Its constructor starts vLLM's
``AsyncLLM`` (an engine-core process next to the replica) and blocks until the model is loaded, so a replica whose
model can't load, whose engine args are wrong or whose memory budget is impossible fails to start with the reason.
Requests go through vLLM's own OpenAI serving layer, so request fields, validation and error bodies are vLLM's.

Memory is bounded by the plan, not by vLLM's default of 92% of the device (``derive_memory``): the KV cache is given
in bytes, ``vram - weights - activations - overhead`` from the plan's estimate (``EngineConfig.sizing``; made from
the model's files here when the plan has none), on CUDA as on CPU, and a budget with less than one max_model_len
sequence of KV cache is refused with the numbers. ``kv_cache_memory_bytes`` in engineArgs is honoured when it fits.

The pure parts (memory rule, engine-arg check, source resolution) live in ``engines.vllm_rules`` and import nothing
from vLLM; vLLM itself is imported only when an engine starts.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import types
from typing import Any

from reconciler.engines import EngineConfig

from reconciler.engines.vllm_rules import (
    ENDPOINTS,
    EngineArgsError,
    check_engine_args,
    derive_memory,
    engine_sizing,
    resolve_source,
)


# ---------------------------------------------------------------------------------------------------- the engine


def _prepare_process(device: str) -> None:
    """Environment for vLLM in this replica process (inherited by the engine-core process it spawns)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    if device == "cpu":
        # One engine-core process running the model itself (no extra worker process), and one OpenMP thread unless
        # the operator says otherwise: several replicas share the host's cores, and oversubscribed OpenMP threads
        # made generation ~20x slower in measurements. The executor can raise it through the replica's env.
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")


def _detect_device() -> str:
    from vllm.platforms import current_platform

    if current_platform.is_cpu():
        return "cpu"
    return str(current_platform.device_type or "cuda")


def _gpu_total_memory(tensor_parallel: int, fallback: int) -> int:
    """The smallest total memory among this replica's GPUs, read through NVML (no CUDA context is created)."""
    from vllm.platforms import current_platform

    try:
        return min(current_platform.get_device_total_memory(i) for i in range(tensor_parallel))
    except Exception:  # a platform without the query: the plan's figure (from the inventory or NVML) stands in
        return fallback


def _known_engine_args() -> set[str]:
    import dataclasses

    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs

    return {f.name for f in dataclasses.fields(AsyncEngineArgs)} | {f.name for f in dataclasses.fields(BaseFrontendArgs)}


# Middleware of vLLM's app that serves a public server, not a replica whose only client is the gateway: browsers'
# CORS, per-request HTTP metrics (the gateway counts every request itself; nothing reads the replica's), elastic
# expert-parallel scaling (not used by a placed replica). Each runs on every request, in the replica's CPU budget.
_PUBLIC_MIDDLEWARE = ("CORSMiddleware", "PrometheusInstrumentatorMiddleware", "ScalingMiddleware")


def _strip_public_middleware(app: Any) -> None:
    """Drop ``_PUBLIC_MIDDLEWARE`` from vLLM's app. vLLM's build may have assembled the middleware stack already (its
    SageMaker bootstrap does): it is dropped too, and Starlette assembles it again on the first request."""
    app.user_middleware = [m for m in app.user_middleware if m.cls.__name__ not in _PUBLIC_MIDDLEWARE]
    app.middleware_stack = None


class VllmEngine:
    """One replica of a model on vLLM. ``config`` is ``EngineConfig.to_dict()``; see the engine contract."""

    def __init__(self, config: dict):
        self.config = EngineConfig.from_dict(config)
        self._serving_state = None
        self._app = None
        self._serving_lock: asyncio.Lock | None = None
        self._engine = None
        self.device = "unknown"

        base_dir = os.environ.get("RECONCILER_SOURCE_ROOT") or os.getcwd()
        self.model_path, local_dir = resolve_source(self.config.source, base_dir=base_dir)

        from vllm.platforms import current_platform  # noqa: F401  (platform detection before any env tweak)

        self.device = _detect_device()
        _prepare_process(self.device)

        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.entrypoints.launchers.cli_args import BaseFrontendArgs, FrontendArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM
        from vllm.v1.executor.abstract import Executor

        user_args = check_engine_args(self.config.engine_args, known=_known_engine_args(), model=self.config.model)
        frontend_names = {f.name for f in _dataclass_fields(BaseFrontendArgs)}
        frontend_kwargs = {k: v for k, v in user_args.items() if k in frontend_names}
        engine_kwargs = {k: v for k, v in user_args.items() if k not in frontend_names}

        sizing = engine_sizing(planned=self.config.sizing, source=self.config.source, local_dir=local_dir,
                               engine_args=user_args, tensor_parallel=self.config.tensor_parallel)
        self.memory = derive_memory(
            device=self.device,
            vram_bytes=self.config.vram_bytes,
            gpu_memory_bytes=(
                self.config.gpu_memory_bytes
                if self.device == "cpu"
                else _gpu_total_memory(self.config.tensor_parallel, self.config.gpu_memory_bytes)
            ),
            sizing=sizing,
            kv_cache_memory_bytes=_optional_int(engine_kwargs.pop("kv_cache_memory_bytes", None),
                                                "kv_cache_memory_bytes", self.config.model),
        )
        defaults: dict[str, Any] = {"disable_log_stats": True}
        if self.config.tensor_parallel > 1:
            # The replica's GPUs are all on this node and named by CUDA_VISIBLE_DEVICES: vLLM's own worker processes
            # use exactly those, where its Ray backend would schedule workers of its own outside the plan.
            defaults["distributed_executor_backend"] = "mp"
        if self.device == "cpu":
            # Eager mode: torch.compile on CPU costs minutes at start for little gain on the models a CPU serves.
            defaults["enforce_eager"] = True
            if self.config.tensor_parallel == 1:
                defaults["distributed_executor_backend"] = "uni"
        kwargs = {
            **defaults,
            **engine_kwargs,
            **self.memory.engine_kwargs(),
            "model": self.model_path,
            "served_model_name": [self.config.model],
            "tensor_parallel_size": self.config.tensor_parallel,
        }
        try:
            engine_args = AsyncEngineArgs(**_normalise_config_dicts(kwargs))
            vllm_config = engine_args.create_engine_config(usage_context=UsageContext.OPENAI_API_SERVER)
        except Exception as exc:
            # vLLM's config errors can hold unpicklable pydantic internals: re-raise as plain text so the reason
            # survives the trip to the Serve controller and the executor's report.
            raise EngineArgsError(
                f"vLLM rejected the configuration of model {self.config.model!r}: {type(exc).__name__}: {exc}"
            ) from None
        self._engine_args = engine_args
        self._frontend_args = FrontendArgs(**frontend_kwargs)
        self._engine = AsyncLLM(
            vllm_config=vllm_config,
            executor_class=Executor.get_class(vllm_config),
            log_stats=not engine_args.disable_log_stats,
            log_requests=False,
            usage_context=UsageContext.OPENAI_API_SERVER,
        )
        self.max_model_len = vllm_config.model_config.max_model_len
        self.kv_cache_bytes = vllm_config.cache_config.kv_cache_memory_bytes
        try:
            loop = asyncio.get_running_loop()  # under Serve the constructor runs on the loop requests will use
        except RuntimeError:
            loop = None
        if loop is not None:
            # Build the serving layer now rather than on the first request; a failure here is retried by it.
            warmup = loop.create_task(self._serving())
            warmup.add_done_callback(lambda task: task.cancelled() or task.exception())

    # -------------------------------------------------------------------------------------------------- contract

    async def openai(self, endpoint: str, body: dict) -> tuple[int, dict]:
        endpoint = endpoint.strip("/").removeprefix("v1/")
        if endpoint not in ENDPOINTS:
            return _error(404, f"unknown endpoint /v1/{endpoint}; this replica serves {', '.join(ENDPOINTS)}",
                          "NotFoundError")
        state = await self._serving()
        if endpoint == "models":
            models = await state.openai_serving_models.show_available_models()
            return 200, models.model_dump(mode="json")
        if not isinstance(body, dict):
            return _error(400, "the request body must be a JSON object")
        if body.get("stream"):
            return _error(400, "streaming responses are not supported by this endpoint; send stream=false", param="stream")
        # The router already chose this model; the name in the body is the user's spelling of it.
        body = {**body, "model": self.config.model}
        if endpoint == "embeddings":
            return await self._embeddings(state, body)
        return await self._generate(state, endpoint, body)

    async def info(self) -> dict:
        import ray

        return {
            "model": self.config.model,
            "replica": self.config.replica,
            "node": self.config.node,
            "ray_node_id": ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            "pid": os.getpid(),
            "engine": "vllm",
            "vllm": {
                "device": self.device,
                "model_path": self.model_path,
                "max_model_len": self.max_model_len,
                "gpu_memory_utilization": self.memory.gpu_memory_utilization,
                "kv_cache_memory_bytes": self.kv_cache_bytes,
                "memory_rule": self.memory.rule,
                "tasks": list(await self._engine.get_supported_tasks()),
            },
        }

    def check_health(self) -> None:
        if self._engine is None or self._engine.errored:
            raise RuntimeError(f"vLLM engine of {self.config.model} replica {self.config.replica} is dead")

    def death(self) -> str | None:
        """Why the engine is dead (its process's exit signal or code when known), or None while it lives."""
        engine = self._engine
        if engine is None or not engine.errored:
            return None
        return _death_reason(engine)

    def __del__(self):
        # Serve calls this on graceful replica shutdown: stop the engine-core process now rather than at exit.
        engine = getattr(self, "_engine", None)
        self._engine = None
        if engine is not None and not sys.is_finalizing():
            try:
                engine.shutdown()
            except Exception:  # shutting down anyway; vLLM force-kills what doesn't stop
                pass

    # --------------------------------------------------------------------------------------------------- helpers

    async def _serving(self):
        """vLLM's OpenAI serving objects, built on first use (they need the event loop the requests run on)."""
        if self._serving_state is not None:
            return self._serving_state
        if self._serving_lock is None:
            self._serving_lock = asyncio.Lock()
        async with self._serving_lock:
            if self._serving_state is None:
                import argparse

                from vllm.entrypoints.launchers.api_server.app_state import init_app_state
                from vllm.entrypoints.launchers.app import build_app

                args = argparse.Namespace(**(vars(self._frontend_args) | vars(self._engine_args)))
                tasks = await self._engine.get_supported_tasks()
                # vLLM's own OpenAI app: the replica's HTTP endpoint serves it, and the handle path shares its state.
                app = build_app(args, tasks, self._engine.model_config)
                _strip_public_middleware(app)
                await init_app_state(self._engine, app.state, args, supported_tasks=tasks)
                # vLLM's engine-error handler asks the server it expects to run under to exit; here uvicorn is the
                # replica's, and Serve replaces the replica, so it gets a stand-in to ask (else it fails with 500).
                app.state.server = types.SimpleNamespace(should_exit=False)
                self._app = app
                self._serving_state = app.state
        return self._serving_state

    async def http_app(self):
        """vLLM's own OpenAI server app on this engine (streaming, disconnect aborts the request, vLLM's errors)."""
        await self._serving()
        return self._app

    def running_requests(self) -> int:
        """Requests the engine holds (queued or generating); a cancelled request leaves this count."""
        return int(self._engine.output_processor.get_num_unfinished_requests())

    async def _generate(self, state, endpoint: str, body: dict) -> tuple[int, dict]:
        from pydantic import ValidationError

        if endpoint == "completions":
            from vllm.entrypoints.openai.completion.protocol import CompletionRequest as Request

            serving = getattr(state, "openai_serving_completion", None)
            call = "create_completion"
        else:
            from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest as Request

            serving = getattr(state, "openai_serving_chat", None)
            call = "create_chat_completion"
        if serving is None:
            return _error(400, f"model {self.config.model!r} is not a generative model: /v1/{endpoint} is not "
                               f"available (it serves /v1/embeddings)")
        try:
            request = Request.model_validate(body)
        except ValidationError as exc:
            return _error(400, _validation_message(exc))
        try:
            response = await getattr(serving, call)(request, None)
        except Exception as exc:  # vLLM raises its validation errors (e.g. prompt too long) instead of returning them
            response = _error_response(serving, exc)
        return _as_result(response)

    async def _embeddings(self, state, body: dict) -> tuple[int, dict]:
        from pydantic import TypeAdapter, ValidationError
        from vllm.entrypoints.pooling.embed.protocol import EmbeddingRequest

        serving = getattr(state, "serving_embedding", None)
        if serving is None:
            return _error(400, f"model {self.config.model!r} is not an embedding model: /v1/embeddings is not "
                               f"available (it serves /v1/completions and /v1/chat/completions)")
        try:
            request = TypeAdapter(EmbeddingRequest).validate_python(body)
        except ValidationError as exc:
            return _error(400, _validation_message(exc))
        try:
            response = await serving(request, None)
        except Exception as exc:
            return _as_result(_error_response(serving, exc))
        if hasattr(response, "body"):  # a starlette Response
            return int(response.status_code), json.loads(response.body)
        return _as_result(response)


def _death_reason(engine: Any) -> str:
    import signal

    try:
        codes = engine.engine_core.resources.engine_manager.finished_procs()
    except Exception:  # noqa: BLE001 - an engine without processes of its own: the reason is not known
        codes = {}
    for code in codes.values():
        if code is not None and code < 0:
            try:
                return f"signal {-code} ({signal.Signals(-code).name})"
            except ValueError:
                return f"signal {-code}"
        if code:
            return f"exit code {code}"
    return "the engine reported an error"


def _optional_int(value: Any, name: str, model: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise EngineArgsError(f"invalid engineArgs of model {model!r}: `{name}` must be a number of bytes, "
                              f"got {value!r}") from None


def _dataclass_fields(cls):
    import dataclasses

    return dataclasses.fields(cls)


def _normalise_config_dicts(kwargs: dict[str, Any]) -> dict[str, Any]:
    """Nested config dicts from YAML (e.g. ``compilation_config: {...}``) become vLLM's config objects, as its CLI does."""
    import dataclasses

    from pydantic import TypeAdapter
    from vllm.engine.arg_utils import AsyncEngineArgs

    fields = {f.name: f for f in dataclasses.fields(AsyncEngineArgs)}
    out = dict(kwargs)
    for key, value in kwargs.items():
        field = fields.get(key)
        config_type = _config_dataclass(field.type) if field is not None and isinstance(value, dict) else None
        if config_type is not None:
            out[key] = TypeAdapter(config_type).validate_python(value)
    return out


def _config_dataclass(annotation: Any) -> type | None:
    import dataclasses
    import types
    import typing

    if isinstance(annotation, type) and dataclasses.is_dataclass(annotation):
        return annotation
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _config_dataclass(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if found := _config_dataclass(arg):
                return found
    return None


def _error(status: int, message: str, err_type: str = "BadRequestError", param: str | None = None) -> tuple[int, dict]:
    return status, {"error": {"message": message, "type": err_type, "param": param, "code": status}}


def _validation_message(exc) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err.get("loc", ()) if not re.fullmatch(r"[A-Z]\w*Request", str(p)))
        parts.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
    return "invalid request: " + "; ".join(dict.fromkeys(parts))


def _error_response(serving, exc: Exception):
    from vllm.v1.engine.exceptions import EngineDeadError

    if isinstance(exc, EngineDeadError):
        raise exc
    return serving.create_error_response(exc)


def _as_result(response) -> tuple[int, dict]:
    from vllm.entrypoints.serve.engine.protocol import ErrorResponse

    if isinstance(response, tuple):
        return response
    if isinstance(response, ErrorResponse):
        return int(response.error.code), response.model_dump(mode="json")
    return 200, response.model_dump(mode="json")
