"""`reconciler probe [DIR]`: send one real request to every model through the OpenAI base URL and show what came back.

The smoke test after an apply: it goes through the gateway a client would use (or, with ``--routes``, through each
model's own route on Serve's HTTP proxy), so a green probe means the model answers, not merely that Serve says
RUNNING.
"""

from __future__ import annotations

import argparse
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from reconciler.cli import _cluster
from reconciler.errors import UserError

PROMPT = "What is a GPU? Answer in one sentence."
# Enough for a small chat model's one-sentence answer; greedy, so the same model answers the same way every time.
CHAT_MAX_TOKENS = 48


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
        description="Send one OpenAI-compatible request to each model of DIR through the OpenAI base URL "
        "(embeddings for pooling models, a chat completion for the others) and print the answers. "
        "Exits 1 when any model does not answer.",
    )
    parser.add_argument("directory", nargs="?", default="specs", type=Path, metavar="DIR")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, then the local cluster)")
    _cluster.add_connect_timeout_argument(parser)
    parser.add_argument("--url", help="the OpenAI base URL ending in /v1 (default: the gateway's, asked from the "
                        "cluster); with --routes, Serve's HTTP base URL")
    parser.add_argument("--routes", action="store_true",
                        help="go through each model's own route on Serve's HTTP proxy instead of the base URL")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY"),
                        help="the key to send when the Gateway spec requires keys (default: $OPENAI_API_KEY)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for each answer (default 60)")
    parser.set_defaults(handler=run)


def probes_for(desired: Any, base_url: str, *, routes: bool = False) -> list[Probe]:
    """One probe per model with replicas; to ``{base_url}/...`` (the OpenAI base URL), or with ``routes`` to each
    model's own route under ``base_url`` (Serve's HTTP proxy)."""
    probes = []
    for model in desired.models:
        if model.replicas == 0:
            continue
        route = (model.route.rstrip("/") + "/v1") if routes else ""
        args = model.engine_args
        if args.get("runner") == "pooling" or args.get("task") in ("embed", "embedding"):
            probes.append(
                Probe(model.name, f"{base_url}{route}/embeddings", {"model": model.name, "input": PROMPT}, "embeddings")
            )
        else:
            body = {"model": model.name, "messages": [{"role": "user", "content": PROMPT}],
                    "max_tokens": CHAT_MAX_TOKENS, "temperature": 0}
            probes.append(Probe(model.name, f"{base_url}{route}/chat/completions", body, "chat"))
    return probes


def summarise(kind: str, payload: dict[str, Any]) -> str:
    if kind == "embeddings":
        vector = payload["data"][0]["embedding"]
        head = ", ".join(f"{x:.4f}" for x in vector[:3])
        return f"{len(vector)}-dimensional embedding [{head}, ...]"
    text = payload["choices"][0]["message"]["content"]
    return json.dumps(text, ensure_ascii=False)


def send(probe: Probe, *, timeout: float, api_key: str | None = None) -> Outcome:
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    request = urllib.request.Request(probe.url, data=json.dumps(probe.body).encode(), headers=headers, method="POST")
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
        from reconciler.adapter import gateway as gateways

        with connect(args.address, connect_timeout=args.connect_timeout) as cluster:
            cluster.serve_details()
            urls = [] if args.routes else gateways.urls(cluster)
            base_url = urls[0] if urls else cluster.http_url if args.routes else None
        if base_url is None:
            what = "Serve HTTP proxy" if args.routes else "gateway"
            raise UserError(f"the cluster runs no {what} yet: apply the specs first (`reconciler apply`)")
    failed = 0
    for probe in probes_for(result.desired, base_url.rstrip("/"), routes=args.routes):
        outcome = send(probe, timeout=args.timeout, api_key=args.api_key)
        ok = outcome.status == 200
        failed += not ok
        mark = "ok  " if ok else "FAIL"
        print(f"{mark} {probe.model:<20} POST {probe.url}  {outcome.status or '-'} in {outcome.seconds:.2f}s")
        print(f"     {outcome.answer}")
    if failed:
        print(f"{failed} model(s) did not answer.")
        return 1
    return 0
