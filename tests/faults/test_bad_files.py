"""Bad files: a spec file that would take long to read, and arbitrary bytes or JSON where a spec file or an
observed-state snapshot is read. Each ends in a clean refusal (diagnostics, or one UserError), never a crash.

Fuzzing is derandomized: CI sees the same examples on every run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.errors import UserError
from reconciler.observed import ObservedState, from_inventory, to_json
from reconciler.schemas.read import read_snapshot
from reconciler.spec import Severity, load_spec_files, load_specs
from reconciler.spec.source import MAX_FILE_BYTES, MAX_WRITTEN, read_documents
from tests.faults.support import reconciler, write_specs

pytestmark = pytest.mark.faults

FUZZ = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)


# -- one slow file -------------------------------------------------------------------------------------------------
def big_flow_list(directory: Path, count: int = 500_000) -> Path:
    """Under the size limit, one flow list of integers: what took half a minute to read."""
    path = directory / "big.yaml"
    path.write_text("junk: [" + ",".join("1" for _ in range(count)) + "]\n")
    assert path.stat().st_size <= MAX_FILE_BYTES
    return path


def test_a_file_writing_too_many_values_is_refused_for_that_reason(tmp_path):
    specs = write_specs(tmp_path / "specs", {"alpha": 1})
    big_flow_list(specs)
    result = load_specs(specs)
    assert not result.ok
    [problem] = [d for d in result.diagnostics if d.path.endswith("big.yaml")]
    assert problem.severity is Severity.ERROR
    assert f"writes more than {MAX_WRITTEN} values" in problem.message
    assert "alias" not in problem.message  # it has none: the old message blamed an alias bomb

    validate = reconciler("validate", str(specs), timeout=120)
    assert validate.returncode == 1 and "Traceback" not in validate.stdout + validate.stderr
    assert f"big.yaml:1:" in validate.stdout + validate.stderr


def test_a_file_just_under_the_value_budget_is_read(tmp_path):
    text = "junk: [" + ",".join("1" for _ in range(MAX_WRITTEN - 10)) + "]\n"
    [document] = read_documents("f.yaml", text.encode()).documents
    assert len(document.data["junk"]) == MAX_WRITTEN - 10


# -- spec files: arbitrary bytes -------------------------------------------------------------------------------------
yaml_ish = st.lists(st.sampled_from([
    "a: 1\n", "- x\n", "[", "]", "{", "}", ": ", "&a ", "*a ", "<<: *a\n", "---\n", "\t", "'", '"', "#", "\n",
    "kind: Model\n", "apiVersion: reconciler/v1\n", "spec:\n  replicas: ", "!!python/object ", "? ", "|\n  ",
    "\x00", "\xff", "é", "1e9999", "0x1F",
]), max_size=40).map("".join)


@FUZZ
@given(content=st.binary(max_size=400) | yaml_ish.map(lambda s: s.encode("utf-8", "surrogatepass")))
def test_arbitrary_bytes_in_a_spec_file_are_diagnostics_never_a_crash(content):
    read = read_documents("f.yaml", content)
    assert all(d.path == "f.yaml" for d in read.diagnostics)
    result = load_spec_files({"f.yaml": content})
    assert result.ok == (result.desired is not None)
    assert result.ok or any(d.severity is Severity.ERROR for d in result.diagnostics)
    assert all(": error: " in str(d) or ": warning: " in str(d) for d in result.diagnostics)


# -- observed-state snapshots: arbitrary JSON and bytes ------------------------------------------------------------
def _refused_cleanly(path: Path) -> None:
    try:
        state = read_snapshot(path)
    except UserError as exc:
        assert str(exc), "a refusal says why"
        assert str(path) in str(exc)
    else:
        assert isinstance(state, ObservedState)


@FUZZ
@given(data=json_values)
def test_arbitrary_json_as_a_snapshot_is_refused_cleanly(data, tmp_path):
    path = tmp_path / "observed.json"
    path.write_text(json.dumps(data))
    _refused_cleanly(path)


@FUZZ
@given(content=st.binary(max_size=300))
def test_arbitrary_bytes_as_a_snapshot_are_refused_cleanly(content, tmp_path):
    path = tmp_path / "observed.json"
    path.write_bytes(content)
    _refused_cleanly(path)


def _snapshot() -> dict:
    from reconciler.spec import load_spec_files as load

    specs = {"pool.yaml": (Path(__file__).parents[2] / "examples/homelab/pool.yaml").read_bytes()}
    return to_json(from_inventory(load(specs).desired))


@FUZZ
@given(where=st.lists(st.sampled_from(["format", "source", "nodes", "replicas", 0, "name", "gpus", "alive",
                                       "memory", "index", "deadSince", "labels", "extra"]), min_size=1, max_size=4),
       value=json_values)
def test_a_snapshot_with_one_value_changed_is_read_or_refused_cleanly(where, value, tmp_path):
    data = _snapshot()
    target = data
    for step in where[:-1]:
        if isinstance(target, dict) and step in target:
            target = target[step]
        elif isinstance(target, list) and isinstance(step, int) and step < len(target):
            target = target[step]
    last = where[-1]
    if isinstance(target, dict) and isinstance(last, str):
        target[last] = value
    elif isinstance(target, list) and isinstance(last, int) and last < len(target):
        target[last] = value
    path = tmp_path / "observed.json"
    path.write_text(json.dumps(data))
    _refused_cleanly(path)


def test_plan_refuses_a_broken_snapshot_in_one_message(tmp_path):
    specs = write_specs(tmp_path / "specs", {"alpha": 1})
    snapshot = tmp_path / "observed.json"
    snapshot.write_text('{"format": "reconciler/observed-v1", "nodes": [{"name": 7}]}')
    result = reconciler("plan", str(specs), "--observed", str(snapshot), timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert "$.nodes[0].name" in result.stderr
