"""The whole status as data: what `reconciler status --format json` prints and watch's status page shows, built
once from the same inputs so the two never disagree. Renders only (the caller observes, plans and reads the
cluster's revisions)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from reconciler.desired import DesiredState
from reconciler.observed import ObservedState
from reconciler.plan import Plan, scale_decision_to_json
from reconciler.planner.scaling import resolve as resolve_scaling
from reconciler.render.jobs import status_json
from reconciler.render.status_json import status_document
from reconciler.revision import Revision, detail_json, summary_json


def status_report(*, observed: ObservedState, plan: Plan, desired: DesiredState | None,
                  gateway_urls: list[str] | None = None, http_url: str | None = None, warnings: Iterable[str] = (),
                  revisions: Sequence[Revision] | None = None) -> dict[str, Any]:
    """``revisions``: the newest last, as many as are to be listed; None when the cluster's history was not read.
    The newest is the current revision (``revision``, with its actions and what each came to)."""
    # On-demand models: the count their demand asks for now, not the spec's min.
    wanted = resolve_scaling(desired, plan.scaling) if desired is not None else None
    unplaced = plan.unplaced if desired is not None else ()
    document = status_document(observed, desired=wanted, gateway_urls=gateway_urls, http_url=http_url,
                               unplaced=unplaced, warnings=[w for w in warnings if w])
    document.update(status_json(plan, observed))
    if plan.scaling:
        document["scaling"] = [scale_decision_to_json(d) for d in plan.scaling]
    if revisions is not None:
        document["revision"] = detail_json(revisions[-1]) if revisions else None
        document["revisions"] = [summary_json(r) for r in reversed(revisions)]
    return document
