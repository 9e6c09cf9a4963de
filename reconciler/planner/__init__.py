"""The planner: `plan(desired, observed, settings) -> Plan`, pure. Packs each pool with `reconciler.packer` and
diffs the result against the observed replicas into create/delete/move/evict/replace/update actions."""

from reconciler.planner.core import PlanSettings, apply_to_observed, plan

__all__ = ["PlanSettings", "apply_to_observed", "plan"]
