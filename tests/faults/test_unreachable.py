"""An address nobody answers on: every command that connects gives up within its connect timeout, in one sentence
that names the address, what was tried and what to do; SIGTERM ends it at once. No Ray cluster is started."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from tests.faults.support import clean_refusal, one_sentence, reconciler, write_specs

pytestmark = pytest.mark.faults


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when this returns: connections are refused


@pytest.fixture
def silent_port():
    """A port that accepts TCP connections and never says a word (a firewall's tarpit, another service)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for conn in accepted:
        conn.close()
    server.close()


@pytest.mark.parametrize("command", [
    ["status"], ["observe"], ["plan", "{specs}"], ["apply", "{specs}", "--yes"], ["watch", "{specs}", "--yes"],
])
def test_a_refused_address_is_one_sentence_for_every_command(command, tmp_path):
    specs = write_specs(tmp_path / "specs", {"alpha": 1})
    address = f"127.0.0.1:{closed_port()}"
    args = [part.format(specs=specs) for part in command]
    result = reconciler(*args, "--address", address, cwd=tmp_path, timeout=120)
    message = clean_refusal(result, must_say=f"cannot reach the Ray cluster at {address}")
    assert "connection refused" in message and "--connect-timeout" in message, message
    assert one_sentence(message), message
    assert "Failed to connect to GCS" not in result.stderr


def test_a_silent_port_is_given_up_on_after_the_connect_timeout(silent_port, tmp_path):
    address = f"127.0.0.1:{silent_port}"
    result = reconciler("status", "--address", address, "--connect-timeout", "2", cwd=tmp_path, timeout=120)
    message = clean_refusal(result, must_say=f"cannot connect to the Ray cluster at {address}")
    assert "did not finish within 2 s" in message, message
    assert one_sentence(message), message


def test_sigterm_ends_a_connecting_command(silent_port, tmp_path):
    process = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "status", "--address", f"127.0.0.1:{silent_port}",
         "--connect-timeout", "600"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, cwd=tmp_path,
    )
    try:
        # Until it is inside the connect attempt (its TCP connection is accepted), the signal would prove nothing.
        deadline = time.monotonic() + 60
        while not _connected(silent_port, process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode in (128 + signal.SIGTERM, -signal.SIGTERM)  # ended by the signal, not by a timeout


def _connected(port: int, pid: int) -> bool:
    import psutil

    try:
        return any(c.raddr and c.raddr.port == port for c in psutil.Process(pid).net_connections(kind="tcp"))
    except psutil.Error:
        return False
