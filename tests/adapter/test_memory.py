"""Reading what replicas use, without a cluster: NVML-shaped answers, a /proc laid out as a container shows it, this
process's own resident memory, and the peaks' bookkeeping over the same KV contract the cluster's store keeps."""

from __future__ import annotations

import os

from reconciler.adapter.kv import MemoryKV
from reconciler.adapter.memory import measure_node, nvml_bytes, pid_aliases, rss_bytes
from reconciler.adapter.observation import replica_peak_key, replica_roots_by_node, with_measured
from reconciler.adapter.peaks import KEY, PeakStore, decode, encode, fold_peaks
from reconciler.observed import (
    MemoryPeak,
    ObservedGpu,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    peak_key,
)

GiB, MiB = 1 << 30, 1 << 20


def nvml_gpus() -> list[dict]:
    """What ``nvml.probe`` reports of a two-GPU node: host PIDs, bytes per process per GPU."""
    return [
        {"index": 0, "name": "NVIDIA L4", "memory": 24 * GiB, "used": 15 * GiB,
         "processes": [{"pid": 41000, "used": 9 * GiB}, {"pid": 41007, "used": 2 * GiB}, {"pid": 5000, "used": 4 * GiB}]},
        {"index": 1, "name": "NVIDIA L4", "memory": 24 * GiB, "used": 10 * GiB,
         "processes": [{"pid": 41000, "used": 500 * MiB}, {"pid": 41008, "used": 9 * GiB}]},
    ]


def test_nvml_counts_the_replicas_processes_on_its_fullest_gpu():
    # The replica's worker (41000) and the engine's workers (41007 on GPU 0, 41008 on GPU 1); 5000 is someone else's.
    assert nvml_bytes(nvml_gpus(), {41000, 41007, 41008}) == 11 * GiB
    assert nvml_bytes(nvml_gpus(), {5000}) == 4 * GiB


def test_a_replica_nvml_does_not_list_is_unknown_not_zero():
    assert nvml_bytes(nvml_gpus(), {123, 456}) is None
    assert nvml_bytes([], {41000}) is None


def write_proc(root, pid: int, nspid: str, sched_pid: int) -> None:
    (root / str(pid)).mkdir(parents=True)
    (root / str(pid) / "status").write_text(f"Name:\tray::ServeReplica\nPid:\t{pid}\nNSpid:\t{nspid}\nPPid:\t1\n")
    (root / str(pid) / "sched").write_text(f"ray::ServeRepli ({sched_pid}, #threads: 40)\n-------\n")


def test_a_process_in_a_nested_pid_namespace_is_known_by_its_host_pid(tmp_path):
    """NSpid lists a process's PID in each namespace from the reader's inward; a container that shows only its own
    PID there still names the host's PID in the sched line on kernels that print it unmapped."""
    write_proc(tmp_path, 41000, "41000\t12", 41000)
    assert pid_aliases(41000, proc=tmp_path) == {41000, 12}
    write_proc(tmp_path, 12, "12", 41000)  # inside the container: only the sched line can still say the host PID
    aliases = pid_aliases(12, proc=tmp_path)
    assert aliases == {12, 41000}
    assert nvml_bytes(nvml_gpus(), aliases) == 9 * GiB  # its fullest GPU; 500 MiB on the other


def test_a_process_that_is_gone_keeps_only_its_own_pid(tmp_path):
    assert pid_aliases(999999, proc=tmp_path) == {999999}


def test_resident_memory_is_read_from_the_real_process_tree():
    """This process, through the very function a simulated node runs: its RSS, and nothing for a PID that is gone."""
    import psutil

    found = measure_node({"app-a": os.getpid()}, False)
    assert found["app-a"]["source"] == "rss"
    assert found["app-a"]["bytes"] >= psutil.Process().memory_info().rss // 2 > 0
    assert rss_bytes({2**22 + 12345}) is None


def serve_details(*, pid: int = 41000, engine_args: dict | None = None) -> dict:
    engine = {"model": "chat", "replica": 0, "engine": "echo", "source": "acme/chat", "vram_bytes": 2 * GiB,
              "gpu_memory_bytes": 24 * GiB, "tensor_parallel": 1, "node": "node-a", "gpus": [0],
              "engine_args": engine_args or {"max_model_len": 512}}
    return {"applications": {
        "reconciler--chat--r0": {
            "status": "RUNNING",
            "deployed_app_config": {"args": {"managed_by": "reconciler", "kind": "replica", "engine_config": engine}},
            "deployments": {"Replica": {"replicas": [
                {"node_id": "n1", "pid": pid - 1, "state": "STOPPING"},
                {"node_id": "n1", "pid": pid, "state": "RUNNING"},
            ]}},
        },
        "someone-else": {"deployed_app_config": {"args": {}},
                         "deployments": {"D": {"replicas": [{"node_id": "n1", "pid": 7, "state": "RUNNING"}]}}},
    }}


def observed_chat(gpus: tuple[int, ...] = (0,)) -> ObservedState:
    node = ObservedNode(name="node-a", gpus=(ObservedGpu(0, "NVIDIA L4", 24 * GiB), ObservedGpu(1, "NVIDIA L4", 24 * GiB)))
    replica = ObservedReplica(model="chat", replica=0, node="node-a", gpus=gpus, vram=2 * GiB, restart_hash="r",
                              config_hash="c", state=ReplicaState.RUNNING, app="reconciler--chat--r0")
    return ObservedState(nodes=(node,), replicas=(replica,))


def test_the_running_worker_of_each_of_our_replicas_is_measured():
    assert replica_roots_by_node(serve_details()) == {"n1": {"reconciler--chat--r0": 41000}}


def test_measured_memory_lands_on_its_replica_with_a_sample_for_its_kind():
    serve = serve_details()
    observed, samples = with_measured(observed_chat(), serve, {"reconciler--chat--r0": {"bytes": 3 * GiB,
                                                                                        "source": "nvml"}})
    (replica,) = observed.replicas
    assert (replica.measured, replica.measured_source) == (3 * GiB, "nvml")
    # The kind is what the planner computes from the spec: the engine args compared by value, not by spelling.
    key = peak_key(source="acme/chat", engine="echo", engine_args_json='{ "max_model_len": 512 }',
                   gpu_name="NVIDIA L4", tensor_parallel=1)
    assert samples == [(key, 3 * GiB)]
    assert replica_peak_key(serve["applications"]["reconciler--chat--r0"]["deployed_app_config"]["args"]
                            ["engine_config"], "NVIDIA L4") == key


def test_resident_memory_of_a_replica_on_two_gpus_is_shared_between_them():
    observed, _ = with_measured(observed_chat((0, 1)), serve_details(),
                                {"reconciler--chat--r0": {"bytes": 3 * GiB + 1, "source": "rss"}})
    assert observed.replicas[0].measured == 3 * GiB // 2 + 1  # rounded up: never below what it uses


def test_a_replica_not_measured_stays_unknown_and_adds_no_sample():
    observed, samples = with_measured(observed_chat(), serve_details(), {})
    assert observed.replicas[0].measured is None and observed.replicas[0].measured_source == ""
    assert samples == []


def test_the_peak_keeps_the_most_seen_since_the_first_reading():
    peaks = fold_peaks((), [("k", 2 * GiB)], now=100.0, limit=10)
    peaks = fold_peaks(peaks, [("k", 3 * GiB), ("k", GiB)], now=200.0, limit=10)  # two replicas: one observation
    peaks = fold_peaks(peaks, [("k", GiB)], now=300.0, limit=10)
    assert peaks == (MemoryPeak(key="k", peak_bytes=3 * GiB, first_seen=100.0, last_seen=300.0, samples=3),)


def test_past_the_limit_the_kinds_seen_least_recently_are_dropped():
    peaks = ()
    for i, key in enumerate("abcde"):
        peaks = fold_peaks(peaks, [(key, GiB)], now=float(i), limit=3)
    assert [p.key for p in peaks] == ["c", "d", "e"]
    peaks = fold_peaks(peaks, [("c", GiB), ("f", GiB)], now=10.0, limit=3)
    assert [p.key for p in peaks] == ["c", "e", "f"]


def test_the_store_keeps_the_peaks_in_one_value_and_reads_garbage_as_none():
    kv = MemoryKV()
    store = PeakStore(kv, limit=8)
    assert store.read() == ()
    assert store.record([], now=1.0) == () and kv.get(KEY) is None  # nothing measured: nothing written
    first = store.record([("a", GiB), ("b", 2 * GiB)], now=5.0)
    assert PeakStore(kv, limit=8).read() == first == decode(encode(first))
    assert [p.key for p in first] == ["a", "b"]
    kv.put(KEY, b"not json")
    assert store.read() == ()
