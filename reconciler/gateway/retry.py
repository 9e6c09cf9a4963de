"""Whether a failed exchange with a replica may go to another replica, from what was sent and received. Pure.

Envoy's rule: a request may be retried elsewhere only if the replica certainly did not start on it. A connection
that could not be opened, or a replica whose address is unknown, never saw the request: the next replica gets it.
A replica that answered "my engine is dead" (503 with ``engine_dead``) refused it without running it: also safe.
Anything after the request was written (a reset, a connection closed before the answer, a truncated body, a timeout)
may have run it, and a request that crashed its engine would crash the next one too: the client gets a 502 (504 for
a timeout) and nothing is retried. Once bytes went to the client nothing can be retried at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Stage(StrEnum):
    RESOLVING = "resolving"  # finding where the replica listens
    CONNECTING = "connecting"  # opening the connection; the request was not written
    WAITING = "waiting"  # the request was written, no answer header yet
    READING = "reading"  # the answer's header arrived, its body did not end
    STREAMING = "streaming"  # bytes of the answer already went to the client


class Failure(StrEnum):
    UNKNOWN_ENDPOINT = "unknown_endpoint"
    REFUSED = "refused"  # connection refused / unreachable / connect timeout
    RESET = "reset"  # connection reset or closed
    TIMEOUT = "timeout"
    TRUNCATED = "truncated"  # the body ended early or was malformed
    ENGINE_DEAD = "engine_dead"  # the replica answered that its engine is gone


class Outcome(StrEnum):
    NEXT_REPLICA = "next_replica"  # try another replica (this one is ejected for a while)
    BAD_GATEWAY = "bad_gateway"  # 502 in the envelope
    GATEWAY_TIMEOUT = "gateway_timeout"  # 504 in the envelope
    STREAM_ERROR = "stream_error"  # an SSE error event, then the stream ends


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    eject: bool  # take the replica out of rotation for a while


def decide(stage: Stage, failure: Failure) -> Decision:
    if stage is Stage.STREAMING:
        return Decision(Outcome.STREAM_ERROR, eject=failure is not Failure.TIMEOUT)
    if stage in (Stage.RESOLVING, Stage.CONNECTING) or failure in (Failure.UNKNOWN_ENDPOINT, Failure.REFUSED):
        return Decision(Outcome.NEXT_REPLICA, eject=True)
    if failure is Failure.ENGINE_DEAD:
        return Decision(Outcome.NEXT_REPLICA, eject=True)
    if failure is Failure.TIMEOUT:
        return Decision(Outcome.GATEWAY_TIMEOUT, eject=False)
    return Decision(Outcome.BAD_GATEWAY, eject=True)
