"""`reconciler plan`: what would run where, and the actions that get there; changes nothing."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli import _cluster, _planning

if TYPE_CHECKING:
    from reconciler.desired import DesiredState
    from reconciler.observed import ObservedState
    from reconciler.plan import Plan

DESCRIPTION = """\
Plan the specs against the cluster and show the actions that would take it there: one line per action with its
reason, each GPU's VRAM before and after, the replicas that cannot be placed, and a summary. Changes nothing.

The observed state is the live cluster (through Ray), an empty cluster shaped like the pools' inventory
(--offline), or a recorded snapshot (--observed FILE, as CI does without cluster access)."""

EPILOG = """\
output:
  text (default)   Terraform-like; coloured on a terminal, plain in a pipe or when NO_COLOR is set
  json             the plan as data, documented by schemas/plan.schema.json
  markdown         for a pull-request comment

exit codes:
  0  success (with --detailed-exitcode: success and no changes)
  1  error: bad specs, unreadable snapshot, unreachable cluster
  2  with --detailed-exitcode: success, and the plan has changes

examples:
  reconciler plan specs --offline
  reconciler plan specs --observed state.json --format markdown > plan.md
  reconciler plan specs --out plan.json && reconciler apply --plan plan.json"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "plan",
        help="show what would run where, and the actions to get there",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("directory", nargs="?", default=Path("specs"), type=Path, metavar="DIR",
                        help="the spec directory (default: specs)")
    _planning.add_observed_arguments(parser)
    parser.add_argument("--address", metavar="ADDR",
                        help="the Ray cluster to observe (default: Ray's own discovery, e.g. RAY_ADDRESS)")
    _cluster.add_connect_timeout_argument(parser)
    parser.add_argument("--format", choices=("text", "json", "markdown"), default="text",
                        help="how to print the plan (default: text)")
    parser.add_argument("--out", metavar="FILE", type=Path,
                        help="also save the plan as JSON, for `reconciler apply --plan FILE`")
    parser.add_argument("--detailed-exitcode", action="store_true",
                        help="exit 2 when the plan has changes, 0 when it has none (1 stays an error)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    desired = _planning.load_directory(args.directory)
    observed = _planning.observed_state(args, desired)
    plan = _planning.plan_against(desired, observed)
    color = _planning.use_color(sys.stdout)
    sys.stdout.write(render(plan, fmt=args.format, color=color))
    _planning.report_dead_nodes(observed, fmt=args.format, color=color)
    report_rightsize(desired, observed, fmt=args.format)
    if args.out is not None:
        _planning.write_plan(args.out, plan)
        print(f"Saved the plan to {args.out}; `reconciler apply --plan {args.out}` applies exactly it.",
              file=sys.stderr)
    if args.detailed_exitcode and not plan.empty:
        return _planning.EXIT_CHANGES
    return 0


def report_rightsize(desired: DesiredState, observed: ObservedState, *, fmt: str) -> None:
    """Fixed `vram` figures against the peaks measured in the cluster: after the text plan, on stderr where stdout
    is JSON or Markdown for machines."""
    from reconciler.planner.memory import suggest
    from reconciler.render.memory import rightsize_lines
    from reconciler.settings import DEFAULTS

    lines = rightsize_lines(suggest(desired, observed, settings=DEFAULTS.memory))
    if lines:
        print("\n".join(lines), file=sys.stdout if fmt == "text" else sys.stderr)


def render(plan: Plan, *, fmt: str, color: bool) -> str:
    if fmt == "json":
        from reconciler.render import json as json_render

        return json_render.render_plan(plan)
    if fmt == "markdown":
        from reconciler.render import markdown

        return markdown.render_plan(plan)
    from reconciler.render import text

    return text.render_plan(plan, color=color)
