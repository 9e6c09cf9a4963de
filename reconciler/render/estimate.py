"""`reconciler estimate`: how each model's memory figure was reached, as text or as the JSON interface."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from reconciler.desired import Model
from reconciler.quantity import format_bytes
from reconciler.sizing.estimate import Estimate


def _row(model: Model) -> dict[str, Any]:
    e = model.sizing
    assert e is not None
    return {
        "name": model.name,
        "source": model.source,
        "basis": str(e.basis),
        "weightsBytes": e.weights_bytes,
        "kvBytesPerToken": e.kv_bytes_per_token,
        "kvCacheTokens": e.kv_cache_tokens,
        "kvCacheBytes": e.kv_cache_bytes,
        "activationBytes": e.activation_bytes,
        "overheadBytes": e.overhead_bytes,
        "perGpuBytes": e.per_gpu_bytes,
    }


def as_json(models: Iterable[Model], unsized: dict[str, str]) -> str:
    """``{"models": [...]}``, one entry per model that could be sized; the ones that could not under ``unsized``."""
    models = tuple(models)
    out: dict[str, Any] = {"models": [_row(m) for m in models if m.sizing is not None]}
    if unsized:
        out["unsized"] = [{"name": name, "reason": why} for name, why in sorted(unsized.items())]
    return json.dumps(out, indent=2)


def _terms(e: Estimate) -> str:
    tp = e.tensor_parallel
    share = f" / {tp}" if tp > 1 else ""
    return (f"weights {format_bytes(e.weights_bytes)}{share} + KV cache {e.kv_cache_tokens:,} tokens × "
            f"{format_bytes(e.kv_bytes_per_token)} = {format_bytes(e.kv_cache_bytes)}{share} + activations "
            f"{format_bytes(e.activation_bytes)} + overhead {format_bytes(e.overhead_bytes)} = "
            f"{format_bytes(e.per_gpu_bytes)} per GPU")


def as_text(models: Iterable[Model], unsized: dict[str, str]) -> str:
    lines: list[str] = []
    for model in models:
        e = model.sizing
        if e is None:
            if model.name in unsized:
                lines.append(f"{model.name}  {model.source}  not estimated: {unsized[model.name]}")
            else:
                lines.append(f"{model.name}  {model.source}  not estimated: the {model.engine} engine loads no model")
            continue
        tp = f", tensorParallel {e.tensor_parallel}" if e.tensor_parallel > 1 else ""
        lines.append(f"{model.name}  {model.source}  basis {e.basis}{tp}, max_model_len {e.max_model_len:,}")
        lines.append(f"  {_terms(e)}")
        if model.vram_auto:
            lines.append(f"  vram: auto → {format_bytes(model.vram)} per GPU")
        else:
            gap = model.vram - e.per_gpu_bytes
            side = "above" if gap >= 0 else "below"
            lines.append(f"  vram {format_bytes(model.vram)} as written: {format_bytes(abs(gap))} {side} the estimate")
    return "\n".join(lines)
