"""The layers hold: the functional core never imports Ray, the adapter, the CLI or any I/O library.

The contract lives in pyproject.toml ([tool.importlinter]); this test runs the real checker over the real package.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_import_contracts_hold():
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 broken." in result.stdout


def test_cli_help_lists_every_command():
    result = subprocess.run(
        [sys.executable, "-m", "reconciler", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    for command in ("validate", "plan", "diff", "apply", "watch", "observe", "status", "up", "down", "schema"):
        assert f"    {command}" in result.stdout, f"`{command}` missing from --help"
