"""`reconciler probe [DIR]`: send one real request to every model's endpoint and show what came back.

The smoke test after an apply: it goes through the same HTTP proxy and router a client would use, so a green probe
means the model answers, not merely that Serve says RUNNING.
"""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.cli import _cluster
from reconciler.errors import UserError

PROMPT = "Say hello to the operator."


@dataclass(frozen=True, slots=True)
class Probe:
    model: str
    url: str
    body: dict[str, Any]
    kind: str  # "embeddings" | "chat"


@dataclass(frozen=True, slots=True)
class Outcome:
    probe: Probe
    status: int
    seconds: float
    answer: str


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "probe",
        help="send one real request to every model's endpoint",
        description="Send one OpenAI-compatible request to each model of DIR through the cluster's HTTP proxy "
        "(embeddings for pooling models, a chat completion for the others) and print the answers. "
        "Exits 1 when any model does not answer.",
    )
    parser.add_argument("directory", nargs="?", default="specs", type=Path, metavar="DIR")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, then the local cluster)")
    _cluster.add_connect_timeout_argument(parser)
    parser.add_argument("--url", help="Serve HTTP base URL (default: asked from the cluster)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer (default 60)")
    parser.set_defaults(handler=run)


def probes_for(desired: Any, base_url: str) -> list[Probe]:
    probes = []
    for model in desired.models:
        if model.replicas == 0:
            continue
        route = model.route.rstrip("/")
        args = model.engine_args
        if args.get("runner") == "pooling" or args.get("task") in ("embed", "embedding"):
            probes.append(
                Probe(model.name, f"{base_url}{route}/v1/embeddings", {"model": model.name, "input": PROMPT}, "embeddings")
            )
        else:
            body = {"model": model.name, "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 16}
            probes.append(Probe(model.name, f"{base_url}{route}/v1/chat/completions", body, "chat"))
    return probes


def summarise(kind: str, payload: dict[str, Any]) -> str:
    if kind == "embeddings":
        vector = payload["data"][0]["embedding"]
        head = ", ".join(f"{x:.4f}" for x in vector[:3])
        return f"{len(vector)}-dimensional embedding [{head}, ...]"
    text = payload["choices"][0]["message"]["content"]
    return json.dumps(text, ensure_ascii=False)


def send(probe: Probe, *, timeout: float) -> Outcome:
    request = urllib.request.Request(
        probe.url, data=json.dumps(probe.body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            payload = json.loads(response.read())
            status = response.status
    except urllib.error.HTTPError as exc:
        detail = exc.read().decode(errors="replace")[:300]
        return Outcome(probe, exc.code, time.monotonic() - started, detail)
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        return Outcome(probe, 0, time.monotonic() - started, f"no answer: {exc}")
    try:
        answer = summarise(probe.kind, payload)
    except (KeyError, IndexError, TypeError):
        return Outcome(probe, 0, time.monotonic() - started, f"unexpected answer: {json.dumps(payload)[:300]}")
    return Outcome(probe, status, time.monotonic() - started, answer)


def run(args: argparse.Namespace) -> int:
    from reconciler.spec import load_specs

    result = load_specs(args.directory)
    if not result.ok:
        for diagnostic in result.diagnostics:
            print(diagnostic)
        raise UserError(f"{args.directory}: the specs have errors; fix them first (`reconciler validate`)")
    base_url = args.url
    if base_url is None:
        from reconciler.adapter import connect

        with connect(args.address, connect_timeout=args.connect_timeout) as cluster:
            cluster.serve_details()
            base_url = cluster.http_url
        if base_url is None:
            raise UserError("the cluster runs no Serve HTTP proxy yet: apply the specs first (`reconciler apply`)")
    failed = 0
    for probe in probes_for(result.desired, base_url.rstrip("/")):
        outcome = send(probe, timeout=args.timeout)
        ok = outcome.status == 200
        failed += not ok
        mark = "ok  " if ok else "FAIL"
        print(f"{mark} {probe.model:<20} POST {probe.url}  {outcome.status or '-'} in {outcome.seconds:.2f}s")
        print(f"     {outcome.answer}")
    if failed:
        print(f"{failed} model(s) did not answer.")
        return 1
    return 0
