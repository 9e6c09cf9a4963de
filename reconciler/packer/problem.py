"""The packing problem as plain data: GPUs are bins, replicas are items.

The packer knows nothing about specs, Ray or the observed cluster: the planner translates those into a `Problem` and
reads a `Solution` back. Everything is an integer (bytes, GPU counts) so results are exact and reproducible.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.desired import Placement, Spread


@dataclass(frozen=True, slots=True)
class Bin:
    node: str
    index: int  # the GPU's index on its node
    capacity: int  # bytes the packer may fill: memory minus the pool's reserve minus foreign use


@dataclass(frozen=True, slots=True)
class Item:
    model: str
    replica: int
    vram: int  # bytes on each of its GPUs
    gpus: int = 1  # tensorParallel: this many distinct GPUs of one node
    priority: int = 0
    preempts: bool = True  # may evict lower-priority preemptible replicas
    preemptible: bool = True
    spread: Spread = Spread.NONE  # hard anti-affinity among the items of one model
    elastic: bool = False  # a `replicas: max` model's replica: fills what is left, never evicts nor moves others
    current: tuple[int, ...] | None = None  # bins (indices into Problem.bins) it runs on now with an unchanged spec
    # Among running replicas that could give way equally well, those with a lower value go first: for on-demand
    # models, how recently the replica was used (idle ones first, then the least recently used).
    keep: int = 0

    @property
    def key(self) -> tuple[str, int]:
        return (self.model, self.replica)

    @property
    def size(self) -> int:
        return self.vram * self.gpus

    @property
    def level(self) -> tuple[int, bool]:
        """Sort key of the lexicographic objective: higher priority first, elastic demand after the rest of its
        priority."""
        return (-self.priority, self.elastic)


@dataclass(frozen=True, slots=True)
class Problem:
    bins: tuple[Bin, ...]
    items: tuple[Item, ...]
    policy: Placement = Placement.BINPACK
    max_moves: int = 0  # running replicas that may be moved to make room (forced relocations don't count)


@dataclass(frozen=True, slots=True)
class PackSettings:
    """Tunables of the solver. Budgets are deterministic work, never wall time, so a plan is reproducible."""

    exact_time: float = 2.0  # CP-SAT deterministic seconds (its own measure of work) for all stages of one pool
    exact_max_items: int = 150  # pools up to this many replicas and GPUs are solved exactly; larger ones are
    exact_max_bins: int = 16  # improved exactly in a window when the heuristic leaves replicas out
    window_max_items: int = 300  # the window: whole nodes with the most free room, up to this many replicas
    window_max_bins: int = 32  # and GPUs
    arcflow_node_budget: int = 2_000  # HiGHS branch-and-bound nodes for the arc-flow MILP; 0 turns arc-flow off
    arcflow_max_items: int = 2_000  # above this many replicas in a pool, no arc-flow (speed)
    arcflow_max_nodes: int = 5_000  # graph limits: larger graphs (fine-grained sizes) are left to the search
    arcflow_max_arcs: int = 200_000
    arcflow_safety_seconds: float = 60.0  # wall-clock cap against pathological solves; hitting it is reported
    improve_steps: int = 2_000_000  # local-search work (evaluated candidates) spent on freeing GPUs (binpack)
    improve_max_items: int = 2_000  # above this many replicas in a pool, best-fit decreasing alone (speed)
    squeeze_budget: int = 20_000_000  # moves scored by the overfill search for one GPU fewer after the ejection search
    squeeze_max_cells: int = 40_000  # replicas that move x GPUs in use: above this, no overfill search (speed)
    refill_budget: int = 20_000  # bitset operations of the refill search (`refill.py`) in a pool leaving replicas out
    window_time: float = 0.5  # CP-SAT deterministic seconds for the window of a pool too large for the exact model,
    window_time_max_bins: int = 64  # in pools up to this many GPUs (planned within 2 CPU s); beyond, exact_time
    # Shares of a level's allowance in the window: the first solve, then the neighbourhood search (measured on pools
    # of 20-32 GPUs: searching sooner and longer placed more of the level left short than the tree search did).
    window_first: float = 0.2
    window_search: float = 0.6
    # The regroup search (`regroup.py`) in place of the window in pools up to `window_time_max_bins` GPUs: its
    # deterministic seconds and the GPUs re-solved at a time.
    regroup_time: float = 0.5
    regroup_gpus: int = 6
    # Before it, in a pool where nothing runs yet, the configuration model made integer over nodes (`patterns.py`):
    # its work for all levels (CP-SAT's deterministic seconds, charged to approach the CPU seconds they take), and
    # the pricing rounds of each level's LP. Measured on bench middle (12 pools of 20-64 GPUs) against the regroup
    # search alone with 1.3: worst ratio to the best known 0.940 -> 0.992, mean 0.984 -> 0.998; plan CPU s mean
    # 2.24 -> 2.02, max 2.50 -> 2.96 (less budget left the regroup search far worse: a worst ratio of 0.970).
    pattern_time: float = 1.2
    pattern_rounds: int = 60
    floor_max_items: int = 2_000  # up to this many replicas, first-fit decreasing is a floor and the refill runs
    seed: int = 0


@dataclass(frozen=True, slots=True)
class Quality:
    """How far a placement may be from the optimum of the objective: zero gaps and `proven_optimal` when it is the
    optimum. The gaps are to bounds no placement can beat, so they are what a better search could still gain."""

    proven_optimal: bool
    gap_bytes: int = 0  # placed VRAM below an upper bound, summed over the priority levels
    gap_gpus: int = 0  # binpack: GPUs in use above a lower bound
    gap_stays: int = 0  # running replicas that might stay beyond those that do
    gap_fill: int = 0  # spread: per mille of its memory the fullest GPU may be above the least it can be
    unplaced_proven: bool = True  # no replica left out could be placed: every level holds all the VRAM it can


@dataclass(frozen=True, slots=True)
class Solution:
    # Per item of the problem, in the same order: the bins it is placed on, or None.
    assignment: tuple[tuple[int, ...] | None, ...]
    lower_bound: int  # GPUs any placement of the placed items needs (binpack); 0 when not computed
    proven_optimal: bool  # every objective level is known to be optimal
    method: str  # how it was found, for benchmarks and debugging: "greedy", "arc-flow", "greedy+search", "cp-sat"
    quality: Quality = Quality(proven_optimal=False, unplaced_proven=False)

    def used_bins(self) -> int:
        return len({b for bins in self.assignment if bins for b in bins})
