"""Packer properties (Hypothesis), known optima of published instances, and an exact reference."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations, product
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired import Placement, Spread
from reconciler.packer import Bin, Item, PackSettings, Problem, pack
from reconciler.packer.bounds import l2
from reconciler.packer.exact import levels_of, solve_exact
from reconciler.packer.greedy import construct
from reconciler.packer.objective import Score, score, violations

BENCH = Path(__file__).resolve().parents[2] / "bench" / "binpack"
FAST = PackSettings(exact_time=0.5, improve_steps=20_000)
# Examples are drawn from a fixed seed and no database is kept: CI sees the same examples on every run, and a failure
# always means a bug (found, at development time, by raising max_examples or dropping derandomize).
CI = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow,
                                                                                  HealthCheck.filter_too_much])


@st.composite
def problems(draw, *, running: bool = True, nodes: int = 3, gpus: int = 3, models: int = 5,
             replicas: int = 4) -> Problem:
    count = draw(st.integers(1, nodes))
    bins = tuple(
        Bin(f"n{n}", g, draw(st.sampled_from((8, 16, 24))))
        for n in range(count)
        for g in range(draw(st.integers(1, gpus)))
    )
    items = []
    for m in range(draw(st.integers(1, models))):
        vram = draw(st.integers(1, 20))
        tp = draw(st.sampled_from((1, 1, 2)))
        spread = draw(st.sampled_from((Spread.NONE, Spread.GPU, Spread.NODE)))
        priority = draw(st.sampled_from((0, 10, 90)))
        preempts = draw(st.booleans())
        preemptible = draw(st.booleans())
        elastic = draw(st.booleans()) and not running
        for r in range(draw(st.integers(1, replicas))):
            items.append(Item(f"m{m}", r, vram, tp, priority, preempts and not elastic, preemptible, spread, elastic))
    if running:
        # Some items run somewhere already, drawn from the bins (possibly overfull: capacity shrank).
        with_current = []
        for item in items:
            if draw(st.booleans()):
                node = draw(st.sampled_from(sorted({b.node for b in bins})))
                members = [k for k, b in enumerate(bins) if b.node == node]
                if len(members) >= item.gpus:
                    chosen = tuple(sorted(draw(st.permutations(members))[: item.gpus]))
                    item = replace(item, current=chosen)
            with_current.append(item)
        items = with_current
    policy = draw(st.sampled_from((Placement.BINPACK, Placement.SPREAD)))
    return Problem(bins, tuple(items), policy, draw(st.integers(0, 2)))


def tiny_problems():
    """Small enough for exhaustive search: at most 4 GPUs and 6 replicas; running replicas, or `replicas: max`."""
    return st.one_of(
        problems(running=True, nodes=2, gpus=2, models=3, replicas=2),
        problems(running=False, nodes=2, gpus=2, models=3, replicas=2),
    ).filter(lambda p: len(p.items) <= 6)


def check_feasible(problem: Problem, assignment) -> None:
    loads = [0] * len(problem.bins)
    per_gpu: dict[tuple[str, int], int] = {}
    per_node: dict[tuple[str, str], int] = {}
    for item, bins in zip(problem.items, assignment):
        if not bins:
            continue
        assert len(set(bins)) == item.gpus, "a gang gets exactly tensorParallel distinct GPUs"
        assert len({problem.bins[b].node for b in bins}) == 1, "a gang stays on one node"
        for b in bins:
            loads[b] += item.vram
            per_gpu[(item.model, b)] = per_gpu.get((item.model, b), 0) + 1
            if item.spread == Spread.GPU:
                assert per_gpu[(item.model, b)] == 1
        node = problem.bins[bins[0]].node
        per_node[(item.model, node)] = per_node.get((item.model, node), 0) + 1
        if item.spread == Spread.NODE:
            assert per_node[(item.model, node)] == 1
    for b, gpu in enumerate(problem.bins):
        assert loads[b] <= gpu.capacity


@settings(max_examples=150, **CI)
@given(problems())
def test_capacity_gangs_and_spread_hold(problem: Problem) -> None:
    check_feasible(problem, pack(problem, FAST).assignment)


@settings(max_examples=60, **CI)
@given(problems())
def test_deterministic(problem: Problem) -> None:
    assert pack(problem, FAST) == pack(problem, FAST)


def options(problem: Problem, item: Item) -> list[tuple[int, ...] | None]:
    """Every place an item could take on its own: None, or distinct GPUs of one node that are large enough."""
    out: list[tuple[int, ...] | None] = [None]
    for node in sorted({b.node for b in problem.bins}):
        members = [k for k, b in enumerate(problem.bins) if b.node == node and b.capacity >= item.vram]
        out += list(combinations(members, item.gpus))
    return out


def exhaustive_optimum(problem: Problem) -> Score:
    """The best score over every assignment that keeps the rules: the objective itself, by brute force."""
    best = None
    for assignment in product(*(options(problem, item) for item in problem.items)):
        if best is not None and score(problem, assignment) <= best:
            continue
        if not violations(problem, assignment):
            best = score(problem, assignment)
    assert best is not None  # leaving out every new replica and keeping every running one where it fits is valid
    return best


@settings(max_examples=120, **CI)
@given(tiny_problems())
def test_reaches_the_optimum_of_the_objective_on_small_instances(problem: Problem) -> None:
    """The oracle is the objective itself: exhaustive search over every assignment that keeps the rules (priority
    levels, then stability, then policy; preemption and maxMoves as objective.py defines them)."""
    solution = pack(problem, FAST)
    assert not violations(problem, solution.assignment)
    assert score(problem, solution.assignment) == exhaustive_optimum(problem)
    assert solution.proven_optimal and solution.quality.unplaced_proven


@settings(max_examples=150, **CI)
@given(problems())
def test_rules_hold_for_running_replicas(problem: Problem) -> None:
    """Evictions only by a preempting higher priority, moves only for a newcomer and within maxMoves."""
    assert violations(problem, pack(problem, FAST).assignment) == []


@settings(max_examples=100, **CI)
@given(problems())
def test_running_replicas_stay_without_need(problem: Problem) -> None:
    """With every item running where it fits and nothing new, the packer changes nothing."""
    keep = []
    for item, bins in zip(problem.items, pack(problem, FAST).assignment):
        keep.append(Item(item.model, item.replica, item.vram, item.gpus, item.priority, item.preempts,
                         item.preemptible, item.spread, item.elastic, bins))
    placed_only = Problem(problem.bins, tuple(it for it in keep if it.current), problem.policy, problem.max_moves)
    again = pack(placed_only, FAST)
    assert again.assignment == tuple(it.current for it in placed_only.items)


def read_orlib(path: Path, names: set[str]):
    tokens = path.read_text().split()
    at, out = 1, []
    for _ in range(int(tokens[0])):
        name, cap, n, best = tokens[at], int(tokens[at + 1]), int(tokens[at + 2]), int(tokens[at + 3])
        at += 4
        if name in names:
            out.append((name, cap, best, [int(t) for t in tokens[at : at + n]]))
        at += n
    return out


def test_known_optima_on_published_instances() -> None:
    for name, cap, best, sizes in read_orlib(BENCH / "falkenauer_u120.txt", {"u120_00", "u120_01", "u120_02"}):
        problem = Problem(
            tuple(Bin(f"n{b // 8}", b % 8, cap) for b in range(len(sizes))),
            tuple(Item(f"item{i:03d}", 0, s) for i, s in enumerate(sizes)),
        )
        solution = pack(problem)
        check_feasible(problem, solution.assignment)
        assert all(solution.assignment), name
        assert solution.used_bins() == best, name
        assert solution.lower_bound == l2(cap, sizes) == best
        assert solution.proven_optimal


@settings(max_examples=25, **CI)
@given(problems(running=False))
def test_matches_exact_reference_on_small_instances(problem: Problem) -> None:
    solution = pack(problem, PackSettings(exact_time=2.0))
    exact = solve_exact(problem, budget=20.0, seed=3)
    assert exact is not None and exact.optimal
    assert score(problem, solution.assignment) == exact.score
    assert levels_of(problem, solution.assignment) == exact.score.levels


def test_eviction_takes_the_lowest_levels_first() -> None:
    """Any VRAM of a higher level outweighs all of a lower one: two priority-0 replicas go before one of priority 10
    (or 5), although evicting `mid` alone would disturb fewer replicas; one of them restarts beside `mid`. The
    heuristic weighs victims the same way."""
    bins = (Bin("a", 0, 20), Bin("a", 1, 20))
    items = (
        Item("big", 0, 12, priority=90),
        Item("low-a", 0, 6, priority=0, current=(0,)),
        Item("low-b", 0, 6, priority=0, current=(0,)),
        Item("low-c", 0, 8, priority=5, current=(0,)),
        Item("mid", 0, 14, priority=10, current=(1,)),
    )
    problem = Problem(bins, items)
    expected = ((0,), (1,), None, (0,), (1,))
    assert construct(problem).assignment() == expected
    solution = pack(problem)
    assert solution.assignment == expected
    assert solution.proven_optimal


def test_moves_make_room_within_max_moves() -> None:
    bins = (Bin("a", 0, 20), Bin("a", 1, 20))
    items = (
        Item("big", 0, 16, priority=90, preempts=False),
        Item("low", 0, 8, priority=0, current=(0,)),
        Item("low", 1, 8, priority=0, current=(1,)),
    )
    moved = pack(Problem(bins, items, max_moves=1)).assignment
    assert moved[0] is not None
    assert moved[1] == moved[2] != moved[0], "one running replica moved next to the other"
    stuck = pack(Problem(bins, items, max_moves=0)).assignment
    assert stuck == (None, (0,), (1,)), "no moves allowed and no preemption: the new replica waits"


def test_evicted_replica_restarts_in_free_room_elsewhere() -> None:
    bins = (Bin("a", 0, 20), Bin("a", 1, 20))
    items = (
        Item("big", 0, 16, priority=90),
        Item("low", 0, 8, priority=0, current=(0,)),
        Item("low", 1, 8, priority=0, current=(1,)),
    )
    assignment = pack(Problem(bins, items, max_moves=0)).assignment
    assert assignment[0] is not None and None not in assignment


def perfect_fit(nodes: int, *, extra: int = 0) -> Problem:
    """Every GPU holds exactly one 5, one 3 and one 2; best-fit decreasing pairs the 5s, stacks three 3s, and runs
    out of GPUs. Too many GPUs for the pool-wide exact model."""
    bins = tuple(Bin(f"n{n}", g, 10) for n in range(nodes) for g in range(6))
    count = len(bins)
    items = [Item(name, r, size) for name, size in (("a", 5), ("b", 3), ("c", 2)) for r in range(count)]
    items += [Item("d", r, 1) for r in range(extra)]
    return Problem(bins, tuple(items))


def test_left_out_replicas_are_placed_when_a_full_placement_exists() -> None:
    problem = perfect_fit(3)
    assert len(problem.bins) > PackSettings().exact_max_bins
    assert not all(construct(problem).assignment()), "the heuristic alone leaves replicas out"
    solution = pack(problem)
    check_feasible(problem, solution.assignment)
    assert all(solution.assignment)
    assert solution.quality.unplaced_proven and solution.proven_optimal


def test_left_out_replicas_are_proven_unplaceable_before_the_plan_says_so() -> None:
    problem = perfect_fit(3, extra=1)  # one more byte than the pool holds
    solution = pack(problem)
    check_feasible(problem, solution.assignment)
    assert sum(1 for bins in solution.assignment if bins is None) == 1
    assert solution.quality.unplaced_proven


# Pools treated as large: the exact model only ever sees a window of two nodes.
WINDOW = PackSettings(exact_time=0.5, exact_max_bins=2, exact_max_items=3, window_max_bins=4, window_max_items=8,
                      improve_steps=2_000)


@settings(max_examples=150, **CI)
@given(problems(running=True, nodes=4, gpus=2, models=5, replicas=3))
def test_the_window_keeps_the_rules_and_never_loses_ground(problem: Problem) -> None:
    solution = pack(problem, WINDOW)
    assert violations(problem, solution.assignment) == []
    assert score(problem, solution.assignment) >= score(problem, construct(problem).assignment())


def test_a_tight_pool_of_a_published_instance_holds_every_replica() -> None:
    """HARD0 on exactly its optimum of 56 GPUs: best-fit decreasing leaves replicas out; packing into virtual
    GPUs and freeing GPUs finds the placement of all of them, so none is reported unplaceable."""
    ((name, cap, best, sizes),) = read_orlib(BENCH / "scholl_hard.txt", {"HARD0"})
    problem = Problem(
        tuple(Bin(f"n{b // 8}", b % 8, cap) for b in range(best)),
        tuple(Item(f"item{i:03d}", 0, s) for i, s in enumerate(sizes)),
    )
    assert not all(construct(problem).assignment())
    solution = pack(problem)
    check_feasible(problem, solution.assignment)
    assert all(solution.assignment), name
    assert solution.quality.unplaced_proven
