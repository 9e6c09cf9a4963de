"""The probe task's reading of the machine it runs on, run here directly (no Ray): this machine has no NVIDIA
driver, so NVML is reported unavailable with the reason, and the rest is read as it is."""

from __future__ import annotations

import os
import platform
import sys

from reconciler.adapter import nodefacts
from reconciler.doctor.facts import node_from_probe


def test_collect_reads_this_machine():
    raw = nodefacts.collect()
    assert raw["executable"] == sys.executable
    assert raw["versions"]["python"] == platform.python_version()
    assert raw["versions"]["ray"].count(".") == 2
    assert raw["shm"] == (os.statvfs("/dev/shm").f_frsize * os.statvfs("/dev/shm").f_blocks
                          if os.path.isdir("/dev/shm") else None)
    node = node_from_probe(name="here", node_id="n", labels={}, resources={}, simulated=False, raw=raw)
    if not raw["nvml"]:
        assert raw["nvml_error"] and node.gpus == () and node.driver == ""


def test_no_dev_shm_reads_as_none(tmp_path):
    assert nodefacts.shm_bytes(str(tmp_path / "missing")) is None
