"""Looking up a gateway actor by name is bounded like every other GCS call: Ray's own lookup takes no timeout and,
on a GCS that stopped answering, waits until Ray ends the driver."""

from __future__ import annotations

import threading

import pytest

from reconciler.adapter.gateway import _named
from reconciler.errors import TransientError


class StandInRay:
    """``ray.get_actor``'s three outcomes: a handle, no such actor (ValueError), or no answer until released."""

    def __init__(self, actors: dict[str, object]) -> None:
        self.actors = actors
        self.release = threading.Event()
        self.hang = False

    def get_actor(self, name: str, namespace: str) -> object:
        if self.hang:
            self.release.wait(60)
        if name not in self.actors:
            raise ValueError(f"Failed to look up actor with name '{name}'")
        return self.actors[name]


def test_a_gateway_is_found_or_known_missing():
    handle = object()
    ray = StandInRay({"gateway-a": handle})
    assert _named(ray, "gateway-a") is handle
    assert _named(ray, "gateway-b") is None


def test_a_gcs_that_does_not_answer_is_a_temporary_error_after_the_timeout():
    ray = StandInRay({"gateway-a": object()})
    ray.hang = True  # released only after the call: waited out, the lookup would return the handle, not raise
    try:
        with pytest.raises(TransientError) as failed:
            _named(ray, "gateway-a", timeout=0.3)
        assert "did not answer a lookup of the gateway actor 'gateway-a' within 0.3 s" in str(failed.value)
    finally:
        ray.release.set()


def test_any_other_failure_of_the_lookup_reaches_the_caller():
    class Broken(StandInRay):
        def get_actor(self, name: str, namespace: str) -> object:
            raise ConnectionError("the GCS closed the connection")

    with pytest.raises(ConnectionError):
        _named(Broken({}), "gateway-a")
