"""Capacity advice as plain data: what must fit, the node types one may buy, and the advice found.

Prices are integers (`PRICE_UNIT` per currency unit and hour) so costs add up exactly and two runs agree to the last
digit; memory is bytes. The replicas to place are the packer's own `Item`s (the problem form the planner builds).
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.desired import GpuSpec, InventoryNode
from reconciler.packer import Item

PRICE_UNIT = 10_000  # a price is written with at most four decimals: 5.00 per hour is 50,000 units


@dataclass(frozen=True, slots=True)
class NodeType:
    """A node one may buy or rent: its GPUs, its price per hour and how many of it there can be at most."""

    name: str
    gpus: tuple[GpuSpec, ...]
    price: int  # PRICE_UNIT per hour
    max: int | None = None  # None: as many as it takes


@dataclass(frozen=True, slots=True)
class Request:
    """The question: the cheapest node types (within each type's max) on which every item fits, and still fits after
    any `tolerate` nodes fail; `existing` nodes are paid for already and cost nothing."""

    items: tuple[Item, ...]
    types: tuple[NodeType, ...]
    reserve: int = 0  # bytes kept free on every GPU (the pool's reserve)
    tolerate: int = 0
    existing: tuple[InventoryNode, ...] = ()


@dataclass(frozen=True, slots=True)
class AdviseSettings:
    """Tunables of the search. Budgets are CP-SAT's deterministic time, never the wall clock, so that the same
    request gives the same advice on every machine."""

    exact_time: float = 6.0  # CP-SAT deterministic seconds (its measure of work) of exact checks in all
    check_time: float = 1.0  # deterministic seconds for one choice's exact check
    max_candidates: int = 400  # choices the exact model checks at most
    max_relaxed: int = 60  # choices the arc-flow relaxation proposes at most (each one HiGHS solve)
    flow_max_nodes: int = 2_000  # branch-and-bound nodes of one relaxation solve
    flow_max_iterations: int = 30_000  # simplex iterations of all relaxation solves (HiGHS's count of its work)
    # Simplex iterations of one choice's split over its kinds (`patterns.py`). A split solve takes 2,000-16,000; a
    # nearly full choice needs several splits before one fits everywhere (bench/advise.py's seed 1 at 30 models: 6
    # splits, 50,000 iterations, 5 s of the 7 s it takes), and the whole walk's flow_max_iterations stop it after.
    split_max_iterations: int = 60_000
    # The same for a choice judged only as the runner-up (shown, not proven), and its splits: a proof's budget spent
    # there took 9.5 of the 16 s of bench/advise.py's seed 16 at 30 models.
    split_runner_up_iterations: int = 10_000
    split_runner_up_rounds: int = 2
    split_max_nodes: int = 200  # branch-and-bound nodes of one solve of a split
    split_rounds: int = 20  # splits tried for one choice (each kind's share that cannot fit rules out its core)
    split_core_time: float = 0.2  # deterministic seconds of exact checks shrinking a share that does not fit
    # Deterministic seconds of the planner's packer on one kind's share the greedy construction leaves short (charged
    # to exact_time in full): it places large, nearly full shares the exact model does not decide in its budget.
    split_pack_time: float = 2.5
    split_pack_checks: int = 1  # choices whose shares the planner's packer may judge, at most
    # The whole choice's exact model after an undecided split, only up to this many count variables: on
    # bench/advise.py's 30-model instances (over 1,000) it decided nothing the split left undecided, at 1.5 s each.
    exact_after_split: int = 600
    flow_max_columns: int = 60_000  # a relaxation with more variables is not built (the capacity rules instead)
    max_judged: int = 3_000  # choices the greedy construction judges at most
    exact_max_slots: int = 3_000  # a choice whose exact model would count more variables is left undecided
    max_window: int = 20_000  # choices one cost window lists at most (the cheapest)
    windows: int = 3  # cost windows walked for the runner-up beyond the heuristic's cost
    max_windows: int = 64  # cost windows walked in all
    hours_per_month: int = 730  # 365 * 24 / 12
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Choice:
    """A multiset of node types and what it costs per hour."""

    counts: tuple[tuple[str, int], ...]  # (type name, count), in the catalogue's order, counts > 0 only
    cost: int  # PRICE_UNIT per hour

    @property
    def nodes(self) -> int:
        return sum(n for _, n in self.counts)


@dataclass(frozen=True, slots=True)
class AdvisedNode:
    """One node of the advice: a kept one (its inventory name) or a new one (`type-1`, `type-2`, ...)."""

    name: str
    type: str  # the node type's name; "" for a kept node
    gpus: tuple[GpuSpec, ...]
    kept: bool = False


@dataclass(frozen=True, slots=True)
class Advice:
    choice: Choice  # the nodes to add
    bound: int  # no choice costs less (PRICE_UNIT per hour)
    proven: bool  # the choice is the cheapest there is
    runner_up: Choice | None  # the next cheapest choice found, a different multiset; None when there is none
    nodes: tuple[AdvisedNode, ...]  # kept nodes first, then the new ones
    # Per item of the request, in its order: (node index into `nodes`, GPU indices); the placement with no failure.
    placement: tuple[tuple[int, tuple[int, ...]], ...]
    method: str  # "exact" (the exact check judged it), "heuristic" (the greedy judged it), "nothing to place"

    def inventory(self) -> tuple[InventoryNode, ...]:
        """The advised nodes, kept ones included, as a pool's `inventory`."""
        return tuple(InventoryNode(node=n.name, gpus=n.gpus) for n in self.nodes)


class Infeasible(ValueError):
    """No choice within the catalogue's maxima fits: the message says what does not fit where."""
