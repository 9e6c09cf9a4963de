"""Recording an apply as a revision: who ran it, where its specs came from, and how it ended.

The revision is stored before the apply starts and again when it ends (``Recorder.begin`` / ``end``), so an apply
that dies midway still leaves one. Used by `apply`, `rollback` and `watch` alike.
"""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from reconciler.adapter import revisions
from reconciler.desired import DesiredState
from reconciler.plan import Plan
from reconciler.revision import Outcome, Result, Revision, Source, Who
from reconciler.settings import DEFAULTS, RevisionSettings


def who(command: str) -> Who:
    try:
        user = getpass.getuser()
    except (KeyError, OSError):  # a container's uid with no passwd entry
        user = str(os.getuid())
    return Who(host=socket.gethostname(), user=user, pid=os.getpid(), command=command)


def directory_source(directory: Path | str, *, timeout: float = DEFAULTS.revisions.git_timeout) -> Source:
    """A local spec directory, with the commit of the git work tree it is in (and whether its specs differ from
    that commit); just the directory when it is not in git or git is not installed."""

    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", str(directory), *args], capture_output=True, text=True,
                                  timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD") if Path(directory).is_dir() else None
    if not commit:
        return Source(directory=str(directory))
    changes = git("status", "--porcelain", "--", ".")
    return Source(directory=str(directory), commit=commit, subject=git("log", "-1", "--format=%s", "HEAD"),
                  dirty=bool(changes))


class Recorder:
    """Writes the revisions of one reconciler (an `apply`, or every apply of a `watch`) into the cluster's store."""

    def __init__(self, kv: Any, *, command: str, source: Callable[[], Source],
                 settings: RevisionSettings = DEFAULTS.revisions, clock: Callable[[], float] = time.time) -> None:
        self.kv = kv
        self.by = who(command)
        self.source = source  # asked at each apply: a followed branch moves
        self.settings = settings
        self.clock = clock

    def begin(self, plan: Plan, desired: DesiredState | None, *, cause: str, token: str = "") -> Revision:
        source, at = self.source(), self.clock()
        return revisions.append(
            self.kv,
            lambda number: Revision(number=number, at=at, by=self.by, source=source, cause=cause, plan=plan,
                                    desired=desired, token=token),
            keep=self.settings.keep,
        )

    def end(self, revision: Revision, *, results: Sequence[tuple[bool, str]] = (), outcome: Outcome | None = None,
            reason: str = "") -> Revision:
        done = revision.finish(results=tuple(Result(ok, message) for ok, message in results), outcome=outcome,
                               reason=reason, ended=self.clock())
        revisions.put(self.kv, done)
        return done
