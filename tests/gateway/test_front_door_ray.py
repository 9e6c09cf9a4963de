"""The front door on the session's real Ray cluster: with keys in a Gateway spec, no listening port reconciler opens
answers for a model without a valid key (the gateway, Serve's per-model routes, each replica's own endpoint and its
channel), and the real gateway stands up to slow headers and oversized bodies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import socket
import time

import httpx
import openai
import pytest

from reconciler.cli import main as cli
from tests.gateway.test_gateway_ray import write_specs

pytestmark = pytest.mark.ray

ECHO_KEY = "sk-rc-front-door-echo"
ALL_KEY = "sk-rc-front-door-all"
MODELS = {"echo": {"vram": "1Gi", "replicas": 1}, "tiny-chat": {"vram": "1Gi", "replicas": 1}}


@pytest.fixture(scope="module")
def front(ray_cluster, tmp_path_factory):
    from reconciler.adapter import connect
    from reconciler.adapter import gateway as gateways

    specs = tmp_path_factory.mktemp("front-door-specs")
    write_specs(specs, MODELS)
    gateway = {"apiVersion": "reconciler/v1", "kind": "Gateway", "metadata": {"name": "front"},
               "spec": {"keys": [{"name": "echo-only", "sha256": hashlib.sha256(ECHO_KEY.encode()).hexdigest(),
                                  "models": ["echo"]},
                                 {"name": "all", "sha256": hashlib.sha256(ALL_KEY.encode()).hexdigest()}]}}
    (specs / "gateway.yaml").write_text(json.dumps(gateway))
    assert cli(["apply", str(specs), "--yes", "--timeout", "120"]) == 0
    cluster = connect(ray_cluster.address)
    try:
        yield {"url": gateways.urls(cluster)[0], "cluster": cluster, "serve": ray_cluster.http_url.rstrip("/")}
    finally:
        (specs / "gateway.yaml").unlink()
        write_specs(specs, {})
        assert cli(["apply", str(specs), "--yes"]) == 0
        cluster.close()


def replica_endpoints(cluster, method: str = "endpoint") -> list[str]:
    cluster._driver()
    from ray import serve

    apps = cluster.serve_details()["applications"]
    replicas = [name for name, app in apps.items() if (app.get("deployed_app_config") or {}).get("args", {})
                .get("kind") == "replica"]
    assert replicas
    return [getattr(serve.get_app_handle(name), method).remote().result(timeout_s=10) for name in replicas]


def channel_status(url: str, path: str, headers: dict[str, str]) -> int:
    """The status a replica's channel answers a request with (``gateway.channel``, as the gateway sends it)."""
    from reconciler.gateway.channel import ChannelPool

    async def ask() -> int:
        pool = ChannelPool()
        try:
            exchange = await pool.send(url, path, {"content-type": "application/json", **headers},
                                       json.dumps(CHAT).encode(), connect_timeout=10)
            await asyncio.wait_for(exchange.answered(), 10)
            return exchange.status
        finally:
            pool.close()

    return asyncio.run(ask())


CHAT = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}]}


def test_no_door_answers_for_a_model_without_a_valid_key(front):
    bearer = {"Authorization": f"Bearer {ECHO_KEY}"}
    # The gateway.
    assert httpx.post(f"{front['url']}/chat/completions", json=CHAT, timeout=10).status_code == 401
    assert httpx.post(f"{front['url']}/chat/completions", json=CHAT, headers=bearer, timeout=10).status_code == 403
    # Serve's per-model routes: the same keys and scopes.
    route = f"{front['serve']}/tiny-chat/v1/chat/completions"
    assert httpx.post(route, json=CHAT, timeout=10).status_code == 401
    assert httpx.post(route, json=CHAT, headers=bearer, timeout=10).status_code == 403
    assert httpx.get(f"{front['serve']}/tiny-chat/replicas", timeout=10).status_code == 401
    mine = httpx.post(f"{front['serve']}/echo/v1/chat/completions", json={**CHAT, "model": "echo"}, headers=bearer,
                      timeout=10)
    assert mine.status_code == 200
    # Each replica's own endpoint, on the node's address: the gateway's secret only, never a user's key.
    for url in replica_endpoints(front["cluster"]):
        for headers in ({}, bearer, {"Authorization": f"Bearer {ALL_KEY}"}):
            refused = httpx.get(f"{url}/v1/models", headers=headers, timeout=10)
            assert refused.status_code == 401, url
            assert httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers=headers, timeout=10).status_code == 401
    # Each replica's channel (the gateway's many requests on one connection): the same secret only.
    for url in replica_endpoints(front["cluster"], "channel"):
        assert url.startswith("chan://")
        for headers in ({}, bearer, {"Authorization": f"Bearer {ALL_KEY}"}):
            assert channel_status(url, "/v1/chat/completions", headers) == 401, url
            assert channel_status(url, "/v1/models", headers) == 401, url
        host, port = url.removeprefix("chan://").rsplit(":", 1)
        with socket.create_connection((host, int(port))) as plain:  # HTTP is not a frame: the channel closes
            plain.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            plain.settimeout(10)
            try:
                assert plain.recv(1024) == b""
            except ConnectionResetError:
                pass
    # Through the front door with the right key, everything answers.
    client = openai.OpenAI(base_url=front["url"], api_key=ALL_KEY, max_retries=0)
    assert client.chat.completions.create(**CHAT).choices[0].message.content == "hi"


def test_a_scoped_key_learns_of_no_other_model(front):
    client = openai.OpenAI(base_url=front["url"], api_key=ECHO_KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["echo"]
    with pytest.raises(openai.NotFoundError) as missing:
        client.chat.completions.create(model="nope", messages=[])
    assert "tiny-chat" not in json.dumps(missing.value.body)


def test_the_real_gateway_closes_slow_headers_and_refuses_huge_bodies_while_serving_others(front):
    from reconciler.settings import DEFAULTS

    url = httpx.URL(front["url"])
    client = openai.OpenAI(base_url=front["url"], api_key=ALL_KEY, max_retries=0)
    loris = socket.create_connection((url.host, url.port))
    loris.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    big = httpx.post(f"{front['url']}/chat/completions", content=b"{" + b" " * (20 << 20) + b"}",
                     headers={"Authorization": f"Bearer {ALL_KEY}", "Content-Type": "application/json"}, timeout=30)
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    for _ in range(3):
        assert client.chat.completions.create(**CHAT).choices[0].message.content == "hi"  # others are served
        try:
            loris.sendall(b"X-Slow: 1\r\n")  # bytes keep coming, never a whole header
        except OSError:  # a slow machine: the deadline already passed
            break
    loris.settimeout(DEFAULTS.apply.gateway.limits.header_timeout + 30)
    try:
        assert loris.recv(1) == b""
    except ConnectionResetError:
        pass
    # Closed by the header deadline, not before it (and not by the 60 s idle limit, which never comes first here).
    assert time.monotonic() - started >= DEFAULTS.apply.gateway.limits.header_timeout - 1
    loris.close()
