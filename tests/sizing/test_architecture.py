"""Parameter counts and KV bytes per token from public configs, against published figures and transformers."""

from __future__ import annotations

import pytest

from reconciler.sizing.architecture import shape
from reconciler.sizing.estimate import Basis, estimate
from reconciler.sizing.quantization import storage
from reconciler.spec.modelfiles import facts
from tests.sizing.conftest import config

# (fixture, parameters as published on the model's card or hub page, KV bytes per token in its own dtype: 2 x layers
# x KV heads x head size x 2 bytes, or MLA's (kv_lora_rank + qk_rope_head_dim) x layers x 2 bytes)
PUBLISHED = [
    ("llama-3.1-8b", 8_030_261_248, 2 * 32 * 8 * 128 * 2),
    ("mistral-7b-v0.1", 7_241_732_096, 2 * 32 * 8 * 128 * 2),
    ("qwen2.5-7b", 7_615_616_512, 2 * 28 * 4 * 128 * 2),
    ("qwen3-8b", 8_190_735_360, 2 * 36 * 8 * 128 * 2),
    ("phi-3-mini-4k", 3_821_079_552, 2 * 32 * 32 * 96 * 2),
    ("mixtral-8x7b", 46_702_792_704, 2 * 32 * 8 * 128 * 2),
    ("gemma-2-9b", 9_241_705_984, 2 * 42 * 8 * 256 * 2),
    ("gpt2", 124_439_808, 2 * 12 * 12 * 64 * 2),
    ("deepseek-v2-lite", 15_700_000_000, (512 + 64) * 27 * 2),
    ("deepseek-v3", 671_000_000_000, (512 + 64) * 61 * 2),
    ("llama-2-7b-awq", 6_738_415_616, 2 * 32 * 32 * 128 * 2),
]


@pytest.mark.parametrize(("name", "parameters", "kv_bytes"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_counts_match_the_published_figures(name, parameters, kv_bytes):
    found = shape(config(name))
    assert abs(found.parameters - parameters) / parameters < 0.002
    assert found.kv_per_token * 2 == kv_bytes  # exact


@pytest.mark.parametrize("name", ["llama-3.1-8b", "qwen2.5-7b", "qwen3-8b", "phi-3-mini-4k", "mixtral-8x7b",
                                  "gemma-2-9b", "gpt2", "deepseek-v2-lite"])
def test_the_pure_count_equals_transformers_on_the_meta_device(name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.AutoConfig.for_model(**config(name))
    with torch.device("meta"):
        model = transformers.AutoModelForCausalLM.from_config(cfg)
    assert shape(config(name)).parameters == sum(p.numel() for p in model.parameters())


def test_sliding_window_layers_as_vllm_builds_them():
    assert shape(config("mistral-7b-v0.1")).kv_window == shape(config("mistral-7b-v0.1")).kv_per_token  # all layers
    gemma = shape(config("gemma-2-9b"))
    assert gemma.kv_window == gemma.kv_full == 21 * 2 * 8 * 256  # every other layer of 42
    assert shape(config("qwen2.5-7b")).kv_window == 0  # use_sliding_window: false


def test_a_window_bounds_the_kv_cache_of_a_long_sequence():
    gemma = facts(config("gemma-2-9b"), None)
    one = estimate(gemma, engine_args={}, tensor_parallel=1, kv_cache_tokens=None)
    # Full layers hold all 8192 tokens; window layers min(8192, 4096 - 1 + 8192 batched) = 8192 too.
    assert one.kv_cache_bytes == 8192 * 344_064
    short = estimate(gemma, engine_args={"max_num_batched_tokens": 512}, tensor_parallel=1, kv_cache_tokens=None)
    assert short.kv_cache_bytes == 8192 * 172_032 + (4096 - 1 + 512) * 172_032


def test_mla_caches_one_latent_per_token_and_layer():
    ds = estimate(facts(config("deepseek-v3"), None), engine_args={}, tensor_parallel=8, kv_cache_tokens=1000)
    assert ds.kv_bytes_per_token == (512 + 64) * 61 * 2
    fp8 = estimate(facts(config("deepseek-v3"), None), engine_args={"kv_cache_dtype": "fp8"}, tensor_parallel=8,
                   kv_cache_tokens=1000)
    assert fp8.kv_bytes_per_token == (512 + 64) * 61


def test_awq_checkpoint_bytes_within_one_percent_of_the_published_file():
    # TheBloke/Llama-2-7B-AWQ: model.safetensors is 3.89 GB.
    found = facts(config("llama-2-7b-awq"), None)
    assert found.basis is Basis.CONFIG and found.quantization == "awq 4-bit, group 128"
    weights = estimate(found, engine_args={}, tensor_parallel=1, kv_cache_tokens=None).weights_bytes
    assert abs(weights - 3.89e9) / 3.89e9 < 0.01


def test_fp8_and_bitsandbytes_store_linear_weights_smaller():
    s = shape(config("llama-3.1-8b"))
    fp8 = storage(s, {"quant_method": "fp8"})
    assert fp8.fixed_bytes == s.quantizable and fp8.float_elements == s.parameters - s.quantizable
    nf4 = storage(s, {"quant_method": "bitsandbytes", "load_in_4bit": True})
    int8 = storage(s, {"quant_method": "bitsandbytes", "load_in_8bit": True})
    assert s.quantizable // 2 < nf4.fixed_bytes < int8.fixed_bytes == s.quantizable
    gptq = storage(s, {"quant_method": "gptq", "bits": 8, "group_size": 128})
    assert gptq.fixed_bytes == s.quantizable


def test_a_float32_checkpoint_is_held_in_16_bits_unless_dtype_says_otherwise():
    gemma = facts(config("gemma-2-9b"), None)  # torch_dtype float32 in its public config
    assert estimate(gemma, engine_args={}, tensor_parallel=1, kv_cache_tokens=1).weights_bytes == 9_241_705_984 * 2
    assert estimate(gemma, engine_args={"dtype": "float32"}, tensor_parallel=1,
                    kv_cache_tokens=1).weights_bytes == 9_241_705_984 * 4
