"""The message a user gets when a cluster's GCS port cannot be reached says what happened: a refusal is not a wait."""

from __future__ import annotations

import socket

import pytest

from reconciler.adapter.reach import Unreachable, check_port


def test_a_refused_port_is_reported_as_refused_without_a_time_waited():
    with socket.socket() as s:  # a port just freed: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(Unreachable) as failed:
        check_port(f"127.0.0.1:{port}", timeout=10)
    message = str(failed.value)
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in message
    assert "(connection refused)" in message and "within" not in message


def test_a_listening_port_is_reached():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        check_port(f"127.0.0.1:{s.getsockname()[1]}", timeout=5)
