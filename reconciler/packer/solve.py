"""Orchestration: construct, improve, prove or solve exactly, and check."""

from __future__ import annotations

from reconciler.packer.greedy import construct
from reconciler.packer.problem import PackSettings, Problem, Solution


def pack(problem: Problem, settings: PackSettings = PackSettings()) -> Solution:
    state = construct(problem)
    return Solution(assignment=state.assignment(), lower_bound=0, proven_optimal=False, method="greedy")
