"""How long a model takes to answer again after its engine dies, split into what takes the time.

    flock /tmp/reconciler-ray.lock python bench/recovery.py [--rounds 3]

Starts a one-node local Ray cluster, applies the echo engine and the quickstart's tiny LLaMA (vLLM), one replica
each, and a client that asks the model through the gateway without pause (each request waits as long as the
gateway holds it). Then, per round and model, kills the engine with SIGKILL (the replica process for echo, whose
engine lives in it; vLLM's engine-core process for the tiny LLaMA, as the OOM killer would) and times, from the kill:

- noticed: Serve reports the replica not RUNNING (its health check failed; for vLLM the replica also answers 503
  engine_dead from the first request after the death);
- restarted: a new replica actor exists;
- loaded: the new replica is RUNNING (its engine loaded);
- first answer: a request sent just after the kill (sent again if it was answered 502, as the SDK would) is
  answered 200.

Figures are medians over rounds, in seconds.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gateway import POOL, start_cluster  # noqa: E402 - bench/gateway.py: the same one-node pool and its start

MODELS = """\
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: tiny}}
spec:
  engine: vllm
  source: {source}
  vram: 2Gi
  engineArgs: {{max_model_len: 256}}
---
apiVersion: reconciler/v1
kind: Model
metadata: {{name: echo}}
spec:
  engine: echo
  source: echo
  vram: 1Gi
"""


def replica(cluster, model: str) -> tuple[str, dict]:
    apps = cluster.serve_details()["applications"]
    for name, app in apps.items():
        if (app.get("deployed_app_config") or {}).get("args", {}).get("engine_config", {}).get("model") == model:
            reps = [r for d in app["deployments"].values() for r in d.get("replicas", [])]
            return name, (reps[0] if reps else {})
    raise LookupError(model)


def kill(cluster, model: str) -> None:
    import psutil
    from ray import serve

    app, _ = replica(cluster, model)
    pid = serve.get_app_handle(app).info.remote().result(timeout_s=30)["pid"]
    if model == "echo":
        os.kill(pid, signal.SIGKILL)
        return
    engines = [p for p in psutil.Process(pid).children(recursive=True) if "EngineCore" in p.name()
               or "EngineCore" in " ".join(p.cmdline())]
    os.kill(engines[0].pid, signal.SIGKILL)


def one_round(cluster, base: str, model: str) -> dict[str, float]:
    import openai

    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0, timeout=300)
    client.chat.completions.create(model=model, messages=[{"role": "user", "content": "warm"}], max_tokens=4)
    _, before = replica(cluster, model)
    answered: list[float] = []

    def ask() -> None:
        # A request already written to the replica as it died is answered 502 and not retried by the gateway (it
        # may have run); a client tries again, as the SDK does by default.
        while time.time() < killed + 300:
            try:
                client.chat.completions.create(model=model, messages=[{"role": "user", "content": "again"}],
                                               max_tokens=4)
                answered.append(time.time())
                return
            except openai.APIError:
                time.sleep(0.05)

    killed = time.time()
    kill(cluster, model)
    times: dict[str, float] = {}
    asker = None
    deadline = killed + 300
    while time.time() < deadline and len(times) < 4:
        now = time.time()
        if asker is None and now - killed > 0.05:
            asker = threading.Thread(target=ask, daemon=True)  # a request sent just after the kill
            asker.start()
        _, rep = replica(cluster, model)
        if "noticed" not in times and (rep.get("actor_id") != before.get("actor_id") or rep.get("state") != "RUNNING"):
            times["noticed"] = now - killed
        if "restarted" not in times and rep.get("actor_id") and rep.get("actor_id") != before.get("actor_id"):
            times["restarted"] = now - killed
        if "restarted" in times and "loaded" not in times and rep.get("state") == "RUNNING":
            times["loaded"] = now - killed
        if answered and "first answer" not in times:
            times["first answer"] = answered[0] - killed
        time.sleep(0.1)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from reconciler.adapter import connect, localcluster
    from reconciler.adapter import gateway as gateways
    from reconciler.cli import main as cli
    from reconciler.engines import tinymodel

    work = Path(tempfile.mkdtemp(prefix="bench-recovery-"))
    model_dir = tinymodel.build(work / "tiny-llama")
    specs = work / "specs"
    specs.mkdir()
    (specs / "pool.yaml").write_text(POOL)
    (specs / "models.yaml").write_text(MODELS.format(source=model_dir))
    state_file = work / "cluster.json"
    start_cluster(specs, state_file)
    try:
        if cli(["apply", str(specs), "--yes", "--timeout", "400"]) != 0:
            raise RuntimeError("apply failed")
        with connect() as cluster:
            base = gateways.urls(cluster)[0]
            print("| engine | noticed | replica restarted | engine loaded | first answer |")
            print("|---|---|---|---|---|")
            for model in ("echo", "tiny"):
                rounds = [one_round(cluster, base, model) for _ in range(args.rounds)]
                cells = []
                for step in ("noticed", "restarted", "loaded", "first answer"):
                    got = [r[step] for r in rounds if step in r]
                    cells.append(f"{statistics.median(got):.1f} s" if got else "-")
                print(f"| {'echo' if model == 'echo' else 'vLLM, tiny LLaMA'} | " + " | ".join(cells) + " |",
                      flush=True)
    finally:
        localcluster.stop(state_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
