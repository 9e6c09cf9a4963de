"""The VRAM bin-packing solver: pure, deterministic, no I/O. GPUs are bins, replicas are items.

`pack(problem, settings)` returns a `Solution`. The objective is lexicographic: priority, then bytes placed within a
priority, then stability of running replicas, then the pool's policy (binpack: fewest GPUs; spread: balanced), then
determinism. A level-by-level best-fit-decreasing construction gives a strong start; for binpack, an arc-flow MILP
(HiGHS) repacks the new single-GPU replicas exactly when sizes are coarse enough for its graph, and a bin-freeing
local search improves what is still above the lower bound; CP-SAT, under a deterministic time budget, solves small
pools exactly when no lower bound already proves the heuristic optimal.
"""

from reconciler.packer.problem import Bin, Item, PackSettings, Problem, Solution
from reconciler.packer.solve import pack

__all__ = ["Bin", "Item", "PackSettings", "Problem", "Solution", "pack"]
