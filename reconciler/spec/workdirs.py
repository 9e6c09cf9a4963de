"""A Job's ``workingDir`` on disk: it must stay inside the spec directory once symbolic links are followed, so a spec
can only ship what travels with it. The folder itself and every link inside it are checked (a packer that follows
links would otherwise take what they point at along), when specs are validated and again when a run is submitted (a
link can change in between)."""

from __future__ import annotations

import os
from pathlib import Path

from reconciler.spec.diagnostics import Diagnostic
from reconciler.spec.parsed import Parsed


def escapes(base_dir: Path, working_dir: str) -> tuple[str, Path] | None:
    """(what, where it leads) for the first of ``working_dir`` or a link inside it that, resolved, is outside
    ``base_dir``; None when everything stays inside."""
    root = Path(base_dir).resolve()
    target = (root / working_dir).resolve()
    if not _inside(target, root):
        return working_dir, target
    for folder, dirs, files in os.walk(target):
        for name in sorted(dirs + files):
            path = Path(folder) / name
            if path.is_symlink():
                resolved = path.resolve()
                if not _inside(resolved, root):
                    return path.relative_to(target).as_posix(), resolved
    return None


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_working_dirs(jobs: tuple[Parsed, ...], *, base_dir: Path | None) -> list[Diagnostic]:
    """An error at each job's workingDir that leads out of the spec directory (none without a directory on disk)."""
    if base_dir is None:
        return []
    problems = []
    for doc in jobs:
        working_dir = doc.spec.working_dir
        if working_dir is None:
            continue
        found = escapes(base_dir, working_dir)
        if found is not None:
            what, target = found
            where = f"`{working_dir}`" if what == working_dir else f"the link {what} in `{working_dir}`"
            problems.append(doc.error(doc.at("spec", "workingDir"),
                                      f"`workingDir`: {where} leads out of the spec directory once links are "
                                      f"followed (to {target}): put the files themselves inside the spec directory"))
    return problems
