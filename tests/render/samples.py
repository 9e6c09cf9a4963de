"""Plans built by hand, covering every action kind, tensor parallelism, reserve, foreign use and unplaced replicas."""

from __future__ import annotations

from reconciler.plan import (
    Action,
    ActionKind,
    GpuUse,
    GpuView,
    Location,
    PlacedReplica,
    Plan,
    PoolQuality,
    Unplaced,
)

GiB = 1024**3


def _gpu(pool: str, node: str, index: int, name: str, memory: int, *, reserve: int = 0, foreign: int = 0,
         before: tuple[GpuUse, ...] = (), after: tuple[GpuUse, ...] = ()) -> GpuView:
    return GpuView(pool=pool, node=node, index=index, name=name, memory=memory, reserve=reserve, foreign=foreign,
                   before=before, after=after)


def busy_plan() -> Plan:
    """A homelab pool under pressure: a critical model evicts a batch one, a chat replica moves to make room, a
    changed model is replaced, a route change is an update, and one replica fits nowhere."""
    chat0 = GpuUse("chat", 0, 8 * GiB)
    chat1 = GpuUse("chat", 1, 8 * GiB)
    batch0 = GpuUse("batch-embed", 0, 6 * GiB)
    coder_old = GpuUse("coder", 0, 10 * GiB)
    coder_new = GpuUse("coder", 0, 12 * GiB)
    guard = GpuUse("guard", 0, 2 * GiB)
    llama0 = GpuUse("llama-70b", 0, 40 * GiB)
    old0 = GpuUse("old-model", 0, 4 * GiB)
    critical = GpuUse("triage", 0, 14 * GiB)
    actions = (
        Action(ActionKind.EVICT, "batch-embed", 0, Location("node-a", (1,)), None, 6 * GiB,
               "evicted: priority 10 < 90 of triage[0], which needs 14 GiB on node-a/gpu1"),
        Action(ActionKind.DELETE, "old-model", 0, Location("node-b", (0,)), None, 4 * GiB,
               "no longer in the specs"),
        Action(ActionKind.MOVE, "chat", 1, Location("node-a", (1,)), Location("node-b", (0,)), 8 * GiB,
               "moved to make room for triage[0] on node-a/gpu1", make_before_break=True),
        Action(ActionKind.REPLACE, "coder", 0, Location("node-a", (0,)), Location("node-a", (0,)), 12 * GiB,
               "vram changed: 10 GiB → 12 GiB"),
        Action(ActionKind.UPDATE, "guard", 0, Location("node-b", (0,)), Location("node-b", (0,)), 2 * GiB,
               "route changed"),
        Action(ActionKind.CREATE, "llama-70b", 0, None, Location("node-c", (0, 1)), 40 * GiB,
               "new replica"),
        Action(ActionKind.CREATE, "triage", 0, None, Location("node-a", (1,)), 14 * GiB,
               "new replica"),
    )
    placement = (
        PlacedReplica("chat", 0, "node-a", (0,), 8 * GiB),
        PlacedReplica("chat", 1, "node-b", (0,), 8 * GiB),
        PlacedReplica("coder", 0, "node-a", (0,), 12 * GiB),
        PlacedReplica("guard", 0, "node-b", (0,), 2 * GiB),
        PlacedReplica("llama-70b", 0, "node-c", (0, 1), 40 * GiB),
        PlacedReplica("triage", 0, "node-a", (1,), 14 * GiB),
    )
    unplaced = (
        Unplaced("llama-70b", 1, "needs 40 GiB on each of 2 GPUs of one node; node-c has 40 GiB free on each of its"
                                 " GPUs but both are taken by llama-70b[0]"),
        Unplaced("batch-embed", 0, "needs 6 GiB on one GPU; the most any GPU of pool homelab could offer after"
                                   " evicting lower priorities is 3 GiB (node-a/gpu0)"),
    )
    gpus = (
        _gpu("datacenter", "node-c", 0, "NVIDIA A100-SXM4-80GB", 80 * GiB, before=(), after=(llama0,)),
        _gpu("datacenter", "node-c", 1, "NVIDIA A100-SXM4-80GB", 80 * GiB, before=(), after=(llama0,)),
        _gpu("homelab", "node-a", 0, "NVIDIA GeForce RTX 4090", 24 * GiB, reserve=1 * GiB,
             before=(chat0, coder_old), after=(chat0, coder_new)),
        _gpu("homelab", "node-a", 1, "NVIDIA GeForce RTX 4090", 24 * GiB, reserve=1 * GiB,
             before=(chat1, batch0), after=(critical,)),
        _gpu("homelab", "node-b", 0, "NVIDIA GeForce RTX 3090", 24 * GiB, reserve=1 * GiB, foreign=2 * GiB + GiB // 2,
             before=(guard, old0), after=(guard, chat1)),
    )
    quality = (
        PoolQuality("datacenter", proven_optimal=True),
        PoolQuality("homelab", proven_optimal=False, gap_bytes=3 * GiB, gap_gpus=1, gap_stays=1),
    )
    return Plan(actions=actions, placement=placement, unplaced=unplaced, gpus=gpus,
                fingerprint="3f9a0c1d2e4b5a69", desired_fingerprint="b7c1d2e3f4a5968d", quality=quality)


def settled_plan() -> Plan:
    """Nothing to do: the cluster already runs what the specs ask for."""
    use = GpuUse("chat", 0, 9 * GiB + GiB // 2)
    return Plan(
        actions=(),
        placement=(PlacedReplica("chat", 0, "node-a", (0,), 9 * GiB + GiB // 2),),
        unplaced=(),
        gpus=(_gpu("homelab", "node-a", 0, "NVIDIA GeForce RTX 4090", 24 * GiB, before=(use,), after=(use,)),),
        fingerprint="0011223344556677", desired_fingerprint="8899aabbccddeeff",
    )


def create_only_plan() -> Plan:
    """A first apply on an empty cluster: three creates."""
    uses = (GpuUse("chat", 0, 8 * GiB), GpuUse("chat", 1, 8 * GiB), GpuUse("embed", 0, 1 * GiB))
    actions = tuple(
        Action(ActionKind.CREATE, u.model, u.replica, None, Location("node-a", (0,)), u.vram, "new replica")
        for u in uses
    )
    return Plan(
        actions=actions,
        placement=tuple(PlacedReplica(u.model, u.replica, "node-a", (0,), u.vram) for u in uses),
        unplaced=(),
        gpus=(_gpu("homelab", "node-a", 0, "NVIDIA GeForce RTX 4090", 24 * GiB, after=uses),),
        fingerprint="aaaaaaaaaaaaaaaa", desired_fingerprint="bbbbbbbbbbbbbbbb",
    )


SAMPLES = {"busy": busy_plan, "settled": settled_plan, "create-only": create_only_plan}
