"""On-demand models: a cold start from the first request to its first byte, and the reaction to a load step.

    flock /tmp/reconciler-ray.lock python bench/ondemand.py [--rounds 3]

Starts a one-node local Ray cluster (one simulated 24 GiB GPU) and `reconciler watch` on two on-demand models
(`replicas: {min: 0, ...}`): the echo engine (no model to load) and the quickstart's tiny LLaMA on vLLM. Then:

1. **Cold start**, per model and round: wait until the model is unloaded (idleAfter), send one chat completion
   through the gateway, and time its first byte. The time is split with the watcher's events and the replica's own
   report into
   - detection: request sent -> the cycle that loads the model starts (the gateway wakes the watcher);
   - planning: that cycle's load + observe + plan;
   - issuing: the plan decided -> the executor starts the apply;
   - Serve start: the apply started -> the first byte, less the engine's load (the Serve config PUT, the actor
     scheduled and started, the route table reaching the gateway, the held request forwarded and answered);
   - engine load: the replica's engine constructor, as the replica measured it.
   The reconciler's own share is detection + planning + issuing. Target (issue 11): under 1 s.
2. **Woken together**: both echo models unloaded, one request to each at the same instant; the slower one's time
   to its first byte against the cold start of echo alone measured just before, round by round (target: within
   1.3x), and how many applies started them (1: planned in one cycle, started in one Serve config).
   Serve's own floor: at the end, with the watcher stopped, one and then two replica applications of the echo engine
   put in one declarative config straight to Serve, each timed until it runs (no reconciler, no gateway).
3. **Load step** on the echo model (targetInFlight 4, scaleUpAfter 2s, max 4, each answer takes 0.2 s): from 1 to
   32 concurrent clients; the time until the watcher decides to scale up (scaleUpAfter is part of it by design:
   sustained load), until the new replicas run, and the replicas it settles at.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from gateway import POOL, PROMPT  # bench/gateway.py: the same one-node pool and prompt
from watch import (  # bench/watch.py: the watcher's event log, read in order
    EventFile,
    parse_time,
)

from reconciler.spec import load_specs

IDLE_S = 4
MODELS = """\
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: echo}}
spec:
  engine: echo
  source: stand-in/echo
  vram: 1Gi
  replicas: {{min: 0, max: 4}}
  scaling: {{targetInFlight: 4, scaleUpAfter: 2s, scaleDownAfter: 10s, idleAfter: {idle}s, loadTimeout: 5m}}
  engineArgs: {{answer_delay_s: {delay}}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: echo-b}}
spec:
  engine: echo
  source: stand-in/echo-b
  vram: 1Gi
  replicas: {{min: 0, max: 1}}
  scaling: {{idleAfter: {idle}s, loadTimeout: 5m}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: tiny}}
spec:
  engine: vllm
  source: {source}
  vram: 2Gi
  replicas: {{min: 0, max: 1}}
  scaling: {{idleAfter: {idle}s, loadTimeout: 10m}}
  engineArgs: {{max_model_len: 512, kv_cache_memory_bytes: 268435456, dtype: float32}}
"""



def skip_past(events: EventFile) -> None:
    """Consume what the watcher has logged so far: the next wait sees only what comes after."""
    events.read_new()
    events.pending.clear()


def replicas_running(address: str, model: str) -> int:
    from reconciler import adapter
    from reconciler.observed import ReplicaState

    with adapter.connect(address) as cluster:
        details = cluster.serve_details()
    from reconciler.adapter.observation import our_configs

    count = 0
    for name, config in our_configs(details).items():
        args = config.get("args") or {}
        if args.get("kind") != "replica" or (args.get("engine_config") or {}).get("model") != model:
            continue
        app = (details.get("applications") or {}).get(name) or {}
        replicas = [r for d in (app.get("deployments") or {}).values() for r in d.get("replicas", [])]
        count += sum(1 for r in replicas if r.get("state") == str(ReplicaState.RUNNING).upper())
    return count


def engine_load_seconds(address: str, model: str) -> float:
    """What the newest replica of `model` says its engine took to load."""
    from ray import serve

    from reconciler import adapter
    from reconciler.adapter.observation import our_configs

    with adapter.connect(address) as cluster:
        cluster._driver()
        apps = [n for n, c in our_configs(cluster.serve_details()).items()
                if (c.get("args") or {}).get("kind") == "replica"
                and ((c.get("args") or {}).get("engine_config") or {}).get("model") == model]
        infos = [serve.get_app_handle(a).info.remote().result(timeout_s=30) for a in apps]
    return max(i["engine_load_seconds"] for i in infos)


def first_byte(url: str, model: str) -> tuple[float, float]:
    """(sent, first byte) epoch seconds of one streamed chat completion through the gateway."""
    body = {"model": model, "messages": PROMPT, "max_tokens": 8, "stream": True}
    sent = time.time()
    with requests.post(f"{url}/chat/completions", json=body, stream=True, timeout=900) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(chunk_size=None):
            if chunk:
                first = time.time()
                break
        for _ in answer.iter_content(chunk_size=None):
            pass
    return sent, first


def cold_start(url: str, address: str, events: EventFile, model: str) -> dict[str, float]:
    deadline = time.monotonic() + 300
    while replicas_running(address, model) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # the unload's apply has finished and the watcher is idle again
    skip_past(events)
    sent, first = first_byte(url, model)
    # In the order the watcher logs them; the answer may come before the apply that placed the replica ends.
    events.wait_for(lambda e: e["event"] == "scale" and e["model"] == model and e["rule"] == "wake", timeout=600)
    apply = events.wait_for(lambda e: e["event"] == "apply", timeout=600)
    applied = events.wait_for(lambda e: e["event"] == "applied", timeout=600)
    cycle = events.wait_for(lambda e: e["event"] == "cycle", timeout=600)
    stages = cycle["stagesMs"]
    cycle_start = parse_time(cycle["time"]) - cycle["seconds"]
    planning = (stages.get("load", 0) + stages.get("observe", 0) + stages.get("plan", 0)) / 1000
    load = engine_load_seconds(address, model)
    out = {
        "detection": cycle_start - sent,
        "planning": planning,
        "issuing": parse_time(apply["time"]) - (cycle_start + planning),
        # Serve's share: the config PUT, the actor scheduled and started, the router, the route table reaching the
        # gateway and the held request forwarded; the engine's load, as the replica measured it, taken out
        "serve start": first - parse_time(apply["time"]) - load,
        "engine load": load,
        "first byte": first - sent,
        "apply ends": parse_time(applied["time"]) - sent,  # the executor also waits for routers after the answer
    }
    out["reconciler"] = out["detection"] + out["planning"] + out["issuing"]
    return out


def together(url: str, address: str, events: EventFile,
             models: tuple[str, ...] = ("echo", "echo-b")) -> tuple[list[float], int]:
    """Every model unloaded, then one request to each at the same instant: each one's seconds to its first byte, and
    how many applies started them."""
    deadline = time.monotonic() + 300
    while any(replicas_running(address, m) for m in models) and time.monotonic() < deadline:
        time.sleep(0.5)
    time.sleep(1.0)  # the unload's apply has finished and the watcher is idle again
    skip_past(events)
    start = threading.Barrier(len(models))
    took: dict[str, float] = {}

    def one(model: str) -> None:
        start.wait()
        sent, first = first_byte(url, model)
        took[model] = first - sent

    threads = [threading.Thread(target=one, args=(m,)) for m in models]
    for t in threads:
        t.start()
    for t in threads:
        t.join(900)
    started: set[str] = set()
    applies = 0
    while started != set(models):
        apply = events.wait_for(lambda e: e["event"] == "apply", timeout=600)
        creates = {a["model"] for a in apply["actions"] if a["action"] == "create"} & set(models)
        applies += bool(creates)
        started |= creates
    return [took[m] for m in models], applies


FLOOR_TIMEOUT_S = 300  # an echo replica starts in seconds: past this, Serve is stuck and the bench says so


def serve_floor(address: str, desired, count: int) -> float:
    """Seconds from one PUT of ``count`` new echo replica applications straight to Serve until all run; they are
    removed after. Foreign to the reconciler (not marked as its own), on the pool's first GPU."""
    from reconciler.adapter.observation import foreign_configs, our_configs
    from reconciler.executor import serveconfig
    from reconciler.plan import Location
    from reconciler.planner.runtime import model_runtime

    node = desired.pools[0].inventory[0].node
    runtime = model_runtime(desired.model("echo-b"))
    apps = {}
    for k in range(count):
        config = serveconfig.replica_app(model=runtime, replica=k, location=Location(node, (0,)),
                                         gpu_memory=runtime.vram)
        config = {**config, "name": f"floor-{k}", "args": {**config["args"], "managed_by": "bench"}}
        apps[config["name"]] = config
    from reconciler import adapter

    with adapter.connect(address) as cluster:
        details = cluster.serve_details()
        base = [c for c in foreign_configs(details) if c["name"] not in apps]
        ours = our_configs(details)
        put = time.monotonic()
        cluster.put_serve_config(serveconfig.whole_config(details, base + list(apps.values()), ours))
        try:
            while True:
                states = cluster.serve_details().get("applications") or {}
                if all((states.get(n) or {}).get("status") == "RUNNING" for n in apps):
                    return time.monotonic() - put
                if time.monotonic() - put > FLOOR_TIMEOUT_S:
                    raise TimeoutError(f"Serve did not run {count} echo replica(s) within {FLOOR_TIMEOUT_S} s")
                time.sleep(0.05)
        finally:
            cluster.put_serve_config(serveconfig.whole_config(details, base, ours))
            gone_by = time.monotonic() + FLOOR_TIMEOUT_S
            while set(cluster.serve_details().get("applications") or {}) & set(apps) and time.monotonic() < gone_by:
                time.sleep(0.2)


def load_step(url: str, address: str, events: EventFile, *, clients: int = 32, hold_s: float = 25) -> dict[str, float]:
    """One client for a while, then `clients`: when the watcher decides, when replicas run, where it settles."""
    stop = threading.Event()
    errors: list[str] = []

    def client() -> None:
        session = requests.Session()
        while not stop.is_set():
            try:
                session.post(f"{url}/chat/completions", json={"model": "echo", "messages": PROMPT},
                             timeout=300).raise_for_status()
            except Exception as exc:  # noqa: BLE001 - counted and reported
                errors.append(repr(exc))

    one = threading.Thread(target=client, daemon=True)
    one.start()
    events.wait_for(lambda e: e["event"] == "scale" and e["model"] == "echo" and e["rule"] == "wake", timeout=300)
    deadline = time.monotonic() + 120
    while replicas_running(address, "echo") < 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(3)  # steady at one client
    skip_past(events)
    step = time.time()
    many = [threading.Thread(target=client, daemon=True) for _ in range(clients - 1)]
    for t in many:
        t.start()
    up = events.wait_for(lambda e: e["event"] == "scale" and e["rule"] == "up",
                         timeout=120)
    running_at = None
    most = 1
    end = time.monotonic() + hold_s
    while time.monotonic() < end:
        n = replicas_running(address, "echo")
        most = max(most, n)
        if running_at is None and n >= up["wanted"]:
            running_at = time.time()
        time.sleep(0.2)
    stop.set()
    for t in [one, *many]:
        t.join(timeout=300)
    return {"decided": parse_time(up["time"]) - step, "running": (running_at or float("nan")) - step,
            "wanted": up["wanted"], "settled": most, "errors": len(errors)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="cold starts per model (default: 3)")
    parser.add_argument("--skip-vllm", action="store_true", help="only the echo engine")
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    with tempfile.TemporaryDirectory(prefix="reconciler-ondemand-") as tmp:
        root = Path(tmp)
        from reconciler.engines import tinymodel

        source = tinymodel.build(root / "tiny-llama")
        specs = root / "specs"
        specs.mkdir()
        (specs / "pool.yaml").write_text(POOL)
        (specs / "models.yaml").write_text(MODELS.format(idle=IDLE_S, delay=0.2, source=source))
        desired = load_specs(specs).desired
        assert desired is not None
        from reconciler.adapter import localcluster

        state_file = root / "cluster.json"
        print("starting a one-node local cluster ...", flush=True)
        state = localcluster.start(localcluster.spec_from_desired(desired), state_file, timeout=180)
        address = state["address"]
        os.environ["RAY_AUTH_TOKEN_PATH"] = state["auth_token_path"]
        events_path = root / "events.jsonl"
        watcher = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "watch", str(specs), "--address", address, "--yes", "--interval",
             "5", "--poll", "0.5", "--events", str(events_path)],
            stdout=(root / "watch.log").open("w"), stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        try:
            events = EventFile(events_path)
            events.wait_for(lambda e: e["event"] == "cycle", timeout=300)
            from reconciler import adapter
            from reconciler.adapter import gateway as gateways

            with adapter.connect(address) as cluster:
                url = gateways.wait_url(cluster)
            print(f"gateway at {url}; {args.rounds} cold starts per model", flush=True)
            for model in ["echo"] + ([] if args.skip_vllm else ["tiny"]):
                rounds = [cold_start(url, address, events, model) for _ in range(args.rounds)]
                keys = list(rounds[0])
                print(f"\ncold start of {model} (median of {len(rounds)}, seconds):")
                for key in keys:
                    values = [r[key] for r in rounds]
                    print(f"  {key:<12} {statistics.median(values):7.3f}   (all: "
                          + ", ".join(f"{v:.3f}" for v in values) + ")")
                if model == "echo":
                    # Round by round: echo alone, then both, so that the load of a shared machine weighs on both.
                    alone, pairs, applies = [], [], []
                    for _ in range(args.rounds):
                        alone.append(cold_start(url, address, events, "echo")["first byte"])
                        took, n = together(url, address, events)
                        pairs.append(took)
                        applies.append(n)
                    ratios = [max(pair) / one for pair, one in zip(pairs, alone)]
                    print(f"\necho and echo-b woken at the same instant (median of {len(pairs)}): the slower first "
                          f"byte after {statistics.median(max(p) for p in pairs):.3f} s against "
                          f"{statistics.median(alone):.3f} s for echo alone just before: "
                          f"{statistics.median(ratios):.2f}x (target 1.3x); started by "
                          + "/".join(str(n) for n in applies) + " apply per round; all (echo/echo-b vs alone): "
                          + ", ".join(f"{p[0]:.3f}/{p[1]:.3f} vs {one:.3f}" for p, one in zip(pairs, alone)))
            time.sleep(IDLE_S + 2)
            step = load_step(url, address, events)
            print(f"\nload step on echo, 1 -> 32 clients (targetInFlight 4, scaleUpAfter 2s, max 4): scale-up "
                  f"decided after {step['decided']:.2f} s, {step['wanted']} replicas running after "
                  f"{step['running']:.2f} s, settled at {step['settled']}, {step['errors']} failed requests")
            watcher.terminate()
            watcher.wait(timeout=120)
            floors = [(serve_floor(address, desired, 1), serve_floor(address, desired, 2)) for _ in range(args.rounds)]
            one, two = statistics.median(f[0] for f in floors), statistics.median(f[1] for f in floors)
            print(f"\nServe alone, echo replica applications put in one config until running (median of "
                  f"{len(floors)}): one {one:.3f} s, two {two:.3f} s, {two / one:.2f}x; all: "
                  + ", ".join(f"{a:.3f}/{b:.3f}" for a, b in floors))
        finally:
            watcher.terminate()
            watcher.wait(timeout=120)
            localcluster.stop(state_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
