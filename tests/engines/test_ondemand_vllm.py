"""A real cold start: the tiny LLaMA is not loaded until the first request, which `reconciler watch` answers by
placing a replica; the `openai` SDK sees one slow answer and no error."""

from __future__ import annotations

import time

import pytest

from tests.ondemand.rig import ALL_NODES, client, gateway_url, model, running_count, specs, watcher, write_specs  # noqa: F401

pytestmark = [pytest.mark.vllm, pytest.mark.ray]


def test_a_request_to_an_unloaded_model_is_answered(specs, watcher, tiny_model_dir):
    write_specs(specs, ALL_NODES,
                model("tiny", replicas={"min": 0, "max": 1}, vram="512Mi", engine="vllm", source=str(tiny_model_dir),
                      engineArgs={"dtype": "float32", "max_model_len": 512},
                      scaling={"idleAfter": "10m", "loadTimeout": "5m"}))
    w = watcher()
    assert running_count(specs, "tiny") == 0
    listed = {m.id: m.state for m in client(gateway_url()).models.list().data}
    assert listed == {"tiny": "idle"}
    started = time.monotonic()
    answer = client(gateway_url(), timeout=400).chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": "def main(argv):"}], max_tokens=8, temperature=0)
    cold = time.monotonic() - started
    assert answer.model == "tiny" and answer.usage.completion_tokens == 8
    assert running_count(specs, "tiny") == 1
    wake = [e for e in w.of("scale") if e["model"] == "tiny"]
    assert wake and wake[0]["rule"] == "wake", w.log()
    print(f"cold start of the tiny LLaMA through the gateway: {cold:.1f} s")
