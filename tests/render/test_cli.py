"""`reconciler plan` and `reconciler diff` end to end: real specs on disk, the real loader and planner, a real git
repository for the diff, and a pseudo-terminal for the colour decision."""

from __future__ import annotations

import dataclasses
import json
import os
import pty
import re
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from reconciler.schemas import plan as plan_schema
from reconciler.cli import main
from reconciler.observed import ObservedReplica, from_inventory, to_json
from reconciler.plan import from_json as plan_from_json
from reconciler.spec import load_specs

ANSI = re.compile(r"\x1b\[[0-9;]*m")

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: homelab}
spec:
  inventory:
    - node: node-a
      gpus: [{name: RTX 4090, memory: 24GiB}]
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: critical}
spec: {value: 90}
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: batch}
spec: {value: 10, default: true}
"""
EMBED = """\
apiVersion: reconciler/v1
kind: Model
metadata: {name: embed}
spec: {source: org/embed, vram: 12GiB}
"""
TRIAGE = """\
apiVersion: reconciler/v1
kind: Model
metadata: {name: triage}
spec: {source: org/triage, vram: 16GiB, priorityClass: critical}
"""


def _write(directory: Path, **files: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (directory / f"{name}.yaml").write_text(content)
    return directory


def _running_embed(specs: Path, out: Path) -> Path:
    """A snapshot of the cluster with embed[0] running on node-a/gpu0."""
    desired = load_specs(specs).desired
    model = desired.model("embed")
    state = dataclasses.replace(
        from_inventory(desired),
        replicas=(ObservedReplica("embed", 0, "node-a", (0,), model.vram, model.restart_hash, model.config_hash),),
    )
    out.write_text(json.dumps(to_json(state), indent=2))
    return out


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


# --- plan -----------------------------------------------------------------------------------------------------


def test_plan_offline_text_and_detailed_exitcode(tmp_path, capsys):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED)
    code, out, _ = _run(capsys, "plan", str(specs), "--offline")
    assert code == 0
    assert "+ create  embed[0]" in out
    assert out.endswith("Plan: 1 to create, 0 to move, 0 to evict, 0 to delete.\n")
    assert not ANSI.search(out)
    assert _run(capsys, "plan", str(specs), "--offline", "--detailed-exitcode")[0] == 2


def test_plan_detailed_exitcode_zero_when_nothing_changes(tmp_path, capsys):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED)
    snapshot = _running_embed(specs, tmp_path / "observed.json")
    code, out, _ = _run(capsys, "plan", str(specs), "--observed", str(snapshot), "--detailed-exitcode")
    assert code == 0
    assert out.endswith("No changes. The cluster matches the specs.\n")


def test_plan_against_snapshot_evicts_and_explains(tmp_path, capsys):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED)
    snapshot = _running_embed(specs, tmp_path / "observed.json")
    _write(specs, triage=TRIAGE)
    code, out, _ = _run(capsys, "plan", str(specs), "--observed", str(snapshot), "--detailed-exitcode")
    assert code == 2
    assert re.search(r"^  ! evict +embed\[0\] +node-a/gpu0 → —", out, re.M)
    assert "Plan: 1 to create, 0 to move, 1 to evict, 0 to delete." in out
    assert "Replicas that cannot be placed:" in out


def test_plan_json_validates_against_schema_and_out_saves_it(tmp_path, capsys):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED, triage=TRIAGE)
    saved = tmp_path / "plan.json"
    code, out, err = _run(capsys, "plan", str(specs), "--offline", "--format", "json", "--out", str(saved))
    assert code == 0
    data = json.loads(out)
    Draft202012Validator(plan_schema.schema()).validate(data)
    assert json.loads(saved.read_text()) == data
    assert plan_from_json(data).summary["create"] == 1
    assert "apply --plan" in err


def test_plan_markdown(tmp_path, capsys):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED)
    code, out, _ = _run(capsys, "plan", str(specs), "--offline", "--format", "markdown")
    assert code == 0
    assert out.startswith("### reconciler plan\n\n**Plan: 1 to create, 0 to move, 0 to evict, 0 to delete.**")
    assert "| `+` | create | `embed[0]` |" in out


def test_plan_reports_spec_errors_and_exits_1(tmp_path, capsys):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED.replace("vram: 12GiB", "vram: twelve"))
    code, out, err = _run(capsys, "plan", str(specs), "--offline", "--detailed-exitcode")
    assert code == 1
    assert out == ""
    assert re.search(r"embed\.yaml:\d+:\d+: error: ", err)


def test_plan_snapshot_errors_name_the_json_path(tmp_path, capsys):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED)
    snapshot = _running_embed(specs, tmp_path / "observed.json")
    data = json.loads(snapshot.read_text())
    data["nodes"][0]["gpus"][0]["memory"] = "24GiB"
    snapshot.write_text(json.dumps(data))
    code, _, err = _run(capsys, "plan", str(specs), "--observed", str(snapshot))
    assert code == 1
    assert "$.nodes[0].gpus[0].memory: '24GiB' is not of type 'integer'" in err
    assert "Traceback" not in err

    snapshot.write_text("{\n  nope")
    code, _, err = _run(capsys, "plan", str(specs), "--observed", str(snapshot))
    assert code == 1
    assert f"{snapshot}:2:3: not valid JSON" in err


def test_plan_offline_and_observed_are_exclusive(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["plan", str(tmp_path), "--offline", "--observed", "x.json"])
    assert exit_.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def _spawn(argv: list[str], env: dict[str, str], *, tty: bool) -> str:
    """The command's stdout, written to a pipe or to a pseudo-terminal."""
    if not tty:
        return subprocess.run(argv, env=env, capture_output=True, text=True, check=True, timeout=120).stdout
    leader, follower = pty.openpty()
    proc = subprocess.Popen(argv, env=env, stdout=follower, stderr=subprocess.DEVNULL)
    os.close(follower)
    chunks = []
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # the terminal closes when the command exits
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=120) == 0
    os.close(leader)
    return b"".join(chunks).decode()


def test_colour_on_a_terminal_none_in_a_pipe_or_with_no_color(tmp_path):
    specs = _write(tmp_path / "specs", pool=POOL, embed=EMBED)
    argv = [sys.executable, "-m", "reconciler", "plan", str(specs), "--offline"]
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM", "FORCE_COLOR")}
    env["TERM"] = "xterm-256color"
    assert ANSI.search(_spawn(argv, env, tty=True))
    assert not ANSI.search(_spawn(argv, {**env, "NO_COLOR": "1"}, tty=True))
    assert not ANSI.search(_spawn(argv, env, tty=False))
