"""`reconciler watch --git` as a process, --plan-only against the CI example's snapshot: no cluster needed.

The fetch thread, the event log and the metrics endpoint are the real ones; test_gitops_ray.py acts on a cluster.
"""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from pathlib import Path

from .gitrepo import SpecRepo
from .test_cli import EXAMPLE, NEW_MODEL, Events, free_port, stop


def example_files() -> dict[str, str]:
    return {f"specs/{p.name}": p.read_text() for p in sorted((EXAMPLE / "specs").iterdir())}


def start(tmp_path: Path, repo: SpecRepo, *extra: str) -> tuple[subprocess.Popen, Events]:
    import os

    events = tmp_path / "events.jsonl"
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "watch", "--git", repo.url, "--path", "specs", "--git-poll", "0.2",
         "--plan-only", "--observed", str(EXAMPLE / "cluster" / "observed.json"), "--events", str(events),
         "--interval", "3600", *extra],
        cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "NO_COLOR": "1"},
    )
    return process, Events(events)


def test_each_pushed_commit_is_planned_and_a_broken_one_is_named(tmp_path):
    repo = SpecRepo(tmp_path)
    first = repo.push("the example specs", example_files())
    port = free_port()
    process, events = start(tmp_path, repo, "--metrics-port", str(port))
    try:
        revision = events.wait_for(lambda e: e["event"] == "revision")
        assert (revision["commit"], revision["subject"]) == (first, "the example specs")
        events.wait_for(lambda e: e["event"] == "cycle" and e["cause"] == "startup")

        models = (EXAMPLE / "specs" / "models.yaml").read_text()
        added = repo.push("add embeddings", {"specs/models.yaml": models + NEW_MODEL})
        events.wait_for(lambda e: e["event"] == "revision" and e["commit"] == added)
        plan = events.wait_for(lambda e: e["event"] == "plan" and e["cause"] == "spec-change")
        assert [(a["action"], a["model"]) for a in plan["actions"]] == [("create", "embeddings")]

        broken = repo.push("typo", {"specs/models.yaml": models.replace("replicas: 1\n", "replicas: one\n", 1)})
        invalid = events.wait_for(lambda e: e["event"] == "revision-invalid")
        assert (invalid["commit"], invalid["subject"]) == (broken, "typo")
        assert invalid["keeping"]["commit"] == added
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            text = response.read().decode()
        assert (f'reconciler_git_revision_info{{branch="main",commit="{added}",state="applied",'
                f'subject="add embeddings"}} 1.0') in text
        assert f'commit="{broken}",state="invalid"' in text
    finally:
        out = stop(process)
    assert process.returncode == 0, out
    assert f'commit {broken[:7]} "typo" has invalid specs: not applied; keeping {added[:7]}' in out


def test_a_repository_that_cannot_be_read_stops_watch_with_one_sentence(tmp_path):
    missing = (tmp_path / "nowhere.git").as_uri()
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "watch", "--git", missing, "--plan-only", "--offline"],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.startswith(f"error: cannot read the repository {missing}: "), result.stderr
    assert "Traceback" not in result.stderr


def test_dir_and_git_together_are_refused(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "watch", str(tmp_path), "--git", "file:///x", "--plan-only",
         "--offline"], capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert "--path" in result.stderr
