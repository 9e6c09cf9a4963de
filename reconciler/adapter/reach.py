"""Ray within a bounded time: connecting a driver, calls that take no timeout of their own, and the results of many
calls at once (``gathered``: one wait for all of them, not one per call).

Left to itself, ``ray.init`` retries an address nobody answers on for minutes (each attempt waits on a GCS RPC and
logs "Failed to connect to GCS"), and a SIGTERM meanwhile waits for the attempt in flight. Two steps bound it:

1. a plain TCP connection to the GCS port: a refused port or an unroutable host fails here, quietly, within the
   timeout;
2. ``ray.init`` in a daemon thread that the caller stops waiting for when the time is up. The main thread only waits
   on an event, so a signal ends the command at once; an abandoned attempt dies with the process.
"""

from __future__ import annotations

import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any, Hashable, TypeVar

from reconciler.errors import TransientError
from reconciler.settings import DEFAULTS

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


class Unreachable(TransientError):
    """Nothing usable answered at the address within the connect timeout."""


def advice(address: str, *, local: bool) -> str:
    if local:
        return "start it again with `reconciler up`, or raise --connect-timeout if it is only slow"
    return (f"check that the cluster is up and that {address} is its GCS HOST:PORT (what `ray start --head` "
            "prints), or raise --connect-timeout if it is only slow")


def _exit_on_sigterm() -> None:
    """What ``ray.init`` does in the main thread, done here because it now runs in another: SIGTERM becomes
    SystemExit, so the command's cleanup (releasing the apply lock) still runs. A handler someone set is kept."""
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))


def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    try:
        return host.strip("[]") or "127.0.0.1", int(port)
    except ValueError:
        raise TransientError(f"{address!r} is not a HOST:PORT address; give the cluster's GCS address, e.g. "
                             "127.0.0.1:6379") from None


def check_port(address: str, *, timeout: float, budget: float | None = None, local: bool = False) -> None:
    """Raise Unreachable unless something accepts a TCP connection at the address within ``timeout`` seconds."""
    budget = timeout if budget is None else budget
    host, port = split_address(address)
    try:
        socket.create_connection((host, port), timeout=max(0.1, timeout)).close()
    except OSError as exc:
        # A refusal comes at once: only a timeout is worth naming the time waited.
        why = (f"no answer within {budget:.3g} s" if isinstance(exc, TimeoutError)
               else (exc.strerror or str(exc)).lower())
        raise Unreachable(f"cannot reach the Ray cluster at {address}: a TCP connection to its GCS port failed "
                          f"({why}); {advice(address, local=local)}") from exc


def shorten_retries(timeout: float) -> None:
    """Before Ray is imported: its GCS retry loop shortened to the connect budget, so an abandoned attempt gives up
    soon after; and the time after which Ray ends a driver whose GCS is gone lengthened (``gcs_lost_exit``). Where
    the operator set a variable, theirs is kept."""
    os.environ.setdefault("RAY_gcs_server_port_wait_time_s", str(max(1, math.ceil(timeout))))
    os.environ.setdefault("RAY_gcs_rpc_server_reconnect_timeout_s", str(math.ceil(DEFAULTS.cluster.gcs_lost_exit)))


def within(connect: Callable[[], Any], *, address: str, timeout: float, budget: float | None = None,
           local: bool = False) -> Any:
    """``connect()`` (a ``ray.init``) if it returns within ``timeout`` seconds, else Unreachable naming ``budget``
    (the whole connect timeout, of which ``timeout`` is what is left)."""
    budget = timeout if budget is None else budget
    _exit_on_sigterm()
    try:
        return bounded(connect, timeout, name="ray-connect")
    except StillRunning:
        raise Unreachable(f"cannot connect to the Ray cluster at {address}: its GCS port accepts connections but "
                          f"Ray's handshake did not finish within {budget:.3g} s (is that port a Ray GCS of "
                          f"this Ray version?); {advice(address, local=local)}") from None


class StillRunning(Exception):
    """A bounded call had not returned when its time was up."""


def bounded(call: Callable[[], T], timeout: float, *, name: str) -> T:
    """``call()``'s value (or its exception) if it returns within ``timeout`` seconds, else StillRunning. For Ray
    calls that take no timeout of their own: the call runs on a daemon thread, left to end in Ray's own time."""
    done = threading.Event()
    outcome: dict[str, Any] = {}

    def attempt() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc
        finally:
            done.set()

    threading.Thread(target=attempt, name=name, daemon=True).start()
    if not done.wait(timeout):
        raise StillRunning(name)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def gathered(ray: Any, refs: dict[K, Any], *, timeout: float, cancel: bool = True,
             force: bool = False) -> tuple[dict[K, Any], dict[K, str]]:
    """The results of the Ray calls in ``refs`` that answered within ``timeout`` seconds, all of them together (a
    wait per call would let k silent nodes take k times the timeout); and, for each of the others, why it has none:
    its failure, or that it did not answer in time. Calls that did not answer are cancelled (``force``: a task's
    worker is killed; actor calls take no force) unless ``cancel`` is False, their effect still wanted when they
    land."""
    if not refs:
        return {}, {}
    ready, late = ray.wait(list(refs.values()), num_returns=len(refs), timeout=timeout)
    if cancel:
        for ref in late:
            try:
                ray.cancel(ref, force=force)
            except Exception:  # noqa: BLE001 - finished meanwhile, or its node is gone: nothing left to stop
                pass
    answered = {ref.hex() for ref in ready}
    found: dict[K, Any] = {}
    failed: dict[K, str] = {}
    for key, ref in refs.items():
        if ref.hex() not in answered:
            failed[key] = f"no answer within {timeout:.3g} s"
            continue
        try:
            found[key] = ray.get(ref, timeout=0)
        except Exception as exc:  # noqa: BLE001 - the call failed where it ran (its node dying, say)
            failed[key] = _why(exc)
    return found, failed


def _why(exc: BaseException) -> str:
    """One line on why a Ray call failed: the exception raised where it ran (Ray's own wraps it in a traceback)."""
    cause = getattr(exc, "cause", None) or exc
    lines = str(cause).strip().splitlines()
    return lines[0] if lines else type(cause).__name__
