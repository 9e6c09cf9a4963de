"""The cluster's node table, read from the GCS within a bounded time.

``ray.nodes()`` waits on a GCS that is gone for as long as the driver lives: a watch whose cluster stopped would
hang in it. The driver's own GCS client takes a timeout; its answer is turned into the rows ``ray.nodes()`` gives
(the keys this package reads), so callers see no difference.
"""

from __future__ import annotations

from typing import Any

from reconciler.settings import DEFAULTS


def node_table(timeout: float = DEFAULTS.cluster.gcs_timeout) -> list[dict[str, Any]]:
    """Every node the GCS knows, alive or dead, as ``ray.nodes()`` rows; raises when the GCS does not answer within
    ``timeout`` seconds. Needs a connected driver."""
    from ray._private import worker

    infos = worker.global_worker.gcs_client.get_all_node_info(timeout=timeout)
    return [row(info) for info in infos.values()]


def row(info: Any) -> dict[str, Any]:
    """One ``GcsNodeInfo`` message as a ``ray.nodes()`` row. A dead node's resources are empty, as there."""
    from ray.core.generated import gcs_pb2

    alive = info.state == gcs_pb2.GcsNodeInfo.ALIVE
    return {
        "NodeID": info.node_id.hex(),
        "Alive": alive,
        "NodeManagerAddress": info.node_manager_address,
        "NodeManagerHostname": info.node_manager_hostname,
        "NodeName": info.node_name,
        "Resources": dict(info.resources_total) if alive else {},
        "Labels": dict(info.labels),
        "DeathReasonMessage": info.death_info.reason_message,
    }
