"""A model's shape from its ``config.json``: parameters by kind and KV-cache elements per token. Pure.

The families written out here are the common ones (dense LLaMA-like decoders with or without biases and with fused
QKV, mixture-of-experts, DeepSeek's MLA, BERT-like encoders); their counts equal what transformers builds from the
same config on the meta device (tests check it where transformers is installed), so `plan` and `diff` give the
same sizes with or without the engines installed. A config of another family raises ``UnknownArchitecture``; the
reader then asks transformers, where it is installed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

# Bytes per element of the dtypes configs and engine args name.
DTYPE_BYTES = {
    "float32": 4, "float": 4, "fp32": 4,
    "float16": 2, "half": 2, "fp16": 2, "bfloat16": 2, "bf16": 2,
    "float8": 1, "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1, "fp8_ds_mla": 1, "int8": 1,
}

# model_type -> whether the input embedding and the LM head share one matrix when the config does not say.
# transformers' own default is True; these families set False in their config classes.
_UNTIED_BY_DEFAULT = frozenset({
    "llama", "mistral", "mixtral", "qwen2", "qwen2_moe", "qwen3", "qwen3_moe", "phi3", "deepseek_v2", "deepseek_v3",
    "olmo", "olmo2", "granite", "internlm2", "yi", "exaone",
})
_ENCODERS = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
# Families whose decoder layers carry two extra norms (before and after the MLP's output).
_FOUR_NORMS = frozenset({"gemma2", "gemma3", "gemma3_text"})
# Families with per-head RMS norms on queries and keys (size head_dim each).
_QK_HEAD_NORM = frozenset({"qwen3", "qwen3_moe", "gemma3", "gemma3_text"})
# vLLM derives max_model_len from the smallest of these config keys that are present.
_LENGTH_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "max_sequence_length",
                "max_seq_length", "seq_len")


class UnknownArchitecture(ValueError):
    """The config is of a family this module does not count."""


@dataclass(frozen=True, slots=True)
class Shape:
    """What the estimate needs from a config. Element counts, not bytes: the dtype is chosen later."""

    model_type: str
    parameters: int  # every parameter, as transformers counts them
    quantizable: int  # weights of the decoder's linear layers: what AWQ/GPTQ/FP8/bitsandbytes store quantized
    kv_full: int  # KV-cache elements per token in layers whose cache grows with the sequence
    kv_window: int  # KV-cache elements per token in sliding-window layers (held only for the window)
    sliding_window: int | None
    max_model_len: int
    dtype: str  # the config's dtype ("" when it names none)
    encoder_only: bool = False  # no KV cache at all (vLLM's encoder-only attention keeps none)

    @property
    def kv_per_token(self) -> int:
        return self.kv_full + self.kv_window


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a multimodal config (which nests it), else the config itself."""
    inner = config.get("text_config")
    if isinstance(inner, Mapping) and "num_hidden_layers" not in config:
        return {**inner, "model_type": inner.get("model_type", config.get("model_type", ""))}
    return config


def _int(config: Mapping[str, Any], *keys: str, default: int | None = None) -> int:
    for key in keys:
        value = config.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    if default is None:
        raise UnknownArchitecture(f"config.json has none of {', '.join(keys)}")
    return default


def max_model_len(config: Mapping[str, Any]) -> int:
    found = [config[k] for k in _LENGTH_KEYS if isinstance(config.get(k), int) and config[k] > 0]
    if not found:
        raise UnknownArchitecture(f"config.json names no context length (none of {', '.join(_LENGTH_KEYS)})")
    return min(found)


def config_dtype(config: Mapping[str, Any]) -> str:
    value = config.get("torch_dtype") or config.get("dtype") or ""
    return str(value).removeprefix("torch.")


def shape(config: Mapping[str, Any]) -> Shape:
    config = text_config(config)
    model_type = str(config.get("model_type", ""))
    if model_type in _ENCODERS:
        return _encoder(config, model_type)
    if model_type == "gpt2":
        return _gpt2(config)
    if "hidden_size" not in config or "num_hidden_layers" not in config:
        raise UnknownArchitecture(f"model_type {model_type or '(none)'!r} is not a LLaMA-like decoder")
    return _decoder(config, model_type)


def _encoder(c: Mapping[str, Any], model_type: str) -> Shape:
    h, layers, inter = _int(c, "hidden_size"), _int(c, "num_hidden_layers"), _int(c, "intermediate_size")
    positions, types = _int(c, "max_position_embeddings"), _int(c, "type_vocab_size", default=2)
    embeddings = (_int(c, "vocab_size") + positions + types) * h + 2 * h
    layer = 4 * (h * h + h) + 2 * h + (h * inter + inter) + (inter * h + h) + 2 * h
    pooler = h * h + h  # transformers' BertModel builds the pooler, and sentence-transformers checkpoints ship it
    linear = layers * (4 * h * h + 2 * h * inter)
    return Shape(model_type, embeddings + layers * layer + pooler, linear, 0, 0, None, max_model_len(c),
                 config_dtype(c), encoder_only=True)


def _gpt2(c: Mapping[str, Any]) -> Shape:
    h, layers = _int(c, "n_embd", "hidden_size"), _int(c, "n_layer", "num_hidden_layers")
    inner = _int(c, "n_inner", default=4 * h) if c.get("n_inner") is not None else 4 * h
    # Fused QKV (c_attn) with biases, biased MLP, two LayerNorms per layer; the LM head is tied.
    layer = (h * 3 * h + 3 * h) + (h * h + h) + (h * inner + inner) + (inner * h + h) + 4 * h
    total = (_int(c, "vocab_size") + _int(c, "n_positions")) * h + layers * layer + 2 * h
    heads = _int(c, "n_head", "num_attention_heads")
    return Shape("gpt2", total, layers * (4 * h * h + 2 * h * inner), layers * 2 * heads * (h // heads), 0, None,
                 max_model_len(c), config_dtype(c))


def _sliding_layers(c: Mapping[str, Any], model_type: str, layers: int) -> int:
    """How many layers attend within a sliding window, as vLLM builds them (it reads the same config)."""
    window = c.get("sliding_window")
    if not isinstance(window, int) or window <= 0 or c.get("use_sliding_window") is False:
        return 0
    types = c.get("layer_types")
    if isinstance(types, list) and types:
        return sum(1 for t in types[:layers] if t == "sliding_attention")
    if model_type == "gemma2":
        return (layers + 1) // 2  # even layers slide, odd ones attend to everything
    pattern = c.get("sliding_window_pattern")
    if isinstance(pattern, int) and pattern > 1:
        return layers - layers // pattern  # every pattern-th layer attends to everything
    return layers  # a window on every layer (Mistral 7B v0.1)


def _mlp_gated(h: int, inter: int) -> int:
    return 3 * h * inter


def _decoder(c: Mapping[str, Any], model_type: str) -> Shape:
    h = _int(c, "hidden_size")
    layers = _int(c, "num_hidden_layers")
    heads = _int(c, "num_attention_heads")
    kv_heads = _int(c, "num_key_value_heads", default=heads)
    head_dim = c.get("head_dim") if isinstance(c.get("head_dim"), int) else h // heads
    vocab = _int(c, "vocab_size")
    inter = _int(c, "intermediate_size", default=4 * h)
    mla = isinstance(c.get("kv_lora_rank"), int)

    # -- attention
    if mla:
        lora, rope = _int(c, "kv_lora_rank"), _int(c, "qk_rope_head_dim")
        nope, v_dim = _int(c, "qk_nope_head_dim"), _int(c, "v_head_dim")
        q_lora = c.get("q_lora_rank") or 0
        q = h * heads * (nope + rope) if not q_lora else h * q_lora + q_lora * heads * (nope + rope)
        attention_linear = q + h * (lora + rope) + lora * heads * (nope + v_dim) + heads * v_dim * h
        attention = attention_linear + q_lora + lora  # the two latent norms
        kv_layer = lora + rope  # one compressed latent and the shared rope key per token and layer
    else:
        attention_linear = h * heads * head_dim + 2 * h * kv_heads * head_dim + heads * head_dim * h
        biases = 0
        if model_type == "qwen2" or model_type == "qwen2_moe" or c.get("attention_bias") or c.get("use_bias"):
            biases = heads * head_dim + 2 * kv_heads * head_dim
            if c.get("use_bias") or (c.get("attention_bias") and model_type not in ("qwen2", "qwen2_moe")):
                biases += h  # the output projection's bias too
        norms = 2 * head_dim if model_type in _QK_HEAD_NORM else 0
        attention = attention_linear + biases + norms
        kv_layer = 2 * kv_heads * head_dim

    # -- feed-forward, per layer
    dense_linear = _mlp_gated(h, inter)
    dense_extra = 0
    if model_type == "starcoder2":  # a plain two-matrix MLP with biases
        dense_linear, dense_extra = 2 * h * inter, inter + h
    elif c.get("mlp_bias"):
        dense_extra = 2 * inter + h
    ffn_linear: list[int] = []
    ffn_extra: list[int] = []
    experts = c.get("num_local_experts") or c.get("num_experts") or c.get("n_routed_experts")
    for i in range(layers):
        if not experts or not _is_moe_layer(c, model_type, i):
            ffn_linear.append(dense_linear)
            ffn_extra.append(dense_extra)
            continue
        moe_inter = _int(c, "moe_intermediate_size", default=inter)
        linear = experts * _mlp_gated(h, moe_inter)
        extra = h * experts  # the router
        shared = c.get("n_shared_experts")
        if isinstance(shared, int) and shared:
            linear += shared * _mlp_gated(h, moe_inter)
        shared_inter = c.get("shared_expert_intermediate_size")
        if isinstance(shared_inter, int) and shared_inter:
            linear += _mlp_gated(h, shared_inter)
            extra += h  # the shared expert's gate
        if model_type == "deepseek_v3":
            extra += experts  # the router's score-correction bias
        ffn_linear.append(linear)
        ffn_extra.append(extra)

    layer_norms = (4 if model_type in _FOUR_NORMS else 2) * h
    if model_type == "starcoder2":
        layer_norms = 4 * h  # LayerNorm with a bias
    final_norm = 2 * h if model_type == "starcoder2" else h
    tied = c.get("tie_word_embeddings")
    if tied is None:
        tied = model_type not in _UNTIED_BY_DEFAULT
    embeddings = vocab * h * (1 if tied else 2)
    quantizable = layers * attention_linear + sum(ffn_linear)
    total = embeddings + layers * (attention + layer_norms) + sum(ffn_linear) + sum(ffn_extra) + final_norm
    sliding = 0 if mla else _sliding_layers(c, model_type, layers)
    return Shape(
        model_type=model_type,
        parameters=total,
        quantizable=quantizable,
        kv_full=(layers - sliding) * kv_layer,
        kv_window=sliding * kv_layer,
        sliding_window=c.get("sliding_window") if sliding else None,
        max_model_len=max_model_len(c),
        dtype=config_dtype(c),
    )


def _is_moe_layer(c: Mapping[str, Any], model_type: str, i: int) -> bool:
    if model_type.startswith("deepseek"):
        first_dense = _int(c, "first_k_dense_replace", default=0)
        return i >= first_dense and i % _int(c, "moe_layer_freq", default=1) == 0
    if i in (c.get("mlp_only_layers") or ()):
        return False
    step = _int(c, "decoder_sparse_step", default=1)
    return (i + 1) % step == 0
