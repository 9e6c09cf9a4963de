"""`reconciler watch --git URL`: the specs come from a branch of a remote repository instead of a directory.

Argo CD's model: a fetch every ``poll`` seconds; a new head commit starts a cycle, which loads the specs at that
commit and applies them. A commit whose specs are invalid is never applied: the watcher keeps enforcing the last good
revision and names the commit that broke it, once, until a later commit fixes it.

``follow`` is the decision, pure and table-tested; ``GitSpecs`` is the spec loader the controller calls every cycle
(cached per commit, so a quiet cycle costs no git call) plus the thread that fetches.
"""

from __future__ import annotations

import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from prometheus_client.core import GaugeMetricFamily

from reconciler.watch.metrics import Metrics
from reconciler.spec import LoadResult, load_spec_files
from reconciler.spec.diagnostics import NOWHERE, error
from reconciler.watch.events import EventLog, Kind
from reconciler.watch.gitsource import GitError, GitRemote, Revision


@dataclass(frozen=True, slots=True)
class GitOptions:
    url: str
    branch: str | None = None  # None: the remote's default branch
    path: str = "specs"  # the spec directory inside the repository
    poll: float = 30.0  # seconds between fetches
    cache: Path | None = None  # the local bare copy; None: a temporary one, removed on exit


class Verdict(StrEnum):
    APPLY = "apply"  # a new revision with valid specs: it becomes the desired state
    UNCHANGED = "unchanged"  # the head is what is already enforced, or a broken head already reported
    BROKEN = "broken"  # a new head with invalid specs: report it, keep the last good revision


@dataclass(frozen=True, slots=True)
class Following:
    applied: Revision | None = None  # the revision whose specs are enforced
    broken: Revision | None = None  # the head, when its specs are invalid


def follow(state: Following, *, head: Revision, valid: bool) -> tuple[Following, Verdict]:
    """What to do with the branch's head, given what is enforced and what was already reported broken."""
    if head == state.applied:
        return replace(state, broken=None), Verdict.UNCHANGED
    if valid:
        return Following(applied=head), Verdict.APPLY
    if head == state.broken:
        return state, Verdict.UNCHANGED
    return replace(state, broken=head), Verdict.BROKEN


class GitSpecs:
    """The controller's ``load`` for a followed branch; ``follower(on_change)`` is the fetching thread."""

    def __init__(self, options: GitOptions, *, events: EventLog, metrics: Metrics | None = None) -> None:
        self.options = options
        self.events = events
        self._temporary = options.cache is None
        cache = options.cache if options.cache is not None else Path(tempfile.mkdtemp(prefix="reconciler-git-"))
        self.remote = GitRemote(options.url, cache=cache, branch=options.branch)
        self.state = Following()
        self._head: Revision | None = None
        self._loaded: tuple[str, LoadResult] | None = None
        self._fetch_error: str | None = None
        self._last_fetch: float | None = None
        self._lock = threading.Lock()
        # Commits written out on disk (commit -> (its spec directory, the folder to remove)): the enforced one and
        # the head at most.
        self._trees: dict[str, tuple[Path, Path]] = {}
        if metrics is not None:
            metrics.registry.register(_RevisionCollector(self))

    def open(self) -> "GitSpecs":
        try:
            head = self.remote.open()
        except BaseException:
            self.close()
            raise
        self._set_head(head)
        return self

    @property
    def describe(self) -> str:
        return f"{self.options.url} (branch {self.remote.branch}, {self.options.path or '.'})"

    def spec_dir(self) -> Path | None:
        """The spec directory of the revision being enforced, written out on disk once per commit: what a job's
        workingDir ships from, so a run gets the files of the revision that planned it. None before a good one."""
        applied = self.state.applied
        return None if applied is None else self._tree(applied.commit)

    def _tree(self, commit: str) -> Path:
        if commit not in self._trees:
            root = Path(tempfile.mkdtemp(prefix="reconciler-tree-"))
            try:
                self._trees[commit] = (self.remote.export(commit, self.options.path, root), root)
            except BaseException:
                shutil.rmtree(root, ignore_errors=True)
                raise
        # Only the commit asked for and the one enforced stay on disk.
        keep = {commit} | ({self.state.applied.commit} if self.state.applied is not None else set())
        for old in [c for c in self._trees if c not in keep]:
            shutil.rmtree(self._trees.pop(old)[1], ignore_errors=True)
        return self._trees[commit][0]

    def close(self) -> None:
        for _, root in self._trees.values():
            shutil.rmtree(root, ignore_errors=True)
        self._trees.clear()
        if self._temporary:
            shutil.rmtree(self.remote.cache, ignore_errors=True)

    def __enter__(self) -> "GitSpecs":
        return self.open()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the controller's load -------------------------------------------------------------------------------------

    def __call__(self) -> LoadResult:
        with self._lock:
            head = self._head
        assert head is not None, "open() fetched the head"
        result = self._load(head)
        self.state, verdict = follow(self.state, head=head, valid=result.ok and result.desired is not None)
        where = {"url": self.options.url, "branch": self.remote.branch, "path": self.options.path}
        if verdict is Verdict.APPLY:
            self.events.emit(Kind.REVISION, f"revision {head}: applying the specs of {self.options.path or '.'}",
                             **head.to_json(), **where)
        elif verdict is Verdict.BROKEN:
            applied = self.state.applied
            keeping = f"keeping {applied}" if applied is not None else "no good revision yet, nothing is applied"
            self.events.emit(Kind.REVISION_INVALID, f"commit {head} has invalid specs: not applied; {keeping}",
                             detail=[str(d) for d in result.diagnostics], **head.to_json(), **where,
                             keeping=applied.to_json() if applied is not None else None,
                             diagnostics=[str(d) for d in result.diagnostics])
        return result

    def _load(self, head: Revision) -> LoadResult:
        if self._loaded is not None and self._loaded[0] == head.commit:
            return self._loaded[1]
        files = self.remote.read_tree(head.commit, self.options.path)
        if files is None:
            result = LoadResult(desired=None, diagnostics=(
                error(self.options.path, NOWHERE, f"no such directory at commit {head.short}: the specs are read "
                      f"from --path {self.options.path}"),))
        else:
            # A job's workingDir is checked on the commit's files written out (links followed), as validate does.
            result = load_spec_files(files, tree=lambda: self._tree(head.commit))
        self._loaded = (head.commit, result)
        return result

    # -- fetching --------------------------------------------------------------------------------------------------

    def fetch_once(self) -> bool:
        """One fetch; True when the head moved. A failure is reported once and the last fetched head stays."""
        try:
            head = self.remote.fetch()
        except GitError as exc:
            if str(exc) != self._fetch_error:
                self.events.emit(Kind.FAILURE, f"git fetch failed: {exc}; still following {self.state.applied}",
                                 stage="fetch", error=str(exc), temporary=True, retryIn=self.options.poll)
            self._fetch_error = str(exc)
            return False
        self._fetch_error = None
        return self._set_head(head)

    def _set_head(self, head: Revision) -> bool:
        with self._lock:
            moved = head != self._head
            self._head = head
            self._last_fetch = time.time()
        return moved

    @property
    def last_fetch(self) -> float | None:
        """Unix time of the last successful fetch."""
        return self._last_fetch

    def follower(self, on_change: Callable[[int], None]) -> "Follower":
        return Follower(self, on_change)

    def status(self) -> dict[str, Any]:
        """What the lease publishes for `reconciler status`."""
        state = self.state
        return {
            "git": {"url": self.options.url, "branch": self.remote.branch, "path": self.options.path},
            "revision": state.applied.to_json() if state.applied is not None else None,
            "brokenRevision": state.broken.to_json() if state.broken is not None else None,
        }


class Follower:
    """The thread that fetches every ``poll`` seconds and starts a cycle when the head moved."""

    def __init__(self, specs: GitSpecs, on_change: Callable[[int], None]) -> None:
        self.specs = specs
        self.on_change = on_change
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler-git-fetch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        # A fetch in flight is not waited for to its end (a slow remote must not hold up a SIGTERM): the thread is a
        # daemon and only ever writes the local copy.
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.specs.options.poll):
            if self.specs.fetch_once():
                self.on_change(1)


class _RevisionCollector:
    """``reconciler_git_revision_info{commit, subject, branch, state}``: the enforced revision (state="applied") and
    the broken head not applied (state="invalid"), one series each, replaced as they change; and
    ``reconciler_git_last_fetch_timestamp_seconds`` to alert on a remote that stopped answering."""

    def __init__(self, specs: GitSpecs) -> None:
        self.specs = specs

    def collect(self) -> Any:
        family = GaugeMetricFamily("reconciler_git_revision_info", "The git revision whose specs are enforced",
                                   labels=("commit", "subject", "branch", "state"))
        state = self.specs.state
        for revision, kind in ((state.applied, "applied"), (state.broken, "invalid")):
            if revision is not None:
                family.add_metric((revision.commit, revision.subject, self.specs.remote.branch or "", kind), 1)
        yield family
        fetched = GaugeMetricFamily("reconciler_git_last_fetch_timestamp_seconds",
                                    "Unix time of the last successful fetch of the followed branch")
        if self.specs.last_fetch is not None:
            fetched.add_metric((), self.specs.last_fetch)
        yield fetched
