"""`reconciler history`: the revisions recorded in the cluster, as a table or JSON; one revision with its plan,
what each action came to, and its spec changes against the revision before. Renders only."""

from __future__ import annotations

import json
from typing import Any

from rich.text import Text

from reconciler.changes import changes_to_json, spec_changes
from reconciler.plan import replica_id
from reconciler.render import text
from reconciler.render.diff import spec_lines
from reconciler.revision import Outcome, Revision, detail_json, iso, summary_json

STYLES = {Outcome.CONVERGED: "green", Outcome.FAILED: "bold red", Outcome.INTERRUPTED: "yellow",
          Outcome.APPLYING: "cyan"}


def history_json(revisions: list[Revision]) -> str:
    return json.dumps({"revisions": [summary_json(r) for r in revisions]}, indent=2, ensure_ascii=False) + "\n"


def render_history(revisions: list[Revision], *, color: bool = False) -> str:
    if not revisions:
        return "No revisions recorded in this cluster yet: `reconciler apply` or `watch` records one per apply.\n"
    rows = [(str(r.number), iso(r.at), str(r.outcome), str(len(r.plan.actions)), r.cause,
             f"{r.by.user}@{r.by.host}", _source(r)) for r in revisions]
    head = ("REV", "AT", "OUTCOME", "ACTIONS", "CAUSE", "BY", "SOURCE")
    widths = [max(len(row[i]) for row in [head, *rows]) for i in range(len(head))]
    lines = [Text("  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip(), "bold")]
    for revision, row in zip(revisions, rows):
        line = Text()
        for i, (cell, width) in enumerate(zip(row, widths)):
            line.append(cell.ljust(width) + ("  " if i < len(row) - 1 else ""),
                        STYLES[revision.outcome] if i == 2 else "")
        lines.append(Text(line.plain.rstrip()) if not color else line)
        if revision.reason and revision.outcome is not Outcome.CONVERGED:
            lines.append(Text(f"      {revision.reason}", "dim"))
    return text.to_str(lines, color=color)


def _source(revision: Revision) -> str:
    source = str(revision.source)
    if revision.source.subject:
        source += f' "{revision.source.subject}"'
    return source


def revision_json(revision: Revision, previous: Revision | None) -> str:
    document: dict[str, Any] = detail_json(revision)
    document["against"] = previous.number if previous is not None else None
    document["specChanges"] = (
        changes_to_json(spec_changes(previous.desired, revision.desired), ())["specChanges"]
        if previous is not None and previous.desired is not None and revision.desired is not None else None
    )
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def render_revision(revision: Revision, previous: Revision | None, *, color: bool = False) -> str:
    r = revision
    lines = [
        Text(f"Revision {r.number}: {r.cause}", "bold"),
        Text(f"  at       {iso(r.at)}" + (f" (ended {iso(r.ended)})" if r.ended is not None else "")),
        Text(f"  by       {r.by}"),
        Text(f"  source   {_source(r)}"),
        Text(f"  digests  desired state {r.desired_fingerprint}, plan {r.plan_digest}"),
    ]
    outcome = Text("  outcome  ")
    outcome.append(str(r.outcome), STYLES[r.outcome])
    if r.reason:
        outcome.append(f": {r.reason}")
    lines += [outcome, Text()]
    if r.results:
        lines.append(Text("What each action came to:", "bold"))
        for action, result in zip(r.plan.actions, r.results):
            line = Text("  ")
            line.append("done   " if result.ok else "FAILED ", "green" if result.ok else "bold red")
            line.append(f"{action.kind} {replica_id(action.model, action.replica)}")
            if result.message:
                line.append(f": {result.message}", "dim")
            lines.append(line)
        lines.append(Text())
    lines.append(Text("The plan it applied:", "bold"))
    lines += text.plan_lines(r.plan)
    lines.append(Text())
    if previous is None:
        lines.append(Text("Spec changes: no earlier revision is kept to compare with.", "bold"))
    elif previous.desired is None or r.desired is None:
        lines.append(Text("Spec changes: a saved plan was applied without its specs; nothing to compare.", "bold"))
    else:
        lines.append(Text(f"Spec changes from revision {previous.number}:", "bold"))
        lines += spec_lines(spec_changes(previous.desired, r.desired))
    return text.to_str(lines, color=color)


def current_line(revision: Revision | None) -> str:
    """What `reconciler status` says of the current revision."""
    if revision is None:
        return "revision: none recorded yet"
    return (f"revision: {revision.number} ({revision.outcome}, {iso(revision.at)}, {revision.cause}, "
            f"by {revision.by.user}@{revision.by.host}, {len(revision.plan.actions)} actions, {_source(revision)})")
