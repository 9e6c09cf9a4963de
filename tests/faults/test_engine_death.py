"""A replica's vLLM engine killed under load (SIGKILL on its engine-core process, as the OOM killer does), through
the gateway on the session's cluster: no client ever sees a 500; requests in flight at the death end with an error
(a stream with an error event); with a second replica every other request is answered, with one replica the next
requests wait for the replacement and are answered; status and the recorded deaths name the death and its signal."""

from __future__ import annotations

import os
import signal
import threading
import time

import openai
import pytest

from reconciler.cli import main as cli
from tests.engines.conftest import tiny_model_dir  # noqa: F401 - the fixture
from tests.engines.test_through_router import write_specs

pytestmark = [pytest.mark.vllm, pytest.mark.ray, pytest.mark.faults]

PROMPT = [{"role": "user", "content": "def main(argv):"}]


def tiny(replicas: int, model_dir) -> dict:
    return {"tiny-chat": {"source": str(model_dir), "vram": "1Gi", "replicas": replicas, "spread": "gpu",
                          "engineArgs": {"dtype": "float32", "max_model_len": 256}}}


class Load:
    """Clients asking without pause, streaming and not, each outcome kept with when it ended."""

    def __init__(self, url: str, *, plain: int, streams: int) -> None:
        self.client = openai.OpenAI(base_url=url, api_key="unused", max_retries=0, timeout=180)
        self.outcomes: list[tuple[float, str, str]] = []  # (ended, kind, "ok" | error)
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._plain, daemon=True) for _ in range(plain)] + \
                        [threading.Thread(target=self._stream, daemon=True) for _ in range(streams)]

    def __enter__(self) -> "Load":
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(200)

    def _plain(self) -> None:
        while not self._stop.is_set():
            try:
                self.client.chat.completions.create(model="tiny-chat", messages=PROMPT, max_tokens=16)
                self.outcomes.append((time.time(), "plain", "ok"))
            except openai.APIStatusError as exc:
                self.outcomes.append((time.time(), "plain", f"{exc.status_code} {exc.body}"))

    def _stream(self) -> None:
        while not self._stop.is_set():
            try:
                for _ in self.client.chat.completions.create(model="tiny-chat", messages=PROMPT, max_tokens=16,
                                                             stream=True):
                    pass
                self.outcomes.append((time.time(), "stream", "ok"))
            except openai.APIError as exc:  # an error event inside the stream, or a refused stream
                status = getattr(exc, "status_code", None)
                self.outcomes.append((time.time(), "stream", f"{status} {getattr(exc, 'body', exc)}"))

    def answered_since(self, t: float) -> int:
        return sum(1 for ended, _, result in self.outcomes if ended > t and result == "ok")


def kill_an_engine(cluster) -> tuple[str, float]:
    """SIGKILL the engine-core process of one tiny-chat replica: (its application, when)."""
    import psutil

    cluster._driver()
    from ray import serve

    apps = cluster.serve_details()["applications"]
    app = sorted(n for n, a in apps.items() if (a.get("deployed_app_config") or {}).get("args", {})
                 .get("engine_config", {}).get("model") == "tiny-chat")[0]
    pid = serve.get_app_handle(app).info.remote().result(timeout_s=30)["pid"]
    engines = [p for p in psutil.Process(pid).children(recursive=True) if "EngineCore" in " ".join(p.cmdline())
               or "EngineCore" in p.name()]
    assert engines, "the replica runs no engine-core process of its own"
    killed = time.time()
    os.kill(engines[0].pid, signal.SIGKILL)
    return app, killed


@pytest.fixture()
def served(ray_cluster, tiny_model_dir, tmp_path):  # noqa: F811
    from reconciler.adapter import connect
    from reconciler.adapter import gateway as gateways

    specs = tmp_path / "specs"
    cluster = connect(ray_cluster.address)

    def apply(replicas: int) -> str:
        write_specs(specs, tiny(replicas, tiny_model_dir))
        assert cli(["apply", str(specs), "--yes", "--timeout", "400"]) == 0
        return gateways.urls(cluster)[0]

    try:
        yield cluster, apply
    finally:
        write_specs(specs, {})
        assert cli(["apply", str(specs), "--yes"]) == 0
        cluster.close()


@pytest.mark.parametrize("replicas", [2, 1])
def test_an_engine_killed_under_load_costs_no_500_and_the_model_answers_again(served, replicas, capsys):
    cluster, apply = served
    url = apply(replicas)
    with Load(url, plain=3, streams=2) as load:
        while load.answered_since(0) < 6:
            time.sleep(0.2)
        app, killed = kill_an_engine(cluster)
        deadline = time.time() + 240
        while load.answered_since(killed + 1) < 10 and time.time() < deadline:  # answered again, then some
            time.sleep(0.5)
    assert load.answered_since(killed + 1) >= 10, load.outcomes[-10:]
    failed = [(t - killed, kind, result) for t, kind, result in load.outcomes if result != "ok"]
    assert not any(result.startswith("500") for _, _, result in failed), failed
    # Only the requests in flight at the death (at most one per client) fail; none after it.
    assert len(failed) <= 5, failed
    assert all(after < 3 for after, _, _ in failed), failed
    # The death is recorded with its signal, and status names it.
    from reconciler.adapter import deaths

    cluster._driver()
    recorded = [d for d in deaths.read() if d.app == app and d.at >= killed - 1]
    assert recorded and recorded[0].reason == "signal 9 (SIGKILL)"
    capsys.readouterr()
    cli(["status"])
    assert "its engine died (signal 9 (SIGKILL))" in capsys.readouterr().out
