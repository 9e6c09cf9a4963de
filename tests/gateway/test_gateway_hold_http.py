"""On-demand models at the gateway, over real HTTP in front of echo replicas (no Ray): requests for a model with no
replica are held until a route table brings one, refused when the queue is full or the loadTimeout passed, and
counted in the gateway's demand."""

from __future__ import annotations

import concurrent.futures
import hashlib
import time

import httpx
import openai
import pytest

from reconciler.desired import ApiKey
from reconciler.gateway.observer import Recorder
from reconciler.gateway.table import RouteTable
from tests.gateway.conftest import echo, route

IDLE = {"state": "idle", "desired": 0}


def sdk(rig, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=rig.url, api_key="unused", max_retries=0, **kwargs)


def post(rig, text: str = "hi", model: str = "chat", **kwargs) -> httpx.Response:
    return httpx.post(f"{rig.url}/chat/completions", timeout=kwargs.pop("timeout", 60),
                      json={"model": model, "messages": [{"role": "user", "content": text}], **kwargs})


def demand(rig, model: str = "chat"):
    return {d.model: d for d in rig.call(_async(rig.gateway.demand))}[model]


async def _async(function):
    return function()


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


@pytest.fixture()
def recorded(rig):
    rig.gateway.observer = Recorder()
    return rig


def test_a_request_for_an_idle_model_is_held_and_answered_once_a_replica_is_published(recorded):
    rig = recorded
    rig.publish(route("chat", load_timeout=60, **IDLE))
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        answer = pool.submit(lambda: sdk(rig).chat.completions.create(
            model="chat", messages=[{"role": "user", "content": "wake up"}]))
        assert wait_until(lambda: demand(rig).queued == 1)
        listed = {m.id: (m.state, m.replicas) for m in sdk(rig).models.list().data}
        assert listed == {"chat": ("idle", {"running": 0, "desired": 0})}  # loadable: the client may just ask
        assert not answer.done()
        rig.add_replica("chat-0", echo("chat"))
        rig.publish(route("chat", "chat-0", load_timeout=60))
        assert answer.result(30).choices[0].message.content == "wake up"
    assert [e[:2] for e in rig.gateway.observer.events if e[0] == "cold_start"] == [("cold_start", "chat")]
    after = demand(rig)
    assert (after.queued, after.in_flight, after.held_for) == (0, 0, None)


def test_released_requests_spread_over_the_replicas_by_fewest_in_flight(rig):
    rig.publish(route("chat", load_timeout=60, **IDLE))
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(post, rig, f"n{i} a b c d e f g h", stream=True) for i in range(4)]
        assert wait_until(lambda: demand(rig).queued == 4)
        slow = [echo("chat", 0, stream_delay_s=0.2), echo("chat", 1, stream_delay_s=0.2)]
        rig.add_replica("chat-0", slow[0])
        rig.add_replica("chat-1", slow[1])
        rig.publish(route("chat", "chat-0", "chat-1", load_timeout=60))
        assert wait_until(lambda: slow[0].running + slow[1].running == 4)
        assert (slow[0].running, slow[1].running) == (2, 2)
        assert [a.result(30).status_code for a in answers] == [200] * 4


def test_a_full_queue_answers_503_with_retry_after_in_openais_envelope(recorded):
    rig = recorded
    rig.gateway.queue_limit = 2
    rig.publish(route("chat", load_timeout=60, **IDLE))
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post, rig, f"h{i}") for i in range(2)]
        assert wait_until(lambda: demand(rig).queued == 2)
        with pytest.raises(openai.InternalServerError, match="'chat' is loading and 2 requests already wait") as full:
            sdk(rig).chat.completions.create(model="chat", messages=[{"role": "user", "content": "one more"}])
        assert full.value.status_code == 503
        assert full.value.response.headers["Retry-After"] == "5"
        assert full.value.body["code"] == "queue_full" and full.value.body["type"] == "service_unavailable"
        rig.add_replica("chat-0", echo("chat"))
        rig.publish(route("chat", "chat-0", load_timeout=60))
        assert sorted(h.result(30).status_code for h in held) == [200, 200]  # the held ones were not disturbed
    assert ("refused", "chat", "queue_full") in rig.gateway.observer.events


def test_past_its_load_timeout_a_held_request_gets_504_saying_why(recorded):
    rig = recorded
    rig.publish(route("chat", load_timeout=1, **IDLE))
    answer = post(rig, "too late")
    assert answer.status_code == 504
    error = answer.json()["error"]
    assert error["code"] == "load_timeout" and error["type"] == "timeout"
    assert error["message"].startswith("the model 'chat' could not be loaded within its loadTimeout of 1s "
                                       "(no replica was placed for it)")
    assert ("refused", "chat", "load_timeout") in rig.gateway.observer.events
    assert demand(rig).queued == 0


def test_a_client_that_leaves_while_held_is_taken_out_of_the_queue(rig):
    rig.publish(route("chat", load_timeout=60, **IDLE))
    with pytest.raises(httpx.ReadTimeout):
        post(rig, "bye", timeout=httpx.Timeout(30, read=0.5))
    assert wait_until(lambda: demand(rig).queued == 0)
    assert len(rig.gateway.holds["chat"]) == 0


def test_models_that_do_not_hold_still_answer_503_at_once_and_a_table_that_drops_holding_releases_them(rig):
    rig.publish(route("pinned", state="starting", desired=1), route("chat", load_timeout=60, **IDLE))
    assert post(rig, model="pinned").status_code == 503
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(post, rig)
        assert wait_until(lambda: demand(rig).queued == 1)
        rig.publish(route("pinned", state="starting", desired=1), route("chat", state="stopped", desired=0))
        answer = held.result(30)
    assert answer.status_code == 503 and answer.json()["error"]["code"] == "no_running_replica"


def test_a_keys_concurrency_limit_counts_its_held_requests(rig):
    secret = "sk-rc-alice-secret"
    alice = ApiKey("alice", hashlib.sha256(secret.encode()).hexdigest(), ("*",), concurrent_requests=1)
    rig.loop.call_soon_threadsafe(rig.gateway.set_table, RouteTable(
        models=(route("chat", load_timeout=60, **IDLE),), created=1, keys=(alice,)))
    client = openai.OpenAI(base_url=rig.url, api_key=secret, max_retries=0)

    def ask(text: str):
        return client.chat.completions.create(model="chat", messages=[{"role": "user", "content": text}])

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        held = pool.submit(ask, "first")
        assert wait_until(lambda: demand(rig).queued == 1)
        with pytest.raises(openai.RateLimitError, match="1 concurrent requests"):
            ask("second")
        rig.add_replica("chat-0", echo("chat"))
        rig.loop.call_soon_threadsafe(rig.gateway.set_table, RouteTable(
            models=(route("chat", "chat-0", load_timeout=60),), created=1, keys=(alice,)))
        assert held.result(30).choices[0].message.content == "first"


def test_demand_counts_held_and_in_flight_requests_and_their_mean_per_second(rig):
    rig.publish(route("chat", load_timeout=60, **IDLE))
    start = time.time()
    assert demand(rig).since_last is None
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        # Three streams of 20 words 0.1 s apart: held for a while, then about 2 s in flight each.
        answers = [pool.submit(post, rig, " ".join(f"w{n}" for n in range(20)), stream=True) for _ in range(3)]
        assert wait_until(lambda: demand(rig).queued == 3)
        held = demand(rig)
        assert held.in_flight == 0 and 0 <= held.since_last <= held.held_for <= time.time() - start
        time.sleep(2.2)  # at least one whole second with all three held
        rig.add_replica("chat-0", echo("chat", stream_delay_s=0.1))
        rig.publish(route("chat", "chat-0", load_timeout=60))
        assert wait_until(lambda: demand(rig).in_flight == 3)
        assert demand(rig).queued == 0
        assert all(a.result(30).status_code == 200 for a in answers)
    time.sleep(2.1)  # the last second with load and a whole second without are complete
    done = demand(rig)
    assert (done.in_flight, done.queued, done.held_for) == (0, 0, None)
    values = [value for _, value in done.samples]
    assert any(abs(value - 3) < 0.05 for value in values), done.samples  # whole seconds at three requests
    assert max(values) <= 3.0 and values[-1] == 0.0 and done.samples[0][0] >= int(time.time()) - int(start)


def test_wait_wake_returns_the_models_with_requests_held_once_a_model_gets_its_first(rig):
    rig.publish(route("chat", load_timeout=60, **IDLE), route("code", load_timeout=60, **IDLE))
    assert rig.call(rig.gateway.wait_wake(0.1)) == []
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        woken = pool.submit(rig.call, rig.gateway.wait_wake(30), 40)
        held = [pool.submit(post, rig, "a")]
        assert woken.result(40) == ["chat"]
        held.append(pool.submit(post, rig, "b"))
        assert wait_until(lambda: demand(rig).queued == 2)
        assert rig.call(rig.gateway.wait_wake(0.2)) == []  # chat already had a request held: nothing new
        held.append(pool.submit(post, rig, "c", model="code"))
        assert rig.call(rig.gateway.wait_wake(30), 40) == ["chat", "code"]
        rig.add_replica("chat-0", echo("chat"))
        rig.add_replica("code-0", echo("code"))
        rig.publish(route("chat", "chat-0", load_timeout=60), route("code", "code-0", load_timeout=60))
        assert [h.result(30).status_code for h in held] == [200, 200, 200]
