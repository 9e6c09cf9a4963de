"""Capacity advice benchmark: seeded instances (models with realistic sizes, tensor parallelism and spread; 8 node
types of a realistic catalogue with jittered prices and maxima), each advised by `reconciler.advise` and solved by
an independent MILP (HiGHS) for a reference. Run: `python bench/advise.py [--sizes 5 10 20 30] [--seeds 3]`.

Reported per size: instances where the advice is proven cheapest, instances where it equals the MILP's proven
optimum, the worst ratio of advice cost to that optimum, and CPU time of advise (one core: one CP-SAT worker, one
HiGHS thread).
"""

from __future__ import annotations

import argparse
import random
import time

import highspy

from reconciler.advise import PRICE_UNIT, Infeasible, NodeType, Request, advise
from reconciler.desired import GpuSpec, Spread
from reconciler.packer import Item

GiB = 1 << 30
CATALOG = (  # name, GPU memory (GiB) per GPU, price per hour
    ("l4", [24], 0.8), ("a10", [24], 0.9), ("l40s", [48], 1.6), ("l40sx2", [48] * 2, 3.1), ("l40sx4", [48] * 4, 6.0),
    ("a100", [80], 2.5), ("a100x2", [80] * 2, 4.9), ("a100x4", [80] * 4, 9.6), ("a100x8", [80] * 8, 19.0),
    ("h100", [80], 3.9), ("h100x8", [80] * 8, 30.0), ("h200", [141], 4.5), ("h200x8", [141] * 8, 34.0),
    ("l4x4", [24] * 4, 3.0),
)


def instance(seed: int, models: int, types: int = 8) -> Request:
    rng = random.Random(seed * 1000 + models)
    picks = rng.sample(CATALOG, types)
    node_types = tuple(
        NodeType(name=name, gpus=tuple(GpuSpec(name, m * GiB) for m in mem),
                 price=int(price * rng.uniform(0.9, 1.1) * PRICE_UNIT), max=rng.choice([None, None, 2, 4, 6]))
        for name, mem, price in picks
    )
    largest = max(max(mem) for _, mem, _ in picks)
    items = []
    for m in range(models):
        vram = min(largest, rng.choice([4, 6, 8, 12, 16, 20, 24, 32, 40, 48, 60, 70, 76]))
        tp = rng.choice([1] * 7 + [2, 2, 4])
        spread = rng.choice([Spread.NONE] * 6 + [Spread.GPU, Spread.NODE])
        items += [Item(model=f"m{m}", replica=r, vram=vram * GiB, gpus=tp, spread=spread)
                  for r in range(rng.choice([1, 1, 2, 3]))]
    return Request(items=tuple(items), types=node_types)


def reference(request: Request, time_limit: float) -> tuple[float | None, bool]:
    """The cheapest cost by a MILP written apart from the advise package (per-replica variables, no counting):
    (cost per hour or None, proven optimal)."""
    h = highspy.Highs()
    h.setOptionValue("output_flag", False)
    h.setOptionValue("time_limit", time_limit)
    h.setOptionValue("threads", 1)
    items = request.items
    slots = []  # (type, caps, bought variable)
    for t in request.types:
        caps = [g.memory for g in t.gpus]
        n = min(t.max if t.max is not None else len(items), len(items))
        prev = None
        for k in range(n):
            y = h.addVariable(lb=0, ub=1, obj=t.price / PRICE_UNIT, type=highspy.HighsVarType.kInteger)
            if prev is not None:
                h.addConstr(prev - y >= 0)
            slots.append((t, caps, y))
            prev = y
    loads: dict = {}
    for i, item in enumerate(items):
        choices = []
        for s, (t, caps, y) in enumerate(slots):
            fit = [j for j, c in enumerate(caps) if c >= item.vram]
            if len(fit) < item.gpus:
                continue
            on = h.addVariable(lb=0, ub=1, type=highspy.HighsVarType.kInteger)  # item i on slot s
            per = [h.addVariable(lb=0, ub=1, type=highspy.HighsVarType.kInteger) for _ in fit]
            h.addConstr(sum(per) - item.gpus * on == 0)
            h.addConstr(on - y <= 0)
            for j, v in zip(fit, per):
                loads.setdefault((s, j), []).append((item, v, on))
            choices.append(on)
        h.addConstr(sum(choices) == 1)
    for (s, j), members in loads.items():
        cap = slots[s][1][j]
        h.addConstr(sum(item.vram / GiB * v for item, v, _ in members) <= cap / GiB)
        by_model: dict = {}
        for item, v, on in members:
            by_model.setdefault((item.model, item.spread), []).append((v, on))
        for (_, spread), vs in by_model.items():
            if spread == Spread.GPU and len(vs) > 1:
                h.addConstr(sum(v for v, _ in vs) <= 1)
    for s in range(len(slots)):
        by_model: dict = {}
        for (s2, j), members in loads.items():
            if s2 == s:
                for item, _, on in members:
                    if item.spread == Spread.NODE:
                        by_model.setdefault(item.model, set()).add((item.replica, on))
        for _, ons in by_model.items():
            if len(ons) > 1:
                h.addConstr(sum(on for _, on in ons) <= 1)
    h.run()
    status = h.getModelStatus()
    info = h.getInfo()
    if info.primal_solution_status != 2:
        return None, False
    return info.objective_function_value, status == highspy.HighsModelStatus.kOptimal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5, 10, 20, 30])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--reference-time", type=float, default=60.0)
    args = parser.parse_args()
    print("| models | instances | proven cheapest | = MILP's proven optimum | worst ratio to it | worst gap to own bound "
          "| CPU s (mean / max) |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        proven = equal = none = 0
        worst, gap, times, references = 1.0, 0.0, [], 0
        for seed in range(args.seeds):
            request = instance(seed, size)
            start = time.process_time()
            try:
                advice = advise(request)
            except Infeasible:  # the catalogue's maxima hold no choice: nothing to prove cheapest
                none += 1
                continue
            finally:
                times.append(time.process_time() - start)
            proven += advice.proven
            gap = max(gap, advice.choice.cost / max(advice.bound, 1) - 1)
            ref, ref_proven = reference(request, args.reference_time)
            if ref is not None and ref_proven:
                references += 1
                cost = advice.choice.cost / PRICE_UNIT
                equal += abs(cost - ref) < 1e-6
                worst = max(worst, cost / ref)
        ratio = f"{worst:.3f}" if references else "—"
        held = f"{args.seeds - none} (+{none} that no choice holds)" if none else f"{args.seeds}"
        print(f"| {size} | {held} | {proven} | {equal} of {references} | {ratio} | {100 * gap:.1f}% "
              f"| {sum(times) / len(times):.1f} / {max(times):.1f} |", flush=True)


if __name__ == "__main__":
    main()
