"""Spec changes, placement deltas and their rendering for `reconciler diff`, on hand-built data.

The text and Markdown of a diff are pinned by golden files (`UPDATE_GOLDEN=1 pytest tests/render` rewrites them).
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from reconciler.changes import (
    Change,
    Diff,
    PlacementChangeKind,
    SpecKind,
    diff_to_json,
    placement_changes,
    spec_changes,
)
from reconciler.desired import (
    DesiredState,
    Engine,
    GpuSpec,
    InventoryNode,
    Model,
    Pool,
    Preemption,
    PriorityClass,
)
from reconciler.plan import Location, PlacedReplica, Plan, Unplaced
from reconciler.render import diff as diff_render

from golden import check as check_golden

GOLDEN = Path(__file__).parent / "golden"
from .samples import busy_plan

GiB = 1024**3


def _model(name: str, **changes) -> Model:
    base = Model(name=name, pool="homelab", priority_class="batch", priority=10, preemption=Preemption.LOWER_PRIORITY,
                 preemptible=True, engine=Engine.VLLM, source=f"org/{name}", vram=8 * GiB, replicas=1,
                 route=f"/{name}")
    return dataclasses.replace(base, **changes)


def _desired(*models: Model, pools: tuple[Pool, ...] | None = None, classes=None) -> DesiredState:
    rtx = GpuSpec("RTX 4090", 24 * GiB)
    return DesiredState(
        pools=pools if pools is not None else (
            Pool("homelab", reserve=GiB, inventory=(InventoryNode("node-a", (rtx, rtx)),)),
        ),
        priority_classes=classes if classes is not None else (
            PriorityClass("batch", 10, default=True),
            PriorityClass("critical", 90),
        ),
        models=tuple(sorted(models, key=lambda m: m.name)),
    )


def _base() -> DesiredState:
    return _desired(_model("chat", replicas=2), _model("old-model", vram=4 * GiB), _model("embed", vram=GiB))


def _head() -> DesiredState:
    rtx = GpuSpec("RTX 4090", 24 * GiB)
    return _desired(
        _model("chat", replicas=3, vram=10 * GiB, labels=(("team", "chat"),)),
        _model("embed", vram=GiB),
        _model("triage", priority_class="critical", priority=90, vram=14 * GiB),
        pools=(
            Pool("homelab", reserve=2 * GiB, inventory=(InventoryNode("node-a", (rtx, rtx)),
                                                       InventoryNode("node-b", (GpuSpec("RTX 3090", 24 * GiB),)))),
            Pool("cloud", inventory=(InventoryNode("node-c", (GpuSpec("A100", 80 * GiB),) * 2),)),
        ),
        classes=(PriorityClass("batch", 5, default=True), PriorityClass("critical", 90, preemptible=False)),
    )


def test_spec_changes_name_every_added_removed_and_changed_field():
    changes = {(c.kind, c.name): c for c in spec_changes(_base(), _head())}
    assert [(c.kind, c.name, c.change) for c in spec_changes(_base(), _head())] == [
        (SpecKind.RESOURCE_POOL, "cloud", Change.ADDED),
        (SpecKind.RESOURCE_POOL, "homelab", Change.CHANGED),
        (SpecKind.PRIORITY_CLASS, "batch", Change.CHANGED),
        (SpecKind.PRIORITY_CLASS, "critical", Change.CHANGED),
        (SpecKind.MODEL, "chat", Change.CHANGED),
        (SpecKind.MODEL, "old-model", Change.REMOVED),
        (SpecKind.MODEL, "triage", Change.ADDED),
    ]
    chat = changes[(SpecKind.MODEL, "chat")]
    assert [(f.field, f.before, f.after) for f in chat.fields] == [
        ("vram", 8 * GiB, 10 * GiB),
        ("replicas", 2, 3),
        ("labels", {}, {"team": "chat"}),
    ]
    assert [f.field for f in changes[(SpecKind.RESOURCE_POOL, "homelab")].fields] == ["reserve", "inventory"]
    assert [f.field for f in changes[(SpecKind.PRIORITY_CLASS, "critical")].fields] == ["preemptible"]


def test_class_value_change_is_reported_on_the_class_not_on_every_model():
    base = _desired(_model("chat"))
    head = _desired(_model("chat", priority=5),
                    classes=(PriorityClass("batch", 5, default=True), PriorityClass("critical", 90)))
    assert [(c.kind, c.name) for c in spec_changes(base, head)] == [(SpecKind.PRIORITY_CLASS, "batch")]


def test_no_spec_changes_between_equal_states():
    assert spec_changes(_base(), _base()) == ()


def _plan(placed: list[PlacedReplica], unplaced: list[Unplaced] = ()) -> Plan:
    return Plan(actions=(), placement=tuple(placed), unplaced=tuple(unplaced), gpus=(), fingerprint="f",
                desired_fingerprint="d")


def test_placement_changes_cover_every_transition():
    base = _plan(
        [PlacedReplica("chat", 0, "node-a", (0,), 8 * GiB), PlacedReplica("chat", 1, "node-a", (1,), 8 * GiB),
         PlacedReplica("embed", 0, "node-a", (0,), GiB), PlacedReplica("old", 0, "node-a", (1,), 4 * GiB),
         PlacedReplica("batch", 0, "node-a", (1,), 6 * GiB), PlacedReplica("same", 0, "node-a", (0,), GiB)],
        [Unplaced("big", 0, "too big"), Unplaced("huge", 0, "still too big")],
    )
    head = _plan(
        [PlacedReplica("big", 0, "node-c", (0, 1), 40 * GiB), PlacedReplica("chat", 0, "node-a", (0,), 10 * GiB),
         PlacedReplica("chat", 1, "node-b", (0,), 10 * GiB), PlacedReplica("chat", 2, "node-a", (1,), 10 * GiB),
         PlacedReplica("embed", 0, "node-a", (0,), GiB), PlacedReplica("same", 0, "node-a", (0,), GiB)],
        [Unplaced("batch", 0, "no room"), Unplaced("huge", 0, "still too big"), Unplaced("new", 0, "no pool room")],
    )
    got = [(c.kind, c.model, c.replica) for c in placement_changes(base, head)]
    assert got == [
        (PlacementChangeKind.UNPLACED, "batch", 0),
        (PlacementChangeKind.PLACED, "big", 0),
        (PlacementChangeKind.RESIZED, "chat", 0),
        (PlacementChangeKind.MOVED, "chat", 1),
        (PlacementChangeKind.ADDED, "chat", 2),
        (PlacementChangeKind.UNPLACED, "new", 0),
        (PlacementChangeKind.REMOVED, "old", 0),
    ]
    moved = placement_changes(base, head)[3]
    assert (moved.before, moved.after) == (Location("node-a", (1,)), Location("node-b", (0,)))
    assert placement_changes(base, base) == ()


def _diff() -> Diff:
    base_plan = _plan([PlacedReplica("chat", 1, "node-a", (1,), 8 * GiB),
                       PlacedReplica("old-model", 0, "node-b", (0,), 4 * GiB)])
    head_plan = busy_plan()
    return Diff(base="main (1a2b3c4)", head="the working tree", directory="specs",
                observed="the snapshot state.json", specs=spec_changes(_base(), _head()),
                placement=placement_changes(base_plan, head_plan), plan=head_plan)


def test_diff_text_golden():
    check_golden(GOLDEN / "diff.txt", diff_render.render_text(_diff(), color=False))


def test_diff_markdown_golden():
    check_golden(GOLDEN / "diff.md", diff_render.render_markdown(_diff()))


def test_diff_without_changes_says_so():
    plan = _plan([])
    diff = Diff(base="main (1a2b3c4)", head="HEAD (1a2b3c4)", directory="specs", observed="x", specs=(),
                placement=(), plan=plan)
    out = diff_render.render_text(diff)
    assert "none: the specs are the same." in out
    assert "none: every replica stays where the base's plan puts it." in out
    assert out.endswith("No changes. The cluster matches the specs.\n")


def test_diff_text_colour_only_when_asked():
    assert not re.search(r"\x1b\[", diff_render.render_text(_diff(), color=False))
    assert re.search(r"\x1b\[", diff_render.render_text(_diff(), color=True))


def test_diff_json_carries_the_changes_and_the_plan():
    data = json.loads(diff_render.render_json(_diff()))
    assert data == json.loads(json.dumps(diff_to_json(_diff())))
    assert {c["name"] for c in data["specChanges"] if c["change"] == "added"} == {"cloud", "triage"}
    assert data["plan"]["format"] == "reconciler/plan-v1"
