"""The systemd example: the unit's structure and its command line, always; `systemd-analyze verify` where systemd is.

systemd is not part of this project, only a place users run it, so the verify step runs on machines that have
`systemd-analyze` and is reported as skipped elsewhere; the structural test below runs everywhere and checks what
matters to reconciler (the command parses with the real CLI, the restart and stop behaviour, the health endpoint).
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "systemd"
UNIT = EXAMPLE / "reconciler-watch.service"


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """Sections of (key, value) in order, continuation lines joined; systemd allows a key more than once."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = pending + raw.strip() if pending else raw.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, f"a setting outside any section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.append((key.strip(), value.strip()))
    return sections


def settings(section: list[tuple[str, str]], key: str) -> list[str]:
    return [v for k, v in section if k == key]


def env_file() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in (EXAMPLE / "watch.env").read_text().splitlines()
             if line.strip() and not line.startswith("#"))
    return {k: v for k, v in pairs}


def test_the_unit_runs_watch_as_a_restarting_service_with_a_command_the_cli_accepts():
    unit = parse_unit(UNIT.read_text())
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    assert settings(service, "Restart") == ["always"]
    assert settings(service, "KillSignal") == ["SIGTERM"]  # watch finishes its step and releases the lock
    assert settings(unit["Install"], "WantedBy") == ["multi-user.target"]
    assert settings(service, "EnvironmentFile") == ["/etc/reconciler/watch.env"]

    (exec_start,) = settings(service, "ExecStart")
    argv = shlex.split(exec_start)
    assert Path(argv[0]).name == "reconciler" and argv[1] == "watch"
    # The variables come from watch.env; every one the command uses is set there.
    variables = env_file()
    specifiers = {"%S": "/var/lib", "%L": "/var/log"}
    resolved = []
    for arg in argv[1:]:
        for name, value in variables.items():
            arg = arg.replace("${" + name + "}", value)
        for spec, value in specifiers.items():
            arg = arg.replace(spec, value)
        assert "${" not in arg, f"{arg}: not set in watch.env"
        resolved.append(arg)

    from reconciler.cli import build_parser

    args = build_parser().parse_args(resolved)
    assert (args.git, args.branch, args.path) == (variables["RECONCILER_GIT"], "main", "specs")
    assert args.yes and args.wait_for_lock and args.metrics_port == 9464
    assert args.directory is None  # the specs come from git
    assert "RAY_ADDRESS" in variables  # how watch finds the cluster without --address


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed here: systemd is a platform users run reconciler on, "
                    "not part of the project; the unit's structure is checked by the test above")
def test_systemd_analyze_verifies_the_unit(tmp_path):
    # verify insists that ExecStart's program exists: point it at the reconciler of this environment.
    program = Path(sys.executable).with_name("reconciler")
    assert program.exists(), "the reconciler command of this environment"
    unit = tmp_path / UNIT.name
    unit.write_text(UNIT.read_text().replace("/opt/reconciler/bin/reconciler", str(program)))
    result = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert UNIT.name not in result.stdout + result.stderr, result.stdout + result.stderr  # no warning about it
