"""Faults of a local cluster of its own (`reconciler up` in a scratch directory, two simulated nodes), as an
operator meets them: a node's raylet killed, the state file mangled. Each step is the CLI, run as a process; the
checks are on the cluster and on what the commands said.

It starts its own cluster (nodes are killed here, which the session's shared cluster must not suffer) and stops it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from reconciler.adapter import localcluster
from reconciler.adapter.cluster import Cluster, Endpoint
from tests.faults.support import MODEL, SESSION_CLUSTER_ENV, clean_refusal, reconciler, write_specs

pytestmark = [pytest.mark.ray, pytest.mark.faults]

# One 24 GiB GPU per node and two 16 GiB replicas: necessarily one replica on each node.
INVENTORY = (("node-a", ("24Gi",)), ("node-b", ("24Gi",)))


@pytest.fixture
def here(tmp_path):
    """A directory with specs where `reconciler up` runs; whatever it started is stopped at the end."""
    write_specs(tmp_path / "specs", {"alpha": 2}, vram="16Gi", inventory=INVENTORY)
    yield tmp_path
    state_file = tmp_path / localcluster.STATE_DIR_NAME / localcluster.STATE_FILE_NAME
    for pid in localcluster.supervisors(state_file):
        localcluster.stop_pid(pid)


def rest(here: Path) -> Cluster:
    """The local cluster's REST API only (no Ray driver: this test process may be one of the session's cluster)."""
    state = json.loads((here / ".reconciler" / "cluster.json").read_text())
    token = Path(state["auth_token_path"]).read_text().strip()
    return Cluster(Endpoint(address=state["address"], token=token, dashboard_url=state["dashboard_url"], local=True))


def replica_pids(here: Path) -> dict[int, str]:
    """Running replica worker pids of reconciler's replica applications, with the Ray node id of each."""
    with rest(here) as cluster:
        details = cluster.serve_details()
    return {
        int(r["pid"]): r["node_id"]
        for name, app in details["applications"].items() if name.startswith("reconciler--alpha--")
        for d in app["deployments"].values()
        for r in d["replicas"]
        if r.get("state") == "RUNNING" and r.get("pid")
    }


def two_replicas(here: Path) -> dict[int, str] | None:
    pids = replica_pids(here)
    return pids if len(pids) == 2 else None


def wait_for(check, *, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.5)


def test_a_killed_node_and_a_mangled_state_file(here):
    up = reconciler("up", "specs", cwd=here, own_cluster=True, timeout=300)
    assert up.returncode == 0, up.stderr
    state_file = here / ".reconciler" / "cluster.json"
    supervisor = json.loads(state_file.read_text())["pid"]
    assert (here / ".reconciler" / "cluster.pid").read_text().strip() == str(supervisor)

    applied = reconciler("apply", "specs", "--yes", "--timeout", "180", cwd=here, own_cluster=True)
    assert applied.returncode == 0, applied.stdout + applied.stderr
    pids = wait_for(lambda: two_replicas(here), timeout=120, what="two replicas")
    node_ids = {n["name"]: n["nodeId"] for n in json.loads(reconciler("observe", "specs", cwd=here, own_cluster=True).stdout)["nodes"]}

    # node-b's raylet dies: the replica it ran dies with it, and every command says so.
    on_b = [pid for pid, node_id in pids.items() if node_id == node_ids["node-b"]]
    assert len(on_b) == 1, (pids, node_ids)
    raylet = psutil.Process(on_b[0]).parent()
    raylet.send_signal(signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(on_b[0]) or psutil.Process(on_b[0]).status() == psutil.STATUS_ZOMBIE,
             timeout=60, what="the dead node's replica process to end")
    # The supervisor noticed, and stopped whatever of the node was still running (Ray's workers may beat it to it).
    wait_for(lambda: "node node-b died: stopped" in (here / ".reconciler" / "cluster.log").read_text(),
             timeout=30, what="the supervisor to notice the dead node")

    status = wait_for(lambda: (r := reconciler("status", "specs", cwd=here, own_cluster=True)).returncode == 0
                      and "DEAD" in r.stdout and r, timeout=120, what="status to show the dead node")
    assert "node-b  DEAD since " in status.stdout and "ran: alpha[" in status.stdout, status.stdout
    assert "1 node(s) dead: node-b" in status.stdout

    observed = json.loads(reconciler("observe", "specs", cwd=here, own_cluster=True).stdout)
    [node_b] = [n for n in observed["nodes"] if n["name"] == "node-b"]
    assert node_b["alive"] is False and isinstance(node_b["deadSince"], float | int), node_b

    planned = reconciler("plan", "specs", cwd=here, own_cluster=True)
    assert planned.returncode == 0, planned.stderr
    assert "node node-b: DEAD since" in planned.stdout, planned.stdout

    # Apply converges: the replica of the dead node has no room on node-a and is explained, nothing else runs.
    again = reconciler("apply", "specs", "--yes", "--timeout", "180", "--pending-grace", "5", cwd=here, own_cluster=True)
    assert "Traceback" not in again.stdout + again.stderr, again.stdout + again.stderr
    after = reconciler("plan", "specs", "--detailed-exitcode", cwd=here, own_cluster=True)
    assert after.returncode == 0, after.stdout + after.stderr
    assert "cannot be placed" in after.stdout or "no place" in after.stdout or "Unplaced" in after.stdout, after.stdout
    status = reconciler("status", "specs", cwd=here, own_cluster=True)
    assert "1/1 replicas running" in status.stdout, status.stdout
    assert "apply lock: free" in status.stdout

    # The state file is mangled: `up` refuses a second cluster, `down` still finds and stops this one.
    tree = psutil.Process(supervisor).children(recursive=True)
    state_file.write_text("{ not json")
    second = reconciler("up", "specs", cwd=here, own_cluster=True, timeout=120)
    clean_refusal(second, must_say=f"supervisor pid {supervisor}")
    down = reconciler("down", cwd=here, own_cluster=True, timeout=180)
    assert down.returncode == 0 and "Local cluster stopped." in down.stdout, down.stdout + down.stderr
    assert not psutil.pid_exists(supervisor) or psutil.Process(supervisor).status() == psutil.STATUS_ZOMBIE
    left = [p for p in tree if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline()[:3] for p in left]
    assert reconciler("down", cwd=here, own_cluster=True).stdout.strip() == "No local cluster was running."


def start_watch(here: Path, log: Path) -> subprocess.Popen:
    """`reconciler watch` of the local cluster in `here` as a process, its events written to `log`."""
    env = {k: v for k, v in os.environ.items() if k not in SESSION_CLUSTER_ENV}
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler", "watch", "specs", "--yes", "--interval", "3", "--lease-ttl", "6",
         "--events", str(log)],
        cwd=here, env={**env, "NO_COLOR": "1"}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        stdin=subprocess.DEVNULL,
    )


def test_a_watch_outlives_a_gcs_that_dies_first(here):
    """The GCS dies while the rest of the cluster (the dashboard) lives on: a driver of that cluster is ended by Ray
    60 s after its GCS stopped answering. The watch bounds its calls to the GCS, reports the lost cluster, lets the
    driver go and keeps trying to reconnect well past those 60 s (seen once in a suite run: `reconciler down`
    stopped the GCS first, and the watch died in the middle of reading the node table)."""
    assert reconciler("up", "specs", cwd=here, own_cluster=True, timeout=300).returncode == 0
    log = here / "events.jsonl"
    watch = start_watch(here, log)
    try:
        wait_for(lambda: watch.poll() is None and any(e["event"] == "cycle" and e["inSync"] for e in events(log)),
                 timeout=240, what="the watch's first cycle in sync")
        supervisor = psutil.Process(json.loads((here / ".reconciler" / "cluster.json").read_text())["pid"])
        [gcs] = [p for p in supervisor.children(recursive=True) if p.name().startswith("gcs_server")]
        mark = len(events(log))
        gcs.send_signal(signal.SIGKILL)
        killed = time.monotonic()
        lost = wait_for(lambda: watch.poll() is None and next(
            (e for e in events(log)[mark:] if e["event"] == "failure" and e.get("stage") == "connect"), None),
            timeout=120, what="the watch to report the lost cluster")
        assert lost["message"].startswith("lost the cluster: "), lost
        # Past Ray's 60 s: still alive, still trying to connect again.
        wait_for(lambda: time.monotonic() - killed > 75, timeout=120, what="75 s after the kill")
        assert watch.poll() is None, watch.communicate(timeout=60)[0]
        assert any(e["message"].startswith("connecting again failed") for e in events(log)[mark:]), events(log)[mark:]
        assert sum(e["message"].startswith("lost the cluster") for e in events(log)[mark:]) == 1, events(log)[mark:]
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=120)
    assert watch.returncode == 0, out
    assert "Traceback" not in out and "Failed to connect to GCS" not in out, out


def test_an_apply_whose_cluster_stops_while_it_waits_ends_with_its_error(here):
    """`reconciler down` while `reconciler apply` waits for a replica to start: the apply ends with one `error:` line
    and exit 1 within its bounded calls, where Ray used to end it 60 s later with no word of what happened (the
    revision and the lock's release waited on the GCS that was gone)."""
    (here / "specs" / "models.yaml").write_text(
        MODEL.format(name="alpha", vram="16Gi", replicas=1) + "  engineArgs: {startup_delay_s: 900}\n")
    assert reconciler("up", "specs", cwd=here, own_cluster=True, timeout=300).returncode == 0
    env = {k: v for k, v in os.environ.items() if k not in SESSION_CLUSTER_ENV}
    apply = subprocess.Popen([sys.executable, "-m", "reconciler", "apply", "specs", "--yes"], cwd=here,
                             env={**env, "NO_COLOR": "1"}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             stdin=subprocess.DEVNULL)
    try:
        def submitted() -> bool:
            with rest(here) as cluster:
                return any(name.startswith("reconciler--alpha--") for name in cluster.serve_details()["applications"])

        wait_for(lambda: apply.poll() is None and submitted(), timeout=240, what="the apply to submit its replica")
        down = reconciler("down", cwd=here, own_cluster=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        out, err = apply.communicate(timeout=150)
    finally:
        if apply.poll() is None:
            apply.kill()
            apply.communicate()
    clean_refusal(subprocess.CompletedProcess(apply.args, apply.returncode, out, err))
    assert "Failed to connect to GCS" not in err, err


def test_a_watch_whose_cluster_stops_while_its_apply_waits_says_so_and_carries_on(here):
    """`reconciler down` while a watch's apply waits for a replica to start. The apply sees the cluster is gone (its
    GCS port refuses connections) and gives up at once, and the watch reports the lost cluster and waits for it, where
    the apply used to wait out its replica timeout until Ray's own reconnect timer ended the watch (seen once in the
    test above: a cycle that began as the cluster stopped)."""
    (here / "specs" / "models.yaml").write_text(
        MODEL.format(name="alpha", vram="16Gi", replicas=1) + "  engineArgs: {startup_delay_s: 900}\n")
    assert reconciler("up", "specs", cwd=here, own_cluster=True, timeout=300).returncode == 0
    log = here / "events.jsonl"
    watch = start_watch(here, log)
    try:
        def submitted() -> bool:
            with rest(here) as cluster:
                return any(name.startswith("reconciler--alpha--") for name in cluster.serve_details()["applications"])

        wait_for(lambda: watch.poll() is None and any(e["event"] == "apply" for e in events(log)) and submitted(),
                 timeout=240, what="the watch to submit its replica")
        down = reconciler("down", cwd=here, own_cluster=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        lost = wait_for(lambda: watch.poll() is None and next(
            (e for e in events(log) if e["event"] == "failure" and e.get("stage") == "connect"), None),
            timeout=240, what="the watch to report the lost cluster")
        assert "stopped answering" in lost["message"], lost
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=120)
    # The SIGTERM may come as the watch drops its connection, before its reconnect loop begins: kept, a clean stop.
    assert watch.returncode == 0, out
    assert "Traceback" not in out, out


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def test_watch_reconnects_when_the_whole_cluster_is_restarted(here):
    assert reconciler("up", "specs", cwd=here, own_cluster=True, timeout=300).returncode == 0
    log = here / "events.jsonl"
    watch = start_watch(here, log)
    try:
        def seen(predicate, after: int = 0):
            def check():
                assert watch.poll() is None, f"the watch ended ({watch.returncode}): {watch.communicate()[0][-3000:]}"
                return next((e for e in events(log)[after:] if predicate(e)), None)

            return wait_for(check, timeout=240, what="a watch event")

        seen(lambda e: e["event"] == "cycle" and e["inSync"])
        wait_for(lambda: two_replicas(here), timeout=120, what="two replicas")

        mark = len(events(log))
        down = reconciler("down", cwd=here, own_cluster=True, timeout=180)
        assert down.returncode == 0, down.stdout + down.stderr
        lost = seen(lambda e: e["event"] == "failure" and e.get("stage") == "connect", after=mark)
        assert "stopped answering" in lost["message"], lost

        up = reconciler("up", "specs", cwd=here, own_cluster=True, timeout=300)  # a new cluster, a new address
        assert up.returncode == 0, up.stderr
        seen(lambda e: e["event"] == "reconnected", after=mark)
        seen(lambda e: e["event"] == "lease" and not e.get("waiting"), after=mark)
        seen(lambda e: e["event"] == "cycle" and e["inSync"], after=mark)
        # A cycle is in sync once the replicas are deployed, starting ones included: Serve reports them RUNNING later.
        wait_for(lambda: two_replicas(here), timeout=120, what="watch to re-apply the specs to the restarted cluster")
        retries = [e for e in events(log)[mark:] if e["event"] == "failure"]
        assert len(retries) < 20, retries  # backed off, never spun
    finally:
        if watch.poll() is None:
            watch.send_signal(signal.SIGTERM)
        out, _ = watch.communicate(timeout=120)
    assert watch.returncode == 0, out
    assert "Traceback" not in out, out
