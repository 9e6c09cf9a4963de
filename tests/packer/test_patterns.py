"""The configuration model's whole placement (`patterns.py`), the reference of the middle-scale bench."""

from __future__ import annotations

from random import Random

from hypothesis import given, settings

from reconciler.desired import Spread
from reconciler.packer import Bin, Item, PackSettings, Problem, pack
from reconciler.packer.exact import solve_exact
from reconciler.packer.firstfit import first_fit_decreasing
from reconciler.packer.objective import score, violations
from reconciler.packer.greedy import construct
from reconciler.packer.patterns import place, place_from
from reconciler.packer.solve import fits_on_a_node
from tests.packer.test_floor import middle_pools
from tests.packer.test_packer import CI
from tests.packer.test_regroup import _big_gpus_taken_by_small_replicas

GiB = 1 << 30
BUDGET = dict(rounds=20, nodes=1, seconds=120.0)


def _place(problem: Problem, start):
    return place(problem, start, fits_somewhere=fits_on_a_node(problem), **BUDGET)


def test_the_small_replicas_of_a_higher_level_leave_the_gpus_a_lower_level_needs() -> None:
    problem = _big_gpus_taken_by_small_replicas()
    floor = first_fit_decreasing(problem)
    found = _place(problem, floor)
    assert found is not None and not violations(problem, found)
    reference = solve_exact(problem, budget=10.0, hint=floor)
    assert reference is not None and reference.levels_optimal
    assert score(problem, found).levels == reference.score.levels == (36 * GiB, 256 * GiB)


def test_gang_members_meet_on_one_node() -> None:
    """Two nodes of two 24 GiB GPUs. Two pairs of 16 GiB at priority 100, four replicas of 8 GiB at priority 0:
    only a placement that puts each pair on one node and the small ones beside them places everything."""
    bins = tuple(Bin(node, g, 24 * GiB) for node in ("a", "b") for g in range(2))
    items = tuple(Item("pair", r, 16 * GiB, gpus=2, priority=100) for r in range(2))
    items += tuple(Item("small", r, 8 * GiB) for r in range(4))
    problem = Problem(bins, items)
    start = (None,) * len(items)
    found = _place(problem, start)
    assert found is not None and not violations(problem, found)
    assert all(found) and score(problem, found).levels == (64 * GiB, 32 * GiB)
    assert all(len({bins[b].node for b in found[r]}) == 1 for r in range(2))


def test_a_gangs_members_are_on_distinct_gpus_of_a_mixed_node() -> None:
    """A node of a 24 GiB and an 8 GiB GPU: the large one could hold three members of 8 GiB, but a pair needs one on
    each GPU, so only one pair fits; the large GPU's room left then holds two replicas of the level below."""
    bins = (Bin("a", 0, 24 * GiB), Bin("a", 1, 8 * GiB))
    items = tuple(Item("pair", r, 8 * GiB, gpus=2, priority=100) for r in range(2))
    items += tuple(Item("fill", r, 8 * GiB) for r in range(2))
    problem = Problem(bins, items)
    found = _place(problem, (None,) * len(items))
    assert found is not None and not violations(problem, found)
    assert score(problem, found).levels == (16 * GiB, 16 * GiB)


def test_spread_node_keeps_one_replica_of_a_model_per_node() -> None:
    bins = (Bin("a", 0, 24 * GiB), Bin("a", 1, 24 * GiB))
    items = tuple(Item("apart", r, 4 * GiB, spread=Spread.NODE) for r in range(2)) + (Item("other", 0, 4 * GiB),)
    problem = Problem(bins, items)
    found = _place(problem, (None,) * len(items))
    assert found is not None and not violations(problem, found)
    assert sum(1 for where in found[:2] if where) == 1 and found[2]


def test_nothing_is_offered_where_replicas_run() -> None:
    bins = (Bin("a", 0, 24 * GiB),)
    items = (Item("running", 0, 4 * GiB, current=(0,)), Item("new", 0, 4 * GiB))
    assert _place(Problem(bins, items), ((0,), None)) is None


@settings(max_examples=4, **CI)
@given(middle_pools())
def test_a_pattern_placement_keeps_every_rule_and_is_deterministic(problem: Problem) -> None:
    start = first_fit_decreasing(problem)
    found = _place(problem, start)
    if found is None:
        return
    assert not violations(problem, found)
    assert all(where is None or fits_on_a_node(problem)(item) for item, where in zip(problem.items, found))
    assert _place(problem, start) == found


@settings(max_examples=4, **CI)
@given(middle_pools())
def test_the_plans_cp_sat_path_keeps_every_rule_within_its_budget_and_is_deterministic(problem: Problem) -> None:
    start = first_fit_decreasing(problem)
    fits = fits_on_a_node(problem)
    found = place(problem, start, fits_somewhere=fits, rounds=20, time=0.3)
    if found is None:
        return
    assert not violations(problem, found)
    assert place(problem, start, fits_somewhere=fits, rounds=20, time=0.3) == found


def _oversubscribed_pool(rng: Random) -> Problem:
    """17-20 GPUs on nodes of 2 or 4 of one card, two priority levels, TP pairs, asked for 1.0-1.5 times its VRAM."""
    bins: list[Bin] = []
    target = rng.randint(17, 20)
    while len(bins) < target:
        per_node, card = min(target - len(bins), rng.choice((2, 4))), rng.choice((12, 16, 24, 40, 48, 80))
        bins += [Bin(f"n{len(bins):02d}", g, card * GiB) for g in range(per_node)]
    wanted = sum(b.capacity for b in bins) * rng.choice((10, 12, 15)) // 10
    items: list[Item] = []
    while sum(item.size for item in items) < wanted and len(items) < 120:
        vram = rng.choice((1, 2, 3, 5, 8, 10, 13, 16, 19, 24, 35)) * GiB // 2
        tp = 2 if vram >= 6 * GiB and rng.random() < 0.5 else 1
        model, priority = f"m{len(items):03d}", rng.choice((0, 100))
        items += [Item(model, r, vram, tp, priority) for r in range(rng.randint(1, 6))]
    return Problem(tuple(bins), tuple(items))


def test_the_plan_takes_the_pattern_placement_where_it_places_more() -> None:
    # Found by drawing such pools: on this one the constructions and the refill leave half a GiB that the pattern
    # model places (with the regroup search off in both, the plan without the pattern model falls back to the
    # window search, which does not find it).
    problem = _oversubscribed_pool(Random(3))
    without = pack(problem, PackSettings(regroup_time=0.0, pattern_time=0.0))
    solution = pack(problem, PackSettings(regroup_time=0.0))
    assert "patterns" in solution.method and not violations(problem, solution.assignment)
    assert score(problem, solution.assignment).levels > score(problem, without.assignment).levels


def test_another_constructions_gpus_give_the_integer_model_the_patterns_its_pricing_missed() -> None:
    # Found by drawing such pools: from best-fit decreasing alone the integer model places nothing beyond its 13 GiB
    # of the lower level; with first-fit decreasing's GPUs among its patterns too, 29.5 GiB (the level above the same).
    problem = _oversubscribed_pool(Random(4))
    fits, start, other = fits_on_a_node(problem), construct(problem).assignment(), first_fit_decreasing(problem)
    alone = place(problem, start, fits_somewhere=fits, rounds=60, time=1.2) or start  # None: nothing better
    both = place_from(problem, start, [other], fits_somewhere=fits, rounds=60, time=1.2)
    assert both is not None and not violations(problem, both)
    assert score(problem, alone).levels == (442 * GiB, 13 * GiB)
    assert score(problem, both).levels == (442 * GiB, 59 * GiB // 2)


@settings(max_examples=4, **CI)
@given(middle_pools())
def test_placing_with_another_constructions_gpus_never_places_less_and_is_deterministic(problem: Problem) -> None:
    fits, start, other = fits_on_a_node(problem), construct(problem).assignment(), first_fit_decreasing(problem)
    alone = place(problem, start, fits_somewhere=fits, rounds=20, time=0.3) or start
    both = place_from(problem, start, [other], fits_somewhere=fits, rounds=20, time=0.3) or start
    assert not violations(problem, both)
    assert score(problem, both) >= score(problem, alone)
    assert (place_from(problem, start, [other], fits_somewhere=fits, rounds=20, time=0.3) or start) == both
