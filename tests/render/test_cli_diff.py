"""`reconciler diff` on a real git repository made in a temporary directory: two commits, then a dirty tree."""

from __future__ import annotations

import json
import subprocess

import pytest

from reconciler.cli import main

from .test_cli import EMBED, POOL, TRIAGE, _running_embed, _write


def _git(repo, *args: str) -> None:
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


@pytest.fixture
def repo(tmp_path, monkeypatch):
    """base: pool + embed; head: triage added, embed grown to 14 GiB."""
    _git(tmp_path, "init", "-q", "-b", "main")
    _git(tmp_path, "config", "user.email", "ci@example.invalid")
    _git(tmp_path, "config", "user.name", "ci")
    _write(tmp_path / "specs", pool=POOL, embed=EMBED)
    (tmp_path / "README").write_text("not a spec\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "base")
    _git(tmp_path, "tag", "base")
    _write(tmp_path / "specs", triage=TRIAGE, embed=EMBED.replace("12GiB", "14GiB"))
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-q", "-m", "head")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_diff_between_two_commits(repo, capsys):
    code, out, err = _run(capsys, "diff", "base", "HEAD", "specs", "--offline")
    assert code == 0, err
    assert out.startswith("Spec changes in specs from base (")
    assert "  ~ Model embed\n      vram: 12 GiB → 14 GiB\n" in out
    assert "  + Model triage  (pool homelab · class critical · 1 replica × 16 GiB)" in out
    # On one 24 GiB GPU, triage (critical) takes the place embed had at base.
    assert "✗ embed[0]" in out and "+ triage[0]" in out
    assert "The head's plan against an empty cluster shaped like the pools' inventory (--offline):" in out
    assert out.endswith("1 replica cannot be placed.\n")


def test_diff_one_argument_is_the_directory_when_one_exists(repo, capsys):
    code, out, _ = _run(capsys, "diff", "base", "specs", "--offline")
    assert code == 0
    assert "from base (" in out and "to the working tree:" in out
    code, out, _ = _run(capsys, "diff", "base", "HEAD", "--offline")  # HEAD is no directory: a revision
    assert code == 0
    assert "to HEAD (" in out


def test_diff_working_tree_sees_uncommitted_changes(repo, capsys):
    (repo / "specs" / "triage.yaml").unlink()
    code, out, _ = _run(capsys, "diff", "HEAD", "--offline", "--format", "json")
    assert code == 0
    data = json.loads(out)
    assert data["head"] == "the working tree"
    assert [(c["kind"], c["name"], c["change"]) for c in data["specChanges"]] == [("Model", "triage", "removed")]
    assert {(c["change"], c["model"]) for c in data["placementChanges"]} == {("placed", "embed"), ("removed", "triage")}


def test_diff_markdown(repo, capsys):
    code, out, _ = _run(capsys, "diff", "base", "HEAD", "specs", "--offline", "--format", "markdown")
    assert code == 0
    assert out.startswith("### reconciler diff: base (")
    assert "| `+` | Model | `triage` | added: pool homelab · class critical · 1 replica × 16 GiB |" in out
    assert "#### The head's plan against" in out


def test_fail_on_gates_evictions_of_a_class(repo, tmp_path, capsys):
    snapshot = _running_embed(repo / "specs", tmp_path / "observed.json")  # embed at 14 GiB is running
    args = ("diff", "base", "HEAD", "specs", "--observed", str(snapshot))
    code, out, err = _run(capsys, *args, "--fail-on", "evict:batch", "--detailed-exitcode")
    assert code == 3
    assert "Plan: 1 to create, 0 to move, 1 to evict, 0 to delete." in out  # the diff is still printed
    assert "error: --fail-on evict:batch: the head's plan has 1 such change:" in err
    assert "! evict embed[0] node-a/gpu0 → —" in err
    # Another class, or another kind, does not match; then --detailed-exitcode decides.
    assert _run(capsys, *args, "--fail-on", "evict:critical", "--detailed-exitcode")[0] == 2
    assert _run(capsys, *args, "--fail-on", "delete")[0] == 0
    assert _run(capsys, *args, "--fail-on", "unplaced:batch")[0] == 3
    assert _run(capsys, *args, "--fail-on", "unplaced:critical")[0] == 0


def test_detailed_exitcode_zero_when_the_head_plan_is_empty(repo, tmp_path, capsys):
    _git(repo, "rm", "-q", "specs/triage.yaml")
    _git(repo, "commit", "-q", "-m", "drop triage")
    snapshot = _running_embed(repo / "specs", tmp_path / "observed.json")
    code, out, _ = _run(capsys, "diff", "base", "HEAD", "--observed", str(snapshot), "--detailed-exitcode")
    assert code == 0, out
    assert out.endswith("No changes. The cluster matches the specs.\n")


def test_fail_on_rejects_unknown_kinds(repo, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["diff", "base", "--fail-on", "explode:critical"])
    assert exit_.value.code == 2
    assert "unknown kind 'explode'" in capsys.readouterr().err


def test_diff_errors_are_clean(repo, capsys):
    code, _, err = _run(capsys, "diff", "no-such-ref", "--offline")
    assert (code, err.strip()) == (1, "error: unknown revision 'no-such-ref'")
    (repo / "specs" / "embed.yaml").write_text(EMBED.replace("vram: 12GiB", "vram: lots"))
    code, _, err = _run(capsys, "diff", "base", "--offline")
    assert code == 1
    assert "embed.yaml:" in err and "error:" in err and "Traceback" not in err


def test_directory_missing_at_base_means_everything_is_added(repo, capsys):
    _git(repo, "mv", "specs", "specs2")
    _git(repo, "commit", "-q", "-m", "rename")
    code, out, _ = _run(capsys, "diff", "base", "HEAD", "specs2", "--offline")
    assert code == 0
    assert "  + ResourcePool homelab" in out and "  + Model embed" in out


def test_errors_in_the_base_revision_are_named_with_it(repo, capsys):
    (repo / "specs" / "embed.yaml").write_text(EMBED.replace("vram: 12GiB", "vram: lots"))
    _git(repo, "commit", "-q", "-am", "broken")
    _git(repo, "tag", "broken")
    (repo / "specs" / "embed.yaml").write_text(EMBED)
    code, out, err = _run(capsys, "diff", "broken", "--offline")
    assert code == 1
    assert out == ""
    assert err.startswith("in specs at broken (")
    assert "embed.yaml:4:" in err and "error: the specs in specs at broken have errors" in err
