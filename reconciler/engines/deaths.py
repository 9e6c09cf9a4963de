"""Where a replica records that its engine died, for the controller to name in status, events and metrics.

Kept in Ray's internal KV under one key per application, the last ``KEEP`` deaths each; written from inside the
replica (which knows why: the engine process's exit signal or code), read by the adapter at each observation.
"""

from __future__ import annotations

import json
import time
from typing import Any

from reconciler.naming import KV_NAMESPACE

PREFIX = "engine-deaths/"
KEEP = 5


def record(*, app: str, config: Any, reason: str) -> None:
    from ray.experimental import internal_kv

    key = (PREFIX + app).encode()
    raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
    deaths = json.loads(raw) if raw else []
    deaths.append({"model": config.model, "replica": config.replica, "app": app, "node": config.node,
                   "gpus": list(config.gpus), "reason": reason, "at": time.time()})
    internal_kv._internal_kv_put(key, json.dumps(deaths[-KEEP:]), overwrite=True, namespace=KV_NAMESPACE)
