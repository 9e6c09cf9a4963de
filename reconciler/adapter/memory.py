"""What a replica's processes really use, read on the node they run on. No Ray here: the adapter runs
``measure_node`` there as a task (``Cluster.observe``), and the reading of NVML's answer is a pure function of it.

A replica is the Serve replica actor's worker process and every process below it (vLLM's engine core and its
multiprocess workers are its children). On a node whose GPUs NVML reports, its memory is the sum of NVML's per-process
``usedGpuMemory`` of those processes on each GPU, the most on any one GPU (what its `vram` reserves on each); elsewhere
(simulated GPUs) it is their resident memory (RSS), summed.

PID namespaces: NVML reports PIDs as the driver sees them, in the host's PID namespace, while the probe reads
``/proc`` in its own. Where the Ray node shares the host's PID namespace (bare metal, a VM, a container run with
`--pid=host` or Kubernetes `hostPID: true`) the two agree. Otherwise each of our processes stands for every PID this
node's ``/proc`` knows it by (``pid_aliases``): its own, each one ``NSpid`` in ``/proc/<pid>/status`` lists (from the
reader's namespace inward, for processes in a namespace nested below the probe's), and the PID in the first line of
``/proc/<pid>/sched``, which kernels that do not map it print in the host's namespace. A container that shows none of
them matches no NVML entry: its replicas' figures are then unknown (null), never taken for zero, and the remedy is to
run the node's container in the host's PID namespace.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

SOURCE_NVML = "nvml"
SOURCE_RSS = "rss"

_SCHED_HEAD = re.compile(r"\((\d+),")


def pid_aliases(pid: int, *, proc: Path = Path("/proc")) -> set[int]:
    """Every PID the process ``pid`` is known by from here (see the module's note on PID namespaces)."""
    found = {pid}
    try:
        for line in (proc / str(pid) / "status").read_text().splitlines():
            if line.startswith("NSpid:"):
                found.update(int(v) for v in line.split()[1:] if v.isdigit())
                break
    except OSError:
        pass
    try:
        with open(proc / str(pid) / "sched") as sched:
            match = _SCHED_HEAD.search(sched.readline())
        if match:
            found.add(int(match.group(1)))
    except OSError:
        pass
    return found


def nvml_bytes(gpus: list[dict[str, Any]], pids: set[int]) -> int | None:
    """The most memory the processes ``pids`` use on any one GPU, from NVML's per-process readings (``nvml.probe``'s
    ``gpus``: each with ``processes`` of ``{"pid", "used"}``); None when NVML lists none of them on any GPU."""
    most: int | None = None
    for gpu in gpus:
        mine = [p["used"] for p in gpu.get("processes", []) if p["pid"] in pids]
        if mine:
            most = max(most or 0, sum(mine))
    return most


def rss_bytes(pids: set[int]) -> int | None:
    """The resident memory of the processes ``pids`` that still exist; None when none does."""
    import psutil

    total, seen = 0, False
    for pid in sorted(pids):
        try:
            total += psutil.Process(pid).memory_info().rss
            seen = True
        except psutil.Error:
            pass
    return total if seen else None


def measure_node(roots: dict[str, int], use_nvml: bool) -> dict[str, dict[str, Any]]:
    """Per application, the memory of its replica process (``roots``: application -> its worker PID) and its
    children: ``{"bytes": int | None, "source": "nvml" | "rss"}``. ``use_nvml`` is False on a node whose GPUs are
    simulated: RSS then, even where the machine has a driver."""
    from reconciler.adapter.nvml import NvmlUnavailable, descendants, read_gpus

    trees = {app: descendants({pid}) for app, pid in roots.items()}
    gpus: list[dict[str, Any]] = []
    if use_nvml:
        try:
            gpus = read_gpus()
        except NvmlUnavailable:
            gpus = []
    if gpus:
        found = {}
        for app, pids in trees.items():
            aliases: set[int] = set()
            for pid in pids:
                aliases |= pid_aliases(pid)
            found[app] = {"bytes": nvml_bytes(gpus, aliases), "source": SOURCE_NVML}
        return found
    return {app: {"bytes": rss_bytes(pids), "source": SOURCE_RSS} for app, pids in trees.items()}
