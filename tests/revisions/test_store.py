"""Revisions in a key-value store (the same contract as the cluster's GCS): numbering, trimming, how an apply that
died reads, and the record's round trip through its compressed form."""

from __future__ import annotations

import subprocess
from pathlib import Path

from reconciler.adapter import revisions
from reconciler.adapter.kv import MemoryKV
from reconciler.adapter.lease import Holder, acquire
from reconciler.desired import desired_from_json, desired_to_json
from reconciler.executor.record import Recorder, directory_source
from reconciler.observed import from_inventory
from reconciler.planner import plan
from reconciler.revision import Outcome, Revision, Source, summary_json
from reconciler.settings import RevisionSettings
from reconciler.spec import load_specs

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def _desired(name: str = "homelab"):
    result = load_specs(EXAMPLES / name)
    assert result.desired is not None, result.diagnostics
    return result.desired


def test_every_example_desired_state_survives_the_round_trip_with_its_fingerprint():
    for name in ("homelab", "batch-jobs", "ondemand", "preemption", "tensor-parallel"):
        desired = _desired(name)
        back = desired_from_json(desired_to_json(desired))
        assert back == desired
        assert back.fingerprint == desired.fingerprint


def test_revisions_are_numbered_kept_to_the_limit_and_read_back_whole():
    kv = MemoryKV()
    desired = _desired()
    the_plan = plan(desired, from_inventory(desired))
    clock = iter(range(1000, 2000)).__next__
    recorder = Recorder(kv, command="reconciler apply specs", source=lambda: Source(directory="specs"),
                        settings=RevisionSettings(keep=3), clock=lambda: float(clock()))
    for _ in range(5):
        started = recorder.begin(the_plan, desired, cause="apply")
        recorder.end(started, results=[(True, "running")] * len(the_plan.actions))
    assert revisions.numbers(kv) == [3, 4, 5]
    newest = revisions.get(kv, 5, now=0)
    assert newest is not None and newest.outcome is Outcome.CONVERGED
    assert newest.desired == desired and newest.plan == the_plan
    row = summary_json(newest)
    assert {"revision", "at", "by", "source", "commit", "actions", "outcome", "reason"} <= set(row)
    assert row["revision"] == 5 and row["actions"] == len(the_plan.actions) > 0
    assert row["by"]["command"] == "reconciler apply specs"
    assert Revision.from_bytes(newest.to_bytes()) == newest
    # Compressed: the record is much smaller than its JSON.
    assert len(newest.to_bytes()) * 3 < len(str(newest.to_json()))


def test_a_failed_action_fails_the_revision_with_the_replica_and_its_message():
    kv = MemoryKV()
    desired = _desired()
    the_plan = plan(desired, from_inventory(desired))
    recorder = Recorder(kv, command="reconciler apply", source=Source)
    started = recorder.begin(the_plan, desired, cause="apply")
    results = [(True, "running")] * (len(the_plan.actions) - 1) + [(False, "engine crashed")]
    done = recorder.end(started, results=results)
    last = the_plan.actions[-1]
    assert done.outcome is Outcome.FAILED
    assert f"{last.model}[{last.replica}]: engine crashed" in done.reason


def test_an_apply_whose_holder_no_longer_holds_the_lock_reads_as_interrupted():
    kv = MemoryKV()
    desired = _desired()
    the_plan = plan(desired, from_inventory(desired))
    lease = acquire(kv, holder=Holder.current("reconciler apply specs"), ttl=60)
    recorder = Recorder(kv, command="reconciler apply specs", source=Source)
    started = recorder.begin(the_plan, desired, cause="apply", token=lease.record.holder.token)
    assert revisions.get(kv, started.number, now=lease.record.renewed).outcome is Outcome.APPLYING
    lease.release()  # what a killed process's lease comes to once it expires
    settled = revisions.get(kv, started.number, now=lease.record.renewed)
    assert settled.outcome is Outcome.INTERRUPTED and "stopped before it ended" in settled.reason


def test_a_directory_in_git_is_recorded_with_its_commit_subject_and_uncommitted_changes(tmp_path):
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True,
                              text=True).stdout.strip()

    git("init", "-q")
    git("config", "user.email", "ci@example.invalid")
    git("config", "user.name", "CI")
    specs = tmp_path / "specs"
    specs.mkdir()
    (specs / "pool.yaml").write_text("a: 1\n")
    git("add", ".")
    git("commit", "-q", "-m", "Add the pool")
    clean = directory_source(specs)
    assert clean.commit == git("rev-parse", "HEAD") and clean.subject == "Add the pool" and not clean.dirty
    (specs / "pool.yaml").write_text("a: 2\n")
    assert directory_source(specs).dirty
    assert directory_source(tmp_path / "nowhere") == Source(directory=str(tmp_path / "nowhere"))
