"""`reconciler history` as people and scripts read it: the table, the JSON rows, one revision with its plan, what
each action came to, and its spec changes against the revision before."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from reconciler.adapter.kv import MemoryKV
from reconciler.executor.record import Recorder
from reconciler.observed import from_inventory
from reconciler.planner import plan
from reconciler.render.history import current_line, history_json, render_history, render_revision, revision_json
from reconciler.revision import Source
from reconciler.spec import load_specs

HOMELAB = Path(__file__).resolve().parents[2] / "examples" / "homelab"


def _two_revisions():
    kv = MemoryKV()
    first = load_specs(HOMELAB).desired
    assistant = first.model("assistant")
    second = replace(first, models=tuple(replace(m, replicas=3) if m is assistant else m for m in first.models))
    clock = iter([1_765_000_000.0 + i for i in range(10)]).__next__
    source = Source(directory="specs", commit="0123456789abcdef", subject="Three assistants")
    recorder = Recorder(kv, command="reconciler apply specs", source=lambda: source, clock=clock)
    one = recorder.begin(plan(first, from_inventory(first)), first, cause="apply")
    one = recorder.end(one, results=[(True, "running")] * len(one.plan.actions))
    two = recorder.begin(plan(second, from_inventory(second)), second, cause="rollback to 1")
    two = recorder.end(two, results=[(True, "running")] * (len(two.plan.actions) - 1) + [(False, "no GPU")])
    return one, two


def test_the_table_and_the_json_rows_name_each_revision_its_outcome_and_source():
    one, two = _two_revisions()
    table = render_history([one, two])
    header, first, second, reason = table.splitlines()
    assert header.split() == ["REV", "AT", "OUTCOME", "ACTIONS", "CAUSE", "BY", "SOURCE"]
    assert first.split()[:3] == ["1", "2025-12-06T05:46:40Z", "converged"]
    assert second.split()[:2] == ["2", "2025-12-06T05:46:42Z"] and "failed" in second and "rollback to 1" in second
    assert "0123456789ab" in second and '"Three assistants"' in second
    assert "actions failed" in reason and "no GPU" in reason
    rows = json.loads(history_json([one, two]))["revisions"]
    assert [(r["revision"], r["outcome"], r["commit"], r["actions"]) for r in rows] == [
        (1, "converged", "0123456789abcdef", len(one.plan.actions)),
        (2, "failed", "0123456789abcdef", len(two.plan.actions)),
    ]
    assert rows[1]["by"]["command"] == "reconciler apply specs" and "no GPU" in rows[1]["reason"]
    assert current_line(two).startswith("revision: 2 (failed, 2025-12-06T05:46:42Z, rollback to 1")


def test_one_revision_shows_its_plan_results_and_spec_changes_against_the_one_before():
    one, two = _two_revisions()
    shown = render_revision(two, one)
    assert "Revision 2: rollback to 1" in shown
    assert "FAILED " in shown and "no GPU" in shown
    assert "reconciler will perform the following actions:" in shown
    assert "Spec changes from revision 1:" in shown
    assert "~ Model assistant" in shown
    assert "no earlier revision" in render_revision(one, None)
    detail = json.loads(revision_json(two, one))
    assert detail["against"] == 1
    assert [c["name"] for c in detail["specChanges"]] == ["assistant"]
    assert detail["plan"][-1]["ok"] is False and detail["plan"][-1]["reason"]
