"""Cron decisions are reproducible from a snapshot: `plan --observed FILE` plans with the time it was observed."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from reconciler.cli import main
from reconciler.observed import from_inventory, to_json
from reconciler.spec import load_specs

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "batch-jobs"


def _plan_at(when: datetime, tmp_path: Path, capsys) -> dict:
    desired = load_specs(EXAMPLE).desired
    snapshot = tmp_path / "observed.json"
    snapshot.write_text(json.dumps(to_json(replace(from_inventory(desired), at=when.timestamp()))))
    assert main(["plan", str(EXAMPLE), "--observed", str(snapshot), "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_the_nightly_job_is_planned_at_two_and_not_before(tmp_path, capsys):
    before = _plan_at(datetime(2026, 12, 1, 1, 59, tzinfo=UTC), tmp_path, capsys)
    at_two = _plan_at(datetime(2026, 12, 1, 2, 0, 30, tzinfo=UTC), tmp_path, capsys)
    runs = {(a["model"], a["action"]) for a in at_two["actions"]}
    assert ("job/nightly-embeddings", "create") in runs
    assert ("job/nightly-embeddings", "create") not in {(a["model"], a["action"]) for a in before["actions"]}
    (nightly,) = [j for j in at_two["jobs"] if j["name"] == "nightly-embeddings"]
    assert nightly["slot"] == datetime(2026, 12, 1, 2, 0, tzinfo=UTC).timestamp()
    assert nightly["env"] == {"BATCH_SIZE": "64"} and nightly["workingDir"] == "jobs/embed"
    assert _plan_at(datetime(2026, 12, 1, 2, 0, 30, tzinfo=UTC), tmp_path, capsys)["digest"] == at_two["digest"]
