"""Whether a choice holds everything, kind by kind: the arc-flow relaxation with the choice's node counts fixed says
how many replicas of each label go to each kind of node, and the exact model places each kind's share on its own.

The relaxation with fixed counts is still a relaxation, so when it has no solution the choice is proven not to fit.
When it has one, the nodes of different kinds share nothing, so each kind is a small exact problem of its own (a few
nodes, the replicas the flows gave it) where the whole choice was one large one: a placement on every kind is a
placement of everything. A kind whose share does not fit leaves the choice undecided (another split might fit).

Each share is tried with the packer's greedy construction first, then, when that leaves something out, with the
planner's whole packer (its searches find placements of large, nearly full shares that the exact model does not
within its budget), and only then with the exact model, which can also prove a share does not fit. A share that
does not fit is shrunk to a core that does not fit either (`_core`: the exact model drops labels and replicas while
it still proves so), and the flows rule out every share holding that core: on a node of four GPUs, two 76 GiB
replicas and a 76 GiB gang of two leave no pair of GPUs for a 20 GiB gang of two, whatever else the share holds.
"""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.advise import exact
from reconciler.advise.flow import Relaxation
from reconciler.advise.heuristic import pack
from reconciler.advise.kinds import Group, Kind, problem_of
from reconciler.packer import Item, PackSettings, pack as full_pack

Counts = tuple[int, ...]
Spot = tuple[int, int, tuple[int, ...]]  # (kind, slot, GPU indices), as the exact model gives them
_PACKER_EXACT_BINS = PackSettings().exact_max_bins  # the packer solves pools up to this many GPUs exactly
# Building a small model costs work its deterministic time hardly counts: charged per check of a share's core.
_PER_CORE_CHECK = 0.005


@dataclass(frozen=True, slots=True)
class SplitResult:
    fits: bool | None  # True: `spots` places everything; False: proven not to fit; None: undecided
    spots: dict[int, list[Spot]] | None = None
    work: float = 0.0  # CP-SAT's deterministic time spent on the kinds' shares
    iterations: int = 0  # HiGHS's simplex iterations spent on the flows
    packed: bool = False  # the planner's packer judged a share


def check(*, items: tuple[Item, ...], kinds: tuple[Kind, ...], groups: tuple[Group, ...], counts: Counts,
          budget: float, seed: int = 0,
          max_nodes: int = 2_000, max_columns: int = 60_000, rounds: int = 20,
          share_budget: float = 0.5, max_iterations: int = 60_000, pack_time: float = 0.0,
          core_budget: float = 0.2) -> SplitResult:
    flows = Relaxation(kinds, groups, counts, 0, max_nodes=max_nodes, max_columns=max_columns,
                       fixed=True, max_iterations=max_iterations)
    if not flows.built:
        return SplitResult(fits=None)
    known: dict[tuple[int, tuple], exact.ExactResult] = {}  # (kind, share) -> its exact check
    work = 0.0
    packed = False
    for _ in range(rounds):
        if flows.iterations >= max_iterations:
            return SplitResult(fits=None, work=work, iterations=flows.iterations, packed=packed)
        found = flows.next()
        if found.exhausted:
            return SplitResult(fits=False, work=work, iterations=flows.iterations, packed=packed)
        if found.counts is None:
            return SplitResult(fits=None, work=work, iterations=flows.iterations, packed=packed)
        shares = _shares(flows, len(kinds))
        if shares is None:
            return SplitResult(fits=None, work=work, iterations=flows.iterations, packed=packed)
        where: dict[int, Spot] = {}
        refused = undecided = False
        # Smallest shares first: a share that cannot fit is found before the large ones spend the budget.
        for k in sorted((k for k in range(len(kinds)) if shares[k]), key=lambda k: (sum(len(g.items) for _, g in
                                                                                      shares[k]), k)):
            share = shares[k]
            key = (k, tuple(sorted((li, len(g.items)) for li, g in share)))
            if key not in known:
                greedy = _greedy(items, kinds[k], counts[k], [g for _, g in share])
                # The packer only where its searches go beyond the exact model's range: on fewer GPUs the exact
                # model below is the better judge, and it can also prove a share does not fit.
                if (greedy is None and not refused and pack_time > 0 and work < budget
                        and counts[k] * len(kinds[k].caps) > _PACKER_EXACT_BINS):
                    greedy = _packed(items, kinds[k], counts[k], [g for _, g in share], pack_time)
                    work += pack_time
                    packed = True
                if greedy is not None:
                    where.update({item: (k, i, gpus) for item, (i, gpus) in greedy.items()})
                    continue
                if refused or work >= budget:
                    undecided = True
                    continue
                known[key] = exact.solve(kinds=(kinds[k],), groups=tuple(g for _, g in share), limits=(counts[k],),
                                         tolerate=0, budget=max(0.01, min(share_budget, budget - work)),
                                         seed=seed, bought=True)
                work += known[key].work
            result = known[key]
            if result.infeasible:  # this kind cannot hold this share: the flows must split otherwise
                core, spent = _core(kinds[k], counts[k], share, seed=seed, budget=core_budget)
                work += spent
                flows.forbid_share(k, core)
                refused = True
            elif result.counts is None:
                undecided = True
            else:
                for gi, (_, g) in enumerate(share):
                    for item, (_, i, gpus) in zip(g.items, result.spots[gi], strict=True):
                        where[item] = (k, i, gpus)
        if not refused:
            if undecided:
                return SplitResult(fits=None, work=work, iterations=flows.iterations, packed=packed)
            break
    else:
        return SplitResult(fits=None, work=work, iterations=flows.iterations, packed=packed)
    spots = {gi: [where[item] for item in g.items] for gi, g in enumerate(groups)}
    return SplitResult(fits=True, spots=spots, work=work, iterations=flows.iterations, packed=packed)


def _core(kind: Kind, nodes: int, share: list[tuple[int, Group]], *, seed: int,
          budget: float) -> tuple[dict[int, int], float]:
    """A part of a share that a kind's nodes cannot hold either, as small as the exact model shows within `budget`:
    (replicas per label, work spent). Ruling out the part rules out every share that holds it, so the flows' next
    split differs where it matters instead of by one replica of a label that never mattered."""
    need = {li: len(g.items) for li, g in share}
    groups = dict(share)
    work = 0.0

    def infeasible(trial: dict[int, int]) -> bool:
        nonlocal work
        parts = tuple(Group(model=groups[li].model, items=groups[li].items[:n], vram=groups[li].vram,
                            gpus=groups[li].gpus, spread=groups[li].spread) for li, n in trial.items() if n)
        if work >= budget or not parts:  # nothing at all always fits
            return False
        result = exact.solve(kinds=(kind,), groups=parts, limits=(nodes,), tolerate=0,
                             budget=max(0.01, min(budget / 4, budget - work)), seed=seed, bought=True)
        work += result.work + _PER_CORE_CHECK
        return result.infeasible

    # Whole labels first, the smallest replicas first (the large ones are usually why), then fewer of each kept.
    for li in sorted(need, key=lambda li: (groups[li].vram * groups[li].gpus, li)):
        trial = {**need, li: 0}
        if infeasible(trial):
            need = trial
    for li in sorted(need, key=lambda li: (groups[li].vram * groups[li].gpus, li)):
        while need[li] > 1 and infeasible({**need, li: need[li] - 1}):
            need[li] -= 1
    return {li: n for li, n in need.items() if n}, work


def _shares(flows: Relaxation, kinds: int) -> list[list[tuple[int, Group]]] | None:
    """Per kind, (label, the replicas of it the flows give that kind); None when some replica is in no flow (its
    size rounded to nothing)."""
    left = [list(lab.group.items) for lab in flows.labels]
    shares: list[list[tuple[int, Group]]] = [[] for _ in range(kinds)]
    for (li, k), col in sorted(flows.wholes.items(), key=lambda e: (e[0][1], e[0][0])):
        n = int(round(flows.values[col]))
        if n <= 0:
            continue
        lab = flows.labels[li].group
        taken, left[li] = left[li][:n], left[li][n:]
        shares[k].append((li, Group(model=lab.model, items=tuple(taken), vram=lab.vram, gpus=lab.gpus,
                                    spread=lab.spread)))
    return None if any(left) else shares


def _greedy(items: tuple[Item, ...], kind: Kind, nodes: int,
            share: list[Group]) -> dict[int, tuple[int, tuple[int, ...]]] | None:
    """The packer's greedy construction on one kind's nodes: item -> (slot, GPU indices), or None if it leaves
    something out."""
    members = [item for g in share for item in g.items]
    slots = [(str(i), kind.caps) for i in range(nodes)]
    placed = pack(tuple(items[m] for m in members), slots)
    return _spots(members, problem_of(tuple(items[m] for m in members), slots), placed)


def _packed(items: tuple[Item, ...], kind: Kind, nodes: int, share: list[Group],
            budget: float) -> dict[int, tuple[int, tuple[int, ...]]] | None:
    """The planner's packer on one kind's nodes, its CP-SAT stages within `budget` deterministic seconds (the
    exact model of a small pool, the regroup search of a larger one; not the configuration model over nodes, whose
    work `budget` would not bound): as `_greedy`."""
    members = [item for g in share for item in g.items]
    problem = problem_of(tuple(items[m] for m in members), [(str(i), kind.caps) for i in range(nodes)])
    solution = full_pack(problem, PackSettings(exact_time=budget, regroup_time=budget, pattern_time=0.0))
    return _spots(members, problem, solution.assignment)


def _spots(members: list[int], problem, placed) -> dict[int, tuple[int, tuple[int, ...]]] | None:
    if not all(placed):
        return None
    return {m: (int(problem.bins[bins[0]].node), tuple(problem.bins[b].index for b in bins))
            for m, bins in zip(members, placed)}
