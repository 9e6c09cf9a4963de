"""One model's load history on a gateway, with the clock as an input: the mean load per whole second, as change
points, over a bounded window."""

from __future__ import annotations

import asyncio

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.gateway.demand import Meter
from reconciler.gateway.hold import HoldQueue

T0 = 1_800_000_000  # a whole epoch second


def test_a_constant_load_is_one_change_point_per_level():
    meter = Meter("chat", now=T0)
    meter.step(now=T0, in_flight=1)
    meter.step(now=T0, queued=1)
    got = meter.report(now=T0 + 5.5)
    assert (got.in_flight, got.queued, got.load) == (1, 1, 2)
    assert got.samples == ((5, 2.0),)  # counted back from the report's own second
    meter.step(now=T0 + 6, queued=-1)
    got = meter.report(now=T0 + 9.2)
    assert got.samples == ((9, 2.0), (3, 1.0))


def test_each_second_holds_the_time_weighted_mean_of_the_load():
    meter = Meter("chat", now=T0 + 0.25)  # first heard of a quarter into the second: zero load before
    meter.step(now=T0 + 0.5, in_flight=4)  # 4 for the second half of T0
    meter.step(now=T0 + 1.25, in_flight=-2)  # T0+1: 4 for a quarter, 2 for three quarters
    meter.step(now=T0 + 3.0, in_flight=-2)  # T0+2 at 2, T0+3 on at 0
    got = meter.report(now=T0 + 4.0)
    assert got.samples == ((4, 2.0), (3, 2.5), (2, 2.0), (1, 0.0))
    assert got.window(seconds=2) == (0.0, 2.0)  # the ModelDemand reading of the same history


def test_points_older_than_the_window_go_but_the_one_at_the_cutoff_stays():
    meter = Meter("chat", now=T0, keep_s=10)
    for n in range(30):  # the level alternates 1, 0 each second: a change point per second
        meter.step(now=T0 + n, in_flight=1 if n % 2 == 0 else -1)
    got = meter.report(now=T0 + 30.0)
    assert got.samples[0][0] == 10  # the cutoff itself: the step function covers the whole window
    assert len(got.samples) == 10
    assert got.window(seconds=10) == (0.0, 1.0)


def test_a_clock_set_back_adds_nothing():
    meter = Meter("chat", now=T0 + 5)
    meter.step(now=T0 + 5, in_flight=1)
    meter.step(now=T0 + 2, in_flight=-1)  # back three seconds: the current second just gains no area
    got = meter.report(now=T0 + 7)
    assert got.samples == ((2, 0.0),) and got.in_flight == 0


@settings(derandomize=True, database=None, deadline=None, max_examples=60)
@given(st.lists(st.tuples(st.floats(0, 3, allow_nan=False), st.sampled_from([1, -1])), min_size=1, max_size=40))
def test_the_history_integrates_to_the_load_times_time(changes):
    """Whatever the traffic, the sum of the per-second means equals the area under the load (to the rounding)."""
    meter = Meter("m", now=T0)
    now, level, area = float(T0), 0, 0.0
    for gap, delta in changes:
        if level + delta < 0:
            delta = 1
        area += level * gap
        now += gap
        meter.step(now=now, in_flight=delta)
        level += delta
    end = int(now) + 2
    area += level * (end - now)
    got = meter.report(now=end)
    points = list(got.samples) + [(0, 0.0)]
    total = sum(value * (ago - points[i + 1][0]) for i, (ago, value) in enumerate(points[:-1]))
    assert abs(total - area) <= 0.0005 * (len(points) + 1)


def test_the_hold_queue_releases_oldest_first_and_forgets_who_left():
    loop = asyncio.new_event_loop()
    try:
        queue = HoldQueue()
        first, second, third = (loop.create_future() for _ in range(3))
        queue.add(first, 10.0)
        queue.add(second, 11.0)
        queue.add(third, 12.0)
        queue.discard(first)  # its client went away
        assert (len(queue), queue.oldest) == (2, 11.0)
        order: list[str] = []
        second.add_done_callback(lambda f: order.append("second"))
        third.add_done_callback(lambda f: order.append("third"))
        assert queue.release("go") == 2
        loop.run_until_complete(asyncio.sleep(0))
        assert order == ["second", "third"] and third.result() == "go" and not first.done()
        assert (len(queue), queue.oldest) == (0, None)
    finally:
        loop.close()


def test_a_report_gives_ages_on_the_gateways_own_clock():
    """The same traffic on a clock 11 minutes behind reports the same thing: only differences of its own clock."""
    reports = []
    for skew in (0.0, -660.0):
        meter = Meter("chat", now=T0 + skew)
        meter.arrived(T0 + skew + 1.0)
        meter.step(now=T0 + skew + 1.0, queued=1)
        meter.step(now=T0 + skew + 3.0, queued=-1)
        meter.step(now=T0 + skew + 3.0, in_flight=1)
        meter.step(now=T0 + skew + 6.5, in_flight=-1)  # answered: the model is idle from here
        reports.append(meter.report(now=T0 + skew + 10.5, oldest_queued=T0 + skew + 8.0))
    assert reports[0] == reports[1]
    assert (reports[0].since_last, reports[0].held_for) == (4.0, 2.5)
    assert reports[0].samples == ((10, 0.0), (9, 1.0), (4, 0.5), (3, 0.0))
