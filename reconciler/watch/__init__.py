"""`reconciler watch`: the reconciler as a controller.

- ``debounce``: when to run a cycle (debounced spec changes, drift timer, retries) and the file watcher;
- ``backoff``: crash-loop backoff per replica;
- ``events``: the structured event log;
- ``controller``: one level-based cycle (load, observe, plan, act) and the loop that runs cycles one at a time.

The lease that keeps two reconcilers from applying at once is ``reconciler.adapter.lease``; metrics are
``reconciler.watch.metrics``.
"""

from reconciler.watch.backoff import Backoff
from reconciler.watch.controller import ActionResult, Controller, CycleResult, Loop, WatchSettings
from reconciler.watch.debounce import Cause, Debouncer, Schedule, SpecWatcher
from reconciler.watch.events import EventLog, Kind

__all__ = [
    "ActionResult",
    "Backoff",
    "Cause",
    "Controller",
    "CycleResult",
    "Debouncer",
    "EventLog",
    "Kind",
    "Loop",
    "Schedule",
    "SpecWatcher",
    "WatchSettings",
]
