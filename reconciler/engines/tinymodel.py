"""A tiny LLaMA built locally in about a second: a real vLLM model for tests and the quickstart, with no download.

The tokenizer is a byte-level BPE trained on a fixed, sorted slice of this Python's standard library sources; the
weights are random from a fixed seed. The same Python and library versions therefore produce the same files, so
tests can compare vLLM's greedy output with plain transformers' token for token.

    python -m reconciler.engines.tinymodel DIR
"""

from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

SEED = 1234
VOCAB_SIZE = 1024
MAX_POSITIONS = 1024
# The standard-library modules the tokenizer learns from: a few hundred KiB of plain Python, fixed so the merges
# (and hence the token ids) don't depend on what else happens to be installed.
CORPUS_MODULES = ("argparse.py", "collections/__init__.py", "dataclasses.py", "functools.py", "json/encoder.py",
                  "pathlib.py", "string.py", "textwrap.py", "typing.py")
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>"}
# Role-tagged turns, each closed by the end-of-sequence token, so a generation that stops at EOS ends the turn.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)


def corpus() -> list[str]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = []
    for name in CORPUS_MODULES:
        path = stdlib / name
        if path.is_file():
            texts.append(path.read_text(encoding="utf-8"))
    if not texts:
        raise RuntimeError(f"no standard-library sources found under {stdlib} to train the tokenizer on")
    return texts


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS, model_max_length=MAX_POSITIONS)
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build(directory: str | Path) -> Path:
    """Write the tokenizer and a randomly initialised 2-layer LLaMA (float32) into ``directory``; returns it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(out)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,  # vLLM's CPU attention needs head sizes of at least 32
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        # Wider than the usual 0.02 so logits are well apart and greedy decoding doesn't hinge on rounding noise.
        initializer_range=0.2,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config).to(torch.float32)
    model.generation_config.do_sample = False
    model.save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.engines.tinymodel", description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="where to write the model (created if missing)")
    args = parser.parse_args(argv)
    print(build(args.directory))
    return 0


if __name__ == "__main__":
    sys.exit(main())
