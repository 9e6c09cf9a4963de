"""How far the middle-scale plans are from what CP-SAT reaches with much more time than the cached references had:
each named pool of `packing.py`'s middle set (`20-0` is middle-20-0) is planned by plan(), then solved by the
packer's exact model for `--budget` deterministic seconds (seed 1) with the plan as its hint (a hint CP-SAT need not
keep: on middle-64-0 the solve ended below the plan). Run: `python bench/middle_check.py --budget 240 20-0 48-0`
(minutes each).

Printed per pool: placed GiB per priority level for the plan, the best cached reference (`middle_references.json`) and
the longer solve; whether the longer solve proved each level; and the plan's ratio at the first level where it is
below the best of the three (1.0000 where it is the best known).
"""

from __future__ import annotations

import argparse
import json
import time

from packing import (MIDDLE_REFERENCES, _level_ratio, best_reference, from_inventory, middle_instances, problem_from,
                     problem_of, score)
from reconciler.packer.exact import solve_exact
from reconciler.planner import PlanSettings, plan

GiB = 1 << 30


def gib(levels: tuple[int, ...]) -> list[float]:
    return [round(v / GiB, 1) for v in levels]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--budget", type=float, default=240.0)
    parser.add_argument("pools", nargs="+", help="GPUS-K: the K-th pool (0-2) of that size (20, 32, 48 or 64)")
    args = parser.parse_args()
    cached = json.loads(MIDDLE_REFERENCES.read_text())
    for pool in args.pools:
        gpus, k = map(int, pool.split("-"))
        name, desired = middle_instances(gpus, 3)[k]
        problem = problem_from(desired)
        _, assignment = problem_of(desired, plan(desired, from_inventory(desired), PlanSettings()))
        mine = score(problem, assignment).levels
        cpu = time.process_time()
        longer = solve_exact(problem, budget=args.budget, seed=1, hint=assignment)
        cpu = time.process_time() - cpu
        reference = best_reference(cached[name])
        best = max(mine, reference, longer.score.levels)
        print(f"{name}: plan {gib(mine)}, cached reference {gib(reference)}, {args.budget:g} s solve "
              f"{gib(longer.score.levels)} (levels proven: {longer.levels_optimal}, {cpu:.0f} CPU s); "
              f"plan / best known {_level_ratio(mine, best):.4f}", flush=True)


if __name__ == "__main__":
    main()
