"""Which model a request is for, and which replica takes it. Pure.

Replica choice: the fewest requests in flight through this gateway; ties go round the replicas in turn, so an idle
model spreads its traffic instead of always hitting the first replica. Replicas that failed this request, or that
were found gone a moment ago, are skipped; when every one was found gone, they are tried again anyway (a gone mark
is a guess, a 503 is a certainty).
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from reconciler.gateway import errors
from reconciler.gateway.errors import GatewayError
from reconciler.gateway.table import ModelRoute, RouteTable


def pick_model(table: RouteTable, body: Mapping[str, Any]) -> ModelRoute | GatewayError:
    name = body.get("model")
    if name is None or name == "":
        if len(table.models) == 1:
            return table.models[0]
        return errors.model_missing(table.names)
    if not isinstance(name, str):
        return errors.bad_body("`model` must be a string")
    found = table.model(name)
    return found if found is not None else errors.unknown_model(name, table.names)


def choose(
    backends: Sequence[str],
    *,
    in_flight: Mapping[str, int],
    tried: frozenset[str] | set[str] = frozenset(),
    gone: frozenset[str] | set[str] = frozenset(),
    turn: int = 0,
) -> str | None:
    """The backend to send to next, or None when every one was tried."""
    open_ = [b for b in backends if b not in tried]
    if not open_:
        return None
    alive = [b for b in open_ if b not in gone] or open_
    n = len(alive)
    rotated = [alive[(turn + i) % n] for i in range(n)]
    return min(rotated, key=lambda b: in_flight.get(b, 0))
