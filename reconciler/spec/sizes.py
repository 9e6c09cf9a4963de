"""Sizing the models of a spec directory from their files: `vram: auto` resolved, fixed figures checked.

For every vLLM model whose files can be read (``spec.modelfiles``), the estimate (``sizing.estimate``) is kept with
the model; a `vram: auto` model takes its per-GPU figure from it. A fixed `vram` below the weights alone is an error,
below the weights plus one max_model_len sequence of KV cache a warning (vLLM would refuse to start). A `vram: auto`
model whose files can't be read is an error saying what was tried; a fixed one is left as written.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from reconciler.desired import Engine
from reconciler.quantity import format_bytes
from reconciler.settings import SizingSettings
from reconciler.sizing.estimate import Estimate, estimate
from reconciler.spec.diagnostics import Diagnostic
from reconciler.spec.fields import AUTO
from reconciler.spec.modelfiles import Unreadable, read_facts
from reconciler.spec.parsed import Parsed

GiB = 1 << 30


@dataclass(frozen=True, slots=True)
class Sizes:
    estimates: dict[str, Estimate]  # by model name: every model whose files could be read
    unreadable: dict[str, str]  # by model name: what was tried, for `reconciler estimate`
    diagnostics: tuple[Diagnostic, ...]


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def _written(doc: Parsed) -> str:
    spec = doc.source.data.get("spec") if isinstance(doc.source.data, dict) else None
    value = spec.get("vram") if isinstance(spec, dict) else None
    return str(value) if value is not None else format_bytes(doc.spec.vram)


def engine_args(doc: Parsed) -> dict:
    """engineArgs as vLLM reads them: `max-model-len` and `max_model_len` alike."""
    return {str(k).replace("-", "_"): v for k, v in doc.spec.engine_args.items()}


def size_models(models: tuple[Parsed, ...], *, base_dir: Path | None,
                settings: SizingSettings = SizingSettings()) -> Sizes:
    estimates: dict[str, Estimate] = {}
    unreadable: dict[str, str] = {}
    problems: list[Diagnostic] = []
    for doc in models:
        spec = doc.spec
        auto = spec.vram == AUTO
        if spec.engine != str(Engine.VLLM):
            if auto:
                problems.append(doc.error(doc.at("spec", "vram"), f"vram: auto sizes a model from its files, and the "
                                          f"{spec.engine} engine loads none: write a figure such as 1Gi"))
            continue
        try:
            facts = read_facts(spec.source, base_dir=base_dir, hub=auto)
            found = estimate(facts, engine_args=engine_args(doc), tensor_parallel=spec.tensor_parallel,
                             kv_cache_tokens=spec.kv_cache_tokens, settings=settings)
        except (Unreadable, ValueError, TypeError) as exc:
            unreadable[doc.name] = str(exc)
            if auto:
                problems.append(doc.error(doc.at("spec", "vram"),
                                          f"vram: auto can't size this model: {exc}; write a figure instead"))
            continue
        estimates[doc.name] = found
        if auto:
            continue
        tp = spec.tensor_parallel
        if found.weights_per_gpu > spec.vram:
            problems.append(doc.error(doc.at("spec", "vram"), f"too-small: vram {_written(doc)}, but the weights "
                                      f"alone need {_gib(found.weights_per_gpu)} per GPU at tensorParallel {tp}"))
        elif found.weights_per_gpu + found.sequence_per_gpu > spec.vram:
            need = found.weights_per_gpu + found.sequence_per_gpu
            problems.append(doc.warning(
                doc.at("spec", "vram"),
                f"vram {_written(doc)} holds the weights ({_gib(found.weights_per_gpu)} per GPU) but not one "
                f"max_model_len sequence of {found.max_model_len} tokens besides ({_gib(found.sequence_per_gpu)} of "
                f"KV cache per GPU at tensorParallel {tp}): vLLM will refuse to start; give it more than "
                f"{_gib(need)} or lower engineArgs.max_model_len"))
    return Sizes(estimates, unreadable, tuple(problems))
