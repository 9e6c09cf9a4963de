"""The tiny LLaMA is built locally, deterministically, with a chat template and the special tokens vLLM needs."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys

from reconciler.engines import tinymodel


def digest(directory) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(directory.iterdir())}


def test_build_is_deterministic_and_complete(tmp_path, tiny_model_dir):
    again = tinymodel.build(tmp_path / "again")
    assert digest(again) == digest(tiny_model_dir)
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(digest(again))
    config = json.loads((again / "config.json").read_text())
    assert config["head_dim"] == 32 and config["hidden_size"] == 128 and config["num_hidden_layers"] == 2


def test_tokenizer_has_special_tokens_and_chat_template(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token, tokenizer.pad_token) == (
        "<s>", "</s>", "<unk>", "<pad>")
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], add_generation_prompt=True,
                                         tokenize=False)
    assert text == "<s><|user|>\nhi</s>\n<|assistant|>\n"
    assert tokenizer.decode(tokenizer("def main():\n    return 0")["input_ids"]) == "def main():\n    return 0"


def test_runnable_as_a_module(tmp_path):
    result = subprocess.run([sys.executable, "-m", "reconciler.engines.tinymodel", str(tmp_path / "m")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "m" / "model.safetensors").is_file()
