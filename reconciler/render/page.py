"""Watch's status page (`/` beside `/metrics`): the status document of `reconciler status --format json` as one
self-contained HTML page that reloads itself. Renders only: no script, no framework, nothing fetched from outside.

Each GPU is a bar cut into what reconciler's replicas reserve (planned), what other processes use (foreign) and what
is free, with a mark where the measured use is when it is known (NVML, or the replicas' own measurements).
"""

from __future__ import annotations

from html import escape
from typing import Any

from reconciler.plan import replica_id
from reconciler.quantity import format_bytes

_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#1d232a;background:#f6f7f9}
h1{font-size:1.4em;margin:0 0 .2em}h2{font-size:1.1em;margin:1.4em 0 .5em}
.sub{color:#5b6670}section{background:#fff;border:1px solid #dde2e7;border-radius:6px;padding:.6em 1em;margin:.8em 0}
table{border-collapse:collapse;width:100%}td,th{text-align:left;padding:.25em .6em;border-bottom:1px solid #eef0f3}
.nodes{display:grid;grid-template-columns:repeat(auto-fill,minmax(360px,1fr));gap:0 1.5em}
.node h3{font-size:1em;margin:.6em 0 .3em}.gpu{margin:.4em 0 .8em}.gpu ul{margin:.3em 0;padding-left:1.2em}
.bar{position:relative;display:flex;height:22px;border:1px solid #9aa5b1;border-radius:3px;overflow:hidden;
background:#fff}
.seg{height:100%}.planned{background:#3f7fd9}.foreign{background:#d9534f}.free{background:#e9edf1}
.measured{position:absolute;top:0;bottom:0;width:3px;background:#111}
.legend span{display:inline-block;width:.9em;height:.9em;vertical-align:middle;margin:0 .3em 0 .9em}
.state-running,.ok,.converged{color:#1b7f3b}.state-starting,.state-pending,.applying{color:#a66a00}
.state-failed,.state-unplaced,.failed,.dead{color:#c0312b;font-weight:600}.interrupted{color:#a66a00}
code{background:#eef0f3;padding:0 .3em;border-radius:3px}.reason{color:#5b6670}
"""


def render_page(document: dict[str, Any], *, refresh: int, last_plan: dict[str, Any] | None = None,
                title: str = "reconciler") -> str:
    """``last_plan``: the watcher's last plan with actions (``{"at": ISO time, "actions": [action JSON]}``),
    which may not be applied yet (--no-heal, backoff); the current revision's actions are in ``document``."""
    parts = [
        "<!doctype html><html lang=en><head><meta charset=utf-8>",
        f'<meta http-equiv="refresh" content="{int(refresh)}">',
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<div class=sub id=summary>{_summary(document)} · refreshes every {int(refresh)} s</div>',
        _gpus(document),
        _models(document),
        _demand(document),
        _jobs(document),
        _revisions(document),
        _last_plan(document, last_plan),
        "</body></html>",
    ]
    return "\n".join(p for p in parts if p)


def _summary(doc: dict[str, Any]) -> str:
    gateway = (doc.get("gateway") or {}).get("url")
    current = doc.get("revision")
    revision = (f"revision {current['revision']} ({escape(current['outcome'])})" if current
                else "no revision recorded")
    gpus = sum(len(n["gpus"]) for n in doc.get("nodes", []))
    where = f" · OpenAI base URL <code>{escape(gateway)}</code>" if gateway else ""
    return f"{len(doc.get('nodes', []))} nodes, {gpus} GPUs · {revision}{where}"


def _pct(part: int, total: int) -> float:
    return 0.0 if total <= 0 else max(0.0, min(100.0, 100.0 * part / total))


def _gpus(doc: dict[str, Any]) -> str:
    by_gpu: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for r in doc.get("replicas", []):
        for gpu in r["gpus"]:
            by_gpu.setdefault((r["node"], gpu), []).append(r)
    out = ['<section id=gpus><h2>Nodes and GPUs</h2><div class=legend>'
           '<span class=planned></span>planned<span class=foreign></span>foreign<span class=free></span>free'
           '<span class=measured style="position:static;width:3px"></span>measured</div><div class=nodes>']
    for node in doc.get("nodes", []):
        alive = "" if node["alive"] else ' <span class=dead>dead</span>'
        sim = " (simulated GPUs)" if node.get("simulated") else ""
        out.append(f'<div class=node data-node="{escape(node["name"])}"><h3>{escape(node["name"])}{alive}'
                   f'<span class=sub>{sim}</span></h3>')
        for gpu in node["gpus"]:
            out.append(_gpu(node["name"], gpu, by_gpu.get((node["name"], gpu["index"]), [])))
        out.append("</div>")
    out.append("</div></section>")
    return "\n".join(out)


def _gpu(node: str, gpu: dict[str, Any], replicas: list[dict[str, Any]]) -> str:
    total, planned, foreign = gpu["total"], gpu["planned"], gpu["foreign"]
    free = max(0, total - planned - foreign)
    measured_parts = [r["measured"] for r in replicas if r.get("measured") is not None]
    measured = gpu["used"] if gpu.get("used") is not None else (sum(measured_parts) + foreign
                                                                if measured_parts else None)
    mark = (f'<span class=measured title="measured {format_bytes(measured)}" '
            f'style="left:{_pct(measured, total):.2f}%"></span>' if measured is not None else "")
    words = (f"{format_bytes(planned)} planned, {format_bytes(foreign)} foreign, {format_bytes(free)} free of "
             f"{format_bytes(total)}" + (f", {format_bytes(measured)} measured" if measured is not None else ""))
    items = []
    for r in sorted(replicas, key=lambda r: (r["model"], r["replica"])):
        seen = f", measured {format_bytes(r['measured'])}" if r.get("measured") is not None else ""
        message = f' <span class=reason>{escape(r["message"])}</span>' if r.get("message") else ""
        items.append(f'<li class=replica data-replica="{escape(replica_id(r["model"], r["replica"]))}">'
                     f'<b>{escape(replica_id(r["model"], r["replica"]))}</b> {format_bytes(r["vram"])}{seen} '
                     f'<span class="state-{escape(r["state"])}">{escape(r["state"])}</span>{message}</li>')
    return (f'<div class=gpu data-gpu="{escape(node)}/gpu{gpu["index"]}">'
            f'<div>gpu{gpu["index"]} {escape(gpu.get("name") or "")} · <span class=words>{words}</span></div>'
            f'<div class=bar role=img aria-label="{escape(words)}">'
            f'<div class="seg planned" style="width:{_pct(planned, total):.2f}%"></div>'
            f'<div class="seg foreign" style="width:{_pct(foreign, total):.2f}%"></div>'
            f'<div class="seg free" style="width:{_pct(free, total):.2f}%"></div>{mark}</div>'
            f'<ul>{"".join(items) or "<li class=sub>no replica</li>"}</ul></div>')


def _models(doc: dict[str, Any]) -> str:
    rows = []
    for m in doc.get("models", []):
        wanted = m["replicas"]["desired"]
        route = f'<a href="{escape(m["url"])}">{escape(m["route"])}</a>' if m.get("url") else escape(m["route"])
        rows.append(f'<tr class=model data-model="{escape(m["name"])}"><td><b>{escape(m["name"])}</b></td>'
                    f'<td class="state-{escape(m["state"])}">{escape(m["state"])}</td>'
                    f'<td>{m["replicas"]["running"]} / {"max" if wanted is None else wanted}</td><td>{route}</td></tr>')
    unplaced = "".join(f'<li>{escape(replica_id(u["model"], u["replica"]))}: {escape(u["reason"])}</li>'
                       for u in doc.get("unplaced", []))
    return ("<section id=models><h2>Models</h2><table><tr><th>model</th><th>state</th><th>running / wanted</th>"
            f"<th>route</th></tr>{''.join(rows)}</table>"
            + (f"<h3>Not placed</h3><ul>{unplaced}</ul>" if unplaced else "") + "</section>")


def _demand(doc: dict[str, Any]) -> str:
    scaling = doc.get("scaling") or []
    if not scaling:
        return "<section id=demand><h2>On-demand models</h2><p class=sub>none</p></section>"
    rows = "".join(
        f'<tr data-model="{escape(s["model"])}"><td><b>{escape(s["model"])}</b></td><td>{s["running"]} → '
        f'{s["wanted"]}</td><td>{s["inFlight"]}</td><td>{s["queued"]}</td><td>{escape(s["rule"])}</td>'
        f'<td class=reason>{escape(s["reason"])}</td></tr>' for s in scaling)
    return ("<section id=demand><h2>On-demand models</h2><table><tr><th>model</th><th>replicas</th><th>in flight</th>"
            f"<th>held</th><th>rule</th><th>why</th></tr>{rows}</table></section>")


def _jobs(doc: dict[str, Any]) -> str:
    jobs = doc.get("jobs") or []
    if not jobs:
        return "<section id=jobs><h2>Jobs</h2><p class=sub>none</p></section>"
    rows = "".join(
        f'<tr data-job="{escape(j["name"])}"><td><b>{escape(j["name"])}</b></td>'
        f'<td class="state-{escape(j["state"])}">{escape(j["state"])}</td>'
        f'<td>{escape(j["node"] or "-")} {escape(",".join(f"gpu{g}" for g in j["gpus"]))}</td><td>{j["runs"]}</td>'
        f'<td class=reason>{escape(j.get("reason") or "")}</td></tr>' for j in jobs)
    return ("<section id=jobs><h2>Jobs</h2><table><tr><th>job</th><th>state</th><th>where</th><th>runs</th>"
            f"<th>why</th></tr>{rows}</table></section>")


def _revisions(doc: dict[str, Any]) -> str:
    rows = doc.get("revisions")
    if rows is None:
        return "<section id=revisions><h2>Revisions</h2><p class=sub>not read from the cluster</p></section>"
    if not rows:
        return "<section id=revisions><h2>Revisions</h2><p class=sub>none recorded yet</p></section>"
    body = "".join(
        f'<tr class=revision data-revision="{r["revision"]}"><td><b>{r["revision"]}</b></td><td>{escape(r["at"])}</td>'
        f'<td class="{escape(r["outcome"])}">{escape(r["outcome"])}</td><td>{r["actions"]}</td>'
        f'<td>{escape(r["cause"])}</td><td>{escape(r["by"]["user"])}@{escape(r["by"]["host"])}</td>'
        f'<td>{escape(r["source"])}{_subject(r)}</td><td class=reason>{escape(r["reason"])}</td></tr>'
        for r in rows)
    current = doc.get("revision")
    actions = ""
    if current is not None:
        items = "".join(_action_item(a, a.get("ok"), a.get("message", "")) for a in current["plan"])
        actions = (f"<h3>Revision {current['revision']}: its actions</h3><ul id=current-actions>"
                   f"{items or '<li class=sub>none</li>'}</ul>")
    return ("<section id=revisions><h2>Revisions</h2><table><tr><th>rev</th><th>at</th><th>outcome</th>"
            f"<th>actions</th><th>cause</th><th>by</th><th>source</th><th>reason</th></tr>{body}</table>{actions}"
            "</section>")


def _subject(row: dict[str, Any]) -> str:
    return f' <span class=sub>"{escape(row["subject"])}"</span>' if row.get("subject") else ""


def _action_item(action: dict[str, Any], ok: bool | None, message: str) -> str:
    where = " → ".join(f"{loc['node']}/" + "+".join(f"gpu{g}" for g in loc["gpus"])
                       for loc in (action.get("from"), action.get("to")) if loc)
    result = ("" if ok is None else ' <span class=ok>done</span>' if ok
              else f' <span class=failed>failed: {escape(message)}</span>')
    return (f'<li class=action><b>{escape(action["action"])}</b> '
            f'{escape(replica_id(action["model"], action["replica"]))} {escape(where)}{result} '
            f'<span class=reason>{escape(action["reason"])}</span></li>')


def _last_plan(doc: dict[str, Any], last_plan: dict[str, Any] | None) -> str:
    if last_plan is None:
        return ("<section id=last-plan><h2>Last plan</h2><p class=sub>nothing to do since this watcher started</p>"
                "</section>")
    items = "".join(_action_item(a, None, "") for a in last_plan["actions"])
    return (f"<section id=last-plan><h2>Last plan ({escape(last_plan['at'])})</h2>"
            f"<ul>{items or '<li class=sub>none</li>'}</ul></section>")
