"""`advise --keep` on a pool whose inventory is already too small for its models: the reason to ask what to add.

The specs load for advice (the shortfall is a warning there, an error everywhere else), the advice keeps the nodes
there are and adds to them, and the nodes it names, written back as the pool's inventory, plan with nothing
unplaced."""

from __future__ import annotations

import json
from pathlib import Path

from reconciler.cli import main
from reconciler.observed import from_inventory
from reconciler.planner import plan
from reconciler.spec import load_specs

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "examples" / "advise" / "catalog.yaml"

MODELS = """\
apiVersion: reconciler/v1
kind: Model
metadata: {name: big}
spec:
  engine: echo
  source: big-70b
  vram: 60Gi
  tensorParallel: 2
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: mid}
spec:
  engine: echo
  source: mid-30b
  vram: 40Gi
  replicas: 2
---
apiVersion: reconciler/v1
kind: Model
metadata: {name: small}
spec:
  engine: echo
  source: small-8b
  vram: 16Gi
  replicas: 2
"""

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: serving}
spec:
  inventory:
"""


def _pool(inventory: list[dict]) -> str:
    lines = [POOL]
    for node in inventory:
        gpus = ", ".join(f"{{name: {g['name']}, memory: {g['memory']}}}" for g in node["gpus"])
        lines.append(f"    - node: {node['node']}\n      gpus: [{gpus}]\n")
    return "".join(lines)


def _specs(tmp_path: Path, inventory: list[dict]) -> Path:
    specs = tmp_path / "specs"
    specs.mkdir(exist_ok=True)
    (specs / "models.yaml").write_text(MODELS)
    (specs / "pool.yaml").write_text(_pool(inventory))
    return specs


def test_keep_on_a_pool_too_small_says_what_to_add_and_the_result_plans(tmp_path, capsys):
    old = [{"node": "old", "gpus": [{"name": "RTX 3090", "memory": "24Gi"}]}]
    specs = _specs(tmp_path, old)
    # Everywhere but advice, the pool that cannot hold its models is an error at the model's vram.
    loaded = load_specs(specs)
    assert not loaded.ok
    assert [str(d).split(":", 4)[:4] for d in loaded.diagnostics] == [
        ["models.yaml", "8", "19", " error"], ["models.yaml", "16", "9", " error"]]

    assert main(["advise", str(specs), "--catalog", str(CATALOG), "--keep", "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "models.yaml:8:19: warning: tensorParallel 2 needs 2 GPUs on one node" in captured.err
    assert "models.yaml:16:9: warning: vram 40 GiB does not fit on any GPU of pool `serving`" in captured.err
    advice = json.loads(captured.out)
    assert advice["kept"] == ["old"] and advice["proven"] is True and advice["nodes"]
    assert advice["inventory"][0]["node"] == "old"
    assert {p["model"] for p in advice["placement"]} == {"big", "mid", "small"}

    # The advice's inventory (bytes) written back as the pool's, in MiB.
    assert all(g["memory"] % (1 << 20) == 0 for n in advice["inventory"] for g in n["gpus"])
    inventory = [{"node": n["node"], "gpus": [{"name": g["name"], "memory": f"{g['memory'] >> 20}Mi"}
                                              for g in n["gpus"]]} for n in advice["inventory"]]
    (specs / "pool.yaml").write_text(_pool(inventory))
    loaded = load_specs(specs)
    assert loaded.ok, [str(d) for d in loaded.diagnostics]
    planned = plan(loaded.desired, from_inventory(loaded.desired))
    assert planned.unplaced == ()
    assert sorted(p.model for p in planned.placement) == ["big", "mid", "mid", "small", "small"]


def test_advise_still_reports_real_spec_errors_where_they_are(tmp_path, capsys):
    specs = _specs(tmp_path, [{"node": "old", "gpus": [{"name": "RTX 3090", "memory": "24Gi"}]}])
    (specs / "models.yaml").write_text(MODELS.replace("  replicas: 2\n", "  replicaz: 2\n", 1))
    assert main(["advise", str(specs), "--catalog", str(CATALOG), "--keep"]) == 1
    err = capsys.readouterr().err
    assert "models.yaml:17:3: error: `replicaz` is not a field of a Model spec; did you mean `replicas`?" in err
