"""A share that a kind's nodes cannot hold is shrunk to a core that they cannot hold either, so the split over kinds
rules out every share holding the core at once instead of one share at a time."""

from __future__ import annotations

from hypothesis import given, settings as hsettings, strategies as st

from reconciler.advise import AdviseSettings, patterns
from reconciler.advise.kinds import Kind, groups_of
from reconciler.desired import GpuSpec
from reconciler.packer import Item

from .test_advise import _fits_brute, tiny_items
from .test_large_shares import assert_proven_only_with

GiB = 1 << 30


def _kind(caps: tuple[int, ...]) -> Kind:
    return Kind(name="k", gpus=tuple(GpuSpec("g", c) for c in caps), caps=caps, price=1, limit=None)


def test_the_core_of_a_node_with_no_pair_left_for_a_gang_is_what_takes_the_pairs():
    # Four GPUs of 80 GiB: a 76 GiB gang of two and a 76 GiB replica leave one GPU with room, and a 20 GiB gang of
    # two needs two. The small replicas beside them are not why.
    items = (Item(model="big", replica=0, vram=76 * GiB, gpus=2), Item(model="one", replica=0, vram=76 * GiB),
             Item(model="pair", replica=0, vram=20 * GiB, gpus=2), Item(model="s", replica=0, vram=4 * GiB),
             Item(model="s", replica=1, vram=4 * GiB), Item(model="t", replica=0, vram=20 * GiB))
    groups = groups_of(items)
    share = list(enumerate(groups))
    core, _ = patterns._core(_kind((80 * GiB,) * 4), 1, share, seed=0, budget=1.0)
    assert {groups[li].model: n for li, n in core.items()} == {"big": 1, "one": 1, "pair": 1}
    # With no budget to shrink it, the core is the whole share.
    whole, _ = patterns._core(_kind((80 * GiB,) * 4), 1, share, seed=0, budget=0.0)
    assert whole == {li: g.count for li, g in share}


@st.composite
def tiny_share(draw):
    """GPUs of one node, replicas, and how many such nodes; the test keeps the shares that do not fit."""
    caps = tuple(draw(st.lists(st.sampled_from((8, 16, 24)), min_size=1, max_size=3)))
    items = tiny_items(draw, models=4, replicas=3)
    return tuple(c * GiB for c in caps), items, draw(st.integers(1, 2))


@hsettings(max_examples=40)
@given(tiny_share())
def test_a_core_is_part_of_the_share_and_does_not_fit_either(case):
    caps, items, nodes = case
    hosts = [caps] * nodes
    groups = groups_of(items)
    if _fits_brute(items, hosts) or not all(g.hosts(caps) for g in groups):
        return  # the split only asks for cores of shares that do not fit, of replicas each node can hold
    share = list(enumerate(groups))
    core, _ = patterns._core(_kind(caps), nodes, share, seed=0, budget=1.0)
    assert core and all(0 < n <= groups[li].count for li, n in core.items())
    kept = tuple(items[i] for li, n in core.items() for i in groups[li].items[:n])
    assert not _fits_brute(kept, hosts)


def test_a_nearly_full_choice_is_proven_once_cores_rule_out_shares():
    """bench/advise.py's 30-model instance of seed 1: its cheapest choice fills 3,600 of 3,632 GiB. The split's first
    shares do not fit on the node of four GPUs or on the node of eight 141 GiB ones; ruled out one share at a time,
    the split's budget ran out before one fitted everywhere, and the advice was not proven."""
    assert_proven_only_with(1, AdviseSettings(split_core_time=0.0))
