"""Bytes of a quantized checkpoint from its ``quantization_config``, when no weight headers can be read. Pure.

Only the decoder's linear weights are quantized (``Shape.quantizable``); embeddings, the LM head, norms, biases and
routers stay in the model's dtype, as AWQ, GPTQ, FP8 and bitsandbytes checkpoints store them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from reconciler.sizing.architecture import Shape

SCALE_BYTES = 2  # AWQ/GPTQ group scales are float16
BNB_BLOCK = 64  # bitsandbytes 4-bit quantizes blocks of 64 weights, each with a float32 absmax
BNB_ABSMAX_BYTES = 4


@dataclass(frozen=True, slots=True)
class Storage:
    float_elements: int  # parameters held in the engine's float dtype
    fixed_bytes: int  # bytes of quantized weights with their scales and zero points, as stored
    method: str  # "" when not quantized


def _bits_group(q: Mapping[str, Any]) -> tuple[int, int]:
    bits = q.get("bits") or q.get("w_bit") or 4
    group = q.get("group_size") or q.get("q_group_size") or 128
    groups = q.get("config_groups")
    if isinstance(groups, Mapping):  # compressed-tensors: the first group's weight scheme
        for scheme in groups.values():
            weights = scheme.get("weights") if isinstance(scheme, Mapping) else None
            if isinstance(weights, Mapping):
                bits = weights.get("num_bits") or bits
                group = weights.get("group_size") or -1
                break
    return int(bits), int(group)


def storage(shape: Shape, quantization: Mapping[str, Any] | None) -> Storage:
    if not quantization:
        return Storage(shape.parameters, 0, "")
    method = str(quantization.get("quant_method") or "").lower()
    linear = shape.quantizable
    rest = shape.parameters - linear
    if method == "bitsandbytes" or quantization.get("load_in_4bit") or quantization.get("load_in_8bit"):
        if quantization.get("load_in_8bit"):
            return Storage(rest, linear, "bitsandbytes 8-bit")
        return Storage(rest, linear // 2 + -(-linear // BNB_BLOCK) * BNB_ABSMAX_BYTES, "bitsandbytes 4-bit")
    bits, group = _bits_group(quantization)
    is_float = method in ("fp8", "fbgemm_fp8") or "fp8" in str(quantization.get("format", "")).lower()
    if is_float or bits >= 8:
        return Storage(rest, linear * bits // 8 if not is_float else linear, f"{method or 'quantized'} {bits}-bit")
    if group <= 0:  # one scale per output column: negligible beside the weights
        return Storage(rest, linear * bits // 8, f"{method} {bits}-bit")
    groups = linear // group
    # Packed weights, a float16 scale and a packed zero point per group.
    return Storage(rest, linear * bits // 8 + groups * SCALE_BYTES + groups * bits // 8,
                   f"{method} {bits}-bit, group {group}")
