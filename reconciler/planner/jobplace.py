"""Jobs among the models of a pool: their runs as packing items, placed in priority order, a running job never
moved; and the plan's job actions (create = submit, evict = preempt, delete = stop) with their reasons. Pure."""

from __future__ import annotations

from dataclasses import replace

from reconciler.desired import DesiredState, Job, Preemption, canonical_json
from reconciler.observed import JobRunState, ObservedJobRun, ObservedState
from reconciler.packer import Item, PackSettings, Problem, Solution, pack
from reconciler.plan import Action, ActionKind, Location, PlannedJob, is_job, job_item, job_name
from reconciler.planner.jobs import JobDecision, JobSettings, decide, undecided
from reconciler.planner.pools import PoolProblem
from reconciler.quantity import format_bytes


def with_recorded(desired: DesiredState, observed: ObservedState) -> DesiredState:
    """The specs' jobs and the ad-hoc jobs recorded in the cluster (`reconciler run`); a spec's job wins a name."""
    named = {j.name for j in desired.jobs}
    extra = tuple(j for j in observed.recorded if j.name not in named)
    if not extra:
        return desired
    return replace(desired, jobs=tuple(sorted((*desired.jobs, *extra), key=lambda j: j.name)))


def decisions(desired: DesiredState, observed: ObservedState, settings: JobSettings) -> dict[str, JobDecision]:
    """Each job's decision. One that fails (a schedule a recorded job or an old spec carries that never fires, a
    history the rules did not foresee) is contained to its job: it is reported as such, and every other job and
    every model are still planned."""
    out = {}
    for job in desired.jobs:
        runs = observed.runs_of(job.name)
        try:
            out[job.name] = decide(job, runs, observed.at, settings)
        except Exception as exc:  # noqa: BLE001 - contained and reported in the plan, never hiding the others
            out[job.name] = undecided(job, runs, exc)
    return out


def _item(job: Job, run: int, current: tuple[int, ...] | None) -> Item:
    return Item(
        model=job_item(job.name),
        replica=run,
        vram=job.vram,
        gpus=job.gpus,
        priority=job.priority,
        preempts=job.preemption == Preemption.LOWER_PRIORITY,
        preemptible=job.preemptible,
        current=current,
    )


def with_jobs(pp: PoolProblem, desired: DesiredState, chosen: dict[str, JobDecision]) -> PoolProblem:
    """The pool's problem with an item for each job run it holds or wants: an active run where it runs, a new run
    anywhere."""
    where = {(b.node, b.index): i for i, b in enumerate(pp.problem.bins)}
    items = list(pp.problem.items)
    for job in desired.jobs:
        if job.pool != pp.pool.name:
            continue
        d = chosen[job.name]
        if d.active is not None:
            located = tuple(where.get((d.active.node, g), -1) for g in d.active.gpus)
            if d.active.gpus and -1 not in located and len(located) == job.gpus:
                items.append(_item(job, d.active.run, located))
        elif d.wants_run:
            items.append(_item(job, d.next_run, None))
    return replace(pp, problem=replace(pp.problem, items=tuple(items)))


def pack_pinned(problem: Problem, settings: PackSettings) -> Solution:
    """`pack`, except that a running job is never moved: one the packer would move stays where it runs (its VRAM
    taken out of its GPUs) and the rest is packed again. A running job may still be preempted."""
    pinned: set[int] = set()
    while True:
        keep = [i for i in range(len(problem.items)) if i not in pinned]
        capacity = [b.capacity for b in problem.bins]
        for i in pinned:
            for b in problem.items[i].current or ():
                capacity[b] -= problem.items[i].vram
        sub = Problem(
            bins=tuple(replace(b, capacity=max(0, c)) for b, c in zip(problem.bins, capacity)),
            items=tuple(problem.items[i] for i in keep),
            policy=problem.policy,
            max_moves=problem.max_moves,
        )
        solution = pack(sub, settings)
        solved = solution.assignment
        assignment: list[tuple[int, ...] | None] = [None] * len(problem.items)
        for k, i in enumerate(keep):
            assignment[i] = solved[k]
        for i in pinned:
            assignment[i] = problem.items[i].current
        moved = {
            i
            for i in keep
            if is_job(problem.items[i].model)
            and problem.items[i].current is not None
            and assignment[i] not in (None, problem.items[i].current)
        }
        if not moved:
            if not pinned:
                return solution
            # Optimal for the problem with the running jobs held in place, not for the pool's own: say nothing more.
            return replace(solution, assignment=tuple(assignment), proven_optimal=False,
                           quality=replace(solution.quality, proven_optimal=False))
        pinned |= moved


def _where(run: ObservedJobRun) -> Location | None:
    return Location(run.node, run.gpus) if run.node and run.gpus else None


def actions(
    *,
    desired: DesiredState,
    observed: ObservedState,
    chosen: dict[str, JobDecision],
    targets: dict[tuple[str, int], Location | None],
    why_left: dict[tuple[str, int], str],
    settings: JobSettings,
) -> list[Action]:
    """Submit, preempt and stop: `targets` and `why_left` are the packing outcome of every job item."""
    found: list[Action] = []
    wanted = {job.name for job in desired.jobs}
    for run in observed.jobs:
        if run.job not in wanted:
            what = "stop" if run.active else "forget"
            found.append(Action(ActionKind.DELETE, job_item(run.job), run.run, _where(run), None, run.vram,
                                f"job {run.job} is no longer desired: {what} run {run.run}"))
    for job in desired.jobs:
        d = chosen[job.name]
        item = job_item(job.name)
        for run, why in d.stop:
            found.append(Action(ActionKind.DELETE, item, run.run, _where(run), None, run.vram, why))
        for run in d.prune:
            found.append(Action(ActionKind.DELETE, item, run.run, _where(run), None, run.vram,
                                f"history keeps the last {settings.history} finished runs of {job.name}"))
        if d.active is not None:
            key = (item, d.active.run)
            if key in targets and targets[key] is None:
                found.append(Action(ActionKind.EVICT, item, d.active.run, _where(d.active), None, job.vram,
                                    f"preempted: {why_left.get(key) or 'no room left'}; requeued"))
        elif d.wants_run:
            target = targets.get((item, d.next_run))
            if target is not None:
                found.append(Action(ActionKind.CREATE, item, d.next_run, None, target, job.vram,
                                    f"run {d.next_run} ({d.reason}): {format_bytes(job.vram)} on {target}"))
    return found


def planned(
    *,
    desired: DesiredState,
    chosen: dict[str, JobDecision],
    targets: dict[tuple[str, int], Location | None],
    why_not: dict[tuple[str, int], str],
) -> tuple[PlannedJob, ...]:
    out = []
    for job in desired.jobs:
        d = chosen[job.name]
        run = d.active.run if d.active is not None else d.next_run
        key = (job_item(job.name), run)
        target = targets.get(key)
        reason = d.reason
        if d.wants_run and target is None and key in targets:
            reason = f"{d.reason}; waiting for room: {why_not.get(key, '')}"
        out.append(
            PlannedJob(
                name=job.name,
                state=str(d.state),
                run=run,
                runs=d.runs,
                failures=d.failures,
                preemptions=d.preemptions,
                reason=reason,
                node=target.node if target else "",
                gpus=target.gpus if target else (),
                vram=job.vram,
                entrypoint=job.entrypoint,
                working_dir=job.working_dir,
                env_json=canonical_json(dict(job.env)),
                revision=job.revision,
                slot=d.slot,
                priority=job.priority,
            )
        )
    return tuple(out)


def runs_after(plan_jobs: tuple[PlannedJob, ...], plan_actions: tuple[Action, ...],
               observed: ObservedState) -> tuple[ObservedJobRun, ...]:
    """The job runs once a plan is applied and every submitted run has started: for idempotence checks."""
    stopped = {(job_name(a.model), a.replica): a.kind for a in plan_actions
               if is_job(a.model) and a.kind in (ActionKind.EVICT, ActionKind.DELETE)}
    runs = []
    for run in observed.jobs:
        kind = stopped.get((run.job, run.run))
        if kind is ActionKind.DELETE and not run.active:
            continue  # forgotten history
        if kind is not None and run.active:
            state = JobRunState.PREEMPTED if kind is ActionKind.EVICT else JobRunState.STOPPED
            run = replace(run, state=state, ended=observed.at)
        runs.append(run)
    created = {(job_name(a.model), a.replica) for a in plan_actions if is_job(a.model) and a.kind is ActionKind.CREATE}
    for j in plan_jobs:
        if (j.name, j.run) in created:
            runs.append(ObservedJobRun(job=j.name, run=j.run, revision=j.revision, state=JobRunState.RUNNING,
                                       node=j.node, gpus=j.gpus, vram=j.vram, slot=j.slot, started=observed.at))
    return tuple(runs)
