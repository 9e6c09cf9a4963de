"""`plan --format json` prints the plan and nothing else on stdout, even when a solver prints with C's printf while
it plans (HiGHS does, whatever its output options say): file descriptors are captured, not Python's streams, so a
stray line would break the JSON that CI and scripts read."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import reconciler.planner
from reconciler.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_plan_json_on_stdout_is_only_the_plan_while_a_solver_prints(monkeypatch, capfd):
    libc = ctypes.CDLL(None)
    real = reconciler.planner.plan

    def noisy(*args, **kwargs):
        libc.printf(b"HighsMipSolverData::transformNewIntegerFeasibleSolution tmpSolver.run();\n")
        return real(*args, **kwargs)

    monkeypatch.setattr(reconciler.planner, "plan", noisy)
    code = main(["plan", str(ROOT / "examples" / "homelab"), "--offline", "--format", "json"])
    assert code in (0, 2)
    captured = capfd.readouterr()
    assert "actions" in json.loads(captured.out)
    assert "transformNewIntegerFeasibleSolution" in captured.err  # moved, not lost
    # Afterwards stdout is stdout again.
    print("after")
    assert capfd.readouterr().out == "after\n"
