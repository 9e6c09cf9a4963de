"""A choice whose largest kind gets a large, nearly full share (40 GPUs of 80 GiB, 95% full): the greedy construction
leaves a replica out and the exact model does not decide it within its budget, but the planner's packer places it, so
the advice is proven cheapest. The instance is bench/advise.py's 30-model instance of seed 0, whose cheapest choice
was left unproven before the packer judged shares."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from reconciler.advise import AdviseSettings, advise
from reconciler.packer import Bin, Problem
from reconciler.packer.objective import violations

ROOT = Path(__file__).resolve().parents[2]


def _instance(seed: int, models: int):
    spec = importlib.util.spec_from_file_location("advise_bench", ROOT / "bench" / "advise.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.instance(seed, models)


def test_a_large_nearly_full_share_is_placed_by_the_packer_and_the_advice_is_proven():
    # Without the packer as a judge the same choice stays undecided: the cheapest found is then not proven.
    assert_proven_only_with(0, AdviseSettings(split_pack_checks=0))


def assert_proven_only_with(seed: int, without: AdviseSettings) -> None:
    """bench/advise.py's 30-model instance of `seed` is proven cheapest, its placement keeps every rule, and with
    the settings `without` (a part of the search turned off) it is not proven."""
    request = _instance(seed, 30)
    advice = advise(request)
    assert advice.proven and advice.choice.cost == advice.bound, (advice.choice, advice.bound)
    assert _placement_is_valid(request, advice)
    assert not advise(request, without).proven


def _placement_is_valid(request, advice) -> bool:
    bins, first = [], []
    for node in advice.nodes:
        first.append(len(bins))
        bins += [Bin(node=node.name, index=j, capacity=g.memory) for j, g in enumerate(node.gpus)]
    assignment = tuple(tuple(first[n] + j for j in gpus) for n, gpus in advice.placement)
    return len(assignment) == len(request.items) and not violations(Problem(bins=tuple(bins), items=request.items),
                                                                   assignment)
