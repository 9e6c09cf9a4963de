"""Load on the first request, unload when idle, scale with load, by priority and VRAM: echo models on the session's
Ray cluster, `reconciler watch` acting, clients through the gateway with the `openai` SDK."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import openai
import pytest

from reconciler.observed import ReplicaState

from .rig import ALL_NODES, CLASSES, ONE_GPU, client, gateway_url, model, running_count, specs, \
    wait_count, watcher, write_specs  # noqa: F401 - specs and watcher are fixtures

pytestmark = pytest.mark.ray

CHAT = [{"role": "user", "content": "hello there"}]


def ask(url: str, name: str, *, timeout: float = 180, log=None) -> str:
    try:
        answer = client(url, timeout=timeout).chat.completions.create(model=name, messages=CHAT)
    except openai.APIStatusError as exc:
        if log is not None:
            exc.add_note("watcher events:\n" + log())
        raise
    return answer.choices[0].message.content


def status_reason(specs, model_name: str, *, deadline: float) -> str:
    """What `reconciler status --format json` (its own process) says of the model's unplaced replica, once it does."""
    while True:
        done = subprocess.run([sys.executable, "-m", "reconciler", "status", str(specs), "--format", "json"],
                              capture_output=True, text=True, timeout=120)
        document = json.loads(done.stdout) if done.returncode == 0 else {}
        reasons = [u["reason"] for u in document.get("unplaced", []) if u["model"] == model_name]
        if reasons or time.monotonic() > deadline:
            assert reasons, f"status never said why {model_name} waits: {done.stdout or done.stderr}"
            return reasons[0]
        time.sleep(0.5)


def test_load_scales_to_max_then_back_to_min_and_every_request_is_answered(specs, watcher):
    scaling = {"targetInFlight": 4, "scaleUpAfter": "2s", "scaleDownAfter": "4s", "idleAfter": "6s",
               "loadTimeout": "2m"}
    write_specs(specs, ALL_NODES, model("burst", replicas={"min": 0, "max": 4}, scaling=scaling,
                                        engineArgs={"answer_delay_s": 0.5}))
    w = watcher()
    url = gateway_url()
    assert running_count(specs, "burst") == 0  # min 0: nothing loaded before the first request

    sent, answers, errors = [0], [], []
    stop = threading.Event()
    lock = threading.Lock()

    def clients() -> None:
        sdk = client(url)
        while not stop.is_set():
            with lock:
                sent[0] += 1
            try:
                got = sdk.chat.completions.create(model="burst", messages=CHAT).choices[0].message.content
                with lock:
                    answers.append(got)
            except Exception as exc:  # noqa: BLE001 - counted: the test asserts there are none
                with lock:
                    errors.append(repr(exc))

    threads = [threading.Thread(target=clients, daemon=True) for _ in range(40)]
    for t in threads:
        t.start()
    most = 0
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            now = running_count(specs, "burst")
            most = max(most, now)
            if now == 4:
                break
            time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=200)
    assert most == 4, w.log()
    assert errors == []
    assert len(answers) == sent[0] and set(answers) == {"hello there"}
    # no request for idleAfter: back to min (0 unloads the model); max was never exceeded on the way
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and (now := running_count(specs, "burst")) > 0:
        most = max(most, now)
        time.sleep(0.5)
    assert running_count(specs, "burst") == 0 and most == 4, w.log()
    rules = [e["rule"] for e in w.of("scale") if e["model"] == "burst"]
    assert rules[0] == "wake" and "up" in rules and rules[-1] in ("idle", "down") and "idle" in rules, w.log()
    assert all(e["wanted"] <= 4 for e in w.of("scale"))


def test_higher_priority_is_served_and_the_lower_one_gives_way_as_the_plan_says(specs, watcher):
    low = {"idleAfter": "10m", "loadTimeout": "30s"}
    high = {"idleAfter": "10m", "loadTimeout": "2m"}
    write_specs(specs, ONE_GPU, CLASSES,
                model("high", vram="8Gi", replicas={"min": 0, "max": 1}, scaling=high, priorityClass="interactive"),
                model("low", vram="8Gi", replicas={"min": 0, "max": 1}, scaling=low, priorityClass="batch"))
    w = watcher()
    url = gateway_url()
    both: list[set[str]] = []
    stop = threading.Event()

    def sample() -> None:  # VRAM is never over-committed: the two never hold node-b's GPU at once
        from reconciler import adapter
        from reconciler.spec import load_specs

        desired = load_specs(specs).desired
        with adapter.connect() as cluster:  # one driver for the whole test: the main thread makes no Ray call
            while not stop.is_set():
                held = {r.model for r in cluster.observe(desired).replicas
                        if r.state in (ReplicaState.RUNNING, ReplicaState.STARTING)}
                both.append(held)
                time.sleep(0.3)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        assert ask(url, "low", log=w.log) == "hello there"  # cold start of the lower one: there is room
        assert ask(url, "high", log=w.log) == "hello there"  # the higher one evicts it
        # The answer may come before the apply that placed it ends: its actions are logged when it does.
        w.wait_for(lambda e: e.get("event") == "action" and e.get("model") == "high", timeout=120)
        evictions = [e for e in w.of("action") if e.get("action") == "evict"]
        assert [(e["model"], e["replica"]) for e in evictions] == [("low", 0)], w.log()
        assert evictions[0]["reason"].startswith("evict low[0] (priority 10, ") and \
            "to load high[0] (priority 50) for 1 waiting request" in evictions[0]["reason"], w.log()
        # The lower one asks again while the higher one is loaded and not idle: it waits, the plan and `status` say
        # why, and after its loadTimeout the client gets a 504 in OpenAI's envelope.
        outcome: list[BaseException] = []

        def wait_low() -> None:
            try:
                ask(url, "low", timeout=90)
            except BaseException as exc:  # noqa: BLE001 - the 504 the test expects
                outcome.append(exc)

        waiting = threading.Thread(target=wait_low)
        waiting.start()
        why = status_reason(specs, "low", deadline=time.monotonic() + 25)
        waiting.join(timeout=120)
        assert len(outcome) == 1 and isinstance(outcome[0], openai.APIStatusError), outcome
        assert outcome[0].status_code == 504, outcome[0]
        assert "1 request waiting for it, held until it fits or for at most loadTimeout 30s" in why
        unplaced = [e for e in w.of("plan") if any(u["model"] == "low" for u in e.get("unplaced", []))]
        assert unplaced and "waiting for it, held until it fits" in unplaced[-1]["unplaced"][0]["reason"], w.log()
    finally:
        stop.set()
        sampler.join(timeout=30)
    assert both and all(held != {"high", "low"} for held in both)
    assert running_count(specs, "high") == 1 and running_count(specs, "low") == 0


def test_equal_priorities_take_turns_without_thrash(specs, watcher):
    turn = {"idleAfter": "3s", "loadTimeout": "2m"}
    write_specs(specs, ONE_GPU,
                model("left", vram="8Gi", replicas={"min": 0, "max": 1}, scaling=turn),
                model("right", vram="8Gi", replicas={"min": 0, "max": 1}, scaling=turn))
    w = watcher()
    url = gateway_url()
    for name in ("left", "right", "left", "right"):
        assert ask(url, name, log=w.log) == "hello there"
    w.wait_for(lambda e: len([a for a in w.of("action") if a["action"] == "create"]) >= 4, timeout=60)
    print("event log of the run:\n" + w.log())
    # Equals never evict each other: each gave way by going idle, and each turn loaded its model exactly once.
    actions = [(e["action"], e["model"]) for e in w.of("action")]
    assert ("evict", "left") not in actions and ("evict", "right") not in actions, w.log()
    creates = [m for kind, m in actions if kind == "create"]
    assert creates == ["left", "right", "left", "right"], w.log()
    unloads = [e for e in w.of("scale") if e["wanted"] == 0]
    assert unloads and all(e["rule"] == "idle" for e in unloads), w.log()


def test_min_two_never_goes_below_two(specs, watcher):
    eager = {"targetInFlight": 1, "scaleUpAfter": "1s", "scaleDownAfter": "1s", "idleAfter": "1s"}
    write_specs(specs, ALL_NODES, model("steady", replicas={"min": 2, "max": 3}, scaling=eager))
    w = watcher()
    wait_count(specs, "steady", 2)
    cycles = len(w.of("cycle"))
    deadline = time.monotonic() + 8
    while time.monotonic() < deadline:
        assert running_count(specs, "steady") >= 2
        time.sleep(0.5)
    assert len(w.of("cycle")) > cycles  # the watcher kept deciding all along
    assert all(e["wanted"] >= 2 for e in w.of("scale") if e["model"] == "steady"), w.log()


def test_a_replica_drains_before_it_stops(specs, watcher):
    """Requests in flight on a replica that scaling removes are answered: the gateway stops sending it new ones and
    the executor waits for those it has before the replica goes."""
    slow = {"answer_delay_s": 8}
    write_specs(specs, ALL_NODES, model("slow", replicas={"min": 2, "max": 2}, scaling={"idleAfter": "10m"},
                                        engineArgs=slow))
    w = watcher()
    wait_count(specs, "slow", 2)
    url = gateway_url()
    answers, errors = [], []

    def one() -> None:
        try:
            answers.append(ask(url, "slow", timeout=120))
        except Exception as exc:  # noqa: BLE001 - the test asserts there are none
            errors.append(repr(exc))

    threads = [threading.Thread(target=one) for _ in range(4)]  # fewest in flight first: two on each replica
    for t in threads:
        t.start()
    time.sleep(1.5)  # every request is in flight, none answered yet
    seen = len(w.events())
    write_specs(specs, ALL_NODES, model("slow", replicas={"min": 1, "max": 1}, scaling={"idleAfter": "10m"},
                                        engineArgs=slow))
    for t in threads:
        t.join(timeout=120)
    assert errors == [] and answers == ["hello there"] * 4, w.log()
    w.wait_for(lambda e: e in w.events()[seen:] and e.get("event") == "action" and e.get("action") == "delete",
               timeout=120)
    wait_count(specs, "slow", 1)
