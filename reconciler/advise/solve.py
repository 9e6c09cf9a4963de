"""`advise(request, settings) -> Advice`: the cheapest nodes for a pool's replicas, proven where it can be.

The heuristic (`heuristic.py`) finds a choice first. The arc-flow relaxation (`flow.py`) then proposes choices
cheapest first, and each is judged: the greedy construction, the split over its kinds (`patterns.py`), the exact
model of the whole choice where it is small (`exact.py`). A choice that does not fit is ruled out with every choice
that has no more nodes of any kind; the first that fits is the advice, proven cheapest when nothing cheaper was left
undecided, and the next that fits is the runner-up. Where the relaxation would be too large to build, choices that
meet the capacity rules (`candidates.py`) are walked cheapest first from the capacity bound (`bound.py`) instead.
"""

from __future__ import annotations

from reconciler.advise import exact, heuristic, patterns
from reconciler.advise.bound import capacity_bound
from reconciler.advise.candidates import Rules, window
from reconciler.advise.flow import Relaxation
from reconciler.advise.kinds import Group, Kind, groups_of, kinds_of, problem_of
from reconciler.advise.problem import Advice, AdvisedNode, AdviseSettings, Choice, Infeasible, Request
from reconciler.quantity import format_bytes

Counts = tuple[int, ...]
# Building and presolving a model costs work its deterministic time does not count: charged per check, so many
# small checks cannot take more of a core than the budget says.
_PER_SOLVE = 0.02


def advise(request: Request, settings: AdviseSettings = AdviseSettings()) -> Advice:
    kinds = kinds_of(request)
    groups = groups_of(request.items)
    _check_hostable(kinds, groups)
    kept = tuple(len(k.kept) for k in kinds)
    if not groups:
        nodes, _ = _nodes(kinds, kept, request.existing)
        return Advice(choice=_choice(kinds, kept), bound=0, proven=True, runner_up=None, nodes=nodes, placement=(),
                      method="nothing to place")
    found = heuristic.search(request.items, kinds, groups, request.tolerate)
    limits = _limits(kinds, groups, found, request.tolerate)
    wide = _limits(kinds, groups, None, request.tolerate)
    walk = _Walk(request, kinds, groups, limits, settings, wide=wide)
    relaxed = Relaxation(kinds, groups, wide, request.tolerate, max_nodes=settings.flow_max_nodes,
                         max_columns=settings.flow_max_columns)
    if relaxed.built:
        best, runner_up, bound, proven = walk.by_relaxation(relaxed, known=found)
    else:
        lo = capacity_bound(kinds, groups, limits, request.tolerate)
        if lo is None:
            raise Infeasible(_no_choice(kinds, request.tolerate))
        hi = heuristic.cost(kinds, found) if found is not None else sum(k.price * n for k, n in zip(kinds, limits))
        best, runner_up, bound, proven = walk.run(lo=lo, hi=hi, known=found)
    if best is None:
        if found is None:
            raise Infeasible(_no_choice(kinds, request.tolerate))
        best = found
    method = "heuristic" if best == found and walk.exact_for != best else "exact"
    nodes, index = _nodes(kinds, best, request.existing)
    spots = walk.spots.get(best)
    placement = _placement(request, kinds, groups, best, index, spots)
    cost = heuristic.cost(kinds, best)
    return Advice(choice=_choice(kinds, best), bound=min(bound, cost), proven=proven, nodes=nodes,
                  runner_up=None if runner_up is None else _choice(kinds, runner_up), placement=placement,
                  method=method)


class _Walk:
    """Choices cheapest first, each judged: fits, does not fit, or undecided within the budget."""

    def __init__(self, request: Request, kinds, groups, limits: Counts, settings: AdviseSettings, *,
                 wide: Counts) -> None:
        self.request, self.kinds, self.groups, self.limits, self.settings = request, kinds, groups, limits, settings
        self.wide = wide  # slots per kind beyond the heuristic's cost, where the runner-up may be
        self.rules = Rules(kinds, groups, request.tolerate)
        self.judge = heuristic.Judge(request.items, kinds, request.tolerate)
        self.work = 0.0
        self.checked = 0
        self.judged = 0
        self.spots: dict[Counts, dict] = {}  # exact placements of choices the exact model judged
        self.exact_for: Counts | None = None
        self.iterations = 0  # HiGHS's simplex iterations in pattern checks
        self.packs_left = settings.split_pack_checks  # checks in which the planner's packer may judge shares

    @property
    def spent(self) -> bool:
        return (self.work >= self.settings.exact_time or self.checked >= self.settings.max_candidates
                or self.judged >= self.settings.max_judged)

    def verdict(self, counts: Counts, *, proving: bool = True) -> bool | None:
        """Whether `counts` fits: True, False, or None (undecided within the budget). `proving`: no choice was found
        to fit yet, so this one may be the advice; only then may the planner's packer judge a share (the runner-up is
        only shown, and is not worth its time)."""
        self.judged += 1
        if self.judge.fits(counts):
            return True
        if sum(counts) < self.request.tolerate:
            return False
        if self.spent:
            return None
        self.checked += 1
        if self.request.tolerate == 0:
            by_patterns = patterns.check(items=self.request.items, kinds=self.kinds, groups=self.groups, counts=counts,
                                         budget=min(self.settings.check_time, self.settings.exact_time - self.work),
                                         seed=self.settings.seed, max_nodes=self.settings.split_max_nodes,
                                         max_columns=self.settings.flow_max_columns,
                                         max_iterations=(self.settings.split_max_iterations if proving
                                                         else self.settings.split_runner_up_iterations),
                                         rounds=(self.settings.split_rounds if proving
                                                 else self.settings.split_runner_up_rounds),
                                         core_budget=self.settings.split_core_time,
                                         pack_time=(self.settings.split_pack_time if proving and self.packs_left
                                                    else 0.0))
            if by_patterns.packed:
                self.packs_left -= 1
            self.work += by_patterns.work + _PER_SOLVE
            self.iterations += by_patterns.iterations
            if by_patterns.fits is not None:
                if by_patterns.fits:
                    self.spots[counts] = by_patterns.spots
                    self.exact_for = counts
                return by_patterns.fits
            if self.spent or exact.size(self.kinds, self.groups, counts, 0) > self.settings.exact_after_split:
                return None
        if exact.size(self.kinds, self.groups, counts, self.request.tolerate) > self.settings.exact_max_slots:
            return None
        result = exact.solve(kinds=self.kinds, groups=self.groups, limits=counts, tolerate=self.request.tolerate,
                             budget=min(self.settings.check_time, self.settings.exact_time - self.work),
                             seed=self.settings.seed, bought=True)
        self.work += result.work + _PER_SOLVE
        if result.counts is not None:
            self.spots[counts] = result.spots
            self.exact_for = counts
            return True
        return False if result.infeasible else None

    def by_relaxation(self, relaxed: Relaxation, *, known: Counts | None):
        """(cheapest found, runner-up, bound, proven): the relaxation's cheapest choices in turn, each judged; a
        choice that does not fit rules out every choice with no more nodes of any kind. The first that fits is
        proven cheapest when every cheaper one was ruled out."""
        best: Counts | None = None
        runner_up: Counts | None = None
        bound: int | None = None  # no choice costs less than this, once the proof has stopped somewhere
        floor = 0  # every choice cheaper than this was ruled out
        known_cost = heuristic.cost(self.kinds, known) if known is not None else None
        for _ in range(self.settings.max_relaxed):
            if relaxed.iterations + self.iterations >= self.settings.flow_max_iterations:
                break
            found = relaxed.next()
            if found.counts is None:
                if not found.exhausted and best is None and bound is None:
                    bound = max(floor, found.bound)
                break
            if best is None and bound is None and found.bound < found.cost:
                bound = max(floor, found.bound)  # the solve stopped at its node limit: this may not be the cheapest
            floor = max(floor, found.cost)
            if best is None and known is not None and found.cost >= known_cost:
                # Nothing cheaper than the heuristic's choice fits (or is left undecided): it is the cheapest found.
                best = known
                relaxed.exclude(known)
                if found.counts == known:
                    continue
            if best is not None and bound is not None:
                break  # no proof to give: the runner-up is the heuristic's choice or none
            fits = self.rules.met(found.counts) and self.verdict(found.counts, proving=best is None)
            if fits:
                if best is None:
                    best = found.counts
                    relaxed.exclude(found.counts)
                    continue
                runner_up = found.counts
                break
            if best is not None and self.spent:
                break
            if fits is None:  # undecided: the proof stops here, the search goes on for a choice that fits
                if bound is None and best is None:  # after the cheapest, only the runner-up is left undecided
                    bound = found.cost
                if self.spent:
                    break
                relaxed.exclude(found.counts)
            elif best is None:
                relaxed.rule_out(found.counts)
            else:  # after the cheapest, only this one is out: a costlier superset may be the runner-up
                relaxed.exclude(found.counts)
        if best is None:
            if bound is None:
                bound = floor  # the relaxation's budget ran out: every cheaper choice was ruled out
            best = known
        if runner_up is None and known is not None and known != best:
            runner_up = known
        if best is None:
            return None, None, bound, False
        return best, runner_up, (heuristic.cost(self.kinds, best) if bound is None else bound), bound is None

    def run(self, *, lo: int, hi: int, known: Counts | None):
        """(cheapest found, runner-up, bound, proven) over the windows from `lo`."""
        best: Counts | None = None
        runner_up: Counts | None = None
        bound: int | None = None  # the cost of the first choice left undecided
        proven = False
        # Narrow windows first: the cheapest choices are judged before the costlier ones are even listed.
        step = max(1, (hi - lo) // 16, min(k.price for k in self.kinds if not k.fixed) // 4 or 1)
        start, end, beyond = lo, min(hi, lo + step), 0
        for _ in range(self.settings.max_windows):
            limits = self.limits if end <= hi else self.wide
            listed, complete = window(self.kinds, limits, self.rules, lo=start, hi=end,
                                      cap=self.settings.max_window)
            if not complete and bound is None and best is None:
                bound = start  # choices from here on were not all listed
            for cost, _, counts in listed:
                if (best is not None and runner_up is not None) or (self.spent and bound is not None):
                    break
                if best is not None and counts == best:
                    continue
                fits = self.verdict(counts, proving=best is None)
                if fits is None and bound is None:
                    bound = cost
                if fits:
                    if best is None:
                        best, proven = counts, bound is None
                    elif runner_up is None:
                        runner_up = counts
            if runner_up is not None or (self.spent and bound is not None):
                break
            if end >= hi:
                if best is None:
                    break
                if known is not None and known != best:
                    runner_up = known
                    break
                beyond += 1
                if beyond > self.settings.windows:
                    break
            start, step = end + 1, step * 2
            end = start + step if end >= hi else min(hi, start + step)
        if best is None:
            return None, None, bound if bound is not None else hi, False
        return best, runner_up, (heuristic.cost(self.kinds, best) if bound is None else bound), proven


def _check_hostable(kinds: tuple[Kind, ...], groups: tuple[Group, ...]) -> None:
    for g in groups:
        if not any(g.hosts(kind.caps) for kind in kinds):
            largest = max((max(kind.caps, default=0) for kind in kinds), default=0)
            gang = f" on {g.gpus} GPUs of one node" if g.gpus > 1 else ""
            raise Infeasible(
                f"no node type can hold a replica of {g.model} ({format_bytes(g.vram)}{gang}): the largest GPU offers "
                f"{format_bytes(largest)} after the pool's reserve; add a node type that can"
            )


def _no_choice(kinds: tuple[Kind, ...], tolerate: int) -> str:
    limited = ", ".join(f"{k.name} (max {k.limit})" for k in kinds if not k.fixed and k.limit is not None)
    what = f" and still fit after {tolerate} node failures" if tolerate else ""
    hint = f"; raise the max of {limited}" if limited else ""
    return f"no choice of nodes within the catalogue's maxima holds every replica{what}{hint}"


def _limits(kinds: tuple[Kind, ...], groups: tuple[Group, ...], found: Counts | None, tolerate: int) -> Counts:
    """Slots per kind: no more than the type's max, than the heuristic's cost pays for, or than its replicas need
    with one model per node (more nodes of a type than that hold nothing more)."""
    cap = heuristic.cost(kinds, found) if found is not None else None
    out = []
    for kind in kinds:
        if kind.fixed:
            out.append(len(kind.kept))
            continue
        alone = heuristic.useful_nodes(kind, groups, tolerate)
        n = alone if kind.limit is None else min(kind.limit, alone)
        if cap is not None and kind.price > 0:
            n = min(n, cap // kind.price)
        out.append(max(0, n))
    return tuple(out)


def _choice(kinds: tuple[Kind, ...], counts: Counts) -> Choice:
    return Choice(counts=tuple((k.name, n) for k, n in zip(kinds, counts) if not k.fixed and n > 0),
                  cost=heuristic.cost(kinds, counts))


def _nodes(kinds: tuple[Kind, ...], counts: Counts,
           existing: tuple) -> tuple[tuple[AdvisedNode, ...], dict[tuple[int, int], int]]:
    """Kept nodes in inventory order, then new ones named after their type; (kind, slot) -> index in that list."""
    kept: list[tuple[int, int, AdvisedNode]] = []
    new: list[tuple[int, int, AdvisedNode]] = []
    for k, (kind, n) in enumerate(zip(kinds, counts)):
        for i in range(n):
            if kind.fixed:
                node = kind.kept[i]
                kept.append((k, i, AdvisedNode(name=node.node, type="", gpus=node.gpus, kept=True)))
            else:
                new.append((k, i, AdvisedNode(name=f"{kind.name}-{i + 1}", type=kind.name, gpus=kind.gpus)))
    kept.sort(key=lambda e: existing.index(kinds[e[0]].kept[e[1]]))
    order = kept + new
    return tuple(n for _, _, n in order), {(k, i): at for at, (k, i, _) in enumerate(order)}


def _placement(request: Request, kinds: tuple[Kind, ...], groups: tuple[Group, ...], counts: Counts,
               index: dict[tuple[int, int], int], spots: dict | None):
    """Where each replica goes with every node up: the exact model's own placement when it has one for this choice
    without failures, else the packer's greedy construction, else the placement of a failure scenario (which
    leaves the failed nodes empty but is a placement all the same)."""
    if spots is not None and request.tolerate == 0:
        return _from_spots(request, groups, spots, index)
    slots = sorted(index, key=lambda ki: index[ki])
    nodes = [(f"{k}/{i}", kinds[k].caps) for k, i in slots]
    assignment = heuristic.pack(request.items, nodes)
    if all(assignment):
        where = {f"{k}/{i}": index[(k, i)] for k, i in slots}
        problem = problem_of(request.items, nodes)
        return tuple((where[problem.bins[bins[0]].node], tuple(problem.bins[b].index for b in bins))
                     for bins in assignment if bins)
    if spots is not None:
        return _from_spots(request, groups, spots, index)
    judged = heuristic.Judge(request.items, kinds, request.tolerate)
    for failed in judged.failures(counts):
        survivors = heuristic.node_list(kinds, counts, failed)
        assignment = heuristic.pack(request.items, survivors)
        if all(assignment):
            problem = problem_of(request.items, survivors)
            def at(name: str) -> int:
                k, i = name.split("/")
                return index[(int(k), int(i))]
            return tuple((at(problem.bins[bins[0]].node), tuple(problem.bins[b].index for b in bins))
                         for bins in assignment if bins)
    raise AssertionError("a choice judged to fit has no placement")  # the judge packed it just before


def _from_spots(request: Request, groups: tuple[Group, ...], spots, index):
    out: list = [None] * len(request.items)
    for gi, g in enumerate(groups):
        for item, (k, i, gpus) in zip(g.items, spots[gi], strict=True):
            out[item] = (index[(k, i)], gpus)
    return tuple(out)
