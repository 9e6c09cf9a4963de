"""The gateway against vLLM's own OpenAI server, side by side in one run, on the quickstart's tiny LLaMA.

    python bench/gateway.py [--rounds 6] [--seconds 3] [--only-serving]

Starts a one-node local Ray cluster, applies a tiny-LLaMA model (vLLM engine) and an echo model through
`reconciler apply`, and starts `python -m vllm.entrypoints.openai.api_server` on the same model directory with the
same engine settings; both stay up for the whole run. Then, in rounds of a fixed length taken in ABBA order
(gateway, vLLM, vLLM, gateway, ...):

- chat completions of exactly 16 tokens (`ignore_eos`), non-streaming, at concurrency 1, 8 and 32: requests/s,
  p50 and p99 latency;
- the same streamed at concurrency 8 and 32: time to first token (first content chunk);
- in those rows, the CPU time per request of the processes on each path (the gateway's and the replica's, against
  vLLM's server): a figure that, unlike requests/s, hardly moves with what else the machine runs;
- the tiny LLaMA straight to its replica's own endpoint (no gateway) against vLLM's server at 8 and 32, whole and
  streamed: what the replica process itself costs (it is a Ray worker hosting a Serve replica besides vLLM's app);
- the echo engine at concurrency 1 and 32, through the gateway and straight to its replica's own endpoint, which
  isolates what the gateway hop costs. (In these rows the "gateway" columns are the path named first.)

Figures are medians over rounds; a ratio is gateway / peer, the median over pairs of rounds taken side by side
(one pair is a few seconds of the same machine load). Targets: >= 0.95 of vLLM's requests/s at concurrency
1, 8 and 32 non-streaming, >= 0.92 streaming at 8 and 32.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

KV_BYTES = 1 << 30
MAX_MODEL_LEN = 512
TOKENS = 16
PROMPT = [{"role": "user", "content": "Write a function that adds two numbers."}]

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: bench}
spec:
  nodes: {selector: {pool: bench}}
  inventory:
    - {node: node-a, gpus: [{name: sim, memory: 24Gi}]}
"""

MODELS = """\
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: tiny}}
spec:
  engine: vllm
  source: {source}
  vram: 2Gi
  engineArgs: {{max_model_len: {max_len}, kv_cache_memory_bytes: {kv}}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: echo}}
spec: {{engine: echo, source: stand-in/echo, vram: 1Gi}}
"""


def start_cluster(specs: Path, state_file: Path) -> None:
    """The one-node local cluster of ``specs``, with this process's environment pointed at it. A SIGTERM ends the
    bench through its ``finally`` (which stops the cluster), not around it."""
    from reconciler.adapter import localcluster
    from reconciler.spec import load_specs

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    state = localcluster.start(localcluster.spec_from_desired(load_specs(specs).desired), state_file, timeout=180)
    os.environ["RAY_ADDRESS"] = state["address"]
    if state.get("auth_token_path"):
        os.environ["RAY_AUTH_TOKEN_PATH"] = state["auth_token_path"]
        os.environ["RAY_AUTH_MODE"] = "token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


async def one(session: aiohttp.ClientSession, url: str, body: dict, stream: bool) -> tuple[float, float | None]:
    started = time.perf_counter()
    first = None
    async with session.post(url, json=body) as response:
        if response.status != 200:
            raise RuntimeError(f"{url} answered {response.status}: {(await response.text())[:300]}")
        if stream:
            async for line in response.content:
                if first is None and line.startswith(b"data: ") and b'"content":"' in line.replace(b" ", b""):
                    if b'"content":""' not in line.replace(b" ", b""):
                        first = time.perf_counter() - started
        else:
            await response.read()
    return time.perf_counter() - started, first


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads (Linux's /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pids_of(*words: str) -> list[int]:
    """Processes whose command line holds every word (Ray names its workers after what they host)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ValueError):
            continue
        if entry.name.isdigit() and all(w in cmdline for w in words):
            found.append(int(entry.name))
    return sorted(found)


async def round_(url: str, body: dict, *, concurrency: int, seconds: float, stream: bool = False,
                 headers: dict[str, str] | None = None, procs: tuple[int, ...] = ()) -> dict:
    """``concurrency`` clients send back to back for ``seconds``; requests/s counts the answers over the time until
    the last one ended (the clients stop starting requests at the deadline, and the ones in flight finish).
    ``procs``: the processes on the request's path, whose CPU time per request is reported (in ms, each); unlike
    requests/s, it hardly depends on what else the machine runs."""
    latencies: list[float] = []
    firsts: list[float] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, headers=headers) as session:
        # A warm connection per client, as a client pool would have, and an engine past its first batch.
        await asyncio.gather(*(one(session, url, body, stream) for _ in range(concurrency)))
        started = time.perf_counter()
        deadline = started + seconds
        cpu_before = [cpu_seconds(pid) for pid in procs]

        async def worker() -> None:
            while time.perf_counter() < deadline:
                latency, first = await one(session, url, body, stream)
                latencies.append(latency)
                if first is not None:
                    firsts.append(first)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
        cpu = [(cpu_seconds(pid) - before) * 1000 / len(latencies) for pid, before in zip(procs, cpu_before)]
    return {
        "cpu": tuple(cpu),
        "rps": len(latencies) / elapsed,
        "p50": statistics.median(latencies) * 1000,
        "p99": percentile(latencies, 0.99) * 1000,
        "ttft": statistics.median(firsts) * 1000 if firsts else None,
    }


def median_of(rounds: list[dict]) -> dict:
    keys = [k for k in rounds[0] if k != "cpu"]
    result = {k: (statistics.median([r[k] for r in rounds]) if rounds[0][k] is not None else None) for k in keys}
    result["cpu"] = tuple(statistics.median(column) for column in zip(*(r["cpu"] for r in rounds)))
    return result


def wait_http(url: str, timeout: float, proc: subprocess.Popen | None = None) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the peer server exited with {proc.returncode}")
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except Exception:
            time.sleep(0.5)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f}s")


def compare(label: str, ours: str, peer: str, body: dict, args, *, concurrency: int, stream: bool = False,
            peer_name: str = "vLLM", headers: dict[str, dict[str, str]] | None = None,
            procs: dict[str, tuple[int, ...]] | None = None) -> dict:
    """Rounds in ABBA order (gateway, peer, peer, gateway, ...), so a drift of the machine's load during the row
    weighs on both sides alike; the ratio is the median of each round pair's ratio, and its range is printed."""
    rounds: dict[str, list[dict]] = {"gateway": [], peer_name: []}
    sides = (("gateway", ours), (peer_name, peer))
    for i in range(args.rounds):
        for name, url in (sides if i % 2 == 0 else sides[::-1]):
            rounds[name].append(asyncio.run(round_(url, body, concurrency=concurrency, seconds=args.seconds,
                                                   stream=stream, headers=(headers or {}).get(name),
                                                   procs=(procs or {}).get(name, ()))))
    ratios = [g["rps"] / p["rps"] for g, p in zip(rounds["gateway"], rounds[peer_name])]
    result = {name: median_of(r) for name, r in rounds.items()}
    g, p = result["gateway"], result[peer_name]
    line = (f"| {label} | {concurrency} | {g['rps']:.1f} | {g['p50']:.1f} | {g['p99']:.1f} | "
            f"{p['rps']:.1f} | {p['p50']:.1f} | {p['p99']:.1f} | {statistics.median(ratios):.2f} "
            f"({min(ratios):.2f}-{max(ratios):.2f}) | {g['p50'] - p['p50']:+.1f} |")
    if stream:
        line += f" TTFT {g['ttft']:.1f} vs {p['ttft']:.1f} ms |"
    if g["cpu"] and p["cpu"]:
        line += (" CPU per request: gateway " + " + replica ".join(f"{ms:.2f}" for ms in g["cpu"]) +
                 f" ms vs {p['cpu'][0]:.2f} ms |")
    print(line, flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=6, help="rounds per side and row (default 6)")
    parser.add_argument("--seconds", type=float, default=3.0, help="length of a round (default 3 s)")
    parser.add_argument("--only-serving", action="store_true",
                        help="only the gateway against vLLM's server (non-streaming and streaming rows)")
    args = parser.parse_args()

    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from reconciler.adapter import localcluster
    from reconciler.adapter import connect
    from reconciler.adapter import gateway as gateways
    from reconciler.cli import main as cli
    from reconciler.engines import tinymodel

    work = Path(tempfile.mkdtemp(prefix="bench-gateway-"))
    model_dir = tinymodel.build(work / "tiny-llama")
    specs = work / "specs"
    specs.mkdir()
    (specs / "pool.yaml").write_text(POOL)
    (specs / "models.yaml").write_text(MODELS.format(source=model_dir, max_len=MAX_MODEL_LEN, kv=KV_BYTES))
    state_file = work / "cluster.json"
    start_cluster(specs, state_file)
    port = free_port()
    peer_env = {**os.environ, "OMP_NUM_THREADS": "1", "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
                "VLLM_CPU_OMP_THREADS_BIND": "nobind", "VLLM_NO_USAGE_STATS": "1"}
    peer = subprocess.Popen(
        [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
         "--served-model-name", "tiny", "--host", "127.0.0.1", "--port", str(port),
         "--max-model-len", str(MAX_MODEL_LEN), "--kv-cache-memory-bytes", str(KV_BYTES), "--enforce-eager",
         "--distributed-executor-backend", "uni", "--disable-uvicorn-access-log", "--disable-log-stats"],
        env=peer_env, stdout=subprocess.DEVNULL, stderr=open(work / "vllm-server.log", "w"),
    )
    try:
        if cli(["apply", str(specs), "--yes", "--timeout", "400"]) != 0:
            raise RuntimeError("apply failed")
        wait_http(f"http://127.0.0.1:{port}/v1/models", 300, peer)
        with connect() as cluster:
            base = gateways.urls(cluster)[0]
            from ray import serve

            apps = cluster.serve_details()["applications"]
            echo_app = next(n for n, a in apps.items() if (a.get("deployed_app_config") or {}).get("args", {})
                            .get("engine_config", {}).get("model") == "echo")
            echo_direct = serve.get_app_handle(echo_app).endpoint.remote().result(timeout_s=60) + "/v1"
            tiny_app = next(n for n, a in apps.items() if (a.get("deployed_app_config") or {}).get("args", {})
                            .get("engine_config", {}).get("model") == "tiny")
            tiny_direct = serve.get_app_handle(tiny_app).endpoint.remote().result(timeout_s=60) + "/v1"
            from reconciler.engines.secret import cluster_secret

            # Replicas' own endpoints take only the gateway's secret: the bench shows it to them, never prints it.
            replica_auth = {"Authorization": f"Bearer {cluster_secret()}"}
        vllm_base = f"http://127.0.0.1:{port}/v1"
        # CPU per request on each path: the gateway's process and the tiny LLaMA replica's, against vLLM's server.
        gateway_pids, replica_pids = pids_of("ray::GatewayActor"), pids_of("ray::ServeReplica", "--tiny--", ":Replica")
        cpu_paths = ({"gateway": (gateway_pids[0], replica_pids[0]), "vLLM": (peer.pid,)}
                     if len(gateway_pids) == 1 and len(replica_pids) == 1 else None)
        chat = {"model": "tiny", "messages": PROMPT, "max_tokens": TOKENS, "ignore_eos": True, "temperature": 0}
        print(f"\n{args.rounds} rounds of {args.seconds:g} s per side, in ABBA order; medians; latency in ms; the ratio "
              "is the median of the round pairs' ratios (their range in brackets).\n")
        print("| path | concurrency | gateway req/s | p50 | p99 | peer req/s | p50 | p99 | ratio (range) | p50 diff |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for c in (1, 8, 32):
            compare("tiny LLaMA, chat, 16 tokens (peer: vLLM's server)", f"{base}/chat/completions",
                    f"{vllm_base}/chat/completions", chat, args, concurrency=c, procs=cpu_paths)
        for c in (8, 32):
            compare("same, streamed (peer: vLLM's server)", f"{base}/chat/completions",
                    f"{vllm_base}/chat/completions", {**chat, "stream": True}, args, concurrency=c, stream=True,
                    procs=cpu_paths)
        if args.only_serving:
            return 0
        for c in (8, 32):  # where the rest goes: the replica's own endpoint (no gateway) against vLLM's server
            compare("tiny LLaMA straight to its replica's endpoint (peer: vLLM's server)",
                    f"{tiny_direct}/chat/completions", f"{vllm_base}/chat/completions", chat, args, concurrency=c,
                    headers={"gateway": replica_auth})
        for c in (8, 32):  # the same for streams: how much of the streamed rows' gap is the replica's, not the hop's
            compare("same, streamed straight to its replica's endpoint (peer: vLLM's server)",
                    f"{tiny_direct}/chat/completions", f"{vllm_base}/chat/completions", {**chat, "stream": True}, args,
                    concurrency=c, stream=True, headers={"gateway": replica_auth})
        echo = {"model": "echo", "messages": PROMPT}
        for c in (1, 32):
            compare("echo (peer: its replica's own endpoint)", f"{base}/chat/completions",
                    f"{echo_direct}/chat/completions", echo, args, concurrency=c, peer_name="direct",
                    headers={"direct": replica_auth})
    finally:
        peer.terminate()
        try:
            peer.wait(30)
        except subprocess.TimeoutExpired:
            peer.kill()
        localcluster.stop(state_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
