"""What `plan` and `diff` share: loading specs, obtaining the observed state, choosing colour, writing a plan.

A private module (its name starts with an underscore), so the CLI does not take it for a command.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from reconciler.errors import UserError

if TYPE_CHECKING:
    from reconciler.desired import DesiredState
    from reconciler.observed import ObservedState
    from reconciler.plan import Plan

EXIT_CHANGES = 2  # --detailed-exitcode: the plan has changes (Terraform's convention)


def add_observed_arguments(parser: argparse.ArgumentParser) -> None:
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--offline",
        action="store_true",
        help="plan against an empty cluster shaped like the pools' inventory (no cluster needed)",
    )
    source.add_argument(
        "--observed",
        metavar="FILE",
        type=Path,
        help="plan against a recorded observed-state snapshot (schemas/observed.schema.json), e.g. from "
        "`reconciler observe`",
    )


def use_color(stream: IO[str]) -> bool:
    """Colour on a terminal, never in a pipe or a file, and never when NO_COLOR is set (https://no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    if os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


def print_diagnostics(diagnostics: Iterable[Any], *, heading: str | None = None) -> None:
    items = list(diagnostics)
    if heading and items:
        print(heading, file=sys.stderr)
    for diagnostic in items:
        print(diagnostic, file=sys.stderr)


def load_directory(directory: Path, *, capacity: bool = True) -> DesiredState:
    """The specs of a directory; their diagnostics go to stderr, and errors end the command with exit code 1.
    Without `capacity`, models their pool's inventory cannot hold are only warned about (`advise`)."""
    from reconciler.spec import load_specs

    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory of specs")
    result = load_specs(directory, capacity=capacity)
    print_diagnostics(result.diagnostics)
    if not result.ok or result.desired is None:
        raise UserError(f"the specs in {directory} have errors; nothing was planned")
    return result.desired


def observed_state(args: argparse.Namespace, desired: DesiredState) -> ObservedState:
    from reconciler.observed import from_inventory

    if args.offline:
        return from_inventory(desired)
    if args.observed is not None:
        return read_snapshot(args.observed)
    return live_state(getattr(args, "address", None), desired, connect_timeout=getattr(args, "connect_timeout", None))


def describe_observed(args: argparse.Namespace) -> str:
    if args.offline:
        return "an empty cluster shaped like the pools' inventory (--offline)"
    if args.observed is not None:
        return f"the snapshot {args.observed}"
    return "the live cluster"


def read_snapshot(path: Path) -> ObservedState:
    from reconciler.schemas.read import read_snapshot as read

    return read(path)


def live_state(address: str | None, desired: DesiredState, *, connect_timeout: float | None = None) -> ObservedState:
    unavailable = "observing a live cluster needs the Ray adapter, which is not available here ({}); " \
        "use --offline or --observed FILE"
    try:
        from reconciler import adapter
    except ModuleNotFoundError as exc:
        if exc.name not in ("reconciler.adapter", "ray"):
            raise
        raise UserError(unavailable.format(f"{exc.name} cannot be imported")) from exc
    connect = getattr(adapter, "connect", None)
    if connect is None:
        raise UserError(unavailable.format("reconciler.adapter has no connect()"))
    with connect(address, connect_timeout=connect_timeout) as cluster:
        return cluster.observe(desired)


def report_dead_nodes(observed: ObservedState, *, fmt: str, color: bool) -> None:
    """Dead nodes after the plan: in the text output, or on stderr where stdout is JSON or Markdown for machines."""
    from reconciler.render.status import dead_node_lines

    lines = dead_node_lines(observed, color=color and fmt == "text")
    if lines:
        print("\n".join(lines), file=sys.stdout if fmt == "text" else sys.stderr)


def plan_against(desired: DesiredState, observed: ObservedState) -> Plan:
    from reconciler.planner import plan

    with solver_notices_to_stderr():
        return plan(desired, observed)


@contextmanager
def solver_notices_to_stderr() -> Iterator[None]:
    """HiGHS prints a few notices with C's printf whatever its output options say (one: a line about
    `transformNewIntegerFeasibleSolution`, from some MIP solves). stdout carries what machines read (a plan's JSON,
    the advice), so while the solvers run, file descriptor 1 is stderr."""
    libc = ctypes.CDLL(None)
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        yield
    finally:
        libc.fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def write_plan(path: Path, plan: Plan) -> None:
    from reconciler.render import json as json_render

    try:
        path.write_text(json_render.render_plan(plan), encoding="utf-8")
    except OSError as exc:
        raise UserError(f"cannot write the plan to {path}: {exc.strerror or exc}") from exc
