"""What a watch cycle decides to do with a plan, by table: act, skip and why, defer crash-looping replicas."""

from __future__ import annotations

import pytest

from reconciler.observed import from_inventory
from reconciler.settings import WatchSettings
from reconciler.watch.backoff import Held
from reconciler.watch.decision import decide

from .fakes import desired, model, simple_plan

LLM = model("llm", 2)
WANT = desired(LLM)
CHANGES = simple_plan(WANT, from_inventory(WANT))  # two creates
NOTHING = simple_plan(desired(), from_inventory(WANT))
HEAL, NO_HEAL, PLAN_ONLY = WatchSettings(), WatchSettings(heal=False), WatchSettings(plan_only=True)


@pytest.mark.parametrize(
    ("plan", "applied", "settings", "want"),
    [
        # (plan, last applied fingerprint, settings) -> (applied after, drift, skip, how many actions run)
        (CHANGES, None, HEAL, (None, False, None, 2)),  # first cycle: a spec change, to apply
        (CHANGES, "D", HEAL, ("D", True, None, 2)),  # same specs, cluster moved: drift, healed
        (CHANGES, "OLD", HEAL, ("OLD", False, None, 2)),  # the specs changed: acted on
        (CHANGES, "D", NO_HEAL, ("D", True, "no-heal", 0)),  # drift reported, not healed
        (CHANGES, None, NO_HEAL, ("D", True, "no-heal", 0)),  # startup under --no-heal: the cluster is the baseline
        (CHANGES, "OLD", NO_HEAL, ("OLD", False, None, 2)),  # --no-heal still applies spec changes
        (CHANGES, "OLD", PLAN_ONLY, ("OLD", False, "plan-only", 0)),  # never acts
        (NOTHING, "D", HEAL, ("D", False, None, 0)),  # in sync
        (NOTHING, None, PLAN_ONLY, (None, False, None, 0)),
    ],
)
def test_decide(plan, applied, settings, want):
    d = decide(plan=plan, desired="D", applied=applied, settings=settings, held=())
    assert (d.applied, d.drift, d.skip, len(d.run)) == want
    assert d.acts == (want[3] > 0)


def test_a_crash_looping_replica_is_deferred_and_reported_the_others_run():
    held = (Held("llm", 1, failures=3, retry_at=100.0, reason="CUDA out of memory"),
            Held("other", 0, failures=1, retry_at=100.0, reason="not in this plan"))
    d = decide(plan=CHANGES, desired="D", applied="D", settings=HEAL, held=held)
    assert [(a.model, a.replica) for a in d.run] == [("llm", 0)]
    assert [(a.model, a.replica) for a in d.deferred] == [("llm", 1)]
    assert d.backing_off == held[:1]
