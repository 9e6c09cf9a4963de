"""Latency of `reconciler watch` on a local Ray cluster of 3 simulated GPU nodes. Prints the figures.

    python bench/watch.py                      # starts its own local cluster (reconciler.adapter.localcluster), stops it
    python bench/watch.py --address ADDR       # or uses a running one shaped like the bench's specs

Targets (issue 5):
- saving a spec file -> first action starting (the apply event, i.e. the Serve config being submitted): < 1 s;
- steady-state cycle (load + observe + plan, nothing to do) at 50 replicas on 3 nodes: < 200 ms;
- a replica's Serve application deleted by hand -> running again through watch: < drift interval + 5 s;
- a replica's process killed -> running again (Serve restarts it; watch only checks): < drift interval + 5 s.

`reconciler watch` runs as its own process, as in production, writing its events to a file that the benchmark reads
back; latencies are the events' own timestamps against the benchmark's clock (one host). The benchmark observes the
cluster through the adapter like `reconciler observe` does.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from reconciler.observed import ReplicaState
from reconciler.spec import load_specs

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: bench}
spec:
  nodes:
    selector: {pool: bench}
  inventory:
    - {node: node-a, gpus: [{name: H100, memory: 80Gi}, {name: H100, memory: 80Gi}]}
    - {node: node-b, gpus: [{name: H100, memory: 80Gi}, {name: H100, memory: 80Gi}]}
    - {node: node-c, gpus: [{name: L40S, memory: 48Gi}, {name: L40S, memory: 48Gi}]}
"""

MODEL = """\
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: {name}}}
spec: {{engine: echo, source: bench/{name}, vram: {vram}, replicas: {replicas}}}
"""


def write_models(directory: Path, counts: list[int]) -> None:
    text = "".join(MODEL.format(name=f"m{i}", vram="4Gi", replicas=n) for i, n in enumerate(counts))
    temp = directory / ".models.yaml.tmp"
    temp.write_text(text)
    temp.replace(directory / "models.yaml")  # as an editor saves: write a temp file, rename it into place


def parse_time(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


class EventFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.pending: list[dict] = []

    def read_new(self) -> list[dict]:
        if not self.path.exists():
            return []
        with self.path.open() as f:
            f.seek(self.offset)
            chunk = f.read()
        complete = chunk[: chunk.rfind("\n") + 1]
        self.offset += len(complete.encode())
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def wait_for(self, predicate, timeout: float) -> dict:
        """The next event (in file order) that matches; the ones before it are consumed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.pending.extend(self.read_new())
            while self.pending:
                event = self.pending.pop(0)
                if predicate(event):
                    return event
            time.sleep(0.02)
        raise TimeoutError("the expected event did not come")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--address", help="a running Ray cluster (default: start a local one for the benchmark)")
    parser.add_argument("--replicas", type=int, default=50, help="replicas in the steady state (default: 50)")
    parser.add_argument("--interval", type=float, default=5.0, help="watch's drift interval (default: 5)")
    parser.add_argument("--debounce", type=float, default=0.3, help="watch's debounce (default: 0.3, the CLI's)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per figure (default: 5)")
    parser.add_argument("--watch-log", help="keep the watcher's human log in this file (default: a temp file)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="reconciler-bench-") as tmp:
        root = Path(tmp)
        specs = root / "specs"
        specs.mkdir()
        (specs / "pool.yaml").write_text(POOL)
        models = 5
        counts = [args.replicas // models + (1 if i < args.replicas % models else 0) for i in range(models)]
        write_models(specs, counts)
        desired = load_specs(specs).desired
        assert desired is not None

        address = args.address
        state_file = root / "cluster.json"
        if address is None:
            from reconciler.adapter import localcluster

            print("starting a local cluster of 3 simulated GPU nodes ...", flush=True)
            t0 = time.perf_counter()
            state = localcluster.start(localcluster.spec_from_desired(desired), state_file, timeout=180)
            address = state["address"]
            os.environ["RAY_AUTH_TOKEN_PATH"] = state["auth_token_path"]  # for the watcher and our observations
            print(f"  ready in {time.perf_counter() - t0:.1f} s at {address}", flush=True)
        try:
            return bench(args, specs=specs, counts=counts, address=address, events_path=root / "events.jsonl")
        finally:
            if _cluster is not None:
                _cluster.close()
            if args.address is None:
                from reconciler.adapter import localcluster

                localcluster.stop(state_file)


def bench(args: argparse.Namespace, *, specs: Path, counts: list[int], address: str, events_path: Path) -> int:
    log_path = Path(args.watch_log) if args.watch_log else events_path.with_name("watch.log")
    log = log_path.open("w")
    watcher = subprocess.Popen(
        [sys.executable, "-m", "reconciler", "watch", str(specs), "--address", address, "--yes",
         "--interval", f"{args.interval:g}", "--debounce", f"{args.debounce:g}", "--events", str(events_path)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
    )
    events = EventFile(events_path)
    try:
        t0 = time.monotonic()
        events.wait_for(lambda e: e["event"] == "cycle" and e.get("inSync"), timeout=1800)
        print(f"converged on {sum(counts)} replicas in {time.monotonic() - t0:.1f} s", flush=True)

        steady, stages = [], {"load": [], "observe": [], "plan": []}
        while len(steady) < args.rounds:
            e = events.wait_for(lambda e: e["event"] == "cycle", timeout=args.interval * 3 + 60)
            if e["cause"] == "drift-timer" and e.get("inSync"):
                steady.append(e["seconds"] * 1000)
                for stage, values in stages.items():
                    values.append(e["stagesMs"].get(stage, 0.0))
        print(f"steady-state cycle (load + observe + plan, {sum(counts)} replicas, 3 nodes): median "
              f"{statistics.median(steady):.0f} ms, max {max(steady):.0f} ms over {len(steady)} cycles "
              f"(target < 200 ms)\n  medians: "
              + ", ".join(f"{stage} {statistics.median(v):.0f} ms" for stage, v in stages.items()), flush=True)

        save_to_action = []
        for i in range(args.rounds):
            changed = list(counts)
            changed[0] += 1 if i % 2 == 0 else -1  # one create, then one delete: every save needs an action
            wrote = time.time()
            write_models(specs, changed)
            apply = events.wait_for(lambda e: e["event"] == "apply", timeout=60)
            save_to_action.append((parse_time(apply["time"]) - wrote) * 1000)
            events.wait_for(lambda e: e["event"] == "cycle", timeout=600)
            write_models(specs, counts)
            events.wait_for(lambda e: e["event"] == "applied", timeout=600)
            events.wait_for(lambda e: e["event"] == "cycle", timeout=600)
        print(f"spec saved -> first action starting: median {statistics.median(save_to_action):.0f} ms, max "
              f"{max(save_to_action):.0f} ms over {len(save_to_action)} saves (target < 1000 ms; debounce "
              f"{args.debounce * 1000:.0f} ms)", flush=True)

        heal, detect, applying = [], [], []
        for i in range(args.rounds):
            model = f"m{i % len(counts)}"
            before = replicas(address, specs)
            app = before[(model, 0)].app
            delete_app_by_hand(address, app)
            gone = time.time()
            while not gone_from(address, specs, (model, 0), app):
                time.sleep(0.05)
            while True:
                replica = replicas(address, specs).get((model, 0))
                if replica is not None and replica.state is ReplicaState.RUNNING:
                    break
                time.sleep(0.1)
            heal.append(time.time() - gone)
            drift = events.wait_for(lambda e: e["event"] == "drift", timeout=60)
            applied = events.wait_for(lambda e: e["event"] == "applied", timeout=600)
            detect.append(parse_time(drift["time"]) - gone)
            applying.append(applied["seconds"])
            events.wait_for(lambda e: e["event"] == "cycle" and e.get("inSync"), timeout=600)
        print(f"application deleted by hand -> replica running again: median {statistics.median(heal):.1f} s, "
              f"max {max(heal):.1f} s over {len(heal)} (target < interval {args.interval:g} s + 5 s)\n"
              f"  of which: drift noticed after median {statistics.median(detect):.1f} s, the apply "
              f"(Serve starting the replica) took median {statistics.median(applying):.1f} s", flush=True)

        back = []
        for i in range(args.rounds):
            app = replicas(address, specs)[(f"m{i % len(counts)}", 1)].app
            pid = replica_pid(address, app)
            os.kill(pid, signal.SIGKILL)  # the replica's worker process, started by this benchmark's cluster
            killed = time.time()
            while replica_pid(address, app) in (pid, None):
                time.sleep(0.05)
            back.append(time.time() - killed)
            events.wait_for(lambda e: e["event"] == "cycle" and e.get("inSync"), timeout=600)
        print(f"replica process killed (SIGKILL) -> running again: median {statistics.median(back):.1f} s, max "
              f"{max(back):.1f} s over {len(back)} (target < interval {args.interval:g} s + 5 s)", flush=True)
    except BaseException:
        log.flush()
        tail = log_path.read_text().splitlines()[-40:]
        print("the watcher's log ended with:\n  " + "\n  ".join(tail), file=sys.stderr)
        raise
    finally:
        watcher.send_signal(signal.SIGTERM)
        watcher.wait(120)
        log.close()
    return 0


_cluster = None


def _connected(address: str):
    global _cluster
    if _cluster is None:
        from reconciler import adapter

        _cluster = adapter.connect(address)
    return _cluster


def replicas(address: str, specs: Path) -> dict:
    observed = _connected(address).observe(load_specs(specs).desired)
    return {r.key: r for r in observed.replicas}


def replica_pid(address: str, app: str) -> int | None:
    from reconciler.adapter.observation import running_pid

    return running_pid(_connected(address).serve_details(), app)


def gone_from(address: str, specs: Path, key: tuple[str, int], app: str) -> bool:
    """True once the deleted application is no longer observed (or was already re-created under a new state)."""
    replica = replicas(address, specs).get(key)
    return replica is None or replica.app != app or replica.state is not ReplicaState.RUNNING


def delete_app_by_hand(address: str, app: str) -> None:
    from reconciler.adapter.observation import foreign_configs, our_configs
    from reconciler.executor import serveconfig

    cluster = _connected(address)
    details = cluster.serve_details()
    ours = {n: c for n, c in our_configs(details).items() if n != app}
    cluster.put_serve_config(serveconfig.whole_config(details, foreign_configs(details), ours))


if __name__ == "__main__":
    sys.exit(main())
