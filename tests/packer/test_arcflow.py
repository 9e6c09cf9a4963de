"""The arc-flow model: published optima, capacity of the decomposed flow, several GPU sizes, fixed replicas,
determinism, and agreement with CP-SAT on small instances."""

from __future__ import annotations

from itertools import product

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.packer import Bin, Item, PackSettings, Problem, pack
from reconciler.packer.arcflow import eligible, repack
from reconciler.packer.exact import solve_exact
from reconciler.packer.greedy import construct
from tests.packer.test_packer import BENCH, check_feasible, read_orlib

LIMITS = dict(max_nodes=5_000, max_arcs=200_000, node_budget=2_000)


def one_per_item(problem: Problem):
    """A trivially feasible start: every item on its own bin (the problems below have enough bins)."""
    return tuple((i,) for i in range(len(problem.items)))


def repack_all(problem: Problem, assignment=None, **overrides):
    assignment = assignment or one_per_item(problem)
    return repack(problem, assignment, free=eligible(problem, assignment), **{**LIMITS, **overrides})


def uniform(cap: int, sizes: list[int]) -> Problem:
    return Problem(
        tuple(Bin(f"n{b // 8}", b % 8, cap) for b in range(len(sizes))),
        tuple(Item(f"item{i:03d}", 0, s) for i, s in enumerate(sizes)),
    )


def test_reaches_published_optima_the_heuristics_miss() -> None:
    """u120_08 and u500_19: best-fit decreasing with the local search ends one or two GPUs above the optimum."""
    instances = read_orlib(BENCH / "falkenauer_u120.txt", {"u120_08"}) + read_orlib(
        BENCH / "falkenauer_u500.txt", {"u500_19"}
    )
    for name, cap, best, sizes in instances:
        problem = uniform(cap, sizes)
        result = repack_all(problem, construct(problem).assignment())
        check_feasible(problem, result.assignment)
        assert all(result.assignment), name
        assert result.gpus == result.lower_bound == best, name
        assert result.optimal
        if name == "u120_08":
            solution = pack(problem)
            assert solution.used_bins() == best and solution.proven_optimal and solution.method == "arc-flow"


def test_several_gpu_sizes_use_the_fewest_gpus() -> None:
    # Four 20 GiB replicas: one 80 GiB GPU holds them all, the 24 GiB ones would take four.
    problem = Problem(
        (Bin("a", 0, 24), Bin("a", 1, 24), Bin("a", 2, 24), Bin("a", 3, 24), Bin("b", 0, 80)),
        tuple(Item("m", r, 20) for r in range(4)),
    )
    result = repack_all(problem)
    assert result.assignment == ((4,), (4,), (4,), (4,))
    assert result.gpus == 1 and result.optimal


def test_fixed_replicas_stay_and_their_room_is_free_to_use() -> None:
    # A running replica holds 10 of GPU 0's 24; the new 14 and the two 7s fit beside it and on one more GPU.
    problem = Problem(
        (Bin("a", 0, 24), Bin("a", 1, 24), Bin("a", 2, 24)),
        (Item("run", 0, 10, current=(0,)), Item("m", 0, 14), Item("n", 0, 7), Item("n", 1, 7)),
    )
    start = ((0,), (1,), (2,), (2,))
    result = repack_all(problem, start)
    assert result.assignment[0] == (0,)
    check_feasible(problem, result.assignment)
    assert result.gpus == 2 and result.optimal


def test_capacities_not_multiples_of_the_sizes_round_down() -> None:
    # 512-unit sizes on a GPU with 1,800 units of room: three fit (1,536), four would not (2,048).
    problem = Problem((Bin("a", 0, 1_800), Bin("a", 1, 1_800)), tuple(Item("m", r, 512) for r in range(4)))
    result = repack_all(problem)
    check_feasible(problem, result.assignment)
    assert result.gpus == 2


def test_too_large_graphs_leave_the_placement_alone() -> None:
    problem = uniform(100_000, [20_011 + 37 * i for i in range(60)])
    start = construct(problem).assignment()
    result = repack_all(problem, start, max_nodes=50)
    assert result.status == "too large"
    assert result.assignment == start


@st.composite
def mixed_pools(draw) -> Problem:
    bins = tuple(Bin(f"n{b // 4}", b % 4, draw(st.sampled_from((16, 24, 48)))) for b in range(draw(st.integers(2, 6))))
    sizes = draw(st.lists(st.sampled_from((2, 3, 4, 5, 6, 8, 10, 12, 14)), min_size=1, max_size=10))
    items = tuple(Item(f"m{i}", 0, s) for i, s in enumerate(sizes))
    return Problem(bins, items)


def brute_force_gpus(problem: Problem) -> int | None:
    caps = [b.capacity for b in problem.bins]
    best = None
    for choice in product(range(len(caps)), repeat=len(problem.items)):
        loads = [0] * len(caps)
        for item, b in zip(problem.items, choice):
            loads[b] += item.vram
        if all(load <= cap for load, cap in zip(loads, caps)):
            used = sum(1 for load in loads if load)
            best = used if best is None else min(best, used)
    return best


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(mixed_pools())
def test_agrees_with_cp_sat_and_respects_capacity(problem: Problem) -> None:
    start = construct(problem).assignment()
    if not all(start):
        return  # the pool cannot hold them all: arc-flow only repacks what is placed
    result = repack_all(problem, start)
    check_feasible(problem, result.assignment)
    assert all(result.assignment)
    assert result.optimal
    exact = solve_exact(problem, budget=20.0, seed=1)
    assert exact is not None and exact.optimal
    assert result.gpus == -exact.score.policy
    if len(problem.items) <= 6 and len(problem.bins) <= 4:
        assert result.gpus == brute_force_gpus(problem)


@settings(max_examples=20, deadline=None, derandomize=True, database=None)
@given(mixed_pools())
def test_deterministic(problem: Problem) -> None:
    start = construct(problem).assignment()
    if all(start):
        assert repack_all(problem, start) == repack_all(problem, start)


def test_pack_is_deterministic_on_a_published_instance() -> None:
    (_, cap, _, sizes), = read_orlib(BENCH / "falkenauer_u120.txt", {"u120_00"})
    problem = uniform(cap, sizes)
    settings_ = PackSettings(improve_steps=0)
    assert pack(problem, settings_) == pack(problem, settings_)
