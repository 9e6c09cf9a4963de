"""`advise --format json` prints the advice and nothing else on stdout, also for a request where HiGHS prints a
notice of its own with C's printf (a 20-model instance of bench/advise.py's generator does): file descriptors are
captured, not Python's streams, so a stray line would break the JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from reconciler.advise import PRICE_UNIT
from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]


def _generator():
    spec = importlib.util.spec_from_file_location("advise_bench", ROOT / "bench" / "advise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.instance


def _write(request, specs: Path, catalog: Path) -> None:
    models: dict[str, list] = {}
    for item in request.items:
        models.setdefault(item.model, []).append(item)
    docs = ["apiVersion: reconciler/v1\nkind: ResourcePool\nmetadata: {name: p}\nspec: {}\n"]
    for name, items in models.items():
        first = items[0]
        docs.append(f"apiVersion: reconciler/v1\nkind: Model\nmetadata: {{name: {name}}}\nspec:\n  engine: echo\n"
                    f"  source: x\n  vram: {first.vram >> 30}Gi\n  tensorParallel: {first.gpus}\n"
                    f"  replicas: {len(items)}\n  spread: {first.spread}\n")
    (specs / "specs.yaml").write_text("---\n".join(docs))
    types = []
    for t in request.types:
        gpus = ", ".join(f"{{name: g, memory: {g.memory >> 30}Gi}}" for g in t.gpus)
        most = f"\n  max: {t.max}" if t.max is not None else ""
        types.append(f"apiVersion: reconciler/v1\nkind: NodeType\nmetadata: {{name: {t.name}}}\nspec:\n"
                     f"  gpus: [{gpus}]\n  pricePerHour: {t.price / PRICE_UNIT}{most}\n")
    catalog.write_text("---\n".join(types))


def test_json_stdout_is_only_the_advice(tmp_path, capfd):
    request = _generator()(0, 20)
    specs = tmp_path / "specs"
    specs.mkdir()
    _write(request, specs, tmp_path / "catalog.yaml")
    assert main(["advise", str(specs), "--catalog", str(tmp_path / "catalog.yaml"), "--format", "json"]) == 0
    out = capfd.readouterr().out
    advice = json.loads(out)
    assert advice["proven"] is True and advice["cost"] == advice["bound"]
