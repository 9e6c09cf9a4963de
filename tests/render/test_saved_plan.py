"""A saved plan is read back exactly, and any edit or malformed content is refused with one clear message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from reconciler.errors import UserError
from reconciler.observed import from_inventory
from reconciler.plan import to_json
from reconciler.planner import plan
from reconciler.schemas.read import read_plan
from reconciler.spec import load_specs

from .samples import busy_plan

ROOT = Path(__file__).resolve().parents[2]


def _homelab_plan():
    desired = load_specs(ROOT / "examples" / "homelab").desired
    return plan(desired, from_inventory(desired))


def _write(tmp_path, data) -> Path:
    path = tmp_path / "plan.json"
    path.write_text(json.dumps(data) if not isinstance(data, str) else data, encoding="utf-8")
    return path


@pytest.mark.parametrize("make", [busy_plan, _homelab_plan])
def test_a_saved_plan_reads_back_as_the_same_plan(tmp_path, make):
    original = make()
    assert read_plan(_write(tmp_path, to_json(original))) == original


def test_a_planned_plan_carries_what_apply_needs():
    saved = _homelab_plan()
    assert {m.name for m in saved.models} == {m.name for m in load_specs(ROOT / "examples" / "homelab").desired.models}
    assert all(p.gpu_memory > 0 for p in saved.placement)
    assert saved.assumed and all(g.memory > 0 for g in saved.assumed)


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["placement"][0].update(gpus=[d["placement"][0]["gpus"][0] + 1]),  # another GPU
        lambda d: d["actions"].pop(),  # an action dropped
        lambda d: d["models"][0].update(vram_bytes=d["models"][0]["vram_bytes"] * 2),  # the runtime changed
        lambda d: d.update(fingerprint="0" * 16),  # fingerprints are content too
    ],
)
def test_an_edited_plan_is_refused(tmp_path, edit):
    data = to_json(_homelab_plan())
    edit(data)
    with pytest.raises(UserError, match="was edited after `reconciler plan --out` wrote it"):
        read_plan(_write(tmp_path, data))


@pytest.mark.parametrize(
    ("edit", "needle"),
    [
        (lambda d: d["placement"][0].update(gpus="zero"), "$.placement[0].gpus: 'zero' is not of type 'array'"),
        (lambda d: d.pop("digest"), "'digest' is a required property"),
        (lambda d: d.update(format="reconciler/plan-v0"), "$.format: 'reconciler/plan-v1' was expected"),
    ],
)
def test_a_malformed_plan_is_refused_by_its_schema(tmp_path, edit, needle):
    data = to_json(_homelab_plan())
    edit(data)
    with pytest.raises(UserError) as refused:
        read_plan(_write(tmp_path, data))
    assert needle in str(refused.value)


def test_not_json_is_refused_with_its_position(tmp_path):
    with pytest.raises(UserError, match=r"plan.json:1:2: not valid JSON"):
        read_plan(_write(tmp_path, "{oops"))
