"""The request in the solver's terms: kinds of node (a catalogue type, or a shape of kept nodes) and groups of
interchangeable replicas (one per model), with the failure scenarios `--tolerate` asks for."""

from __future__ import annotations

from dataclasses import dataclass
from itertools import combinations_with_replacement

from reconciler.advise.problem import Request
from reconciler.desired import GpuSpec, InventoryNode, Spread
from reconciler.packer import Bin, Item, Problem


@dataclass(frozen=True, slots=True)
class Kind:
    name: str  # the type's name, or "" for kept nodes
    gpus: tuple[GpuSpec, ...]
    caps: tuple[int, ...]  # per GPU: bytes the packer may fill (memory minus the reserve)
    price: int
    limit: int | None  # at most this many (None: no limit); kept nodes: exactly their number
    kept: tuple[InventoryNode, ...] = ()  # the kept nodes of this shape, in inventory order

    @property
    def fixed(self) -> bool:
        return bool(self.kept)


@dataclass(frozen=True, slots=True)
class Group:
    """The replicas of one model: interchangeable, so the exact model counts them instead of naming them."""

    model: str
    items: tuple[int, ...]  # indices into Request.items
    vram: int
    gpus: int
    spread: Spread

    @property
    def count(self) -> int:
        return len(self.items)

    def hosts(self, caps: tuple[int, ...]) -> int:
        """Replicas of the group one node of these GPUs can hold by itself (its own spread rules included)."""
        per_gpu = [c // self.vram if self.vram else self.count for c in caps]
        if self.spread != Spread.NONE:
            per_gpu = [min(1, n) for n in per_gpu]
        # Gangs of `gpus` distinct GPUs: c of them fit when the GPUs, each counted at most c times, offer gpus x c.
        hosted = 0
        while hosted < self.count and sum(min(n, hosted + 1) for n in per_gpu) >= self.gpus * (hosted + 1):
            hosted += 1
        return min(hosted, 1) if self.spread == Spread.NODE else hosted


def kinds_of(request: Request) -> tuple[Kind, ...]:
    """Kept nodes grouped by shape (their order kept), then the catalogue's types in its order."""
    shapes: dict[tuple[int, ...], list[InventoryNode]] = {}
    for node in request.existing:
        caps = tuple(max(0, g.memory - request.reserve) for g in node.gpus)
        shapes.setdefault(caps, []).append(node)
    kept = [Kind(name="", gpus=nodes[0].gpus, caps=caps, price=0, limit=len(nodes), kept=tuple(nodes))
            for caps, nodes in shapes.items()]
    bought = [
        Kind(name=t.name, gpus=t.gpus, caps=tuple(max(0, g.memory - request.reserve) for g in t.gpus), price=t.price,
             limit=t.max)
        for t in request.types
    ]
    return (*kept, *bought)


def groups_of(items: tuple[Item, ...]) -> tuple[Group, ...]:
    found: dict[tuple, list[int]] = {}
    for i, item in enumerate(items):
        found.setdefault((item.model, item.vram, item.gpus, item.spread), []).append(i)
    return tuple(
        Group(model=model, items=tuple(members), vram=vram, gpus=gpus, spread=spread)
        for (model, vram, gpus, spread), members in found.items()
    )


def scenarios(limits: tuple[int, ...], tolerate: int) -> list[tuple[int, ...]]:
    """Failure vectors: how many nodes of each kind fail, `tolerate` in all, no more of a kind than it may have.
    Nodes of one kind are alike, so which of them fail does not matter; none when nothing may fail."""
    if tolerate <= 0:
        return [tuple(0 for _ in limits)]
    out = []
    for combo in combinations_with_replacement(range(len(limits)), tolerate):
        f = [0] * len(limits)
        for k in combo:
            f[k] += 1
        if all(n <= lim for n, lim in zip(f, limits)):
            out.append(tuple(f))
    return out


def problem_of(items: tuple[Item, ...], nodes: list[tuple[str, tuple[int, ...]]]) -> Problem:
    """The packer's problem for `items` on these nodes (name, GPU capacities)."""
    bins = tuple(Bin(node=name, index=j, capacity=cap) for name, caps in nodes for j, cap in enumerate(caps))
    return Problem(bins=bins, items=items)
