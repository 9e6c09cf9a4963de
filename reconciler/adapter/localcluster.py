"""The embedded default: a local Ray cluster shaped like the pools' inventory, owned by a detached supervisor.

`reconciler up` starts ``python -m reconciler.adapter.localcluster run --spec S --state F`` in its own session; the
supervisor starts one Ray node per inventory node (``ray.cluster_utils.Cluster``: separate raylets on this machine,
loopback only,
free ports), starts Serve with its HTTP proxy on 127.0.0.1, writes the state file (PID, addresses, ports, token path)
and then sleeps until SIGTERM/SIGINT, when it shuts the cluster down and removes the state file. `reconciler down`
and the test suite's session fixture stop it by signalling that PID.

The state file can be lost or mangled while the cluster runs, so the supervisor can be found two more ways: its pid
is also written to ``cluster.pid`` beside it, and its command line names the state file it was started for
(``supervisors(state_file)`` looks for exactly that, pid by pid). Meanwhile it watches its nodes: when one's raylet
dies (a simulated node failure), the processes that node had started (replica workers) are stopped with it instead
of living on as orphans. Token auth stays on: the supervisor generates a
token of its own (next to the state file) instead of sharing ``~/.ray/auth_token`` with other clusters.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reconciler.desired import DesiredState
from reconciler.naming import GPU_SOURCE_INVENTORY, GPU_SOURCE_LABEL, node_resources
from reconciler.observed import NODE_NAME_LABEL

STATE_DIR_NAME = ".reconciler"
STATE_FILE_NAME = "cluster.json"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    labels: dict[str, str]
    num_gpus: int
    resources: dict[str, float]
    num_cpus: int = 2


@dataclass(frozen=True)
class ClusterSpec:
    nodes: list[NodeSpec]
    auth: bool = True  # False only for throwaway clusters whose caller asks for it explicitly
    env: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "ClusterSpec":
        return cls(
            nodes=[NodeSpec(**n) for n in data["nodes"]],
            auth=data.get("auth", True),
            env=data.get("env", {}),
        )


def spec_from_desired(desired: DesiredState) -> ClusterSpec:
    """One simulated node per inventory node of every pool, labelled the way the pool selects it."""
    nodes: list[NodeSpec] = []
    seen: set[str] = set()
    for pool in desired.pools:
        for inv in pool.inventory:
            if inv.node in seen:
                continue
            seen.add(inv.node)
            labels = {**dict(pool.selector or ()), NODE_NAME_LABEL: inv.node, GPU_SOURCE_LABEL: GPU_SOURCE_INVENTORY}
            nodes.append(
                NodeSpec(
                    name=inv.node,
                    labels=labels,
                    num_gpus=len(inv.gpus),
                    resources=node_resources(inv.node, [g.memory for g in inv.gpus], pool.reserve),
                )
            )
    return ClusterSpec(nodes=nodes)


def spec_for_real_gpus(desired: DesiredState, memories: list[int], node: str | None = None) -> ClusterSpec:
    """One node with the GPUs NVML sees on this machine, named after the inventory node it stands for: `node`, else
    the first inventory node with as many GPUs, else the first one. Observe reads its GPUs through NVML."""
    entries = [(pool, inv) for pool in desired.pools for inv in pool.inventory]
    if not entries:
        raise ValueError("the pools list no inventory nodes")
    chosen = next((e for e in entries if e[1].node == node), None) if node else None
    chosen = chosen or next((e for e in entries if len(e[1].gpus) == len(memories)), entries[0])
    pool, inv = chosen
    labels = {**dict(pool.selector or ()), NODE_NAME_LABEL: inv.node}
    resources = node_resources(inv.node, memories, pool.reserve)
    return ClusterSpec(nodes=[NodeSpec(name=inv.node, labels=labels, num_gpus=len(memories), resources=resources)])


# Ports for the cluster's listeners come from between Ray's worker ports (10002-19999 by default) and the kernel's
# ephemeral range. A port the kernel hands out (bind to port 0) is free only at that instant: while the cluster starts,
# Ray's own processes bind port 0 and open connections, and one of them took the port picked for Serve's proxy before
# the proxy bound it (measured once in a restart under load: "Failed to bind to address"). Below the ephemeral range
# the kernel never hands a port out, so a port free now stays free until something asks for it by number.
OWN_PORTS_FROM = 20000


def _ephemeral_low() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default; elsewhere the check below still refuses a port in use


def free_port(taken: frozenset[int] = frozenset()) -> int:
    """A port on 127.0.0.1 that nothing listens on or holds (TIME_WAIT included: bound without SO_REUSEADDR), drawn
    at random from outside the kernel's ephemeral range; ``taken``: ports already chosen but not yet bound."""
    low = _ephemeral_low()
    draw = random.Random(f"{os.getpid()}-{time.time_ns()}")
    for _ in range(200):
        port = draw.randrange(OWN_PORTS_FROM, low) if low > OWN_PORTS_FROM + 100 else 0
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError(f"no free port on 127.0.0.1 between {OWN_PORTS_FROM} and {low} after 200 tries; "
                       "stop what holds them, or widen the range below net.ipv4.ip_local_port_range")


def default_state_file() -> Path:
    """`.reconciler/cluster.json` in the working directory."""
    return Path.cwd() / STATE_DIR_NAME / STATE_FILE_NAME


def read_state(path: Path) -> dict[str, Any] | None:
    """The state of a running local cluster, or None when there is none (no file, or its supervisor is gone)."""
    try:
        state = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not state.get("ready") or not pid_alive(state.get("pid", 0)):
        return None
    return state


def pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


SUPERVISOR_MODULE = "reconciler.adapter.localcluster"


def pid_file(state_file: Path) -> Path:
    return state_file.with_name(state_file.stem + ".pid")


def supervisors(state_file: Path) -> list[int]:
    """The pids of running supervisors started for this state file, whatever the file now says: the pid recorded
    in it, the one in ``cluster.pid``, and any process whose command line is ``-m reconciler.adapter.localcluster
    run ... --state <this file>``. Each is checked by its command line, so a recycled pid is never taken for one."""
    import psutil

    state_file = state_file.absolute()
    candidates: set[int] = set()
    try:
        candidates.add(int(json.loads(state_file.read_text()).get("pid", 0)))
    except (OSError, ValueError, TypeError, AttributeError):
        pass
    try:
        candidates.add(int(pid_file(state_file).read_text().strip()))
    except (OSError, ValueError):
        pass
    for process in psutil.process_iter(["cmdline"]):
        if _supervises(process.info.get("cmdline") or [], state_file):
            candidates.add(process.pid)
    found = []
    for pid in sorted(p for p in candidates if p > 0):
        try:
            if _supervises(psutil.Process(pid).cmdline(), state_file):
                found.append(pid)
        except psutil.Error:
            continue
    return found


def _supervises(cmdline: list[str], state_file: Path) -> bool:
    if SUPERVISOR_MODULE not in cmdline or "run" not in cmdline or "--state" not in cmdline:
        return False
    at = cmdline.index("--state") + 1
    return at < len(cmdline) and Path(cmdline[at]) == state_file


def start(spec: ClusterSpec, state_file: Path, *, timeout: float = 120.0) -> dict[str, Any]:
    """Start a supervisor for `spec` and wait until its cluster is ready; returns the state it wrote."""
    state_file = state_file.absolute()
    running = supervisors(state_file)
    if running:
        raise RuntimeError(
            f"a local cluster for {state_file} is already running (supervisor pid {', '.join(map(str, running))}); "
            "stop it first with `reconciler down`"
        )
    state_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file = state_file.with_name(state_file.stem + ".spec.json")
    log_file = state_file.with_name(state_file.stem + ".log")
    spec_file.write_text(json.dumps(spec.to_json(), indent=2))
    state_file.unlink(missing_ok=True)
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", SUPERVISOR_MODULE, "run", "--spec", str(spec_file), "--state", str(state_file)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # outlives the command that started it, and a Ctrl-C of that command
        )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        state = read_state(state_file)
        if state is not None:
            return state
        if proc.poll() is not None:
            tail = log_file.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the local cluster failed to start (exit {proc.returncode}); log {log_file}:\n{tail}")
        time.sleep(0.2)
    stop_pid(proc.pid)
    raise RuntimeError(f"the local cluster did not become ready in {timeout:.0f}s; see {log_file}")


def stop_pid(pid: int, *, timeout: float = 60.0) -> bool:
    """Ask a supervisor to shut its cluster down; kill it if it does not within `timeout`. True if it was running."""
    if not pid_alive(pid):
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        try:
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our child (the test fixture)
        except ChildProcessError:
            pass
        time.sleep(0.2)
    os.kill(pid, signal.SIGKILL)
    return True


def stop(state_file: Path, *, timeout: float = 60.0) -> bool:
    """Stop every supervisor started for this state file (see ``supervisors``); True if one was running."""
    state_file = state_file.absolute()
    stopped = False
    for pid in supervisors(state_file):
        stopped = stop_pid(pid, timeout=timeout) or stopped
    state_file.unlink(missing_ok=True)
    pid_file(state_file).unlink(missing_ok=True)
    return stopped


def _supervise(spec: ClusterSpec, state_file: Path) -> int:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.update(spec.env)
    token_path = None
    if spec.auth:
        token_path = state_file.with_name("auth_token")
        if not token_path.exists():
            token_path.write_text(secrets.token_hex(32))
            token_path.chmod(0o600)
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = str(token_path)
        os.environ.pop("RAY_AUTH_TOKEN", None)
    else:
        os.environ["RAY_AUTH_MODE"] = "disabled"

    import ray
    from ray import serve
    from ray.cluster_utils import Cluster

    stopping = False

    def on_signal(signum: int, frame: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    pid_file(state_file).write_text(f"{os.getpid()}\n")

    ports: list[int] = []
    for _ in range(4):
        ports.append(free_port(frozenset(ports)))
    gcs_port, dashboard_port, agent_port, http_port = ports
    head, *workers = spec.nodes
    common = {"node_ip_address": "127.0.0.1", "object_store_memory": 80 * 1024 * 1024}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            **common,
            "gcs_server_port": gcs_port,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": dashboard_port,
            "dashboard_agent_listen_port": agent_port,
            "num_cpus": head.num_cpus,
            "num_gpus": head.num_gpus,
            "resources": head.resources,
            "labels": head.labels,
        },
    )
    raylets = {head.name: _raylet_pid(cluster.head_node)}
    try:
        for node in workers:
            raylets[node.name] = _raylet_pid(cluster.add_node(
                **common,
                num_cpus=node.num_cpus,
                num_gpus=node.num_gpus,
                resources=node.resources,
                labels=node.labels,
            ))
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
        serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": http_port})
        dashboard_url = f"http://{cluster.webui_url}" if not cluster.webui_url.startswith("http") else cluster.webui_url
        state = {
            "pid": os.getpid(),
            "address": cluster.address,
            "dashboard_url": dashboard_url,
            "http_url": f"http://127.0.0.1:{http_port}",
            "auth_token_path": str(token_path) if token_path else None,
            "nodes": [n.name for n in spec.nodes],
            "ready": True,
            "started_at": time.time(),
        }
        ray.shutdown()  # Serve is detached: the supervisor need not stay a driver
        # ray.init installed its own SIGTERM handler, which ends this process without the shutdown below: ours again.
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
        tmp = state_file.with_suffix(".tmp")
        tmp.write_text(json.dumps(state, indent=2))
        tmp.replace(state_file)
        print(f"local cluster ready: {json.dumps(state)}", flush=True)
        watch = NodeWatch(raylets)
        while not stopping:
            for name, count in watch.check().items():
                print(f"node {name} died: stopped the {count} process(es) it had started", flush=True)
            time.sleep(0.5)
    finally:
        print("shutting the local cluster down", flush=True)
        # Every process of the cluster descends from this supervisor. Ray's shutdown stops the raylets and the GCS,
        # but their agents notice only a minute or so later: the whole tree is stopped here, so `down` and the
        # tests leave nothing running behind them.
        import psutil

        tree = psutil.Process().children(recursive=True)
        try:
            cluster.shutdown()
            _stop_processes(tree)
        finally:
            try:
                if json.loads(state_file.read_text()).get("pid") == os.getpid():
                    state_file.unlink()
            except (OSError, ValueError):
                pass
            try:
                if int(pid_file(state_file).read_text().strip()) == os.getpid():
                    pid_file(state_file).unlink()
            except (OSError, ValueError):
                pass
    return 0


def _raylet_pid(node: Any) -> int:
    from ray._private import ray_constants

    return node.all_processes[ray_constants.PROCESS_TYPE_RAYLET][0].process.pid


class NodeWatch:
    """A simulated node's processes (its workers, agents) die with its raylet, as they would with a real machine.

    Ray's workers notice a dead raylet late or never; so the processes under each raylet are remembered (pid and
    start time) while it lives, and those still running are stopped once it is gone.
    """

    def __init__(self, raylets: dict[str, int]) -> None:
        self.raylets = dict(raylets)
        self.seen: dict[str, dict[int, float]] = {name: {} for name in raylets}

    def check(self) -> dict[str, int]:
        """Remember each live raylet's processes; stop those of dead ones. Returns {node: processes stopped}."""
        import psutil

        stopped: dict[str, int] = {}
        for name, pid in list(self.raylets.items()):
            try:
                raylet = psutil.Process(pid)
                if raylet.status() != psutil.STATUS_ZOMBIE:
                    self.seen[name] = {p.pid: p.create_time() for p in raylet.children(recursive=True)}
                    continue
            except psutil.Error:
                pass
            orphans = []
            for child, created in self.seen.pop(name, {}).items():
                try:
                    process = psutil.Process(child)
                    if process.create_time() == created:
                        orphans.append(process)
                except psutil.Error:
                    continue
            _stop_processes(orphans, timeout=5.0)
            del self.raylets[name]
            stopped[name] = len(orphans)
        return stopped


def _stop_processes(processes: list[Any], timeout: float = 10.0) -> None:
    """SIGTERM what is still alive of these processes, then SIGKILL what did not exit within ``timeout``."""
    import psutil

    alive = [p for p in processes if p.is_running()]
    for process in alive:
        try:
            process.terminate()
        except psutil.NoSuchProcess:
            pass
    _, left = psutil.wait_procs(alive, timeout=timeout)
    for process in left:
        try:
            process.kill()
        except psutil.NoSuchProcess:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reconciler.localcluster")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="supervise a local cluster until SIGTERM")
    run.add_argument("--spec", required=True, type=Path)
    run.add_argument("--state", required=True, type=Path)
    args = parser.parse_args(argv)
    spec = ClusterSpec.from_json(json.loads(args.spec.read_text()))
    return _supervise(spec, args.state.absolute())


if __name__ == "__main__":
    raise SystemExit(main())
