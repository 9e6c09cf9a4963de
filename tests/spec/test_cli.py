"""`reconciler validate` and `reconciler schema`: output, exit codes, machine-readable format, stale schemas."""

import json
import subprocess
import sys
from pathlib import Path

from reconciler import schemas as schema
from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]
FIXTURE = Path(__file__).parent / "fixtures" / "ten-mistakes"


def test_validate_ok_exits_0_with_a_summary(capsys):
    assert main(["validate", str(ROOT / "examples" / "homelab")]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("valid: 3 files, 10 documents (1 pool, 5 priority classes, 4 models)")


def test_validate_errors_exit_1(capsys):
    assert main(["validate", str(FIXTURE)]) == 1
    assert capsys.readouterr().out.strip().endswith("10 errors in 3 files, 7 documents")


def test_warnings_alone_exit_0(tmp_path, capsys):
    (tmp_path / "a.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: ResourcePool\nmetadata: {name: p}\nspec: {}\n---\n"
        "apiVersion: reconciler/v1\nkind: Model\nmetadata: {name: m}\nspec: {source: x, vram: 1Gi, replicas: 0}\n"
    )
    assert main(["validate", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "a.yaml:9:40: warning: replicas is 0" in out and "1 warning" in out


def test_validate_json(capsys):
    assert main(["validate", str(FIXTURE), "--format", "json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["errors"] == 10 and data["files"] == 3 and data["fingerprint"] is None
    assert data["diagnostics"][0] == {
        "path": "classes.yaml",
        "line": 2,
        "col": 13,
        "severity": "error",
        "message": "apiVersion `reconciler/v2` is not supported: write reconciler/v1",
    }
    assert main(["validate", str(ROOT / "specs"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["ok"] is True


def test_validate_defaults_to_specs(monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    assert main(["validate"]) == 0
    assert capsys.readouterr().out.startswith("specs: valid")


def test_validate_missing_directory(tmp_path, capsys):
    assert main(["validate", str(tmp_path / "nope")]) == 1
    assert "the spec directory does not exist" in capsys.readouterr().out


def test_schema_check_passes_on_the_committed_schemas():
    completed = subprocess.run(
        [sys.executable, "-m", "reconciler", "schema", "--check"], cwd=ROOT, capture_output=True, text=True
    )
    assert completed.returncode == 0, completed.stdout + completed.stderr


def test_schema_check_names_stale_files(tmp_path, capsys):
    assert main(["schema", "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(schema.generate())
    assert main(["schema", "--check", "--out", str(tmp_path)]) == 0
    (tmp_path / "model.schema.json").write_text("{}\n")
    (tmp_path / "document.schema.json").unlink()
    capsys.readouterr()
    assert main(["schema", "--check", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "document.schema.json: stale" in out and "model.schema.json: stale" in out
    assert "resourcepool.schema.json" not in out


def test_generated_schemas_are_deterministic_and_end_with_a_newline():
    first, second = schema.generate(), schema.generate()
    assert first == second
    assert {"model.schema.json", "priorityclass.schema.json", "resourcepool.schema.json", "document.schema.json"} <= set(first)
    for text in first.values():
        assert text.endswith("}\n")
        data = json.loads(text)
        assert json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n" == text


def test_the_generator_writes_the_snapshot_and_plan_schemas_too():
    assert {"observed.schema.json", "plan.schema.json"} <= set(schema.generate())
