"""The demand history the gateways report: windows over it, and several gateways' reports merged."""

from __future__ import annotations

from reconciler.demand import ModelDemand, from_json, merge, to_json

T = 1_800_000_000


def test_window_covers_the_samples_it_overlaps_and_the_current_load() -> None:
    d = ModelDemand("chat", in_flight=3, samples=((T, 0.0), (T + 10, 8.0), (T + 20, 2.0)), until=T + 30)
    assert d.window(now=T + 30, seconds=5) == (2.0, 3.0)  # only the last step, and what is in flight now
    assert d.window(now=T + 30, seconds=15) == (2.0, 8.0)
    assert d.window(now=T + 30, seconds=30) == (0.0, 8.0)
    assert d.window(now=T + 30, seconds=31) is None  # the history does not reach that far back


def test_merge_adds_reports_second_by_second() -> None:
    a = ModelDemand("chat", in_flight=1, queued=2, last_request=T + 5.0, oldest_queued=T + 4.0,
                    samples=((T, 1.0), (T + 10, 3.0)), until=T + 20)
    b = ModelDemand("chat", in_flight=2, last_request=T + 7.0, samples=((T + 5, 2.0),), until=T + 18)
    other = ModelDemand("embed", samples=((T, 0.0),), until=T + 20)
    merged = merge([a, b, other])
    assert [m.model for m in merged] == ["chat", "embed"]
    chat = merged[0]
    assert (chat.in_flight, chat.queued, chat.last_request, chat.oldest_queued) == (3, 2, T + 7.0, T + 4.0)
    assert chat.samples == ((T, 1.0), (T + 5, 3.0), (T + 10, 5.0))
    assert chat.until == T + 18
    assert merged[1] is other
    assert from_json(to_json(chat)) == chat
