"""What watch's status page shows (served by ``health.HealthServer`` on ``/`` and ``/status.json``): the status
document of `reconciler status --format json`, built from the controller's last cycle, the cluster's revisions and
the gateways' URLs. It only reads; a request never plans or observes."""

from __future__ import annotations

import time
from html import escape
from typing import Any

from reconciler.adapter import revisions
from reconciler.gateway.exposure import open_endpoint_warning
from reconciler.plan import action_to_json
from reconciler.render.overview import status_report
from reconciler.render.page import render_page
from reconciler.revision import iso
from reconciler.settings import DEFAULTS, RevisionSettings
from reconciler.watch.controller import Controller
from reconciler.watch.target import WatchTarget


class NotReady(Exception):
    """No cycle has observed the cluster yet."""


class StatusPage:
    def __init__(self, *, title: str, settings: RevisionSettings = DEFAULTS.revisions) -> None:
        self.title = title
        self.settings = settings
        self._bound: tuple[Controller, WatchTarget] | None = None

    def bind(self, controller: Controller, target: WatchTarget) -> None:
        """Each connection to the cluster has its own controller and target; the page follows the current one."""
        self._bound = (controller, target)

    def document(self) -> dict[str, Any]:
        if self._bound is None or self._bound[0].last_state is None:
            raise NotReady("no cycle has observed the cluster yet")
        controller, target = self._bound
        desired, observed, plan = controller.last_state  # type: ignore[misc]
        http_url, gateway_urls = target.endpoints()
        warning = open_endpoint_warning(gateway_urls, desired.gateway)
        recent = revisions.history(target.kv, now=time.time(), last=self.settings.shown)
        return status_report(observed=observed, plan=plan, desired=desired, gateway_urls=gateway_urls,
                             http_url=http_url, warnings=[warning] if warning else [], revisions=recent)

    def last_plan(self) -> dict[str, Any] | None:
        last = self._bound[0].last_actions if self._bound is not None else None
        if last is None:
            return None
        at, plan = last
        return {"at": iso(at), "actions": [action_to_json(a) for a in plan.actions]}

    def html(self) -> str:
        try:
            document = self.document()
        except NotReady:
            return (f'<!doctype html><html><head><meta http-equiv="refresh" content="{self.settings.page_refresh}">'
                    f"<title>{escape(self.title)}</title></head><body><p>Waiting for the first cycle.</p>"
                    "</body></html>")
        return render_page(document, refresh=self.settings.page_refresh, last_plan=self.last_plan(),
                           title=self.title)
