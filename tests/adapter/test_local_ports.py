"""The ports a local cluster picks for its listeners: free, and outside the kernel's ephemeral range, where no process
of the starting cluster can take them by binding port 0 before the listener binds them (no Ray here)."""

from __future__ import annotations

import socket

from reconciler.adapter import localcluster


def test_a_port_is_free_outside_the_ephemeral_range_and_not_one_already_chosen():
    low = localcluster._ephemeral_low()
    chosen: list[int] = []
    for _ in range(20):
        port = localcluster.free_port(frozenset(chosen))
        assert localcluster.OWN_PORTS_FROM <= port < low and port not in chosen
        chosen.append(port)
    with socket.socket() as sock:  # the port is really free: it binds
        sock.bind(("127.0.0.1", chosen[-1]))


def test_a_port_something_listens_on_is_skipped(monkeypatch):
    with socket.socket() as held:
        held.bind(("127.0.0.1", localcluster.free_port()))
        held.listen()
        busy = held.getsockname()[1]
        other = localcluster.free_port(frozenset({busy}))

        class Draw:  # the busy port drawn first, then a free one
            def __init__(self, seed):
                self.ports = iter([busy, other])

            def randrange(self, a, b):
                return next(self.ports)

        monkeypatch.setattr(localcluster.random, "Random", Draw)
        assert localcluster.free_port() == other
