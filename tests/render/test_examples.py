"""`reconciler plan examples/<each> --offline`, as users will first see it, pinned by golden files, and its JSON
checked against schemas/plan.schema.json. An example keeps its specs in its folder or in its `specs/` folder; one
with an `observed.json` (anywhere in it) is also planned against that snapshot.

A new or changed example, or an intended change of the planner's choices, needs its goldens regenerated:
`UPDATE_GOLDEN=1 pytest tests/render/test_examples.py`, then review the diff.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.schemas import plan as plan_schema
from reconciler.cli import main

from golden import check as check_golden

GOLDEN = Path(__file__).parent / "golden"

ROOT = Path(__file__).resolve().parents[2]


def _spec_dir(example: Path) -> str:
    specs = example / "specs" if (example / "specs").is_dir() else example
    return specs.relative_to(ROOT).as_posix()


def _snapshot(example: Path) -> str | None:
    found = sorted(example.rglob("observed.json"))
    return found[0].relative_to(ROOT).as_posix() if found else None


# Folders without specs (examples/systemd: a service unit) plan nothing.
_FOLDERS = sorted(p for p in (ROOT / "examples").iterdir()
                  if p.is_dir() and ((p / "specs").is_dir() or any(p.glob("*.yaml"))))
SPECS = {p.name: _spec_dir(p) for p in _FOLDERS}
OBSERVED = {p.name: snapshot for p in _FOLDERS if (snapshot := _snapshot(p)) is not None}
EXAMPLES = sorted(SPECS)
SNAPSHOTS = sorted(OBSERVED)


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
    out = _plan(capsys, monkeypatch, SPECS[name], "--offline", "--format", fmt)
    check_golden(GOLDEN / f"example-{name}.{'txt' if fmt == 'text' else 'md'}", out)


@pytest.mark.parametrize("name", SNAPSHOTS)
@pytest.mark.parametrize("fmt", ["text", "markdown"])
def test_example_against_its_snapshot_golden(name, fmt, capsys, monkeypatch):
    out = _plan(capsys, monkeypatch, SPECS[name], "--observed", OBSERVED[name], "--format", fmt)
    check_golden(GOLDEN / f"example-{name}-observed.{'txt' if fmt == 'text' else 'md'}", out)


@pytest.mark.parametrize("name", EXAMPLES)
def test_example_json_validates_against_schema(name, capsys, monkeypatch):
    args = [SPECS[name], "--format", "json"]
    args += ["--observed", OBSERVED[name]] if name in OBSERVED else ["--offline"]
    data = json.loads(_plan(capsys, monkeypatch, *args))
    Draft202012Validator(plan_schema.schema()).validate(data)
