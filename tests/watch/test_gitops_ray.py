"""`reconciler watch --git` against the session's local Ray cluster: a pushed change is applied, a pushed broken
spec changes nothing and is named, and `reconciler status` shows both revisions."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .gitrepo import SpecRepo
from .test_watch_ray import MODEL, POOL, Watcher, running, specs, wait_running  # noqa: F401 - specs: a fixture

pytestmark = pytest.mark.ray


def models(**replicas: object) -> str:
    return "".join(MODEL.format(name=n, vram="2Gi", replicas=r, engine_args="{}") for n, r in replicas.items())


class GitWatcher(Watcher):
    def __init__(self, repo: SpecRepo, events, *extra: str) -> None:
        self.events_path = events
        self.process = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", "--git", repo.url, "--path", "specs", "--git-poll", "0.3",
             "--yes", "--interval", "3", "--lease-ttl", "3", "--events", str(events), *extra],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL,
            env={**os.environ, "NO_COLOR": "1"},
        )


def status_lines(specs) -> list[str]:
    result = subprocess.run([sys.executable, "-m", "reconciler", "status", str(specs)], capture_output=True, text=True,
                            timeout=120, stdin=subprocess.DEVNULL, env={**os.environ, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_pushed_commits_are_applied_and_a_broken_one_changes_nothing(specs, tmp_path):
    # ``specs`` is where the fixture's cleanup applies an empty spec set when the test ends; the watcher reads the
    # repository instead.
    repo = SpecRepo(tmp_path)
    first = repo.push("alpha", {"specs/pool.yaml": POOL, "specs/models.yaml": models(alpha=1)})
    specs.mkdir()
    (specs / "pool.yaml").write_text(POOL)

    def mirror(text: str) -> None:  # what the test observes the cluster against: the last good revision's specs
        (specs / "models.yaml").write_text(text)

    mirror(models(alpha=1))
    watcher = GitWatcher(repo, tmp_path / "events.jsonl")
    try:
        applied = watcher.wait_for(lambda e: e["event"] == "revision")
        assert applied["commit"] == first
        watcher.wait_for(lambda e: e["event"] == "applied")
        wait_running(specs, {("alpha", 0)})

        seen = len(watcher.events())
        second = repo.push("add beta", {"specs/models.yaml": models(alpha=1, beta=1)})
        mirror(models(alpha=1, beta=1))
        watcher.wait_for(lambda e: e["event"] == "revision" and e["commit"] == second, after=seen)
        watcher.wait_for(lambda e: e["event"] == "applied", after=seen)
        before = wait_running(specs, {("alpha", 0), ("beta", 0)})

        seen = len(watcher.events())
        broken = repo.push("scale alpha, with a typo", {"specs/models.yaml": models(alpha="2x", beta=1)})
        invalid = watcher.wait_for(lambda e: e["event"] == "revision-invalid", after=seen)
        assert invalid["commit"] == broken and invalid["keeping"]["commit"] == second
        timer = watcher.wait_for(lambda e: e["event"] == "cycle" and e["cause"] == "drift-timer", after=seen)
        assert not timer["acted"]
        assert running(specs) == before

        # The lease publishes what the watcher enforces at its next renewal (every ttl/3 = 1 s).
        watcher.wait_for(lambda e: e["event"] == "cycle" and e["cause"] == "drift-timer",
                         after=len(watcher.events()))
        lines = status_lines(specs)
        assert any(f'revision: {second[:7]} "add beta" of {repo.url}' in line for line in lines), lines
        assert any(f'not applied: commit {broken[:7]} "scale alpha, with a typo"' in line for line in lines), lines
    finally:
        out = watcher.stop()
    assert watcher.process.returncode == 0, out
