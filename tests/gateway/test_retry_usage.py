"""The gateway's pure decisions: what a failed exchange may do next, what a request reserves, what a stream's usage
was (read on event boundaries), and that reservations bound the tokens admitted under any interleaving."""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from reconciler.desired import ApiKey
from reconciler.gateway.limits import Limiter
from reconciler.gateway.retry import Failure, Outcome, Stage, decide
from reconciler.gateway.usage import StreamTap, ask_for_usage, reservation


@pytest.mark.parametrize("stage, failure, outcome", [
    (Stage.RESOLVING, Failure.UNKNOWN_ENDPOINT, Outcome.NEXT_REPLICA),
    (Stage.CONNECTING, Failure.REFUSED, Outcome.NEXT_REPLICA),
    (Stage.CONNECTING, Failure.TIMEOUT, Outcome.NEXT_REPLICA),  # a connect timeout: nothing was written
    (Stage.WAITING, Failure.ENGINE_DEAD, Outcome.NEXT_REPLICA),  # the replica said it did not run it
    (Stage.WAITING, Failure.RESET, Outcome.BAD_GATEWAY),  # written: it may have run (and crashed its engine)
    (Stage.WAITING, Failure.TIMEOUT, Outcome.GATEWAY_TIMEOUT),
    (Stage.READING, Failure.TRUNCATED, Outcome.BAD_GATEWAY),
    (Stage.READING, Failure.RESET, Outcome.BAD_GATEWAY),
    (Stage.STREAMING, Failure.RESET, Outcome.STREAM_ERROR),
    (Stage.STREAMING, Failure.TIMEOUT, Outcome.STREAM_ERROR),
])
def test_only_what_was_never_delivered_is_retried(stage, failure, outcome):
    assert decide(stage, failure).outcome is outcome


def test_failed_replicas_are_ejected_but_not_for_a_timeout():
    assert decide(Stage.CONNECTING, Failure.REFUSED).eject
    assert decide(Stage.WAITING, Failure.RESET).eject
    assert not decide(Stage.WAITING, Failure.TIMEOUT).eject


def test_reservation_is_the_prompt_guess_plus_what_may_be_generated():
    assert reservation({"messages": [], "max_tokens": 100}, 400, default_max_tokens=1024) == 200
    assert reservation({"messages": [], "max_completion_tokens": 10, "n": 3}, 40, default_max_tokens=1024) == 40
    assert reservation({"prompt": "x"}, 8, default_max_tokens=512) == 514
    assert reservation({"input": ["a", "b"]}, 400, default_max_tokens=512) == 100  # embeddings generate nothing
    assert reservation({"messages": [], "max_tokens": True}, 4, default_max_tokens=7) == 8  # not a count


def test_streams_always_ask_for_usage_and_strip_it_when_the_client_did_not():
    sent, strip = ask_for_usage({"stream": True, "stream_options": {"continuous_usage_stats": False}})
    assert sent["stream_options"] == {"continuous_usage_stats": False, "include_usage": True} and strip
    body = {"stream": True, "stream_options": {"include_usage": True}}
    assert ask_for_usage(body) == (body, False)
    assert ask_for_usage({"stream": False}) == ({"stream": False}, False)


USAGE = b'data: {"id":"1","choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}}\n\n'
EVENTS = [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n',
          USAGE, b"data: [DONE]\n\n"]


@given(st.lists(st.integers(min_value=1, max_value=len(b"".join(EVENTS)) - 1), max_size=8, unique=True),
       st.booleans())
def test_usage_is_read_on_event_boundaries_however_the_stream_is_cut(cuts, strip):
    whole = b"".join(EVENTS)
    points = [0, *sorted(cuts), len(whole)]
    tap = StreamTap(strip=strip)
    out = b"".join(tap.feed(whole[a:b]) for a, b in zip(points, points[1:])) + tap.rest()
    assert (tap.prompt, tap.completion) == (5, 7)
    assert out == (whole.replace(USAGE, b"") if strip else whole)


def test_an_event_with_usage_and_choices_is_kept_even_when_stripping():
    event = b'data: {"choices":[{"delta":{"content":"a"}}],"usage":{"prompt_tokens":1,"completion_tokens":1}}\n\n'
    tap = StreamTap(strip=True)
    assert tap.feed(event) == event and (tap.prompt, tap.completion) == (1, 1)


KEY = ApiKey("k", hashlib.sha256(b"k").hexdigest(), ("*",), tokens_per_minute=1000)


@given(st.lists(st.tuples(st.booleans(), st.integers(min_value=1, max_value=400), st.floats(min_value=0, max_value=1)),
                max_size=60))
def test_tokens_admitted_never_exceed_the_limit_plus_one_reservation(steps):
    """Requests arrive (True) or the oldest admitted one finishes (False) in any order, at one instant: the tokens of
    admitted requests (reserved while open, used once settled; an answer uses at most its reservation) never exceed
    the minute's allowance plus the largest single reservation."""
    limiter = Limiter()
    open_: list[tuple[int, int]] = []
    admitted = 0
    settled_used = 0
    largest = 0
    for arrives, reserve, share in steps:
        used = int(reserve * share)
        if arrives or not open_:
            if limiter.reserve(KEY, reserve, now=0.0) is None:
                open_.append((reserve, used))
                admitted += reserve
                largest = max(largest, reserve)
        else:
            reserved, really = open_.pop(0)
            limiter.settle(KEY, reserved=reserved, used=really, now=0.0)
            admitted += really - reserved
            settled_used += really
        assert admitted <= KEY.tokens_per_minute + largest
