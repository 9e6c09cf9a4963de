"""The apply lock of a holder whose process died on this host is free at once; elsewhere it waits for its TTL."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from reconciler.adapter.kv import MemoryKV
from reconciler.adapter.lease import Holder, LeaseHeld, acquire, describe

pytestmark = pytest.mark.faults


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()  # exited and reaped: no process has this pid now (until the system hands it out again)
    return process.pid


def held_by(holder: Holder) -> MemoryKV:
    kv = MemoryKV()
    acquire(kv, holder=holder, ttl=3600, gone=lambda _: False)
    return kv


def test_a_dead_holder_on_this_host_is_taken_over_at_once():
    gone = replace(Holder.current("reconciler apply specs"), pid=dead_pid())
    kv = held_by(gone)
    lease = acquire(kv, holder=Holder.current("reconciler watch specs"), ttl=15)
    assert lease.generation == 2
    assert describe(kv).holder.command == "reconciler watch specs"


def test_a_live_holder_keeps_the_lock():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        alive = replace(Holder.current("reconciler apply specs"), pid=sleeper.pid, since=time.time())
        kv = held_by(alive)
        with pytest.raises(LeaseHeld, match=f"pid {sleeper.pid} on {socket.gethostname()}"):
            acquire(kv, holder=Holder.current("reconciler watch specs"), ttl=15)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_pid_now_used_by_a_younger_process_counts_as_dead():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        # The holder took the lock an hour before this process started: that pid was someone else's then.
        recycled = replace(Holder.current("reconciler apply specs"), pid=sleeper.pid, since=time.time() - 3600)
        kv = held_by(recycled)
        assert acquire(kv, holder=Holder.current("reconciler watch specs"), ttl=15).generation == 2
    finally:
        sleeper.kill()
        sleeper.wait()


def test_a_holder_on_another_host_is_left_to_expire():
    elsewhere = replace(Holder.current("reconciler apply specs"), host=socket.gethostname() + "-elsewhere",
                        pid=dead_pid())
    kv = held_by(elsewhere)
    with pytest.raises(LeaseHeld, match="-elsewhere"):
        acquire(kv, holder=Holder.current("reconciler watch specs"), ttl=15)
