"""The cluster for people (`reconciler status`) and an apply's report. Renders only: no Ray, no decisions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

from reconciler.observed import (
    EngineDeath,
    ObservedNode,
    ObservedReplica,
    ObservedState,
    ReplicaState,
    dead_nodes,
    replicas_on,
)
from reconciler.plan import GpuUse, GpuView, replica_id
from reconciler.planner.memory import overruns
from reconciler.quantity import format_bytes
from reconciler.render._common import CellKind, free, segments, used
from reconciler.render.memory import measured_text, overrun_line

BAR_WIDTH = 40
MARKS = "█▓■◆●▲▼◼"  # one per replica on a GPU; the other cells are as in plans (free, foreign, reserve)
_CELLS = {CellKind.FREE: "·", CellKind.FOREIGN: "░", CellKind.RESERVE: "▒"}

_COLOURS = {"ok": "32", "warn": "33", "bad": "31", "dim": "2", "bold": "1"}


def _c(text: str, style: str, color: bool) -> str:
    return f"\033[{_COLOURS[style]}m{text}\033[0m" if color else text


def _bar(gpu: GpuView, uses: tuple[GpuUse, ...]) -> str:
    """The same cut of a GPU into cells as the plan's bars (``render._common.segments``)."""
    cells = []
    for seg in segments(gpu, uses, BAR_WIDTH):
        if seg.kind is CellKind.REPLICA:
            cells.append(MARKS[uses.index(seg.use) % len(MARKS)] * seg.width)
        else:
            cells.append(_CELLS[seg.kind] * seg.width)
    return "[" + "".join(cells) + "]"


def _state(replica: ObservedReplica, color: bool) -> str:
    style = {
        ReplicaState.RUNNING: "ok",
        ReplicaState.STARTING: "warn",
        ReplicaState.PENDING: "warn",
        ReplicaState.STOPPING: "dim",
        ReplicaState.FAILED: "bad",
    }[replica.state]
    return _c(str(replica.state), style, color)


def render_status(
    observed: ObservedState,
    *,
    routes: Iterable[str] = (),
    color: bool = False,
    http_url: str | None = None,
    unplaced: Iterable[Any] = (),
    gateway_url: str | None = None,
    reserves: Mapping[tuple[str, int], int] | None = None,
) -> str:
    """``reserves``: the VRAM each GPU's pool keeps free, by (node, index), when the specs are known."""
    reserves = reserves or {}
    lines: list[str] = []
    if gateway_url:  # first: it is what people point their clients at
        lines.append(_c("OpenAI base URL: ", "bold", color) + gateway_url)
    on_gpu: dict[tuple[str, int], list[ObservedReplica]] = {}
    for replica in observed.replicas:
        for gpu in replica.gpus:
            on_gpu.setdefault((replica.node, gpu), []).append(replica)
    for node in observed.nodes:
        if not node.alive:
            lines.append(_c(f"{node.name}", "bold", color) + "  " + _c(dead_node_line(observed, node), "bad", color))
            lines.append("")
            continue
        source = "simulated from the inventory" if node.simulated else "NVML"
        labels = ", ".join(f"{k}={v}" for k, v in node.labels if not k.startswith("reconciler.io/"))
        lines.append(_c(f"{node.name}", "bold", color) + f"  ({source}{'; ' + labels if labels else ''})")
        if not node.gpus:
            lines.append("  no GPUs")
        for gpu in node.gpus:
            replicas = sorted(on_gpu.get((node.name, gpu.index), []), key=lambda r: (r.model, r.replica))
            held = [r for r in replicas if r.state != ReplicaState.PENDING]
            uses = tuple(GpuUse(r.model, r.replica, r.vram) for r in held)
            reserve = reserves.get((node.name, gpu.index), 0)
            view = GpuView(pool="", node=node.name, index=gpu.index, name=gpu.name, memory=gpu.memory,
                           reserve=reserve, foreign=gpu.foreign, before=uses, after=uses)
            left = max(0, free(view, uses))
            lines.append(
                f"  gpu{gpu.index} {gpu.name or '?':<10} {_bar(view, uses)} "
                f"{format_bytes(used(uses))} reconciler, {format_bytes(gpu.foreign)} foreign, "
                + (f"{format_bytes(reserve)} reserve, " if reserve else "")
                + _c(format_bytes(left) + " free", "ok" if left else "warn", color)
                + f" of {format_bytes(gpu.memory)}"
            )
            for replica in replicas:
                mark = MARKS[held.index(replica) % len(MARKS)] if replica in held else " "
                label = replica_id(replica.model, replica.replica)
                measured = measured_text(replica)
                lines.append(f"    {mark} {label:<28} {format_bytes(replica.vram):>9}  {_state(replica, color)}"
                             + (f"  {measured}" if measured else ""))
        lines.append("")
    known = {(n.name) for n in observed.nodes}
    elsewhere = [r for r in observed.replicas if r.node not in known]
    troubled = [r for r in observed.replicas if r.state != ReplicaState.RUNNING] + elsewhere
    if troubled:
        lines.append(_c("Replicas not running:", "bold", color))
        for replica in sorted(set(troubled), key=lambda r: (r.model, r.replica, r.app)):
            where = f"{replica.node}/" + "+".join(f"gpu{g}" for g in replica.gpus)
            why = f": {replica.message}" if replica.message else ""
            lines.append(f"  {replica_id(replica.model, replica.replica)} on {where} {_state(replica, color)}{why}")
        lines.append("")
    deaths = recent_deaths(observed)
    if deaths:
        lines.append(_c("Engines that died (the replica is replaced):", "bold", color))
        lines.extend("  " + _c(engine_death_line(d, observed.at), "bad", color) for d in deaths)
        lines.append("")
    over = overruns(observed)
    if over:
        lines.append(_c("Replicas using more memory than planned:", "bold", color))
        lines.extend("  " + _c(overrun_line(o), "bad", color) for o in over)
        lines.append("")
    unplaced = list(unplaced)
    if unplaced:
        lines.append(_c("Replicas the specs want that have no place:", "bold", color))
        for item in unplaced:
            lines.append(f"  {replica_id(item.model, item.replica)}: {item.reason}")
        lines.append("")
    running = sum(1 for r in observed.replicas if r.state == ReplicaState.RUNNING)
    dead = dead_nodes(observed)
    summary = f"{running}/{len(observed.replicas)} replicas running on {len(observed.nodes) - len(dead)} node(s)"
    if dead:
        summary += _c(f"; {len(dead)} node(s) dead: {', '.join(n.name for n in dead)}", "bad", color)
    routes = list(routes)
    if http_url and routes:
        summary += "; endpoints: " + ", ".join(f"{http_url}{route}" for route in routes)
    lines.append(summary)
    return "\n".join(lines) + "\n"


RECENT_DEATH_S = 3600.0  # status names engine deaths of the last hour; older ones are history (events, metrics)


def recent_deaths(observed: ObservedState) -> list[EngineDeath]:
    now = observed.at
    return [d for d in observed.engine_deaths if now is None or now - d.at <= RECENT_DEATH_S]


def engine_death_line(death: EngineDeath, now: float | None) -> str:
    where = f"{death.node}/" + "+".join(f"gpu{g}" for g in death.gpus)
    ago = f", {max(0, round(now - death.at))} s ago" if now is not None else ""
    return f"{replica_id(death.model, death.replica)} on {where}: its engine died ({death.reason}){ago}"


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def dead_node_line(observed: ObservedState, node: ObservedNode) -> str:
    """A dead node in one line: since when, why, and what ran there (its replicas must find room elsewhere)."""
    since = f" since {_iso(node.dead_since)}" if node.dead_since is not None else ""
    why = f" ({node.death_reason})" if node.death_reason else ""
    ran = sorted(replica_id(r.model, r.replica) for r in replicas_on(observed, node.name))
    return f"DEAD{since}{why}; ran: {', '.join(ran) if ran else 'no replicas of reconciler'}"


def dead_node_lines(observed: ObservedState, *, color: bool = False) -> list[str]:
    """Dead nodes for the plan's readers: the plan itself only says where their replicas go now."""
    return [_c(f"node {n.name}: {dead_node_line(observed, n)}", "bad", color) for n in dead_nodes(observed)]


def render_report(report: Any, *, color: bool = False) -> str:
    """An apply's outcome: one line per action, failures with the cluster's words for why."""
    lines = []
    for outcome in report.outcomes:
        mark = _c("ok  ", "ok", color) if outcome.ok else _c("FAIL", "bad", color)
        lines.append(f"{mark} {outcome.action.describe()}: {outcome.message}")
    for app in report.cleaned:
        lines.append(f"{_c('ok  ', 'ok', color)} removed {app} (not in the plan's end state)")
    for error in report.router_errors:
        lines.append(f"{_c('FAIL', 'bad', color)} {error}")
    for error in getattr(report, "gateway_errors", ()):
        lines.append(f"{_c('WARN', 'bad', color)} {error}")
    failed = len(report.failed) + len(report.router_errors)
    verdict = _c(f"{failed} action(s) failed", "bad", color) if failed else _c("all actions succeeded", "ok", color)
    lines.append(f"Apply finished in {report.elapsed:.1f}s: {verdict}.")
    return "\n".join(lines) + "\n\n"


def lock_lines(record: Any, now: float) -> list[str]:
    """The apply lock and what its holder published (crash-loop backoff), for `reconciler status`.

    ``record`` is the lease record the adapter read (``adapter.lease.describe``), or None when nobody ever held it.
    """
    if record is None:
        return ["apply lock: free (no reconciler has taken it)"]
    if record.free(now):
        return [f"apply lock: free (last {record.describe(now)})"]
    lines = [f"apply lock: {record.describe(now)}"]
    status = record.status
    revision, broken = status.get("revision"), status.get("brokenRevision")
    if status.get("git"):
        git = status["git"]
        applied = f'{revision["commit"][:7]} "{revision["subject"]}"' if revision else "none yet"
        lines.append(f"  revision: {applied} of {git['url']} (branch {git['branch']}, {git['path']})")
    if broken:
        lines.append(f'  not applied: commit {broken["commit"][:7]} "{broken["subject"]}" has invalid specs')
    if status.get("specValid") is False:
        lines.append("  specs invalid: the watcher keeps enforcing the last good desired state "
                     f"({status.get('desiredFingerprint')})")
    for held in status.get("backoff", []):
        left = held.get("retryAt", 0) - now
        when = f"next try in {left:.0f} s" if left > 0 else "retrying now"
        lines.append(f"  crash loop: {replica_id(held['model'], held['replica'])}: {held['failures']} failures, "
                     f"{when}; last: {held.get('reason') or 'unknown'}")
    return lines
