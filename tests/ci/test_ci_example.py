"""The CI example runs as documented: the workflow's own `run:` scripts, on a temporary git repository of specs.

The steps are read out of examples/ci/github-actions.yml and run with bash as GitHub runs them (`bash -eo pipefail`),
with the variables GitHub would set (the commits, GITHUB_OUTPUT, GITHUB_STEP_SUMMARY). Steps that need GitHub itself
(checkout, installing, posting the comment) are not run.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from reconciler.observed import Source, from_inventory, to_json
from reconciler.planner import apply_to_observed, plan
from reconciler.spec import load_specs

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "ci"

HARMLESS = """\
---
apiVersion: reconciler/v1
kind: Model
metadata:
  name: embeddings
spec:
  engine: echo
  source: BAAI/bge-small-en-v1.5
  vram: 6Gi
"""

EVICTING = """\
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata:
  name: incident
spec:
  value: 1000
---
apiVersion: reconciler/v1
kind: Model
metadata:
  name: incident-triage
spec:
  priorityClass: incident
  engine: echo
  source: Qwen/Qwen2.5-32B-Instruct-AWQ
  vram: 20Gi
  replicas: 2
"""


def steps() -> dict[str, dict]:
    workflow = YAML(typ="safe").load((EXAMPLE / "github-actions.yml").read_text())
    return {s["name"]: s for job in workflow["jobs"].values() for s in job["steps"] if "name" in s}


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout.strip()


def run_step(repo: Path, name: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = steps()[name]["run"]
    full_env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        "NO_COLOR": "1",
        **env,
    }
    return subprocess.run(["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", script], cwd=repo,
                          env=full_env, capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A spec repository with main and two pull-request branches; returns the repo and the commits."""
    repo = tmp_path_factory.mktemp("spec-repo")
    shutil.copytree(EXAMPLE / "specs", repo / "specs")
    shutil.copytree(EXAMPLE / "cluster", repo / "cluster")
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ci@example.invalid")
    git(repo, "config", "user.name", "ci")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "specs and cluster snapshot")
    base = git(repo, "rev-parse", "HEAD")
    heads = {}
    for branch, extra in (("add-embeddings", HARMLESS), ("incident-model", EVICTING)):
        git(repo, "checkout", "-q", "-b", branch, base)
        with (repo / "specs" / "models.yaml").open("a") as f:
            f.write(extra)
        git(repo, "commit", "-q", "-am", branch)
        heads[branch] = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    return {"path": repo, "base": base, "heads": heads}


def pull_request(repo: dict, branch: str, tmp_path: Path) -> tuple[int, str, subprocess.CompletedProcess[str]]:
    path = repo["path"]
    output, summary = tmp_path / "output", tmp_path / "summary"
    output.touch()
    summary.touch()
    diff = run_step(path, "Diff against the cluster snapshot", {
        "BASE": repo["base"], "HEAD": repo["heads"][branch],
        "GITHUB_OUTPUT": str(output), "GITHUB_STEP_SUMMARY": str(summary),
    })
    assert diff.returncode == 0, diff.stderr  # the step records the status; the gate step acts on it
    outputs = dict(line.split("=", 1) for line in output.read_text().splitlines())
    markdown = (path / "diff.md").read_text()
    assert summary.read_text() == markdown
    gate = run_step(path, "Gate on critical evictions", {"STATUS": outputs["status"]})
    return int(outputs["status"]), markdown, gate


def test_validate_passes_on_the_example_and_fails_with_located_errors(repo, tmp_path):
    assert run_step(repo["path"], "Validate specs", {}).returncode == 0
    broken = tmp_path / "broken"
    shutil.copytree(repo["path"] / "specs", broken / "specs")
    models = broken / "specs" / "models.yaml"
    models.write_text(models.read_text().replace("replicas: 1\n  route", "replicas: one\n  route"))
    result = run_step(broken, "Validate specs", {})
    assert result.returncode == 1
    assert "models.yaml:10:13: error: `replicas`" in result.stdout


def test_a_harmless_pull_request_passes_the_gate(repo, tmp_path):
    status, markdown, gate = pull_request(repo, "add-embeddings", tmp_path)
    assert status == 2  # changes, none gated
    assert gate.returncode == 0, gate.stdout
    assert "embeddings" in markdown and "support-chat" in markdown


def test_a_pull_request_evicting_a_critical_model_is_blocked(repo, tmp_path):
    status, markdown, gate = pull_request(repo, "incident-model", tmp_path)
    assert status == 3
    assert gate.returncode == 3
    assert "would evict a critical model" in gate.stdout
    evictions = [line for line in markdown.splitlines() if "support-chat" in line and "evict" in line.lower()]
    assert evictions, markdown


def test_the_readme_shows_the_workflow_commands_verbatim():
    readme = (EXAMPLE / "README.md").read_text()
    for name in ("Validate specs", "Diff against the cluster snapshot"):
        for line in steps()[name]["run"].splitlines():
            if line.strip().startswith(("reconciler", "--", "status=")):
                assert line.strip() in readme, f"README lacks the workflow's line: {line.strip()}"


def test_the_committed_snapshot_matches_the_example_specs_applied():
    desired = load_specs(EXAMPLE / "specs").desired
    assert desired is not None
    empty = from_inventory(desired)
    expected = replace(apply_to_observed(plan(desired, empty), empty, desired), source=Source.SNAPSHOT)
    committed = json.loads((EXAMPLE / "cluster" / "observed.json").read_text())
    assert committed == to_json(expected)


# A stand-in for the GitHub CLI with a store of pull-request comments: `--edit-last` rewrites the newest comment
# (and fails when there is none, as gh does), otherwise a comment is added. GH_FAKE_READONLY makes every write fail
# the way a fork's read-only token does.
FAKE_GH = """\
#!/usr/bin/env bash
set -eu
[ "$1 $2" = "pr comment" ] || { echo "unexpected: $*" >&2; exit 2; }
pr=$3; shift 3
body=""; edit=0
while [ $# -gt 0 ]; do
  case "$1" in
    --body-file) body=$(cat "$2"); shift 2 ;;
    --edit-last) edit=1; shift ;;
    *) echo "unexpected flag $1" >&2; exit 2 ;;
  esac
done
if [ -n "${GH_FAKE_READONLY:-}" ]; then
  echo "GraphQL: Resource not accessible by integration (addComment)" >&2; exit 1
fi
dir="$GH_FAKE_STORE/$pr"; mkdir -p "$dir"
last=$(ls "$dir" | sort -n | tail -1)
if [ "$edit" = 1 ]; then
  [ -n "$last" ] || { echo "no comments found for current user" >&2; exit 1; }
  printf '%s' "$body" > "$dir/$last"
else
  printf '%s' "$body" > "$dir/$(( ${last:-0} + 1 ))"
fi
"""


def diff_job_steps() -> list[dict]:
    workflow = YAML(typ="safe").load((EXAMPLE / "github-actions.yml").read_text())
    return workflow["jobs"]["diff"]["steps"]


def fake_gh(tmp_path: Path) -> tuple[Path, Path]:
    bin_dir, store = tmp_path / "bin", tmp_path / "comments"
    bin_dir.mkdir()
    store.mkdir()
    gh = bin_dir / "gh"
    gh.write_text(FAKE_GH)
    gh.chmod(0o755)
    return bin_dir, store


def post_comment(repo: Path, bin_dir: Path, store: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    env = {"GH_FAKE_STORE": str(store), "PR": "7", "GH_TOKEN": "token", **extra}
    env["PATH"] = f"{bin_dir}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return run_step(repo, "Post the diff on the pull request", env)


def test_the_gate_runs_before_the_comment_and_the_comment_skips_forks():
    names = [s.get("name") for s in diff_job_steps()]
    gate, post = names.index("Gate on critical evictions"), names.index("Post the diff on the pull request")
    assert gate < post, "a failure to comment would skip the gate"
    assert "if" not in diff_job_steps()[gate]
    condition = diff_job_steps()[post]["if"]
    # Runs after a failed gate too (the diff is most useful on a blocked pull request), but not on a fork's.
    assert "!cancelled()" in condition and "!github.event.pull_request.head.repo.fork" in condition


def test_the_diff_is_posted_once_and_then_kept_up_to_date(repo, tmp_path):
    bin_dir, store = fake_gh(tmp_path)
    status, markdown, _ = pull_request(repo, "add-embeddings", tmp_path)
    first = post_comment(repo["path"], bin_dir, store)
    assert first.returncode == 0, first.stderr
    assert [p.read_text() for p in (store / "7").iterdir()] == [markdown.rstrip("\n")]
    (repo["path"] / "diff.md").write_text("the next push's diff\n")
    again = post_comment(repo["path"], bin_dir, store)
    assert again.returncode == 0, again.stderr
    assert [p.read_text() for p in (store / "7").iterdir()] == ["the next push's diff"]


def test_a_comment_that_cannot_be_posted_does_not_fail_the_check(repo, tmp_path):
    bin_dir, store = fake_gh(tmp_path)
    pull_request(repo, "incident-model", tmp_path)
    result = post_comment(repo["path"], bin_dir, store, GH_FAKE_READONLY="1")
    assert result.returncode == 0, result.stderr
    assert "::warning::could not post the diff as a comment" in result.stdout
    assert not any(store.iterdir())


def test_the_examples_install_this_project_by_its_distribution_name():
    import tomllib

    name = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["name"]
    assert name != "reconciler"  # taken on PyPI by an unrelated project
    workflow = YAML(typ="safe").load((EXAMPLE / "github-actions.yml").read_text())
    assert workflow["env"]["RECONCILER_PACKAGE"].startswith(f"{name}==")
    assert f'pip install "{name}[gpu]"' in (ROOT / "README.md").read_text()
