"""Reading GPUs through NVML on the machine this runs on. No Ray here: the adapter runs `probe` on each node as a
task, and `reconciler node-resources` runs it locally."""

from __future__ import annotations

import warnings
from typing import Any


class NvmlUnavailable(RuntimeError):
    """NVML cannot be loaded or initialised here (no NVIDIA driver, a CPU-only node)."""


def probe() -> dict[str, Any]:
    """Every GPU NVML sees: index, name, total and used bytes, and the bytes each process uses on it.

    Returns ``{"available": False, "error": why}`` instead of raising: a node without NVML is normal (simulated GPUs).
    """
    try:
        gpus = read_gpus()
    except NvmlUnavailable as exc:
        return {"available": False, "error": str(exc), "gpus": []}
    return {"available": True, "error": "", "gpus": gpus}


def read_gpus() -> list[dict[str, Any]]:
    try:
        with warnings.catch_warnings():  # nvidia-ml-py's module is named pynvml; an old `pynvml` shim warns on import
            warnings.simplefilter("ignore", FutureWarning)
            import pynvml
    except ImportError as exc:  # nvidia-ml-py is a dependency, but a node's environment may lack it
        raise NvmlUnavailable(f"nvidia-ml-py is not installed: {exc}") from exc
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # pynvml raises NVMLError subclasses, or OSError when the library is missing
        raise NvmlUnavailable(f"NVML is not available on this machine: {exc}") from exc
    try:
        gpus = []
        for index in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(index)
            name = pynvml.nvmlDeviceGetName(handle)
            memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
            processes = []
            for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
                try:
                    for proc in getattr(pynvml, getter)(handle):
                        processes.append({"pid": int(proc.pid), "used": int(proc.usedGpuMemory or 0)})
                except Exception:  # not supported on every GPU/driver: totals still count as used memory
                    pass
            gpus.append(
                {
                    "index": index,
                    "name": name.decode() if isinstance(name, bytes) else str(name),
                    "memory": int(memory.total),
                    "used": int(memory.used),
                    "processes": processes,
                }
            )
        return gpus
    finally:
        try:
            pynvml.nvmlShutdown()
        except Exception:
            pass


def descendants(pids: set[int]) -> set[int]:
    """The given processes and all their children: an engine may run its model in a child process."""
    try:
        import psutil
    except ImportError:
        return set(pids)
    found = set(pids)
    for pid in pids:
        try:
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return found


def probe_node(our_pids: list[int]) -> dict[str, Any]:
    """`probe` plus each GPU's memory used by processes that are not ours (foreign), as a Ray task computes it."""
    result = probe()
    ours = descendants(set(our_pids))
    for gpu in result["gpus"]:
        mine = sum(p["used"] for p in gpu["processes"] if p["pid"] in ours)
        gpu["foreign"] = max(0, gpu["used"] - mine)
    return result
