"""The overfill search that frees one more GPU: it reaches the optimum where the ejection search stops one GPU short,
and on random pools it keeps every rule: capacity, gangs, spread, running replicas, nothing placed lost."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.desired import Placement, Spread
from reconciler.packer import Bin, Item, PackSettings, Problem, pack
from reconciler.packer.squeeze import squeeze
from reconciler.packer.state import State

from .test_packer import BENCH, CI, check_feasible, read_orlib


@st.composite
def spread_out(draw) -> tuple[Problem, list]:
    """A pool placed worst-fit (every replica where the most room is left), so GPUs are there to be freed; some
    replicas run where they are, some are gangs or spread, as the context the search must leave alone."""
    bins = tuple(
        Bin(f"n{n}", g, draw(st.sampled_from((8, 12, 16, 24))))
        for n in range(draw(st.integers(2, 4)))
        for g in range(draw(st.integers(1, 3)))
    )
    items = []
    for m in range(draw(st.integers(2, 7))):
        tp = draw(st.sampled_from((1, 1, 1, 2)))
        spread = draw(st.sampled_from((Spread.NONE, Spread.NONE, Spread.NONE, Spread.GPU)))
        vram = draw(st.integers(1, 9))
        items += [Item(f"m{m}", r, vram, tp, spread=spread) for r in range(draw(st.integers(1, 5)))]
    problem = Problem(bins, tuple(items), Placement.BINPACK)
    state = State(problem)
    running = []
    for i, item in enumerate(items):
        options = [b for b in range(len(bins)) if state.free[b] >= item.vram and state.allowed(item, b)]
        if item.gpus == 2:
            options = [b for b in options if any(c != b and bins[c].node == bins[b].node and c in options
                                                 for c in range(len(bins)))]
        if not options:
            continue
        b = max(options, key=lambda b: (state.free[b], -b))
        where = (b,) if item.gpus == 1 else (b, next(c for c in options if c != b and bins[c].node == bins[b].node))
        state.place(i, tuple(sorted(where)))
        running.append(draw(st.booleans()) and draw(st.booleans()))
    assignment = state.assignment()
    placed = [i for i, bins_ in enumerate(assignment) if bins_]
    items = list(items)
    for i, runs in zip(placed, running):
        if runs:
            items[i] = replace(items[i], current=assignment[i])
    return replace(problem, items=tuple(items)), list(assignment)


def test_the_last_gpu_of_a_tight_published_instance_is_found() -> None:
    """Scholl's HARD3: the ejection search ends on 56 GPUs, the optimum is 55 (its slack is 58,397 units over 55
    bins of 100,000)."""
    ((name, cap, best, sizes),) = read_orlib(BENCH / "scholl_hard.txt", {"HARD3"})
    problem = Problem(
        tuple(Bin(f"n{b // 8}", b % 8, cap) for b in range(60)),
        tuple(Item(f"item{i:03d}", 0, s) for i, s in enumerate(sizes)),
    )
    without = pack(problem, PackSettings(squeeze_budget=0))
    solution = pack(problem)
    check_feasible(problem, solution.assignment)
    assert all(solution.assignment), name
    assert without.used_bins() == best + 1
    assert solution.used_bins() == best
    assert "squeeze" in solution.method


@settings(max_examples=200, **CI)
@given(spread_out())
def test_squeezing_keeps_every_rule_and_never_uses_more_gpus(case) -> None:
    problem, before = case
    state = State.of(problem, before)
    used = len({b for bins in before if bins for b in bins})
    squeeze(state, budget=300_000, seed=0, lower_bound=0, max_cells=10_000)
    after = state.assignment()
    check_feasible(problem, after)
    assert len({b for bins in after if bins for b in bins}) <= used
    for item, was, now in zip(problem.items, before, after):
        assert (was is None) == (now is None), "nothing placed is lost, nothing new is placed"
        if was != now:  # only new single-GPU replicas without spread move
            assert item.current is None and item.gpus == 1 and item.spread == Spread.NONE
    again = State.of(problem, before)
    squeeze(again, budget=300_000, seed=0, lower_bound=0, max_cells=10_000)
    assert again.assignment() == after, "deterministic"


def test_a_worst_fit_pool_is_squeezed_onto_fewer_gpus() -> None:
    """Twelve 4 GiB replicas spread one per GPU over twelve 16 GiB GPUs fit on three."""
    problem = Problem(tuple(Bin(f"n{b // 4}", b % 4, 16) for b in range(12)),
                      tuple(Item("m", r, 4) for r in range(12)))
    state = State.of(problem, [(b,) for b in range(12)])
    squeeze(state, budget=1_000_000, seed=0, lower_bound=3, max_cells=10_000)
    check_feasible(problem, state.assignment())
    assert len({b for bins in state.assignment() for b in bins}) == 3
