"""Measured memory as people and scripts read it: right-size lines, overrun warnings, planned against measured in
`status` (text and JSON, the JSON checked against its schema)."""

from __future__ import annotations

import jsonschema

from reconciler.observed import ObservedGpu, ObservedNode, ObservedReplica, ObservedState, ReplicaState
from reconciler.planner.memory import RightSize
from reconciler.render.memory import rightsize_line, rightsize_lines, span_text, spec_quantity
from reconciler.render.status import render_status
from reconciler.render.status_json import status_document
from reconciler.schemas import status as status_schema

GiB, MiB = 1 << 30, 1 << 20


def test_a_suggestion_reads_as_the_figure_to_write_and_what_it_frees():
    lower = RightSize(model="tiny-chat", vram=2 * GiB, peak=int(1.1 * GiB), span=3 * 86400 + 5, samples=9000,
                      suggested=1280 * MiB, gpus=2, gpu_name="L4")
    assert rightsize_line(lower) == ("tiny-chat: vram 2Gi, measured peak 1.1 GiB over 3 d: 1.25Gi would free "
                                     "768 MiB on each of 2 GPUs")
    raise_ = RightSize(model="coder", vram=256 * MiB, peak=600 * MiB, span=42, samples=3, suggested=768 * MiB,
                       gpus=1, gpu_name="sim")
    assert rightsize_lines([raise_]) == [
        "Right-size (fixed vram against measured peaks):",
        "  coder: vram 256Mi, measured peak 600 MiB over 42 s: raise it to 768Mi (512 MiB more on its GPU)",
    ]
    assert rightsize_lines([]) == []


def test_figures_are_spelled_as_a_spec_would_write_them():
    assert [spec_quantity(n) for n in (2 * GiB, 1280 * MiB, 768 * MiB, 1536 * MiB, 1000)] == [
        "2Gi", "1.25Gi", "768Mi", "1.5Gi", "1000"]
    assert [span_text(s) for s in (5, 600, 7200, 3 * 86400)] == ["5 s", "10 min", "2 h", "3 d"]


def cluster() -> ObservedState:
    node = ObservedNode(name="node-a", gpus=(ObservedGpu(0, "sim", 24 * GiB),))

    def replica(model: str, vram: int, measured: int | None) -> ObservedReplica:
        return ObservedReplica(model=model, replica=0, node="node-a", gpus=(0,), vram=vram, restart_hash="r",
                               config_hash="c", state=ReplicaState.RUNNING, app=f"reconciler--{model}--r0",
                               measured=measured, measured_source="rss" if measured is not None else "")

    return ObservedState(nodes=(node,), replicas=(replica("chat", 2 * GiB, 700 * MiB), replica("hog", 256 * MiB, GiB),
                                                  replica("quiet", GiB, None)))


def test_status_text_sets_measured_beside_planned_and_warns_of_an_overrun():
    text = render_status(cluster())
    assert "    █ chat[0]                          2 GiB  running  measured 700 MiB (rss)\n" in text
    assert "    ▓ hog[0]                         256 MiB  running  measured 1 GiB (rss)\n" in text
    assert "    ■ quiet[0]                         1 GiB  running\n" in text
    assert ("Replicas using more memory than planned:\n  overrun: hog[0] on node-a/gpu0 uses 1 GiB per GPU (rss), "
            "planned 256 MiB; at risk on its GPU: chat[0], quiet[0]\n") in text


def test_status_json_carries_measured_bytes_or_null_and_the_overrun_as_a_warning():
    document = status_document(cluster())
    jsonschema.validate(document, status_schema.schema())
    assert {r["model"]: (r["measured"], r["measuredSource"]) for r in document["replicas"]} == {
        "chat": (700 * MiB, "rss"), "hog": (GiB, "rss"), "quiet": (None, None)}
    assert document["warnings"] == ["overrun: hog[0] on node-a/gpu0 uses 1 GiB per GPU (rss), planned 256 MiB; at risk "
                                    "on its GPU: chat[0], quiet[0]"]
