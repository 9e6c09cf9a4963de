"""What a watch cycle does with a plan: act, skip (and why), defer crash-looping replicas. Pure and table-tested;
the controller only emits the events, calls apply and records the outcome."""

from __future__ import annotations

from dataclasses import dataclass

from reconciler.plan import Action, Plan
from reconciler.settings import WatchSettings
from reconciler.watch.backoff import Held, split


@dataclass(frozen=True, slots=True)
class Decision:
    applied: str | None  # the desired fingerprint counted as applied before acting (--no-heal's startup baseline)
    drift: bool  # the plan is not empty though the specs did not change since the last apply
    skip: str | None  # "plan-only" | "no-heal": the plan is reported, not acted on
    run: tuple[Action, ...]  # actions to apply now
    deferred: tuple[Action, ...]  # starts held back by crash-loop backoff
    backing_off: tuple[Held, ...]  # the held replicas whose starts were deferred, to report

    @property
    def acts(self) -> bool:
        return self.skip is None and bool(self.run)


def decide(*, plan: Plan, desired: str, applied: str | None, settings: WatchSettings,
           held: tuple[Held, ...]) -> Decision:
    """``desired``: the fingerprint of the specs being enforced; ``applied``: the one last applied (None: never)."""
    if applied is None and not settings.heal:
        # --no-heal acts on spec changes only: what the cluster runs at startup is the baseline, not a change.
        applied = desired
    spec_change = desired != applied
    drift = not plan.empty and not spec_change
    skip = None
    if not plan.empty:
        skip = "plan-only" if settings.plan_only else "no-heal" if drift and not settings.heal else None
    run, deferred = split(plan.actions, held) if skip is None else ((), ())
    deferred_keys = {(a.model, a.replica) for a in deferred}
    backing_off = tuple(h for h in held if (h.model, h.replica) in deferred_keys)
    return Decision(applied=applied, drift=drift, skip=skip, run=run, deferred=deferred, backing_off=backing_off)
