"""Real vLLM through the gateway: `reconciler apply` on the tiny LLaMA and all-MiniLM-L6-v2, then the official
`openai` SDK against the one base URL, as Open WebUI or LangChain would use it."""

from __future__ import annotations

import time

import openai
import pytest

from reconciler.cli import main as cli
from tests.engines.test_through_router import MODELS, write_specs

pytestmark = [pytest.mark.vllm, pytest.mark.ray]

PROMPT = [{"role": "user", "content": "def main(argv):"}]


@pytest.fixture(scope="module")
def gateway(ray_cluster, tiny_model_dir, tmp_path_factory):
    from reconciler.adapter import connect
    from reconciler.adapter import gateway as gateways

    specs = tmp_path_factory.mktemp("gateway-vllm-specs")
    models = {name: dict(spec) for name, spec in MODELS.items()}
    models["tiny-chat"]["source"] = str(tiny_model_dir)
    write_specs(specs, models)
    assert cli(["apply", str(specs), "--yes", "--timeout", "400"]) == 0
    cluster = connect(ray_cluster.address)
    try:
        yield {"url": gateways.urls(cluster)[0], "cluster": cluster}
    finally:
        write_specs(specs, {})
        assert cli(["apply", str(specs), "--yes"]) == 0
        gateways.stop(cluster)
        cluster.close()


def sdk(gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway["url"], api_key="unused", max_retries=0, timeout=120)


def test_lists_both_models_with_their_max_model_len(gateway):
    got = {m.id: (m.owned_by, m.state, m.max_model_len) for m in sdk(gateway).models.list().data}
    assert got == {"tiny-chat": ("reconciler", "running", 512), "minilm": ("reconciler", "running", None)}


def test_chat_and_completions_with_and_without_streaming(gateway):
    client = sdk(gateway)
    whole = client.chat.completions.create(model="tiny-chat", messages=PROMPT, max_tokens=8, temperature=0)
    assert whole.model == "tiny-chat" and whole.usage.completion_tokens == 8
    pieces, usage = [], None
    for chunk in client.chat.completions.create(model="tiny-chat", messages=PROMPT, max_tokens=8, temperature=0,
                                                stream=True, stream_options={"include_usage": True}):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
        else:
            usage = chunk.usage
    assert "".join(pieces) == whole.choices[0].message.content  # greedy: the same text either way
    assert usage is not None and usage.completion_tokens == 8
    completion = client.completions.create(model="tiny-chat", prompt="import os", max_tokens=6, temperature=0)
    streamed = "".join(c.choices[0].text for c in client.completions.create(
        model="tiny-chat", prompt="import os", max_tokens=6, temperature=0, stream=True) if c.choices)
    assert streamed == completion.choices[0].text


def test_chunks_arrive_while_the_model_generates(gateway):
    client = sdk(gateway)

    def stream(tokens: int) -> tuple[float, list[float]]:
        started, arrivals = time.monotonic(), []
        for _ in client.completions.create(model="tiny-chat", prompt="def f(", max_tokens=tokens, temperature=0,
                                           stream=True, extra_body={"ignore_eos": True}):
            arrivals.append(time.monotonic())
        return started, arrivals

    stream(8)  # vLLM's first request on a fresh engine flushes late: measure a warm one
    started, arrivals = stream(256)
    assert len(arrivals) > 128  # about one chunk a token (the detokenizer may hold a byte or two back)
    # Not buffered until the end (which would put every chunk within a millisecond): the chunks spread over a good
    # part of the generation.
    assert arrivals[-1] - arrivals[0] > 0.25 * (arrivals[-1] - started)


def test_embeddings_and_vllms_own_errors(gateway):
    client = sdk(gateway)
    vectors = client.embeddings.create(model="minilm", input=["GPU memory", "is planned"])
    assert [len(d.embedding) for d in vectors.data] == [384, 384]
    with pytest.raises(openai.BadRequestError):  # vLLM's own validation, passed through
        client.chat.completions.create(model="tiny-chat", messages=PROMPT, max_tokens=100000)
    with pytest.raises(openai.NotFoundError, match="known models: minilm, tiny-chat"):
        client.chat.completions.create(model="llama-70b", messages=PROMPT)


def test_a_client_that_disconnects_mid_stream_cancels_the_generation_in_the_engine(gateway):
    import httpx
    from ray import serve

    apps = gateway["cluster"].serve_details()["applications"]
    replica_app = next(name for name, app in apps.items()
                       if (app.get("deployed_app_config") or {}).get("args", {}).get("kind") == "replica"
                       and app["deployed_app_config"]["args"]["engine_config"]["model"] == "tiny-chat")
    handle = serve.get_app_handle(replica_app)
    body = {"model": "tiny-chat", "prompt": "def f(", "max_tokens": 400, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", f"{gateway['url']}/completions", json=body, timeout=60) as stream:
        events = (line for line in stream.iter_lines() if line)
        for _ in range(3):
            assert next(events).startswith("data: ")
        assert handle.running_requests.remote().result(timeout_s=30) == 1
    deadline = time.monotonic() + 10
    while handle.running_requests.remote().result(timeout_s=30) and time.monotonic() < deadline:
        time.sleep(0.05)
    # Back to zero long before 400 tokens could have been generated: the engine aborted the request.
    assert handle.running_requests.remote().result(timeout_s=30) == 0


def test_the_replicas_own_endpoint_serves_the_gateway_not_browsers(gateway):
    """vLLM's app in a replica drops what a public server needs and the gateway does not (CORS, per-request HTTP
    metrics, elastic scaling): a browser's preflight finds no CORS there, and the gateway's requests still answer."""
    import httpx
    from ray import serve

    from reconciler.engines.secret import cluster_secret

    apps = gateway["cluster"].serve_details()["applications"]
    replica_app = next(name for name, app in apps.items()
                       if (app.get("deployed_app_config") or {}).get("args", {}).get("kind") == "replica"
                       and app["deployed_app_config"]["args"]["engine_config"]["model"] == "tiny-chat")
    url = serve.get_app_handle(replica_app).endpoint.remote().result(timeout_s=60)
    auth = {"Authorization": f"Bearer {cluster_secret()}"}
    preflight = httpx.options(f"{url}/v1/chat/completions", timeout=30, headers={
        **auth, "Origin": "http://elsewhere", "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers and preflight.status_code == 405
    answer = httpx.post(f"{url}/v1/chat/completions", timeout=60, headers={**auth, "Origin": "http://elsewhere"},
                        json={"model": "tiny-chat", "messages": PROMPT, "max_tokens": 4})
    assert answer.status_code == 200 and "access-control-allow-origin" not in answer.headers
    assert "server" not in answer.headers  # uvicorn's own header is off too
    metrics = httpx.get(f"{url}/metrics", headers=auth, timeout=30).text
    assert 'handler="/v1/chat/completions"' not in metrics  # no per-request HTTP metrics are kept
