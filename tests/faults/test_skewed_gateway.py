"""A gateway whose clock is 11 minutes off the controller's: a model it answered a moment ago is not idle, and one it
last answered long ago is, whichever way the clock is off. The gateway runs for real (HTTP, an echo replica behind
it, the `openai` SDK as client); only its clock is moved, by handing its modules a clock of their own."""

from __future__ import annotations

import time
from dataclasses import replace
from types import SimpleNamespace

import openai
import pytest

from reconciler.demand import merge
from reconciler.desired import Scaling
from reconciler.planner import plan
from reconciler.gateway import routes, server
from tests.gateway.conftest import echo, rig, route  # noqa: F401 - rig is a fixture
from tests.planner.test_planner import FAST, applied, homelab, model

SKEW_S = 11 * 60
IDLE_AFTER = 600  # 10 minutes: less than the skew, so comparing the clocks would unload a busy model
SCALING = Scaling(min=0, max=1, idle_after=IDLE_AFTER)


def _observe(rig, *, at: float):  # noqa: F811
    async def read():
        return rig.gateway.demand()

    desired = homelab(model("chat", 8, 0, scaling=SCALING))
    running = applied(homelab(model("chat", 8, 1)))
    return desired, replace(running, demand=merge(rig.call(read())), at=at)


@pytest.mark.parametrize("skew", [-SKEW_S, SKEW_S], ids=["behind", "ahead"])
def test_a_skewed_gateway_clock_never_makes_a_model_just_used_read_as_idle(rig, monkeypatch, skew):  # noqa: F811
    clock = SimpleNamespace(time=lambda: time.time() + skew, monotonic=time.monotonic, sleep=time.sleep)
    for module in (server, routes):
        monkeypatch.setattr(module, "time", clock)
    rig.add_replica("chat-0", echo("chat"))
    rig.publish(route("chat", "chat-0"))
    sdk = openai.OpenAI(base_url=rig.url, api_key="unused", max_retries=0, timeout=30)
    answer = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": "still here"}])
    assert answer.choices[0].message.content == "still here"

    desired, observed = _observe(rig, at=time.time())
    (chat,) = observed.demand
    assert 0 <= chat.since_last < 5  # an age on the gateway's own clock, whatever its time of day
    p = plan(desired, observed, FAST)
    assert p.empty, [a.describe() for a in p.actions]
    (decision,) = p.scaling
    assert decision.rule == "steady" and abs(decision.last_request - observed.at) < 5

    # The same report read 10 minutes later by the controller: idle by the gateway's own measure, now unloaded.
    later = replace(observed, demand=(replace(chat, since_last=chat.since_last + IDLE_AFTER),),
                    at=observed.at + IDLE_AFTER)
    assert [(str(a.kind), a.model) for a in plan(desired, later, FAST).actions] == [("delete", "chat")]
