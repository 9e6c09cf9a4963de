"""The gateway on the session's real Ray cluster, echo models: `reconciler apply` starts it and hands it the route
table; the official `openai` SDK talks to its base URL; replicas answer on their own endpoints."""

from __future__ import annotations

import concurrent.futures
import json

import openai
import pytest
import requests

from reconciler.cli import main as cli

pytestmark = pytest.mark.ray

POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: homelab}
spec:
  nodes: {selector: {pool: homelab}}
  inventory:
    - {node: node-a, gpus: [{name: sim, memory: 24Gi}, {name: sim, memory: 24Gi}]}
    - {node: node-b, gpus: [{name: sim, memory: 12Gi}]}
    - {node: node-c, gpus: [{name: sim, memory: 16Gi}]}
"""

MODELS = {
    "chat": {"vram": "1Gi", "replicas": 2, "spread": "gpu", "engineArgs": {"stream_delay_s": 0.05}},
    "emb": {"vram": "1Gi", "replicas": 1, "route": "/vectors"},
    "idle": {"vram": "1Gi", "replicas": 0},
}


def write_specs(directory, models: dict[str, dict]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "pool.yaml").write_text(POOL)
    docs = [json.dumps({"apiVersion": "reconciler/v1", "kind": "Model", "metadata": {"name": name},
                        "spec": {"engine": "echo", "source": f"stand-in/{name}", **spec}})
            for name, spec in models.items()]
    (directory / "models.yaml").write_text("\n---\n".join(docs) + "\n")


@pytest.fixture(scope="module")
def gateway(ray_cluster, tmp_path_factory):
    from reconciler.adapter import connect
    from reconciler.adapter import gateway as gateways

    specs = tmp_path_factory.mktemp("gateway-specs")
    write_specs(specs, MODELS)
    assert cli(["apply", str(specs), "--yes", "--timeout", "120"]) == 0
    cluster = connect(ray_cluster.address)
    try:
        urls = gateways.urls(cluster)
        assert len(urls) == 1 and urls[0].endswith("/v1"), urls  # one node address on this cluster: one gateway
        yield {"url": urls[0], "cluster": cluster, "specs": specs}
    finally:
        write_specs(specs, {})
        assert cli(["apply", str(specs), "--yes"]) == 0
        gateways.stop(cluster)
        cluster.close()


def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway["url"], api_key="unused", max_retries=0)


def test_models_lists_every_model_of_the_specs(gateway):
    got = {m.id: (m.state, m.replicas, m.route) for m in sdk(gateway).models.list().data}
    assert got == {
        "chat": ("running", {"running": 2, "desired": 2}, "/chat"),
        "emb": ("running", {"running": 1, "desired": 1}, "/vectors"),
        "idle": ("stopped", {"running": 0, "desired": 0}, "/idle"),
    }


def test_chat_stream_and_embeddings_through_the_base_url(gateway):
    client = sdk(gateway)
    answer = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": "hi there"}])
    assert answer.choices[0].message.content == "hi there"
    pieces = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "a b c"}], stream=True) if c.choices]
    assert "".join(pieces) == "a b c"
    assert len(client.embeddings.create(model="emb", input="x").data[0].embedding) == 8
    with pytest.raises(openai.InternalServerError, match="'idle' has no running replica"):
        client.embeddings.create(model="idle", input="x")


def test_the_per_model_routes_keep_working(gateway, ray_cluster):
    answer = requests.post(f"{ray_cluster.http_url}/vectors/v1/embeddings", json={"input": "x"}, timeout=30)
    assert answer.status_code == 200 and len(answer.json()["data"][0]["embedding"]) == 8


def test_both_replicas_take_traffic_and_a_killed_one_costs_only_what_it_held(gateway):
    """A request the killed replica already held may have run, so it is not retried (502, never a 500); every
    other request, including those that found its port closed, is answered by the replica left."""
    import ray

    client = sdk(gateway)

    def ask(i: int) -> str:
        try:
            return client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": f"n{i}"}]).choices[0].message.content
        except openai.InternalServerError as exc:
            assert exc.status_code == 502 and exc.body["code"] == "upstream_error", exc
            return "lost in flight"

    assert [ask(i) for i in range(4)] == [f"n{i}" for i in range(4)]
    details = gateway["cluster"].serve_details()["applications"]
    chat_apps = sorted(name for name, app in details.items()
                       if (app.get("deployed_app_config") or {}).get("args", {}).get("kind") == "replica"
                       and app["deployed_app_config"]["args"]["engine_config"]["model"] == "chat")
    assert len(chat_apps) == 2
    victim = next(r for d in details[chat_apps[0]]["deployments"].values() for r in d["replicas"])
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(ask, i) for i in range(40)]
        ray.kill(ray.get_actor(victim["actor_name"], namespace="serve"), no_restart=False)
        answers = [f.result() for f in futures]
    lost = [i for i, a in enumerate(answers) if a == "lost in flight"]
    assert len(lost) <= 4  # at most the requests in flight at once (4 clients)
    assert all(answers[i] == f"n{i}" for i in range(40) if i not in lost)
    # Leave the cluster as found: Serve notices the kill by a failed health check and starts a new replica.
    replaced = gateway["cluster"].wait_serve(
        lambda d: any(r.get("state") == "RUNNING" and r.get("actor_id") != victim["actor_id"]
                      for dep in d["applications"][chat_apps[0]]["deployments"].values() for r in dep["replicas"]),
        timeout=120)
    assert all(r.get("actor_id") != victim["actor_id"]
               for dep in replaced["applications"][chat_apps[0]]["deployments"].values() for r in dep["replicas"])


def test_status_json_and_probe_go_by_the_base_url(gateway, capsys):
    capsys.readouterr()
    assert cli(["status", str(gateway["specs"]), "--format", "json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["gateway"]["url"] == gateway["url"]
    assert {m["name"]: m["state"] for m in document["models"]} == {"chat": "running", "emb": "running",
                                                                   "idle": "stopped"}
    assert cli(["status", str(gateway["specs"])]) == 0
    assert capsys.readouterr().out.startswith(f"OpenAI base URL: {gateway['url']}\n")
    assert cli(["probe", str(gateway["specs"])]) == 0
    out = capsys.readouterr().out
    # Echo models are probed with a chat (only pooling vLLM models get an embeddings probe).
    assert out.count(f"POST {gateway['url']}/chat/completions  200") == 2, out


def test_keys_and_limits_change_without_restarting_a_replica(gateway):
    import hashlib

    def actors() -> dict[str, str]:
        apps = gateway["cluster"].serve_details()["applications"]
        return {n: r["actor_id"] for n, a in apps.items() for d in a["deployments"].values() for r in d["replicas"]}

    before = actors()
    secret = "sk-rc-test-key"
    spec = {"apiVersion": "reconciler/v1", "kind": "Gateway", "metadata": {"name": "front"},
            "spec": {"keys": [{"name": "ci", "sha256": hashlib.sha256(secret.encode()).hexdigest(),
                               "models": ["emb"], "limits": {"concurrentRequests": 2}}]}}
    (gateway["specs"] / "gateway.yaml").write_text(json.dumps(spec))
    try:
        assert cli(["apply", str(gateway["specs"]), "--yes"]) == 0
        with pytest.raises(openai.AuthenticationError):
            sdk(gateway).embeddings.create(model="emb", input="x")
        keyed = openai.OpenAI(base_url=gateway["url"], api_key=secret, max_retries=0)
        assert len(keyed.embeddings.create(model="emb", input="x").data) == 1
        with pytest.raises(openai.PermissionDeniedError):
            keyed.chat.completions.create(model="chat", messages=[{"role": "user", "content": "x"}])
    finally:
        (gateway["specs"] / "gateway.yaml").unlink()
        assert cli(["apply", str(gateway["specs"]), "--yes"]) == 0
    assert sdk(gateway).embeddings.create(model="emb", input="x").data  # open again
    assert actors() == before  # no replica restarted for any of it


def test_a_request_held_for_an_idle_model_wakes_the_controller_shows_in_demand_and_is_answered(gateway):
    """The gateway actor end to end for on-demand models: a table with a model that holds and has no replica, a
    request for it, the controller's wake-up and demand read through the adapter, then a table with a replica."""
    import dataclasses

    from reconciler.adapter import gateway as gateways
    from reconciler.gateway.table import ModelRoute

    cluster = gateway["cluster"]
    before = gateways.stored_table(cluster)
    later = ModelRoute(name="later", state="idle", desired=0, backends=(), route="/later", engine="echo",
                       load_timeout=120)
    gateways.publish(cluster, dataclasses.replace(before, models=before.models + (later,)))
    try:
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            woken = pool.submit(gateways.wait_wake, cluster, 60)
            answer = pool.submit(lambda: sdk(gateway).embeddings.create(model="later", input="x"))
            assert woken.result(90) == ["later"]
            seen = {d.model: d for d in gateways.demand(cluster)}
            assert {"chat", "emb", "idle", "later"} <= set(seen)
            assert (seen["later"].queued, seen["later"].in_flight) == (1, 0)
            assert seen["later"].held_for is not None and seen["later"].since_last is not None
            assert seen["emb"].queued == 0
            replica = dataclasses.replace(later, state="running", desired=1, backends=before.model("emb").backends)
            gateways.publish(cluster, dataclasses.replace(before, models=before.models + (replica,)))
            assert len(answer.result(60).data[0].embedding) == 8
        assert {d.model: d.queued for d in gateways.demand(cluster)}["later"] == 0
    finally:
        gateways.publish(cluster, before)
