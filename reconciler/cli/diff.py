"""`reconciler diff`: what a pull request changes, in specs and in placement, read straight from git."""

from __future__ import annotations

import argparse
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from reconciler.cli import _cluster, _planning
from reconciler.errors import UserError
from reconciler.plan import SYMBOLS
from reconciler.render._common import replica_name, route

if TYPE_CHECKING:
    from reconciler.changes import Diff
    from reconciler.desired import DesiredState
    from reconciler.plan import Action, Plan

EXIT_GATE = 3

DESCRIPTION = """\
Show what changes between two git revisions of the specs, and what that does to the placement: which pools,
priority classes and models were added, removed or changed (and which fields), which replicas appear, move,
disappear or can no longer be placed when the base's plan is compared with the head's, and then the head's plan.

The revisions are read with git (no checkout). HEAD_REF left out means the working tree. Both revisions are planned
against the same observed state: --offline (an empty cluster shaped like the head's inventory), --observed FILE (a
recorded snapshot, how CI sees the real cluster) or, with neither, the live cluster.

With one argument after BASE_REF, it is taken as DIR when it names an existing directory, and as HEAD_REF
otherwise; give both to be explicit."""

EPILOG = """\
--fail-on KIND[:CLASS]   (a CI gate; may be repeated)
  Exit 3 after printing the diff when the head's plan has an action of KIND (create, delete, move, evict, replace,
  update) on a replica of a model whose priority class is CLASS (any class when CLASS is left out). KIND may also be
  `unplaced`: a replica of the head's specs that cannot be placed. The class is the one the model has in the head's
  specs (in the base's for a model the head deletes); `-` names the implicit class of models that name none.
  The head's plan is against the observed state, so with --offline (an empty cluster) only create and unplaced can
  occur: gate on evictions with --observed and a snapshot of the cluster.
    reconciler diff origin/main HEAD specs --observed state.json --fail-on evict:critical --fail-on unplaced:critical

exit codes:
  0  success (with --detailed-exitcode: the head's plan has no changes)
  1  error: bad specs at either revision, unknown revision, unreadable snapshot
  2  with --detailed-exitcode: the head's plan has changes
  3  a --fail-on rule matched (takes precedence over 2)"""

ACTION_KINDS = ("create", "delete", "move", "evict", "replace", "update")
UNPLACED = "unplaced"


@dataclass(frozen=True, slots=True)
class FailOn:
    kind: str
    priority_class: str | None  # None: any class; "" the implicit class

    def __str__(self) -> str:
        if self.priority_class is None:
            return self.kind
        return f"{self.kind}:{self.priority_class or '-'}"


def fail_on(value: str) -> FailOn:
    kind, _, klass = value.partition(":")
    if kind not in (*ACTION_KINDS, UNPLACED):
        raise argparse.ArgumentTypeError(
            f"unknown kind {kind!r}: expected one of {', '.join((*ACTION_KINDS, UNPLACED))}, optionally :CLASS"
        )
    if ":" in value and not klass:
        raise argparse.ArgumentTypeError(f"{value!r}: give a priority class after the colon, or leave the colon out")
    return FailOn(kind, None if not klass else ("" if klass == "-" else klass))


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "diff",
        help="spec changes between two git revisions and what they do to the placement",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("base", metavar="BASE_REF", help="the base revision, e.g. origin/main")
    parser.add_argument("head", nargs="?", metavar="HEAD_REF", help="the head revision (default: the working tree)")
    parser.add_argument("directory", nargs="?", metavar="DIR", help="the spec directory (default: specs)")
    _planning.add_observed_arguments(parser)
    parser.add_argument("--address", metavar="ADDR", help="the Ray cluster to observe when neither --offline nor "
                        "--observed is given")
    _cluster.add_connect_timeout_argument(parser)
    parser.add_argument("--format", choices=("text", "markdown", "json"), default="text",
                        help="how to print the diff (default: text)")
    parser.add_argument("--detailed-exitcode", action="store_true",
                        help="exit 2 when the head's plan has changes, 0 when it has none")
    parser.add_argument("--fail-on", metavar="KIND[:CLASS]", type=fail_on, action="append", default=[],
                        help="exit 3 when the head's plan has such an action (see below)")
    parser.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from reconciler.changes import Diff, placement_changes, spec_changes
    from reconciler.desired import DesiredState

    head_ref, directory = _split_positionals(args.head, args.directory)
    git = Git.at(Path.cwd())
    prefix = git.relative(directory)
    base_commit = git.commit(args.base)
    base = _load_revision(git, args.base, base_commit, prefix)
    if head_ref is None:
        head = _planning.load_directory(directory) if directory.is_dir() else None
        head_label = "the working tree"
    else:
        head_commit = git.commit(head_ref)
        head = _load_revision(git, head_ref, head_commit, prefix)
        head_label = f"{head_ref} ({head_commit[:7]})"
    if base is None and head is None:
        raise UserError(f"there is no directory {prefix or '.'} at {args.base} nor at {head_label}")
    # A directory that one side lacks holds no specs: everything in the other is added or removed.
    base, head = base or DesiredState(), head or DesiredState()
    observed = _planning.observed_state(args, head)
    base_plan = _planning.plan_against(base, observed)
    head_plan = _planning.plan_against(head, observed)
    diff = Diff(
        base=f"{args.base} ({base_commit[:7]})",
        head=head_label,
        directory=prefix or ".",
        observed=_planning.describe_observed(args),
        specs=spec_changes(base, head),
        placement=placement_changes(base_plan, head_plan),
        plan=head_plan,
    )
    sys.stdout.write(render(diff, fmt=args.format, color=_planning.use_color(sys.stdout)))
    matched = gate(args.fail_on, plan=head_plan, head=head, base=base)
    if matched:
        rules = ", ".join(sorted({str(rule) for rule, _ in matched}))
        print(f"error: --fail-on {rules}: the head's plan has {len(matched)} such "
              f"{'change' if len(matched) == 1 else 'changes'}:", file=sys.stderr)
        for _, what in matched:
            print(f"  {what}", file=sys.stderr)
        return EXIT_GATE
    if args.detailed_exitcode and not head_plan.empty:
        return _planning.EXIT_CHANGES
    return 0


def render(diff: Diff, *, fmt: str, color: bool) -> str:
    from reconciler.render import diff as diff_render

    if fmt == "json":
        return diff_render.render_json(diff)
    if fmt == "markdown":
        return diff_render.render_markdown(diff)
    return diff_render.render_text(diff, color=color)


def gate(rules: list[FailOn], *, plan: Plan, head: DesiredState, base: DesiredState) -> list[tuple[FailOn, str]]:
    """Each rule with each change of the head's plan it matches, described for the error message."""

    def klass(model: str) -> str | None:
        for desired in (head, base):
            try:
                return desired.model(model).priority_class
            except KeyError:
                continue
        return None

    matched: list[tuple[FailOn, str]] = []
    for rule in rules:
        if rule.kind == UNPLACED:
            for unplaced in plan.unplaced:
                if rule.priority_class is None or klass(unplaced.model) == rule.priority_class:
                    matched.append((rule, f"✗ {replica_name(unplaced.model, unplaced.replica)} cannot be placed: "
                                          f"{unplaced.reason}"))
            continue
        for action in plan.actions:
            if str(action.kind) == rule.kind and (
                rule.priority_class is None or klass(action.model) == rule.priority_class
            ):
                matched.append((rule, _describe(action)))
    return matched


def _describe(action: Action) -> str:
    return f"{SYMBOLS[action.kind]} {action.kind} {replica_name(action.model, action.replica)} {route(action)}: " \
        f"{action.reason}"


def _split_positionals(head: str | None, directory: str | None) -> tuple[str | None, Path]:
    if directory is not None:
        return head, Path(directory)
    if head is not None and Path(head).is_dir():
        return None, Path(head)
    return head, Path("specs")


def _load_revision(git: Git, ref: str, commit: str, prefix: str) -> DesiredState | None:
    """The specs of the directory at a revision; None when the directory did not exist there."""
    from reconciler.spec import load_spec_files

    files = git.read_tree(commit, prefix)
    if files is None:
        return None
    result = load_spec_files(files)
    _planning.print_diagnostics(result.diagnostics, heading=f"in {prefix or '.'} at {ref} ({commit[:7]}):")
    if not result.ok or result.desired is None:
        raise UserError(f"the specs in {prefix or '.'} at {ref} have errors; nothing was planned")
    return result.desired


@dataclass(frozen=True, slots=True)
class Git:
    """The few read-only git commands the diff needs; nothing is checked out."""

    root: Path

    @classmethod
    def at(cls, cwd: Path) -> Git:
        out = _git(cwd, "rev-parse", "--show-toplevel", what="not inside a git repository")
        return cls(Path(out.decode().strip()))

    def relative(self, directory: Path) -> str:
        """The directory as a path inside the repository, '' for its root."""
        absolute = directory.resolve()
        try:
            relative = absolute.relative_to(self.root.resolve())
        except ValueError:
            raise UserError(f"{directory} is outside the git repository at {self.root}") from None
        return "" if relative == Path(".") else relative.as_posix()

    def commit(self, ref: str) -> str:
        out = _git(self.root, "rev-parse", "--verify", "--quiet", "--end-of-options", f"{ref}^{{commit}}",
                   what=f"unknown revision {ref!r}")
        return out.decode().strip()

    def read_tree(self, commit: str, prefix: str) -> dict[str, bytes] | None:
        """Every file under prefix at the commit, by its path relative to prefix (as `load_specs` names them);
        None when prefix is absent."""
        if prefix and _git(self.root, "cat-file", "-t", f"{commit}:{prefix}", what="", check=False).strip() != b"tree":
            return None
        listing = _git(self.root, "ls-tree", "-r", "-z", "--full-tree", commit, "--", prefix or ".",
                       what=f"cannot list {prefix or '.'} at {commit[:7]}")
        files: dict[str, bytes] = {}
        for entry in listing.split(b"\0"):
            if not entry:
                continue
            meta, _, path = entry.partition(b"\t")
            mode, kind, sha = meta.split()
            # Symlinks and submodules are not spec files.
            if kind == b"blob" and mode != b"120000":
                name = path.decode()
                files[name[len(prefix) + 1:] if prefix else name] = self._blob(sha.decode())
        return files

    def _blob(self, sha: str) -> bytes:
        return _git(self.root, "cat-file", "blob", sha, what=f"cannot read blob {sha}")


def _git(cwd: Path, *args: str, what: str, check: bool = True) -> bytes:
    try:
        result = subprocess.run(["git", *args], cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError:
        raise UserError("git is not installed or not on PATH") from None
    if result.returncode != 0:
        if not check:
            return b""
        detail = result.stderr.decode(errors="replace").strip()
        raise UserError(f"{what}" + (f": {detail}" if detail else ""))
    return result.stdout
