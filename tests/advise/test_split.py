"""The arc-flow relaxation and the split check against brute force on tiny instances: the relaxation's cheapest
choice never costs more than the cheapest that fits, a split that says "fits" gives a placement that keeps every rule,
and one that says "does not fit" is right."""

from __future__ import annotations

from hypothesis import given, settings as hsettings

from reconciler.advise import patterns
from reconciler.advise.flow import Relaxation
from reconciler.advise.kinds import groups_of, kinds_of
from reconciler.advise.solve import _limits
from reconciler.packer import Bin, Problem
from reconciler.packer.objective import violations

from .test_advise import _brute_cheapest, _fits_brute, tiny


@hsettings(max_examples=25)
@given(tiny())
def test_relaxation_is_a_bound_and_the_split_is_right(request_):
    request_ = request_.__class__(items=request_.items, types=request_.types)  # no failures: what the split serves
    kinds, groups = kinds_of(request_), groups_of(request_.items)
    brute = _brute_cheapest(request_)
    relaxed = Relaxation(kinds, groups, _limits(kinds, groups, None, 0), 0)
    first = relaxed.next()
    if brute is not None:
        assert first.counts is not None and first.cost <= brute
    for counts in _choices(kinds):
        result = patterns.check(items=request_.items, kinds=kinds, groups=groups, counts=counts, budget=2.0)
        nodes = [kind.caps for kind, n in zip(kinds, counts) for _ in range(n)]
        if result.fits is False:
            assert not _fits_brute(request_.items, [tuple(c) for c in nodes])
        if result.fits:
            _assert_placement(request_.items, kinds, counts, groups, result.spots)


def _choices(kinds):
    """Every choice of up to two nodes of each kind, three nodes at most."""
    out = []

    def walk(k, left, counts):
        if k == len(kinds):
            if any(counts):
                out.append(tuple(counts))
            return
        for n in range(min(2, left) + 1):
            walk(k + 1, left - n, [*counts, n])

    walk(0, 3, [])
    return out


def _assert_placement(items, kinds, counts, groups, spots):
    first, bins = {}, []
    for k, (kind, n) in enumerate(zip(kinds, counts)):
        for i in range(n):
            first[(k, i)] = len(bins)
            bins += [Bin(node=f"{k}/{i}", index=j, capacity=c) for j, c in enumerate(kind.caps)]
    assignment = [None] * len(items)
    for gi, g in enumerate(groups):
        for item, (k, i, gpus) in zip(g.items, spots[gi], strict=True):
            assignment[item] = tuple(first[(k, i)] + j for j in gpus)
    assert all(assignment)
    assert violations(Problem(bins=tuple(bins), items=items), tuple(assignment)) == []
