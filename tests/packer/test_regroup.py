"""The regroup search (`regroup.py`): a few GPUs re-solved exactly, the higher levels' replicas among them."""

from __future__ import annotations

from functools import reduce
from math import gcd
from random import Random

from hypothesis import given, settings
from ortools.sat.python import cp_model

from reconciler.packer import Bin, Item, Problem, pack
from reconciler.packer.exact import solve_exact
from reconciler.packer.firstfit import first_fit_decreasing
from reconciler.packer.objective import level_keys, score, violations
from reconciler.packer.regroup import _contents, _movable, _neighbourhood, _potential, _solve, regroup
from reconciler.packer.solve import fits_on_a_node
from tests.packer.test_floor import QUICK, middle_pools
from tests.packer.test_packer import CI

GiB = 1 << 30


def _big_gpus_taken_by_small_replicas() -> Problem:
    """Two 40 GiB GPUs listed first, eighteen of 12 GiB. Six replicas of 6 GiB at priority 100 go first and fill the
    first large GPU; of the two 38 GiB replicas at priority 0 (which fit only the large GPUs), one is left out. The
    small ones belong on the small GPUs: then both 38 GiB replicas are placed (at the cost of three of 12 GiB)."""
    bins = (Bin("big", 0, 40 * GiB), Bin("big", 1, 40 * GiB)) + tuple(
        Bin(f"small-{n}", g, 12 * GiB) for n in range(9) for g in range(2))
    items = tuple(Item("top", r, 6 * GiB, priority=100) for r in range(6))
    items += tuple(Item("large", r, 38 * GiB) for r in range(2))
    items += tuple(Item("filler", r, 12 * GiB) for r in range(18))
    return Problem(bins, items)


def test_regroup_moves_a_higher_level_off_the_gpus_a_lower_level_needs() -> None:
    problem = _big_gpus_taken_by_small_replicas()
    floor = first_fit_decreasing(problem)
    assert score(problem, floor).levels == (36 * GiB, 254 * GiB)
    found = regroup(problem, floor, budget=0.5, seed=0, size=6, fits_somewhere=fits_on_a_node(problem))
    assert not violations(problem, found)
    reference = solve_exact(problem, budget=10.0, hint=floor)
    assert reference is not None and reference.levels_optimal
    assert score(problem, found).levels == reference.score.levels == (36 * GiB, 256 * GiB)


def test_a_middle_pool_plan_reaches_the_optimum_there() -> None:
    # 20 GPUs: beyond the exact model's range, so the plan's own searches must find it.
    problem = _big_gpus_taken_by_small_replicas()
    solution = pack(problem)
    assert not violations(problem, solution.assignment)
    assert score(problem, solution.assignment).levels == (36 * GiB, 256 * GiB)


@settings(max_examples=5, **CI)
@given(middle_pools())
def test_regroup_keeps_every_rule_never_loses_and_is_deterministic(problem: Problem) -> None:
    start = first_fit_decreasing(problem)
    fits = fits_on_a_node(problem)
    found = regroup(problem, start, budget=0.1, seed=0, size=6, fits_somewhere=fits)
    assert not violations(problem, found)
    assert score(problem, found) >= score(problem, start)
    assert regroup(problem, start, budget=0.1, seed=0, size=6, fits_somewhere=fits) == found


@settings(max_examples=5, **CI)
@given(middle_pools())
def test_a_neighbourhood_bounded_hopeless_is_one_cp_sat_cannot_improve(problem: Problem) -> None:
    # The bound that spares solves must be a bound: where it says no level can gain, the exact model finds nothing.
    start = pack(problem, QUICK).assignment  # after the searches, where most neighbourhoods are hopeless
    fits = fits_on_a_node(problem)
    movable = [_movable(item) for item in problem.items]
    waiting = [i for i, where in enumerate(start) if where is None and movable[i] and fits(problem.items[i])]
    if not waiting:
        return
    keys = level_keys(problem)
    below = keys[keys.index(min(problem.items[i].level for i in waiting)):]
    unit = reduce(gcd, (item.vram for item in problem.items), 0)
    solver = cp_model.CpSolver()
    solver.parameters.num_workers = 1
    rng = Random(0)
    for target in range(0, len(problem.bins), 3):
        chosen = _neighbourhood(problem, start, target=target, open_bins=list(range(len(problem.bins))), size=6,
                                rng=rng, level=below[0])
        here = _contents(problem, start, chosen=chosen, waiting=waiting, movable=movable, below=below, unit=unit)
        if _potential(start, here=here, below=below, unit=unit) is None:
            found, _ = _solve(problem, start, chosen=chosen, here=here, below=below, unit=unit, solver=solver,
                              limit=1.0)
            assert found is None or score(problem, found) <= score(problem, start)
