"""The debouncer and schedule are pure: time is an argument. The watcher test uses real files and watchfiles."""

import threading
import time
from pathlib import Path

from reconciler.watch.debounce import Cause, Debouncer, Schedule, SpecFilter, SpecWatcher


def test_a_burst_of_changes_fires_once_after_the_quiet_period():
    d = Debouncer(quiet=0.3, max_wait=3.0)
    for t in (10.0, 10.05, 10.1, 10.2):  # an editor: write temp, fsync, rename, chmod
        d.touch(t)
    assert not d.due(10.4)
    assert d.due(10.5)
    assert d.take() == 4
    assert not d.pending and not d.due(100.0)


def test_a_file_rewritten_forever_still_fires_after_max_wait():
    d = Debouncer(quiet=0.3, max_wait=3.0)
    t = 0.0
    while not d.due(t):
        d.touch(t)
        t += 0.1
    assert 2.9 <= t <= 3.1


def test_the_first_cycle_runs_at_once_and_later_ones_on_the_timer():
    s = Schedule(Debouncer(quiet=0.3, max_wait=3), interval=30)
    s.debouncer.touch(0.0)  # a change before startup is covered by the first cycle's fresh read
    assert s.take(0.0) == (Cause.STARTUP, 0)
    assert s.take(1.0) is None
    assert s.next_wakeup() == 30.0
    assert s.take(30.0) == (Cause.DRIFT_TIMER, 0)
    assert s.next_wakeup() == 60.0


def test_a_spec_change_wins_over_the_timer_and_restarts_it():
    s = Schedule(Debouncer(quiet=0.3, max_wait=3), interval=30)
    s.take(0.0)
    s.debouncer.touch(29.9)
    s.debouncer.touch(29.95)
    assert s.next_wakeup() == 30.0  # the timer is due first, but...
    assert s.take(30.25) == (Cause.SPEC_CHANGE, 2)  # ...the burst settled by the time the loop woke up
    assert s.take(30.3) is None
    assert s.next_wakeup() == 60.25


def test_a_failed_cycle_is_retried_before_the_timer_but_never_later():
    s = Schedule(Debouncer(quiet=0.3, max_wait=3), interval=30)
    s.take(0.0)
    s.retry_after(1.0, 4.0)
    assert s.next_wakeup() == 5.0
    assert s.take(5.0) == (Cause.RETRY, 0)
    s.retry_after(6.0, 1000.0)
    assert s.next_wakeup() == 35.0


def test_the_cluster_probe_runs_between_ticks_and_a_change_it_sees_runs_a_cycle_at_once():
    s = Schedule(Debouncer(quiet=0.3, max_wait=3), interval=30, poll=1.0)
    assert not s.poll_due(0.0)  # nothing to compare with before the first cycle
    s.take(0.0)
    assert s.next_wakeup() == 1.0 and not s.poll_due(0.9) and s.poll_due(1.0)
    s.polled(1.0, changed=False)
    assert s.take(1.0) is None and s.next_wakeup() == 2.0
    s.polled(2.0, changed=True)
    assert s.take(2.0) == (Cause.CLUSTER_CHANGE, 0)
    assert s.next_wakeup() == 3.0 and s.take(3.0) is None  # one change, one cycle
    assert s.take(32.0) == (Cause.DRIFT_TIMER, 0)  # the full check still runs on the timer


def test_without_a_probe_the_schedule_only_wakes_for_the_timer():
    s = Schedule(Debouncer(quiet=0.3, max_wait=3), interval=30)
    s.take(0.0)
    assert not s.poll_due(100.0) and s.next_wakeup() == 30.0


def test_the_filter_ignores_editor_droppings_and_non_spec_files(tmp_path: Path):
    f = SpecFilter()
    from watchfiles import Change

    assert f(Change.modified, str(tmp_path / "models" / "llama.yaml"))
    assert f(Change.added, str(tmp_path / "pools.yml"))
    assert f(Change.deleted, str(tmp_path / "models"))
    for ignored in (".llama.yaml.swp", "llama.yaml~", "README.md", ".#llama.yaml"):
        assert not f(Change.modified, str(tmp_path / ignored)), ignored
    assert not f(Change.modified, str(tmp_path / ".git" / "HEAD"))


def test_the_watcher_sees_a_rename_into_place_and_a_burst(tmp_path: Path):
    seen: list[int] = []
    got = threading.Event()

    def on_change(count: int) -> None:
        seen.append(count)
        got.set()

    watcher = SpecWatcher(tmp_path, on_change)
    watcher.start()
    try:
        temp = tmp_path / ".model.yaml.tmp123"
        temp.write_text("kind: Model\n")
        temp.rename(tmp_path / "model.yaml")  # how most editors save
        assert got.wait(10), "no change reported for a rename into place"
        got.clear()
        for i in range(20):  # a git pull
            (tmp_path / f"m{i}.yaml").write_text(f"n: {i}\n")
        deadline = time.monotonic() + 10
        while sum(seen) < 21 and time.monotonic() < deadline:
            got.wait(0.5)
        assert sum(seen) >= 21
    finally:
        watcher.stop()
