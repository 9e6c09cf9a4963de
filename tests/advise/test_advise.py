"""Capacity advice: the catalogue kind, the command's interface, and the advice checked against the planner itself,
brute force on tiny instances, and its own bound."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import combinations, product
from pathlib import Path

import pytest
from hypothesis import given, settings as hsettings, strategies as st

from reconciler.advise import PRICE_UNIT, AdviseSettings, NodeType, Request, advise, request_for
from reconciler.cli import main
from reconciler.desired import DesiredState, GpuSpec, InventoryNode, Model, Pool, Preemption, Engine, Spread
from reconciler.observed import from_inventory
from reconciler.packer import Bin, Item, Problem
from reconciler.packer.objective import violations
from reconciler.planner import plan
from reconciler.spec import load_specs
from reconciler.spec.catalog import load_catalog, load_catalog_files

GiB = 1 << 30
ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "examples" / "advise" / "catalog.yaml"
FAST = AdviseSettings(exact_time=2.0, check_time=0.5)


def model(name: str, vram: int, replicas: int = 1, *, tp: int = 1, spread: Spread = Spread.NONE,
          priority: int = 0) -> Model:
    return Model(name=name, pool="p", priority_class="", priority=priority, preemption=Preemption.LOWER_PRIORITY,
                 preemptible=True, engine=Engine.ECHO, source="x", vram=vram * GiB, replicas=replicas,
                 tensor_parallel=tp, spread=spread)


def node_type(name: str, *mem: int, price: float, max: int | None = None) -> NodeType:
    return NodeType(name=name, gpus=tuple(GpuSpec("g", m * GiB) for m in mem), price=round(price * PRICE_UNIT),
                    max=max)


TYPES = (node_type("small", 24, 24, price=1.0), node_type("big", 80, price=2.5), node_type("huge", 80, 80, 80, 80,
                                                                                               price=9.0, max=2))


# -- the catalogue ------------------------------------------------------------------------------------------------
def test_example_catalogue_loads():
    result = load_catalog(CATALOG)
    assert result.ok, result.diagnostics
    a100 = next(t for t in result.types if t.name == "a100-80x2")
    assert (a100.price, a100.max, [g.memory for g in a100.gpus]) == (5 * PRICE_UNIT, 4, [80 * GiB] * 2)


def test_catalogue_mistakes_are_located():
    text = (b"apiVersion: reconciler/v1\nkind: NodeType\nmetadata: {name: x}\nspec:\n  gpus: []\n"
            b"  pricePerHour: 1.23456\n  mx: 2\n---\napiVersion: reconciler/v1\nkind: Model\nmetadata: {name: m}\n")
    found = [str(d) for d in load_catalog_files({"c.yaml": text}).diagnostics]
    assert found == [
        "c.yaml:5:9: error: `gpus` needs at least one entry",
        "c.yaml:6:17: error: `pricePerHour`: 1.23456 has more than four decimals: round it to at most four",
        "c.yaml:7:3: error: `mx` is not a field of a NodeType spec; did you mean `max`?",
        "c.yaml:10:7: error: a catalogue holds only `kind: NodeType` documents, not `Model`; keep other kinds in "
        "the spec directory",
    ]


# -- the command --------------------------------------------------------------------------------------------------
def test_cli_json_interface(capsys):
    assert main(["advise", str(ROOT / "examples" / "homelab"), "--catalog", str(CATALOG), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"cost", "bound", "proven", "nodes", "runnerUp", "costPerMonth", "placement", "free"} <= set(out)
    assert out["nodes"] == [{"type": "rtx3090x2", "count": 1}] and out["proven"] is True
    assert out["cost"] == out["bound"] == 0.9 and out["costPerMonth"] == pytest.approx(0.9 * 730)
    assert out["runnerUp"]["cost"] > out["cost"]


def test_cli_text_shows_bars_and_cost(capsys):
    assert main(["advise", str(ROOT / "examples" / "homelab"), "--catalog", str(CATALOG), "--tolerate", "1"]) == 0
    out = capsys.readouterr().out
    assert "Buy or rent: 2 × rtx3090x2." in out and "per month" in out and "Proven cheapest" in out
    assert "▕" in out and "free" in out and "Runner-up:" in out


def test_cli_bad_catalogue_is_a_user_error(tmp_path, capsys):
    (tmp_path / "c.yaml").write_text("apiVersion: reconciler/v1\nkind: NodeType\nmetadata: {name: x}\nspec: {}\n")
    assert main(["advise", str(ROOT / "examples" / "homelab"), "--catalog", str(tmp_path)]) == 1
    assert "c.yaml:4:1: error: a NodeType spec needs `gpus`" in capsys.readouterr().err


# -- the advice against the planner ---------------------------------------------------------------------------
def test_advised_nodes_plan_with_nothing_unplaced():
    models = (model("chat", 40, 2, spread=Spread.NODE), model("code", 30, 2), model("embed", 6, 3),
              model("big", 70, 1, tp=2), model("tiny", 2, 4, spread=Spread.GPU))
    desired = DesiredState(pools=(Pool(name="p", reserve=GiB),), models=models)
    advice = advise(request_for(desired, pool="p", types=TYPES), FAST)
    assert advice.proven and advice.bound == advice.choice.cost
    pool = replace(desired.pools[0], inventory=advice.inventory())
    placed = plan(replace(desired, pools=(pool,)), from_inventory(replace(desired, pools=(pool,))))
    assert placed.unplaced == ()
    assert len(placed.placement) == sum(m.replicas for m in models)


def test_keep_advises_what_to_add():
    desired = DesiredState(pools=(Pool(name="p", inventory=(InventoryNode("old", (GpuSpec("g", 24 * GiB),)),)),),
                           models=(model("a", 20), model("b", 20), model("c", 60)))
    advice = advise(request_for(desired, pool="p", types=TYPES, keep=True), FAST)
    assert [n.name for n in advice.nodes if n.kept] == ["old"]
    assert advice.choice.counts == (("big", 1),) and advice.proven
    everything = advise(request_for(desired, pool="p", types=TYPES), FAST)
    assert everything.choice.cost > advice.choice.cost


def test_min_priority_sizes_only_what_must_fit():
    desired = DesiredState(pools=(Pool(name="p"),), models=(model("keep", 20, priority=100), model("drop", 70)))
    advice = advise(request_for(desired, pool="p", types=TYPES, min_priority=100), FAST)
    assert advice.choice.counts == (("small", 1),)


# -- properties ---------------------------------------------------------------------------------------------------
def _fits_brute(items: tuple[Item, ...], nodes: list[tuple[int, ...]]) -> bool:
    """Every item placed, by trying every place for each in turn (tiny instances only)."""
    loads = [[0] * len(caps) for caps in nodes]

    def place(i: int) -> bool:
        if i == len(items):
            return True
        item = items[i]
        for n, caps in enumerate(nodes):
            if item.spread == Spread.NODE and any(
                    items[j].model == item.model and where[j][0] == n for j in range(i)):
                continue
            for gpus in combinations(range(len(caps)), item.gpus):
                if any(loads[n][g] + item.vram > caps[g] for g in gpus):
                    continue
                if item.spread == Spread.GPU and any(
                        items[j].model == item.model and where[j][0] == n and set(where[j][1]) & set(gpus)
                        for j in range(i)):
                    continue
                for g in gpus:
                    loads[n][g] += item.vram
                where[i] = (n, gpus)
                if place(i + 1):
                    return True
                for g in gpus:
                    loads[n][g] -= item.vram
        return False

    where: list = [None] * len(items)
    return place(0)


def _survives(items, nodes, tolerate: int) -> bool:
    if tolerate == 0:
        return _fits_brute(items, nodes)
    if len(nodes) < tolerate:
        return not items
    return all(_fits_brute(items, [n for k, n in enumerate(nodes) if k not in failed])
               for failed in combinations(range(len(nodes)), tolerate))


@st.composite
def tiny(draw):
    types = []
    for t in range(draw(st.integers(1, 3))):
        mem = draw(st.lists(st.sampled_from((8, 16, 24)), min_size=1, max_size=2))
        types.append(NodeType(name=f"t{t}", gpus=tuple(GpuSpec("g", m * GiB) for m in mem),
                              price=draw(st.integers(1, 9)) * PRICE_UNIT, max=draw(st.sampled_from((None, 1, 2)))))
    items = tiny_items(draw, models=3, replicas=2)
    return Request(items=items, types=tuple(types), tolerate=draw(st.sampled_from((0, 0, 1))))


def tiny_items(draw, *, models: int, replicas: int) -> tuple[Item, ...]:
    """Up to `models` models of up to `replicas` replicas each, at small sizes, some TP-2, some spread."""
    items = []
    for m in range(draw(st.integers(1, models))):
        vram = draw(st.sampled_from((4, 6, 8, 12, 16)))
        gpus = draw(st.sampled_from((1, 1, 2)))
        spread = draw(st.sampled_from((Spread.NONE, Spread.NONE, Spread.GPU, Spread.NODE)))
        items += [Item(model=f"m{m}", replica=r, vram=vram * GiB, gpus=gpus, spread=spread)
                  for r in range(draw(st.integers(1, replicas)))]
    return tuple(items)


def _brute_cheapest(request: Request, most: int = 4) -> int | None:
    best = None
    ranges = [range((t.max if t.max is not None else most) + 1) for t in request.types]
    for counts in product(*ranges):
        if sum(counts) > most:
            continue
        cost = sum(t.price * n for t, n in zip(request.types, counts))
        if best is not None and cost >= best:
            continue
        nodes = [tuple(g.memory for g in t.gpus) for t, n in zip(request.types, counts) for _ in range(n)]
        if _survives(request.items, nodes, request.tolerate):
            best = cost
    return best


@hsettings(max_examples=40)
@given(tiny())
def test_advice_fits_meets_its_bound_and_equals_brute_force(request_):
    from reconciler.advise import Infeasible

    brute = _brute_cheapest(request_)
    try:
        advice = advise(request_, FAST)
    except Infeasible:
        assert brute is None
        return
    nodes = [tuple(g.memory for g in n.gpus) for n in advice.nodes]
    # The placement keeps every rule of the packer, and the choice survives every failure it must.
    bins = tuple(Bin(node=str(k), index=j, capacity=c) for k, caps in enumerate(nodes) for j, c in enumerate(caps))
    first = {k: sum(len(c) for c in nodes[:k]) for k in range(len(nodes))}
    assignment = tuple(tuple(first[node] + g for g in gpus) for node, gpus in advice.placement)
    assert violations(Problem(bins=bins, items=request_.items), assignment) == []
    assert _survives(request_.items, nodes, request_.tolerate)
    assert advice.bound <= advice.choice.cost
    if advice.choice.nodes <= 4 and brute is not None:
        assert advice.proven and advice.choice.cost == brute
    if advice.runner_up is not None:
        assert advice.runner_up.cost >= advice.choice.cost and advice.runner_up.counts != advice.choice.counts


def test_deterministic():
    desired = load_specs(ROOT / "examples" / "homelab").desired
    request = request_for(desired, pool=desired.pools[0].name, types=load_catalog(CATALOG).types, tolerate=1)
    assert advise(request, FAST) == advise(request, FAST)
