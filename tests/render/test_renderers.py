"""The text, Markdown and JSON renderers on hand-built plans.

Text (without colour) and Markdown are pinned by golden files in tests/render/golden/; after an intended change of
the output, regenerate them with `UPDATE_GOLDEN=1 pytest tests/render` and review the diff.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator

from reconciler.schemas import plan as plan_schema
from reconciler.plan import GpuUse, GpuView, from_json, to_json
from reconciler.render import json as json_render
from reconciler.render import markdown, text
from reconciler.render._common import CellKind, segments
from golden import check as check_golden

GOLDEN = Path(__file__).parent / "golden"
from .samples import SAMPLES, busy_plan, create_only_plan, settled_plan

ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_text_golden(name):
    check_golden(GOLDEN / f"plan-{name}.txt", text.render_plan(SAMPLES[name](), color=False))


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_markdown_golden(name):
    check_golden(GOLDEN / f"plan-{name}.md", markdown.render_plan(SAMPLES[name]()))


def test_summary_sentence_keeps_terraform_shape():
    assert text.render_plan(create_only_plan()).endswith("Plan: 3 to create, 0 to move, 0 to evict, 0 to delete.\n")
    busy = text.render_plan(busy_plan())
    assert "Plan: 2 to create, 1 to replace, 1 to update, 1 to move, 1 to evict, 1 to delete.\n" in busy
    assert busy.endswith("2 replicas cannot be placed.\n")
    assert text.render_plan(settled_plan()).endswith("No changes. The cluster matches the specs.\n")


def test_every_action_is_one_line_with_symbol_route_and_reason():
    lines = text.render_plan(busy_plan()).splitlines()
    move = [line for line in lines if "chat[1]" in line and "move" in line]
    assert len(move) == 1
    assert move[0].lstrip().startswith("→ move")
    assert "node-a/gpu1 → node-b/gpu0" in move[0]
    assert "# moved to make room for triage[0] on node-a/gpu1 (make-before-break)" in move[0]


def test_colour_only_when_asked():
    plain = text.render_plan(busy_plan(), color=False)
    coloured = text.render_plan(busy_plan(), color=True)
    assert not ANSI.search(plain)
    assert ANSI.search(coloured)
    # The colours carry nothing the plain text lacks.
    assert [line.rstrip() for line in ANSI.sub("", coloured).splitlines()] == plain.splitlines()


def test_markdown_escapes_table_breaking_text():
    plan = busy_plan()
    action = plan.actions[0]
    plan = type(plan)(
        actions=(type(action)(action.kind, action.model, action.replica, action.source, action.target, action.vram,
                              "a | b <script> *x*"),),
        placement=plan.placement, unplaced=(), gpus=(), fingerprint="f", desired_fingerprint="d",
    )
    row = [line for line in markdown.render_plan(plan).splitlines() if line.startswith("| `!`")][0]
    assert r"a \| b \<script\> \*x\*" in row
    assert row.count(" | ") == 6  # seven cells, no more


def test_json_is_the_stable_form_and_round_trips():
    for make in SAMPLES.values():
        plan = make()
        out = json_render.render_plan(plan)
        data = json.loads(out)
        assert data == to_json(plan)
        assert from_json(data) == plan
        Draft202012Validator(plan_schema.schema()).validate(data)


_uses = st.lists(st.integers(min_value=0, max_value=30 * 1024**3), max_size=6)


@given(memory=st.integers(min_value=1, max_value=200 * 1024**3), reserve=st.integers(0, 4 * 1024**3),
       foreign=st.integers(0, 8 * 1024**3), sizes=_uses, width=st.integers(8, 60))
def test_bar_cells_add_up_and_keep_every_replica(memory, reserve, foreign, sizes, width):
    uses = tuple(GpuUse(f"m{i}", 0, s) for i, s in enumerate(sizes))
    gpu = GpuView(pool="p", node="n", index=0, name="", memory=memory, reserve=reserve, foreign=foreign,
                  before=(), after=uses)
    segs = segments(gpu, uses, width)
    assert sum(s.width for s in segs) == width
    assert all(s.width > 0 for s in segs)
    shown = [s.use for s in segs if s.kind is CellKind.REPLICA]
    nonzero = [u for u in uses if u.vram > 0]
    if len(nonzero) + 3 <= width:  # room for one cell each
        assert [u for u in shown if u.vram > 0] == nonzero
