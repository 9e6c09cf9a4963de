"""A Job's ``workingDir`` on disk: it must stay inside the spec directory once symbolic links are followed, so a spec
can only ship what travels with it. Checked when specs are validated and again when a run is submitted (a link can
change in between)."""

from __future__ import annotations

from pathlib import Path

from reconciler.spec.diagnostics import Diagnostic
from reconciler.spec.parsed import Parsed


def escapes(base_dir: Path, working_dir: str) -> Path | None:
    """Where ``working_dir`` leads when, resolved (links followed), it is outside ``base_dir``; None inside."""
    root = Path(base_dir).resolve()
    target = (root / working_dir).resolve()
    return None if target == root or root in target.parents else target


def check_working_dirs(jobs: tuple[Parsed, ...], *, base_dir: Path | None) -> list[Diagnostic]:
    """An error at each job's workingDir that leads out of the spec directory (none without a directory on disk)."""
    if base_dir is None:
        return []
    problems = []
    for doc in jobs:
        working_dir = doc.spec.working_dir
        if working_dir is None:
            continue
        target = escapes(base_dir, working_dir)
        if target is not None:
            problems.append(doc.error(doc.at("spec", "workingDir"),
                                      f"`workingDir`: `{working_dir}` leads out of the spec directory once its links "
                                      f"are followed (to {target}): put the folder itself inside the spec directory"))
    return problems
