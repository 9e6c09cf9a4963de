"""Watch's status page from a status document: the VRAM bar's parts, the measured mark where a replica was measured,
and text from the cluster escaped, never markup."""

from __future__ import annotations

from reconciler.render.page import render_page

GiB = 1 << 30


def _document(*, measured: int | None, used: int | None = None, message: str = "") -> dict:
    return {
        "gateway": {"url": "http://127.0.0.1:8001/v1", "urls": [], "keysRequired": False},
        "models": [{"name": "chat", "state": "running", "replicas": {"running": 1, "desired": 1}, "route": "/chat",
                    "url": None}],
        "replicas": [{"model": "chat", "replica": 0, "node": "node-a", "gpus": [0], "vram": 6 * GiB,
                      "state": "failed", "message": message, "measured": measured,
                      "measuredSource": "rss" if measured is not None else None}],
        "nodes": [{"name": "node-a", "alive": True, "deadSince": None, "simulated": True, "gpus": [
            {"index": 0, "name": "A10", "total": 24 * GiB, "planned": 6 * GiB, "used": used, "foreign": 6 * GiB}]}],
        "unplaced": [],
        "warnings": [],
    }


def test_the_bar_is_cut_into_planned_foreign_and_free_and_marks_what_was_measured():
    html = render_page(_document(measured=3 * GiB), refresh=5)
    assert '<div class="seg planned" style="width:25.00%"></div>' in html
    assert '<div class="seg foreign" style="width:25.00%"></div>' in html
    assert '<div class="seg free" style="width:50.00%"></div>' in html
    # 3 GiB measured for the replica plus 6 GiB foreign: the mark at 9 of 24 GiB.
    assert 'class=measured title="measured 9 GiB" style="left:37.50%"' in html
    assert "measured 3 GiB" in html and 'content="5"' in html
    assert "class=measured title" not in render_page(_document(measured=None), refresh=5)
    # NVML's figure for the whole GPU wins where there is one.
    assert 'style="left:50.00%"' in render_page(_document(measured=None, used=12 * GiB), refresh=5)


def test_text_from_the_cluster_is_escaped():
    html = render_page(_document(measured=None, message='<script>alert("x")</script>'), refresh=5)
    assert "<script>" not in html and "&lt;script&gt;" in html
