"""The demand history the gateways report: windows over it, and several gateways' reports merged."""

from __future__ import annotations

from reconciler.demand import ModelDemand, from_json, merge, to_json

T = 1_800_000_000


def test_window_covers_the_samples_it_overlaps_and_the_current_load() -> None:
    d = ModelDemand("chat", in_flight=3, samples=((30, 0.0), (20, 8.0), (10, 2.0)))
    assert d.window(seconds=5) == (2.0, 3.0)  # only the last step, and what is in flight now
    assert d.window(seconds=15) == (2.0, 8.0)
    assert d.window(seconds=30) == (0.0, 8.0)
    assert d.window(seconds=31) is None  # the history does not reach that far back


def test_merge_adds_reports_second_by_second_counted_back_from_each_report() -> None:
    # Each report counts back from its own moment: however far apart the gateways' clocks are, nothing compares them.
    a = ModelDemand("chat", in_flight=1, queued=2, since_last=15.0, held_for=16.0,
                    samples=((20, 1.0), (10, 3.0)))
    b = ModelDemand("chat", in_flight=2, since_last=13.0, samples=((15, 2.0),))
    other = ModelDemand("embed", samples=((20, 0.0),))
    merged = merge([a, b, other])
    assert [m.model for m in merged] == ["chat", "embed"]
    chat = merged[0]
    assert (chat.in_flight, chat.queued, chat.since_last, chat.held_for) == (3, 2, 13.0, 16.0)
    assert chat.samples == ((20, 1.0), (15, 3.0), (10, 5.0))
    assert not chat.partial
    assert merged[1] is other
    assert from_json(to_json(chat)) == chat


def test_a_merge_missing_a_gateway_marks_every_model_partial() -> None:
    merged = merge([ModelDemand("chat", since_last=3600.0), ModelDemand("embed", in_flight=1)], partial=True)
    assert [m.partial for m in merged] == [True, True]
    assert from_json(to_json(merged[0])) == merged[0]
    assert "partial" not in to_json(ModelDemand("chat"))  # complete reports read as they always did
