"""The VRAM bin-packing solver: pure, deterministic, no I/O. GPUs are bins, replicas are items.

`pack(problem, settings)` returns a `Solution` with its `Quality`. The objective (`objective.py`) is lexicographic:
bytes placed per priority level, then stability of running replicas, then the pool's policy (binpack: fewest GPUs;
spread: the fullest GPU as empty as it can be). A level-by-level best-fit-decreasing construction gives a strong
start; for binpack, an arc-flow MILP (HiGHS) repacks the new single-GPU replicas exactly when sizes are coarse enough
for its graph, and a bin-freeing local search improves what is still above the lower bound. CP-SAT, under a
deterministic budget, solves pools up to 16 GPUs and 150 replicas on the whole objective unless bounds already prove
the heuristic optimal; in larger pools, after a subset-sum refill of the first level left short, it re-solves a few
GPUs at a time (the regroup search, up to 64 GPUs) or a window of nodes (a fleet) for replicas the heuristic left
out (a pool asked for more than it holds frees no GPUs: that cannot improve the objective). First-fit decreasing is
a floor: no plan places less of the first level where they differ.
Gaps are reported against the tightest of the room, subset-sum and configuration-LP bounds.
"""

from reconciler.packer.problem import Bin, Item, PackSettings, Problem, Solution
from reconciler.packer.solve import pack

__all__ = ["Bin", "Item", "PackSettings", "Problem", "Solution", "pack"]
