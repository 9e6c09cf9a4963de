"""`reconciler plan examples/<each> --offline`, as users will first see it, pinned by golden files, and its JSON
checked against schemas/plan.schema.json. An example with an `observed.json` is also planned against it.

A new or changed example, or an intended change of the planner's choices, needs its goldens regenerated:
`UPDATE_GOLDEN=1 pytest tests/render/test_examples.py`, then review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler import plan_schema
from reconciler.cli import main

from .golden import check

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = sorted(p.name for p in (ROOT / "examples").iterdir() if p.is_dir() and any(p.glob("*.y*ml")))
SNAPSHOTS = [name for name in EXAMPLES if (ROOT / "examples" / name / "observed.json").is_file()]


def _plan(capsys, monkeypatch, *args: str) -> str:
    monkeypatch.chdir(ROOT)  # paths in the output are relative, as a user in the repository would type them
    code = main(["plan", *args])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


def test_there_are_examples():
    assert EXAMPLES


@pytest.mark.parametrize("name", EXAMPLES)
@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_example_offline_golden(name, fmt, capsys, monkeypatch):
    out = _plan(capsys, monkeypatch, f"examples/{name}", "--offline", "--format", fmt)
    check(f"example-{name}.{'txt' if fmt == 'text' else 'md'}", out)


@pytest.mark.parametrize("name", SNAPSHOTS)
@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_example_against_its_snapshot_golden(name, fmt, capsys, monkeypatch):
    out = _plan(capsys, monkeypatch, f"examples/{name}", "--observed", f"examples/{name}/observed.json",
                "--format", fmt)
    check(f"example-{name}-observed.{'txt' if fmt == 'text' else 'md'}", out)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_json_validates_against_schema(name, capsys, monkeypatch):
    args = [f"examples/{name}", "--format", "json"]
    args += ["--observed", f"examples/{name}/observed.json"] if name in SNAPSHOTS else ["--offline"]
    data = json.loads(_plan(capsys, monkeypatch, *args))
    Draft202012Validator(plan_schema.schema()).validate(data)
