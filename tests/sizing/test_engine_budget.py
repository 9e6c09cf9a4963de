"""Planned = enforced: real vLLM (CPU build) gets its KV cache as bytes from the plan's terms.

The engine config comes the way the executor makes it (specs -> plan -> Serve config); the engine starts in a child
process so nothing of vLLM stays in the test process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from reconciler.engines.vllm_rules import CPU_OVERHEAD_BYTES
from reconciler.executor.serveconfig import replica_app
from reconciler.observed import from_inventory
from reconciler.planner import plan
from reconciler.spec import load_specs
from tests.sizing.test_spec_sizing import _specs
from tests.spec.specs import model

pytestmark = [pytest.mark.vllm]

MiB = 1 << 20
START = """
import json, sys
from reconciler.engines.vllm import VllmEngine
from reconciler.engines.vllm_rules import MemoryBudgetError
try:
    engine = VllmEngine(json.loads(sys.argv[1]))
except MemoryBudgetError as exc:
    print("RESULT " + json.dumps({"refused": str(exc)}))
    raise SystemExit(0)
cache = engine._engine.vllm_config.cache_config
print("RESULT " + json.dumps({"kv": engine.kv_cache_bytes, "blocks": cache.num_gpu_blocks, "block": cache.block_size,
                  "rule": engine.memory.rule}))
engine._engine.shutdown()
"""


def _engine_config(tmp_path, tiny_llama, vram: str) -> tuple[dict, object]:
    specs = _specs(tmp_path, model("tiny", source=str(tiny_llama), vram=vram,
                                   engineArgs={"dtype": "float32", "max_model_len": 512}))
    desired = load_specs(specs).desired
    made = plan(desired, from_inventory(desired))
    placed = made.placement[0]
    app = replica_app(model=made.model("tiny"), replica=0, location=placed.location, gpu_memory=24 << 30)
    return app["args"]["engine_config"], made.model("tiny")


def _start(config: dict, tmp_path) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_CACHE_ROOT": str(tmp_path / "vc")}
    done = subprocess.run([sys.executable, "-c", START, json.dumps(config)], capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(next(line for line in done.stdout.splitlines() if line.startswith("RESULT "))[7:])


def test_the_engine_gets_the_kv_cache_the_plan_leaves(tmp_path, tiny_llama):
    config, runtime = _engine_config(tmp_path, tiny_llama, "512Mi")
    assert config["sizing"]["basis"] == "safetensors"
    got = _start(config, tmp_path)
    sizing = runtime.sizing
    assert got["kv"] == 512 * MiB - sizing.weights_per_gpu - CPU_OVERHEAD_BYTES
    # vLLM's blocks hold exactly the bytes per token the estimate says: the whole budget, less under one block.
    page = got["block"] * sizing.kv_bytes_per_token
    assert got["blocks"] == got["kv"] // page
    assert "cpu: kv cache = vram 512 MiB" in got["rule"]


def test_a_plan_without_room_for_one_sequence_is_refused_with_the_numbers(tmp_path, tiny_llama):
    config, _ = _engine_config(tmp_path, tiny_llama, "257Mi")  # 256 MiB of CPU overhead, ~2 MiB of weights
    got = _start(config, tmp_path)
    assert "less than one max_model_len sequence of 512 tokens needs" in got["refused"]
