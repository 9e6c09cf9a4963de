"""A plan as its stable JSON form (``reconciler.plan.to_json``, documented by schemas/plan.schema.json) and nothing
more: what `plan --format json` prints and `plan --out` saves for `apply --plan`."""

from __future__ import annotations

import json

from reconciler.plan import Plan, to_json


def render_plan(plan: Plan) -> str:
    # Keys keep to_json's order (format and fingerprints first, then the actions people look for); indented so that
    # a saved plan diffs well in review.
    return json.dumps(to_json(plan), indent=2, ensure_ascii=False) + "\n"
