"""The per-GPU memory of a replica, term by term, and where each term came from. Pure.

    perGpuBytes = weights / tensorParallel + kvCacheBytes / tensorParallel + activationBytes + overheadBytes

- **weights**: exact from the checkpoint's safetensors headers (``Basis.SAFETENSORS``), else counted from
  ``config.json`` (``Basis.CONFIG``); float weights are held in the engine's dtype (vLLM casts float32 checkpoints
  to 16 bits unless ``dtype`` says otherwise), quantized ones as stored.
- **KV cache**: ``kvBytesPerToken`` (every attention layer's keys and values, or MLA's compressed latent, in
  ``kv_cache_dtype``) times ``kvCacheTokens``; a sliding-window layer holds at most its window (plus the tokens of
  one forward pass) per sequence, as vLLM sizes it. ``kvCacheTokens`` defaults to one ``max_model_len`` sequence
  (``SizingSettings.default_sequences``): vLLM will not start with less.
- **activations** and **overhead**, per GPU, from ``TABLE`` below (measured figures, each with its source).
- **measured** (``Basis.MEASURED``): once a replica of the same kind has run, its measured peak replaces the
  activation and overhead terms: ``overhead = peak - weights/TP - kv/TP``, rounded up to
  ``SizingSettings.measured_step``; weights and KV stay as estimated, so a changed ``kvCacheTokens`` still counts.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from reconciler.settings import SizingSettings
from reconciler.sizing.architecture import DTYPE_BYTES

GiB = 1 << 30
MiB = 1 << 20


class Basis(StrEnum):
    SAFETENSORS = "safetensors"
    CONFIG = "config"
    MEASURED = "measured"


@dataclass(frozen=True, slots=True)
class Overheads:
    """Per-GPU memory besides weights and KV cache, as measured on one engine and device kind."""

    non_torch: int  # CUDA context, cuBLAS/NCCL workspaces: memory torch's allocator does not see, tensorParallel 1
    non_torch_parallel: int  # the same per GPU at tensorParallel > 1 (NCCL buffers, custom all-reduce)
    graphs: int  # CUDA graphs, unless enforce_eager
    # The activation peak of one forward pass is scaled from one measured point by the model's shape:
    # activation = coefficient * batched_tokens * (2 * intermediate + 4 * hidden) * dtype + max_num_seqs * vocab * 4
    calibration_bytes: int
    calibration_tokens: int
    calibration_hidden: int
    calibration_intermediate: int
    calibration_vocab: int
    calibration_dtype: int
    calibration_seqs: int

    @property
    def coefficient(self) -> float:
        logits = self.calibration_seqs * self.calibration_vocab * 4
        per_pass = self.calibration_tokens * (2 * self.calibration_intermediate + 4 * self.calibration_hidden)
        return (self.calibration_bytes - logits) / (per_pass * self.calibration_dtype)


# vLLM on CUDA. Sources:
# - non_torch, non_torch_parallel and the activation calibration: vLLM's memory profiling log for
#   meta-llama/Meta-Llama-3-8B (hidden 4096, intermediate 14336, vocab 128256, bf16, 8192 batched tokens) on an
#   80 GB H100, quoted in vllm-project/vllm pull request 10511: "non_torch_memory 1.79GiB" at tensor parallel 1 and
#   "3.58GiB" at 2, "PyTorch activation peak memory 1.26GiB" at both.
# - graphs: the per-batch-size capture sizes vLLM logs (6 to 28 MiB for each of its captured sizes, vllm-project/vllm
#   pull request 23184), summed over its default capture list: about 0.75 GiB.
TABLE = Overheads(
    non_torch=round(1.79 * GiB),
    non_torch_parallel=round(3.58 * GiB),
    graphs=round(0.75 * GiB),
    calibration_bytes=round(1.26 * GiB),
    calibration_tokens=8192,
    calibration_hidden=4096,
    calibration_intermediate=14336,
    calibration_vocab=128256,
    calibration_dtype=2,
    calibration_seqs=256,
)


@dataclass(frozen=True, slots=True)
class Facts:
    """What a model's files say, read by the spec loader: plain data, no choice of the user's yet."""

    basis: Basis  # SAFETENSORS or CONFIG
    float_elements: int  # weights stored in a float dtype: the engine holds them in its dtype
    fixed_bytes: int  # quantized weights with their scales, held as stored
    kv_full: int  # KV elements per token in layers whose cache grows with the sequence
    kv_window: int  # KV elements per token in sliding-window layers
    sliding_window: int | None
    max_model_len: int
    dtype: str  # the config's dtype
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    encoder_only: bool = False
    quantization: str = ""  # the method, for people
    note: str = ""  # where the figures were read from, for people


@dataclass(frozen=True, slots=True)
class Estimate:
    """A replica's memory, term by term. Weights and KV figures are for the whole model; the rest per GPU."""

    basis: Basis
    weights_bytes: int
    kv_bytes_per_token: int
    kv_cache_tokens: int
    kv_cache_bytes: int
    activation_bytes: int
    overhead_bytes: int
    tensor_parallel: int
    max_model_len: int
    sequence_kv_bytes: int  # the KV cache of one max_model_len sequence, whole model

    @property
    def weights_per_gpu(self) -> int:
        return math.ceil(self.weights_bytes / self.tensor_parallel)

    @property
    def kv_per_gpu(self) -> int:
        return math.ceil(self.kv_cache_bytes / self.tensor_parallel)

    @property
    def sequence_per_gpu(self) -> int:
        return math.ceil(self.sequence_kv_bytes / self.tensor_parallel)

    @property
    def per_gpu_bytes(self) -> int:
        return self.weights_per_gpu + self.kv_per_gpu + self.activation_bytes + self.overhead_bytes


def dtype_bytes(name: str, default: int = 2) -> int:
    return DTYPE_BYTES.get(str(name).removeprefix("torch.").lower(), default)


def engine_dtype_bytes(facts: Facts, engine_args: Mapping[str, Any]) -> int:
    """Bytes per element of the engine's dtype: engineArgs' ``dtype``, else the config's, float32 cast to 16 bits
    (vLLM's "auto")."""
    asked = str(engine_args.get("dtype") or "auto")
    if asked != "auto":
        return dtype_bytes(asked)
    return min(dtype_bytes(facts.dtype), 2)


def kv_bytes_for(facts: Facts, *, tokens: int, max_model_len: int, element: int, batched: int) -> int:
    """KV-cache bytes of ``tokens`` tokens held as sequences of at most ``max_model_len``."""
    if tokens <= 0:
        return 0
    full = facts.kv_full * element * tokens
    if not facts.kv_window or facts.sliding_window is None:
        return full
    sequences = math.ceil(tokens / max_model_len)
    held = min(max_model_len, facts.sliding_window - 1 + batched)  # vLLM's admission bound of a window layer
    return full + facts.kv_window * element * min(tokens, sequences * held)


def estimate(facts: Facts, *, engine_args: Mapping[str, Any], tensor_parallel: int, kv_cache_tokens: int | None,
             settings: SizingSettings = SizingSettings(), table: Overheads = TABLE) -> Estimate:
    element = engine_dtype_bytes(facts, engine_args)
    kv_name = str(engine_args.get("kv_cache_dtype") or "auto")
    kv_element = element if kv_name == "auto" else dtype_bytes(kv_name, element)
    length = int(engine_args.get("max_model_len") or facts.max_model_len)
    batched = int(engine_args.get("max_num_batched_tokens") or settings.batched_tokens)
    seqs = int(engine_args.get("max_num_seqs") or settings.max_num_seqs)
    tokens = kv_cache_tokens if kv_cache_tokens is not None else settings.default_sequences * length
    if facts.encoder_only:
        tokens = 0
    weights = facts.float_elements * element + facts.fixed_bytes
    activation = math.ceil(table.coefficient * batched * (2 * facts.intermediate_size / tensor_parallel
                                                          + 4 * facts.hidden_size) * element)
    if not facts.encoder_only:
        activation += seqs * math.ceil(facts.vocab_size / tensor_parallel) * 4
    overhead = table.non_torch if tensor_parallel == 1 else table.non_torch_parallel
    if not engine_args.get("enforce_eager"):
        overhead += table.graphs
    return Estimate(
        basis=facts.basis,
        weights_bytes=weights,
        kv_bytes_per_token=(facts.kv_full + facts.kv_window) * kv_element,
        kv_cache_tokens=tokens,
        kv_cache_bytes=kv_bytes_for(facts, tokens=tokens, max_model_len=length, element=kv_element, batched=batched),
        activation_bytes=activation,
        overhead_bytes=overhead,
        tensor_parallel=tensor_parallel,
        max_model_len=length,
        sequence_kv_bytes=0 if facts.encoder_only else kv_bytes_for(
            facts, tokens=length, max_model_len=length, element=kv_element, batched=batched),
    )


def measured(est: Estimate, *, peak_bytes: int, step: int) -> Estimate:
    """The estimate with its activation and overhead terms replaced by what a replica of its kind was measured to
    use beyond its weights and KV cache (see the module docstring)."""
    rest = max(0, peak_bytes - est.weights_per_gpu - est.kv_per_gpu)
    rest = math.ceil(rest / step) * step if step > 0 else rest
    return replace(est, basis=Basis.MEASURED, activation_bytes=0, overhead_bytes=rest)


def estimate_to_json(e: Estimate) -> dict[str, Any]:
    return {
        "basis": str(e.basis),
        "weightsBytes": e.weights_bytes,
        "kvBytesPerToken": e.kv_bytes_per_token,
        "kvCacheTokens": e.kv_cache_tokens,
        "kvCacheBytes": e.kv_cache_bytes,
        "activationBytes": e.activation_bytes,
        "overheadBytes": e.overhead_bytes,
        "perGpuBytes": e.per_gpu_bytes,
        "tensorParallel": e.tensor_parallel,
        "maxModelLen": e.max_model_len,
        "sequenceKvBytes": e.sequence_kv_bytes,
    }


def estimate_from_json(data: Mapping[str, Any]) -> Estimate:
    return Estimate(
        basis=Basis(data["basis"]),
        weights_bytes=data["weightsBytes"],
        kv_bytes_per_token=data["kvBytesPerToken"],
        kv_cache_tokens=data["kvCacheTokens"],
        kv_cache_bytes=data["kvCacheBytes"],
        activation_bytes=data["activationBytes"],
        overhead_bytes=data["overheadBytes"],
        tensor_parallel=data["tensorParallel"],
        max_model_len=data["maxModelLen"],
        sequence_kv_bytes=data["sequenceKvBytes"],
    )
