"""Middle-scale pools (17-64 GPUs): the plan is never worse than first-fit decreasing, level by level; the refill
search and the bounds it is measured against."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired import Placement, Spread
from reconciler.packer import Bin, Item, PackSettings, Problem, pack
from reconciler.packer.exact import _fill_at_floor, solve_exact
from reconciler.packer.firstfit import first_fit_decreasing
from reconciler.packer.objective import score, violations
from reconciler.packer.refill import _best_subset
from reconciler.packer.solve import bounds_quality
from tests.packer.test_packer import CI, check_feasible, problems

GiB = 1 << 30
# Small budgets keep the property quick; the floor holds whatever the budgets are.
QUICK = PackSettings(exact_time=0.2, window_time=0.1, improve_steps=20_000, squeeze_budget=400_000,
                     arcflow_node_budget=200, regroup_time=0.1)


@st.composite
def middle_pools(draw) -> Problem:
    """17 to 64 GPUs on nodes of 2, 4 or 8 of real card sizes, 2-3 priority levels, TP pairs, spread: gpu, a demand
    of 0.6 to 1.5 times the pool's VRAM (so most pools leave replicas out)."""
    bins: list[Bin] = []
    target = draw(st.integers(17, 64))
    node = 0
    while len(bins) < target:
        per_node = min(target - len(bins), draw(st.sampled_from((2, 4, 8))))
        card = draw(st.sampled_from((12, 16, 24, 40, 48, 80)))
        bins += [Bin(f"n{node:02d}", g, card * GiB) for g in range(per_node)]
        node += 1
    capacity = sum(b.capacity for b in bins)
    wanted = capacity * draw(st.sampled_from((6, 10, 12, 15))) // 10
    levels = draw(st.sampled_from(((0, 100), (0, 50, 100))))
    items: list[Item] = []
    demand, m = 0, 0
    while demand < wanted and len(items) < 300:
        vram = draw(st.sampled_from((1, 2, 3, 5, 8, 10, 13, 16, 19, 24, 35))) * GiB // 2
        tp = 2 if vram >= 6 * GiB and draw(st.booleans()) else 1
        spread = draw(st.sampled_from((Spread.NONE, Spread.NONE, Spread.GPU)))
        priority = draw(st.sampled_from(levels))
        for r in range(min(draw(st.integers(1, 6)), 300 - len(items))):
            items.append(Item(f"m{m:03d}", r, vram, tp, priority, spread=spread))
            demand += vram * tp
        m += 1
    return Problem(tuple(bins), tuple(items))


def _at_least_first_fit(problem: Problem, assignment) -> None:
    floor = first_fit_decreasing(problem)
    assert not violations(problem, floor)
    mine, ffd = score(problem, assignment), score(problem, floor)
    # The objective's order: at the first level where they differ, the plan places more.
    assert mine.levels >= ffd.levels, (mine.levels, ffd.levels)


@settings(max_examples=12, **CI)
@given(middle_pools())
def test_middle_pools_never_place_less_than_first_fit_decreasing(problem: Problem) -> None:
    solution = pack(problem, QUICK)
    check_feasible(problem, solution.assignment)
    assert not violations(problem, solution.assignment)
    _at_least_first_fit(problem, solution.assignment)
    # The reported gap is to an upper bound: no level's bound is below what first-fit decreasing reaches either.
    assert solution.quality.gap_bytes >= 0


@settings(max_examples=80, **CI)
@given(problems())
def test_small_pools_with_running_replicas_never_lose_to_first_fit_decreasing(problem: Problem) -> None:
    solution = pack(problem, PackSettings(exact_time=0.3, improve_steps=20_000))
    _at_least_first_fit(problem, solution.assignment)


def test_first_fit_decreasing_keeps_running_replicas_and_fills_in_pool_order() -> None:
    bins = (Bin("a", 0, 10), Bin("a", 1, 10), Bin("b", 0, 10))
    items = (
        Item("run", 0, 6, current=(2,)),
        Item("big", 0, 7),
        Item("small", 0, 3),
        Item("small", 1, 3),
        Item("pair", 0, 3, gpus=2),
    )
    floor = first_fit_decreasing(Problem(bins, items))
    # Largest first: 7 on a/0, the pair (2 x 3) on a/0 and a/1, then each 3 on the first GPU with room.
    assert floor == ((2,), (0,), (1,), (1,), (0, 1))


def test_the_subset_search_finds_the_fullest_subset() -> None:
    sizes = [7, 7, 5, 5, 5, 4, 3]
    chosen, _ = _best_subset(list(range(len(sizes))), sizes, 18)
    assert sum(sizes[i] for i in chosen) == 18
    assert len(set(chosen)) == len(chosen)
    chosen, _ = _best_subset(list(range(len(sizes))), sizes, 2)
    assert chosen == []


def test_refill_places_more_of_a_level_than_best_fit_decreasing() -> None:
    # Best-fit decreasing: 7 and a 3 on one GPU, 4 and 4 on the other, two 3s left out (18 placed). 7+3 and 4+3+3
    # fill both GPUs: the refill of the second GPU finds it.
    bins = (Bin("a", 0, 10), Bin("a", 1, 10))
    items = (Item("x", 0, 7), Item("y", 0, 4), Item("y", 1, 4), Item("z", 0, 3), Item("z", 1, 3), Item("z", 2, 3))
    problem = Problem(bins, items)
    assert score(problem, first_fit_decreasing(problem)).levels == (18,)
    solution = pack(problem, PackSettings(exact_time=0.0))
    assert score(problem, solution.assignment).levels == (20,)
    assert "refill" in solution.method


def test_the_level_bound_counts_what_fits_on_each_gpu() -> None:
    # Two GPUs of 10 and replicas of 6 only: at most one on each, whatever the placement; the bound knows it.
    bins = (Bin("a", 0, 10), Bin("a", 1, 10))
    items = tuple(Item("six", r, 6) for r in range(3))
    problem = Problem(bins, items)
    solution = pack(problem, PackSettings(exact_time=0.0))
    assert score(problem, solution.assignment).levels == (12,)
    quality = bounds_quality(problem, solution.assignment, gpu_bound=0)
    assert quality.gap_bytes == 0


def test_the_fill_stage_is_skipped_only_where_the_fullest_gpu_is_at_the_average() -> None:
    bins = tuple(Bin("a", g, 10) for g in range(3))
    full = Problem(bins, tuple(Item(f"m{k}", 0, 5) for k in range(6)), Placement.SPREAD)
    placed = ((0,), (0,), (1,), (1,), (2,), (2,))
    assert _fill_at_floor(full, placed)
    assert not _fill_at_floor(full, ((0,), (0,), (1,), None, None, None))
    result = solve_exact(full, budget=0.5, hint=placed)
    assert result is not None and result.optimal and result.score.policy == -1000


@settings(max_examples=6, **CI)
@given(middle_pools())
def test_a_plans_remembered_level_bounds_are_the_bounds_solved_afresh(problem: Problem) -> None:
    """The configuration LP's bound of a level, remembered within a plan by what the levels above hold, is the bound
    solved again for another placement that gives the levels above the same."""
    from reconciler.packer.objective import level_keys
    from reconciler.packer.relaxation import level_bounds
    from reconciler.packer.solve import fits_on_a_node

    keys, fits = level_keys(problem), fits_on_a_node(problem)
    floor = first_fit_decreasing(problem)
    planned = pack(problem, QUICK).assignment
    memo: dict = {}
    level_bounds(problem, floor, keys, fits, memo)
    remembered = level_bounds(problem, planned, keys, fits, memo)
    afresh = level_bounds(problem, planned, keys, fits)
    placed = [{key: sum(i.size for i, w in zip(problem.items, a) if w and i.level == key) for key in keys}
              for a in (floor, planned)]
    for k, key in enumerate(keys):
        if all(placed[0][above] == placed[1][above] for above in keys[:k]):
            # The same LP, started from other columns: equal, or both valid bounds within the LP's tolerance.
            assert abs(remembered[k] - afresh[k]) <= max(2 << 20, afresh[k] // 10**5), (k, remembered, afresh)
        else:
            assert remembered[k] == afresh[k]
