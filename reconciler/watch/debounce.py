"""When to reconcile: a burst of file changes becomes one trigger, and a drift timer fires between them.

``Debouncer`` and ``Schedule`` are pure (the clock is an argument), so their behaviour is tested without sleeping.
``SpecWatcher`` is the only part with I/O: a thread that feeds watchfiles' raw changes into a ``Schedule``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import watchfiles


class Cause(StrEnum):
    STARTUP = "startup"
    SPEC_CHANGE = "spec-change"
    DRIFT_TIMER = "drift-timer"
    RETRY = "retry"  # the previous cycle failed on a temporary error
    CLUSTER_CHANGE = "cluster-change"  # the probe between drift checks saw Serve's applications or replicas change
    DEMAND = "demand"  # a gateway holds requests for a model with no replica: load it now


@dataclass(slots=True)
class Debouncer:
    """Fires once the changes have been quiet for ``quiet`` seconds, or ``max_wait`` after the first one.

    The quiet period absorbs an editor's write-temp-then-rename and a ``git pull`` touching many files; ``max_wait``
    keeps a file that is rewritten continuously from starving the reconcile forever.
    """

    quiet: float
    max_wait: float
    first: float | None = None
    last: float | None = None
    count: int = 0

    def touch(self, now: float, changes: int = 1) -> None:
        if self.first is None:
            self.first = now
        self.last = now
        self.count += changes

    @property
    def pending(self) -> bool:
        return self.first is not None

    def deadline(self) -> float | None:
        if self.first is None or self.last is None:
            return None
        return min(self.last + self.quiet, self.first + self.max_wait)

    def due(self, now: float) -> bool:
        deadline = self.deadline()
        return deadline is not None and now >= deadline

    def take(self) -> int:
        """Consume the pending burst; returns how many raw changes it held."""
        count = self.count
        self.first = self.last = None
        self.count = 0
        return count


@dataclass(slots=True)
class Schedule:
    """Which cycle runs next and when: a debounced spec change, the drift timer, a change the cluster probe saw, or a
    retry after a failure.

    Spec changes win over the timer; every cycle (whatever its cause) restarts the drift timer, because each cycle
    observes the whole cluster anyway. Between cycles, every ``poll`` seconds (0: never), the loop runs a cheap probe
    of the cluster; what it reports changed runs a cycle at once instead of at the next tick. The full observation
    stays on the timer: the probe only looks at what changes fast (Serve's applications and replicas), not at
    everything drift covers (NVML's foreign VRAM use, node labels).
    """

    debouncer: Debouncer
    interval: float
    poll: float = 0.0
    next_timer: float = 0.0  # 0: run a first cycle at once
    next_poll: float = 0.0
    retry_at: float | None = None
    cluster_changed: bool = False
    demand: bool = False  # a gateway woke the loop: requests wait for a model with no replica
    started: bool = False

    def next_wakeup(self) -> float:
        candidates = [self.next_timer]
        if (deadline := self.debouncer.deadline()) is not None:
            candidates.append(deadline)
        if self.retry_at is not None:
            candidates.append(self.retry_at)
        if self.poll > 0:
            candidates.append(self.next_poll)
        return min(candidates)

    def poll_due(self, now: float) -> bool:
        return self.poll > 0 and self.started and now >= self.next_poll

    def polled(self, now: float, changed: bool) -> None:
        """The probe ran at ``now``; ``changed``: the cluster is not as the last cycle left it."""
        self.next_poll = now + self.poll
        self.cluster_changed = self.cluster_changed or changed

    def take(self, now: float) -> tuple[Cause, int] | None:
        """The cause of the cycle to run now (and how many file changes it covers), or None to keep waiting."""
        if not self.started:
            self.started = True
            self.debouncer.take()  # specs are read fresh by the first cycle anyway
            return self._ran(now, Cause.STARTUP, 0)
        if self.debouncer.due(now):
            return self._ran(now, Cause.SPEC_CHANGE, self.debouncer.take())
        if self.demand:
            return self._ran(now, Cause.DEMAND, 0)
        if self.cluster_changed:
            return self._ran(now, Cause.CLUSTER_CHANGE, 0)
        if self.retry_at is not None and now >= self.retry_at:
            return self._ran(now, Cause.RETRY, 0)
        if now >= self.next_timer:
            return self._ran(now, Cause.DRIFT_TIMER, 0)
        return None

    def retry_after(self, now: float, delay: float) -> None:
        self.retry_at = now + min(delay, self.interval)

    def _ran(self, now: float, cause: Cause, changes: int) -> tuple[Cause, int]:
        self.next_timer = now + self.interval
        self.next_poll = now + self.poll
        self.retry_at = None
        self.cluster_changed = False
        self.demand = False
        return cause, changes


# Spec files the loader reads; anything else in the directory (READMEs, editor droppings) does not trigger.
SPEC_SUFFIXES = (".yaml", ".yml")


class SpecFilter(watchfiles.DefaultFilter):
    """watchfiles' default ignores (.git, swap files, ``~`` backups) plus: only spec files and directories count."""

    def __call__(self, change: watchfiles.Change, path: str) -> bool:
        if not super().__call__(change, path):
            return False
        # A deleted directory has no suffix and may have held specs: let it through.
        return path.endswith(SPEC_SUFFIXES) or "." not in Path(path).name


class SpecWatcher:
    """Feeds file changes under ``directory`` into a callback, from a daemon thread, until ``stop()``."""

    def __init__(self, directory: Path, on_change: Callable[[int], None]) -> None:
        self.directory = directory
        self.on_change = on_change
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="reconciler-spec-watcher", daemon=True)

    def start(self) -> None:
        self._thread.start()
        # watchfiles registers its inotify watches when the generator first runs; a change made before that would
        # be missed, so callers that write right after starting (tests, benchmarks) wait for it.
        self._ready.wait(timeout=5)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        # watchfiles' own grouping is kept short (step): the Debouncer decides when a burst is over.
        changes = watchfiles.watch(
            self.directory,
            watch_filter=SpecFilter(),
            debounce=50,
            step=10,
            stop_event=self._stop,
            rust_timeout=200,
            yield_on_timeout=True,
            raise_interrupt=False,
        )
        for batch in changes:
            self._ready.set()  # the first (possibly empty, on timeout) batch means the watches are in place
            if batch:
                self.on_change(len(batch))
