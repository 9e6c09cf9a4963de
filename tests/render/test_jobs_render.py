"""Jobs as people and scripts read them: the plan's Jobs lines and the `jobs` of `status --format json`."""

from __future__ import annotations

from dataclasses import replace

from reconciler.desired import DesiredState, GpuSpec, InventoryNode, Job, Pool, Preemption
from reconciler.observed import JobRunState, ObservedJobRun, from_inventory
from reconciler.planner import plan
from reconciler.render.jobs import job_lines, status_json

GiB = 1 << 30
T0 = 1_800_000_000.0


def _job(name: str, retries: int = 0, vram: int = 6) -> Job:
    return Job(name=name, pool="lab", priority_class="batch", priority=10, preemption=Preemption.LOWER_PRIORITY,
               preemptible=True, vram=vram * GiB, entrypoint="python x.py", retries=retries)


def _world():
    pool = Pool(name="lab", inventory=(InventoryNode("node-a", (GpuSpec("rtx", 24 * GiB),)),))
    done, broken, fresh, big = _job("done"), _job("broken"), _job("fresh"), _job("big", vram=30)
    desired = DesiredState(pools=(pool,), jobs=(big, broken, done, fresh))
    runs = (
        ObservedJobRun("broken", 1, broken.revision, JobRunState.FAILED, "node-a", (0,), 6 * GiB, started=T0 - 60,
                       ended=T0 - 30, message="Traceback (most recent call last):\nValueError: bad row 17"),
        ObservedJobRun("done", 1, done.revision, JobRunState.SUCCEEDED, "node-a", (0,), 6 * GiB, started=T0 - 60,
                       ended=T0 - 30),
    )
    observed = replace(from_inventory(desired), jobs=runs, at=T0)
    return plan(desired, observed), observed


def test_job_lines():
    p, _ = _world()
    assert job_lines(p) == [
        "Jobs:",
        "  … job/big     waiting    run 1           —               30 GiB  # first run; waiting for room: needs "
        "30 GiB on one GPU; the most any GPU of pool lab could offer after evicting lower priorities is 18 GiB "
        "(node-a gpu0)",
        "  ✗ job/broken  failed     run 2           —               6 GiB  # run 1 failed: ValueError: bad row 17 "
        "after 0 retries",
        "  ✓ job/done    succeeded  run 2           —               6 GiB  # run 1 succeeded",
        "  … job/fresh   waiting    run 1           node-a/gpu0     6 GiB  # first run",
    ]


def test_status_json_lists_jobs_with_the_interface_keys():
    p, observed = _world()
    jobs = {j["name"]: j for j in status_json(p, observed)["jobs"]}
    assert {k: jobs["fresh"][k] for k in ("name", "state", "node", "gpus", "runs")} == {
        "name": "fresh", "state": "waiting", "node": "node-a", "gpus": [0], "runs": 0}
    assert jobs["broken"]["state"] == "failed"
    assert jobs["broken"]["lastRun"]["logTail"].endswith("ValueError: bad row 17")
    assert {j["state"] for j in jobs.values()} <= {"waiting", "running", "preempted", "succeeded", "failed"}


def test_the_full_status_document_with_jobs_matches_its_schema():
    import json
    from pathlib import Path

    import jsonschema

    from reconciler.render.status_json import status_document

    p, observed = _world()
    document = status_document(observed, desired=None, gateway_urls=[])
    document.update(status_json(p, observed))
    schema = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "status.schema.json").read_text())
    jsonschema.validate(document, schema)
    assert [j["name"] for j in document["jobs"]] == ["big", "broken", "done", "fresh"]
