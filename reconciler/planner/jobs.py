"""What each Job wants now, from its spec, its runs (observed) and the clock (the observation's time). Pure.

A job without a schedule runs once per revision of its spec; one with a schedule runs once per cron time (UTC). A
failed run is retried up to ``retries`` times with exponential backoff; a preempted run is requeued and does not
count. A run past its ``activeDeadline`` is stopped, which counts as a failure. While a run is active no other starts.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from croniter import croniter

from reconciler.desired import Job
from reconciler.observed import JobRunState, ObservedJobRun


@dataclass(frozen=True, slots=True)
class JobSettings:
    backoff_base: float = 10.0  # seconds before the first retry; doubles per failure
    backoff_max: float = 600.0
    history: int = 5  # finished runs kept per job beyond those of its current revision or schedule time
    # A scheduled time is only started this long after it passed: a job added at noon does not run its 02:00 slot.
    starting_deadline: float = 3600.0


class JobState(StrEnum):
    """A job as people and scripts see it (`status --format json`: ``state``)."""

    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ERROR = "error"  # its decision failed: nothing is started or stopped for it until it can be decided


FAILURES = (JobRunState.FAILED, JobRunState.STOPPED)


@dataclass(frozen=True, slots=True)
class JobDecision:
    name: str
    state: JobState
    wants_run: bool  # a new run should be placed now
    next_run: int  # the number a new run gets
    slot: float | None  # the scheduled time a new run is for
    active: ObservedJobRun | None  # the run that holds its GPUs and may stay
    stop: tuple[tuple[ObservedJobRun, str], ...]  # active runs to stop, with why
    prune: tuple[ObservedJobRun, ...]  # finished runs beyond the history kept
    runs: int  # runs so far
    failures: int  # of the current revision or scheduled time
    preemptions: int
    reason: str  # why it is waiting, when it runs next, how its last run ended
    last: ObservedJobRun | None  # the latest run


def undecided(job: Job, runs: tuple[ObservedJobRun, ...], error: Exception) -> JobDecision:
    """A job whose decision failed, contained to it: an active run keeps its place, nothing new starts or stops,
    and the reason says what failed (the other jobs and every model are planned as usual)."""
    runs = tuple(sorted(runs, key=lambda r: r.run))
    active = next((r for r in reversed(runs) if r.active), None)
    return JobDecision(
        name=job.name, state=JobState.ERROR, wants_run=False, next_run=(runs[-1].run + 1) if runs else 1, slot=None,
        active=active, stop=(), prune=(), runs=len(runs), failures=0,
        preemptions=sum(r.state is JobRunState.PREEMPTED for r in runs),
        reason=f"cannot be decided, so nothing starts or stops for it: {type(error).__name__}: {error}"[:500],
        last=runs[-1] if runs else None,
    )


def due_slot(schedule: str, now: float) -> float:
    """The latest scheduled time at or before `now`."""
    previous = croniter(schedule, now).get_prev(float)
    following = croniter(schedule, previous).get_next(float)
    return following if following <= now else previous


def next_slot(schedule: str, now: float) -> float:
    return croniter(schedule, now).get_next(float)


def backoff(failures: int, settings: JobSettings) -> float:
    return min(settings.backoff_max, settings.backoff_base * 2 ** max(0, failures - 1))


def _utc(seconds: float) -> str:
    from datetime import UTC, datetime  # formatting only: the value is an input, never the clock

    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _ended(run: ObservedJobRun) -> str:
    if run.state is JobRunState.SUCCEEDED:
        return f"run {run.run} succeeded"
    tail = f": {run.message.strip().splitlines()[-1]}" if run.message.strip() else ""
    return f"run {run.run} {run.state}{tail}"


def decide(job: Job, runs: tuple[ObservedJobRun, ...], now: float | None, settings: JobSettings) -> JobDecision:
    runs = tuple(sorted(runs, key=lambda r: r.run))
    last = runs[-1] if runs else None
    next_run = (last.run + 1) if last else 1
    stop: list[tuple[ObservedJobRun, str]] = []
    active = None
    for run in (r for r in runs if r.active):
        if job.schedule is None and run.revision != job.revision:
            stop.append((run, f"the spec of {job.name} changed: run {run.run} stops, a new run starts"))
        elif active is not None:
            stop.append((run, f"run {active.run} of {job.name} is already active"))
        elif (job.active_deadline is not None and now is not None and run.started is not None
              and now - run.started >= job.active_deadline):
            stop.append((run, f"run {run.run} ran past its activeDeadline of {job.active_deadline} s: killed, "
                              "counted as a failure"))
        else:
            active = run

    slot = None
    if job.schedule is None:
        generation = [r for r in runs if r.revision == job.revision]
    elif now is None:
        generation = []
    else:
        slot = due_slot(job.schedule, now)
        generation = [r for r in runs if r.slot == slot]
    failures = sum(r.state in FAILURES for r in generation)
    preemptions = sum(r.state is JobRunState.PREEMPTED for r in runs)
    kept = {r.run for r in generation} | {r.run for r, _ in stop} | ({active.run} if active else set())
    finished = [r for r in runs if not r.active and r.run not in kept]
    prune = tuple(finished[: max(0, len(finished) - settings.history)])

    def decision(state: JobState, reason: str, wants: bool = False) -> JobDecision:
        return JobDecision(
            name=job.name, state=state, wants_run=wants, next_run=next_run, slot=slot, active=active,
            stop=tuple(stop), prune=prune, runs=len(runs), failures=failures, preemptions=preemptions,
            reason=reason, last=last,
        )

    if active is not None:
        since = f" since {_utc(active.started)}" if active.started is not None else ""
        where = f" on {active.node}/" + "+".join(f"gpu{g}" for g in active.gpus) if active.node else ""
        return decision(JobState.RUNNING, f"run {active.run} {active.state}{where}{since}")
    if job.schedule is not None:
        if now is None:
            return decision(JobState.WAITING, f"schedule {job.schedule!r}: needs the time of a live observation")
        upcoming = f"next run at {_utc(next_slot(job.schedule, now))}"
        if not generation and now - slot > settings.starting_deadline:
            state = JobState(last.state) if last and last.state in (JobRunState.SUCCEEDED, JobRunState.FAILED) \
                else JobState.WAITING
            return decision(state, (f"{_ended(last)}; " if last else "") + upcoming)
    ended = [r for r in generation if not r.active]
    latest = max(ended, key=lambda r: r.run) if ended else None
    if any(r.state is JobRunState.SUCCEEDED for r in generation):
        done = max((r for r in generation if r.state is JobRunState.SUCCEEDED), key=lambda r: r.run)
        after = f"; {upcoming}" if job.schedule is not None else ""
        return decision(JobState.SUCCEEDED, f"{_ended(done)}{after}")
    if failures > job.retries:
        assert latest is not None
        after = f"; {upcoming}" if job.schedule is not None else ""
        return decision(JobState.FAILED, f"{_ended(latest)} after {job.retries} retries{after}")
    preempted = latest is not None and latest.state is JobRunState.PREEMPTED
    state = JobState.PREEMPTED if preempted else JobState.WAITING
    if failures and latest is not None and latest.state in FAILURES:
        if now is None:
            return decision(state, f"{_ended(latest)}; retry {failures} of {job.retries} needs the time of a live "
                                   "observation")
        retry_at = (latest.ended or latest.started or now) + backoff(failures, settings)
        if now < retry_at:
            return decision(state, f"{_ended(latest)}; retry {failures} of {job.retries} at {_utc(retry_at)} "
                                   "(backoff)")
        return decision(state, f"{_ended(latest)}; retry {failures} of {job.retries}", wants=True)
    if preempted:
        return decision(state, f"run {latest.run} was preempted; requeued", wants=True)
    if job.schedule is not None:
        return decision(state, f"scheduled for {_utc(slot)}", wants=True)
    return decision(state, "new revision: one run" if runs else "first run", wants=True)
