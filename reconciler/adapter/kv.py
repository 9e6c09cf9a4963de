"""Where the apply lock lives: a small key-value contract, in Ray's GCS or in one process's memory.

The lease algorithm (``lease``) needs only put-if-absent, get, put, delete and a prefix listing; ``RayKV`` gives
them from the GCS of the cluster (so every reconciler talking to that cluster sees the same lock), ``MemoryKV`` from
a dict, for a plan-only watch that has no cluster and for tests of the algorithm.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, Protocol

from reconciler.errors import TransientError
from reconciler.settings import DEFAULTS

NAMESPACE = "reconciler"


class KV(Protocol):
    def get(self, key: str) -> bytes | None: ...
    def put(self, key: str, value: bytes) -> None: ...
    def put_if_absent(self, key: str, value: bytes) -> bool: ...  # True when this call created it
    def delete(self, key: str) -> None: ...
    def keys(self, prefix: str) -> list[str]: ...


class RayKV:
    """Ray's GCS internal KV: of the cluster this process is connected to (after ``ray.init``), or of the GCS at
    an address (``RayKV.at("127.0.0.1:6379")``, no driver needed)."""

    def __init__(self, gcs_client: Any = None, namespace: str = NAMESPACE,
                 timeout: float = DEFAULTS.cluster.gcs_timeout) -> None:
        if gcs_client is None:
            from ray.experimental import internal_kv  # the adapter is the one place that imports ray

            if not internal_kv._internal_kv_initialized():
                raise RuntimeError("RayKV needs a connected Ray driver (the adapter's connect()) or a GCS address")
            gcs_client = internal_kv.internal_kv_get_gcs_client()
        self._gcs = gcs_client
        self._namespace = namespace.encode()
        self._timeout = timeout  # every call bounded: see ClusterSettings.gcs_timeout

    @classmethod
    def at(cls, gcs_address: str, namespace: str = NAMESPACE,
           timeout: float = DEFAULTS.cluster.gcs_timeout) -> "RayKV":
        from ray._raylet import GcsClient

        return cls(GcsClient(address=gcs_address), namespace, timeout)

    def get(self, key: str) -> bytes | None:
        return self._call(lambda: self._gcs.internal_kv_get(key.encode(), self._namespace, timeout=self._timeout))

    def put(self, key: str, value: bytes) -> None:
        self._call(lambda: self._gcs.internal_kv_put(key.encode(), value, True, self._namespace, timeout=self._timeout))

    def put_if_absent(self, key: str, value: bytes) -> bool:
        # The GCS answers how many keys the call added: 0 when the key was already there (and is left unchanged).
        added = self._call(
            lambda: self._gcs.internal_kv_put(key.encode(), value, False, self._namespace, timeout=self._timeout))
        return added == 1

    def delete(self, key: str) -> None:
        self._call(lambda: self._gcs.internal_kv_del(key.encode(), False, self._namespace, timeout=self._timeout))

    def keys(self, prefix: str) -> list[str]:
        found = self._call(lambda: self._gcs.internal_kv_keys(prefix.encode(), self._namespace, timeout=self._timeout))
        return [k.decode() for k in found]

    def _call(self, call: Callable[[], Any]) -> Any:
        """A GCS that did not answer within the timeout (or refused the call) is a TransientError: the cluster may
        be restarting or gone, and the caller tries again or reconnects."""
        from ray.exceptions import RpcError

        try:
            return call()
        except RpcError as exc:
            raise TransientError(f"the cluster's GCS did not answer within {self._timeout:g} s: {exc}") from exc


class MemoryKV:
    """The same contract in one process's memory: for a reconciler without a cluster, and for tests of the logic."""

    def __init__(self) -> None:
        self._data: dict[str, bytes] = {}
        self._lock = threading.Lock()

    def get(self, key: str) -> bytes | None:
        with self._lock:
            return self._data.get(key)

    def put(self, key: str, value: bytes) -> None:
        with self._lock:
            self._data[key] = value

    def put_if_absent(self, key: str, value: bytes) -> bool:
        with self._lock:
            if key in self._data:
                return False
            self._data[key] = value
            return True

    def delete(self, key: str) -> None:
        with self._lock:
            self._data.pop(key, None)

    def keys(self, prefix: str) -> list[str]:
        with self._lock:
            return [k for k in self._data if k.startswith(prefix)]
