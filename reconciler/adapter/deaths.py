"""The engine deaths replicas recorded in the cluster (``engines.deaths``), read back for an observation."""

from __future__ import annotations

import json

from reconciler.engines.deaths import PREFIX
from reconciler.naming import KV_NAMESPACE
from reconciler.observed import EngineDeath, engine_death_from_json


def read() -> tuple[EngineDeath, ...]:
    """Every recorded death, oldest first (the last few per application). Needs a connected driver."""
    from ray.experimental import internal_kv

    found: list[EngineDeath] = []
    for key in internal_kv._internal_kv_list(PREFIX, namespace=KV_NAMESPACE):
        raw = internal_kv._internal_kv_get(key, namespace=KV_NAMESPACE)
        try:
            found.extend(engine_death_from_json(d) for d in json.loads(raw or b"[]"))
        except (ValueError, KeyError, TypeError):  # a record from another version: not worth failing an observation
            continue
    return tuple(sorted(found, key=lambda d: (d.at, d.app)))
