"""Jobs in the plan: what each job wants now (a table over its runs and the clock), and where its runs go among the
models (placement by priority, a running job never moved, preemption by class, retries, schedules, history)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from reconciler.desired import DesiredState, GpuSpec, InventoryNode, Job, Pool, Preemption
from reconciler.observed import JobRunState, ObservedJobRun, from_inventory
from reconciler.plan import ActionKind, from_json, to_json
from reconciler.planner import apply_to_observed, plan
from reconciler.planner.jobs import JobSettings, JobState, decide, due_slot

from .test_planner import FAST, GiB, kinds, model

S = JobSettings(backoff_base=10, backoff_max=600, history=2, starting_deadline=3600)
T0 = datetime(2026, 11, 30, 12, 0, tzinfo=UTC).timestamp()


def job(name: str = "embed", vram_gib: float = 6, *, priority: int = 10, preemptible: bool = True,
        preempts: bool = True, **kw) -> Job:
    fields = dict(name=name, pool="homelab", priority_class="batch", priority=priority,
                  preemption=Preemption.LOWER_PRIORITY if preempts else Preemption.NEVER, preemptible=preemptible,
                  vram=int(vram_gib * GiB), entrypoint="python embed.py")
    fields.update(kw)
    return Job(**fields)


def run(n: int, state: JobRunState, j: Job | None = None, **kw) -> ObservedJobRun:
    j = j or job()
    fields = dict(job=j.name, run=n, revision=j.revision, state=state, node="node-a", gpus=(0,), vram=j.vram,
                  started=T0 - 100, ended=None if state in (JobRunState.PENDING, JobRunState.RUNNING) else T0 - 50)
    fields.update(kw)
    return ObservedJobRun(**fields)


def lab(*items, gpus: int = 2, memory_gib: int = 24) -> DesiredState:
    pool = Pool(name="homelab", inventory=(InventoryNode("node-a", tuple(GpuSpec("rtx", memory_gib * GiB)
                                                                          for _ in range(gpus))),))
    models = tuple(sorted((i for i in items if not isinstance(i, Job)), key=lambda m: m.name))
    jobs = tuple(sorted((i for i in items if isinstance(i, Job)), key=lambda j: j.name))
    return DesiredState(pools=(pool,), models=models, jobs=jobs)


def observed(desired: DesiredState, *runs: ObservedJobRun, at: float | None = T0, replicas=()):
    return replace(from_inventory(desired), jobs=tuple(runs), at=at, replicas=tuple(replicas))


# -- what a job wants: a table over its runs and the clock ------------------------------------------------------
F, P, OK, R = JobRunState.FAILED, JobRunState.PREEMPTED, JobRunState.SUCCEEDED, JobRunState.RUNNING
CASES = [
    # (job, runs, now) -> (state, wants a run, next run number, failures)
    ("first run", job(), [], T0, (JobState.WAITING, True, 1, 0)),
    ("running", job(), [run(1, R)], T0, (JobState.RUNNING, False, 2, 0)),
    ("succeeded is done", job(), [run(1, OK)], T0, (JobState.SUCCEEDED, False, 2, 0)),
    ("failed, in backoff", job(retries=3), [run(1, F, ended=T0 - 5)], T0, (JobState.WAITING, False, 2, 1)),
    ("failed, backoff over", job(retries=3), [run(1, F, ended=T0 - 10)], T0, (JobState.WAITING, True, 2, 1)),
    ("second failure doubles", job(retries=3), [run(1, F), run(2, F, ended=T0 - 19)], T0,
     (JobState.WAITING, False, 3, 2)),
    ("second backoff over", job(retries=3), [run(1, F), run(2, F, ended=T0 - 20)], T0,
     (JobState.WAITING, True, 3, 2)),
    ("retries spent", job(retries=1), [run(1, F), run(2, F)], T0, (JobState.FAILED, False, 3, 2)),
    ("stopped by hand counts", job(retries=0), [run(1, JobRunState.STOPPED)], T0, (JobState.FAILED, False, 2, 1)),
    ("preemptions don't count", job(retries=0), [run(1, P), run(2, P)], T0, (JobState.PREEMPTED, True, 3, 0)),
    ("retry after preemption", job(retries=1), [run(1, F), run(2, P)], T0, (JobState.PREEMPTED, True, 3, 1)),
    ("new revision runs again", job(entrypoint="python v2.py"), [run(1, OK)], T0, (JobState.WAITING, True, 2, 0)),
    ("no clock: no retry", job(retries=3), [run(1, F)], None, (JobState.WAITING, False, 2, 1)),
]


@pytest.mark.parametrize(("j", "runs", "now", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_decide(j, runs, now, expected):
    d = decide(j, tuple(runs), now, S)
    assert (d.state, d.wants_run, d.next_run, d.failures) == expected


def test_a_run_past_its_deadline_is_stopped_and_then_counts_as_a_failure():
    j = job(active_deadline=60, retries=1)
    d = decide(j, (run(1, R, started=T0 - 61),), T0, S)
    assert [(r.run, why) for r, why in d.stop] == [(1, "run 1 ran past its activeDeadline of 60 s: killed, counted "
                                                      "as a failure")]
    assert d.active is None
    again = decide(j, (run(1, JobRunState.STOPPED, ended=T0 - 10),), T0, S)
    assert (again.failures, again.wants_run, again.next_run) == (1, True, 2)


def test_an_active_run_of_an_old_revision_is_stopped_and_a_new_run_wanted():
    old = job()
    d = decide(job(entrypoint="python v2.py"), (run(1, R, old),), T0, S)
    assert [r.run for r, _ in d.stop] == [1] and d.wants_run and d.next_run == 2


def test_history_keeps_the_last_finished_runs_of_old_revisions():
    old = job()
    runs = tuple(run(n, OK, old) for n in range(1, 5))
    d = decide(job(entrypoint="python v2.py"), runs, T0, S)
    assert [r.run for r in d.prune] == [1, 2]


# -- schedules: the clock is an input --------------------------------------------------------------------------
NIGHTLY = "0 2 * * *"
TWO_AM = datetime(2026, 11, 30, 2, 0, tzinfo=UTC).timestamp()


def test_due_slot_is_the_latest_scheduled_time_at_or_before_now():
    assert due_slot(NIGHTLY, TWO_AM) == TWO_AM
    assert due_slot(NIGHTLY, TWO_AM + 59) == TWO_AM
    assert due_slot(NIGHTLY, TWO_AM - 1) == TWO_AM - 86400


@pytest.mark.parametrize(
    ("now", "runs", "expected"),
    [
        (TWO_AM - 1, [], (JobState.WAITING, False)),  # yesterday's slot is long past its starting deadline
        (TWO_AM, [], (JobState.WAITING, True)),
        (TWO_AM + 3599, [], (JobState.WAITING, True)),
        (TWO_AM + 3601, [], (JobState.WAITING, False)),  # missed: waits for tomorrow
        (TWO_AM + 600, [run(1, OK, job(schedule=NIGHTLY), slot=TWO_AM)], (JobState.SUCCEEDED, False)),
        (TWO_AM + 86400, [run(1, OK, job(schedule=NIGHTLY), slot=TWO_AM)], (JobState.WAITING, True)),
    ],
)
def test_a_schedule_starts_a_run_at_each_scheduled_time(now, runs, expected):
    d = decide(job(schedule=NIGHTLY), tuple(runs), now, S)
    assert (d.state, d.wants_run) == expected
    if d.wants_run:
        assert d.slot == due_slot(NIGHTLY, now)


def test_a_scheduled_run_is_planned_at_its_time_and_only_once():
    desired = lab(job(schedule=NIGHTLY))
    before = plan(desired, observed(desired, at=TWO_AM - 60), FAST)
    assert kinds(before) == [] and before.jobs[0].reason.endswith("next run at 2026-11-30 02:00 UTC")
    at_two = observed(desired, at=TWO_AM + 5)
    p = plan(desired, at_two, FAST)
    assert kinds(p) == [("create", "job/embed", 1)]
    assert p.jobs[0].slot == TWO_AM
    after = apply_to_observed(p, at_two, desired)
    assert plan(desired, after, FAST).empty


# -- placement among the models ---------------------------------------------------------------------------------
def test_jobs_and_models_share_the_ledger_and_the_plan_is_idempotent():
    desired = lab(model("chat", 20, 1, priority=90), job("embed", 6), gpus=1)
    p = plan(desired, observed(desired), FAST)
    assert kinds(p) == [("create", "chat", 0)]  # 20 + 6 > 24: the job waits
    (embed,) = p.jobs
    assert embed.state == "waiting" and embed.node == ""
    assert "waiting for room: needs 6 GiB on one GPU" in embed.reason
    roomy = lab(model("chat", 16, 1, priority=90), job("embed", 6), gpus=1)
    p = plan(roomy, observed(roomy), FAST)
    assert kinds(p) == [("create", "chat", 0), ("create", "job/embed", 1)]
    assert p.jobs[0].location is not None and str(p.jobs[0].location) == "node-a/gpu0"
    state = apply_to_observed(p, observed(roomy), roomy)
    assert plan(roomy, state, FAST).empty


def test_a_higher_priority_model_preempts_a_running_job_which_is_requeued():
    desired = lab(job("embed", 20), gpus=1)
    running = observed(desired, run(1, R, desired.jobs[0]))
    assert plan(desired, running, FAST).empty
    with_chat = replace(desired, models=(model("chat", 12, 1, priority=90),))
    p = plan(with_chat, running, FAST)
    assert kinds(p) == [("evict", "job/embed", 1), ("create", "chat", 0)]
    assert p.actions[0].reason.startswith("preempted: evicted: priority 10 < 90 of chat")
    after = apply_to_observed(p, running, with_chat)
    assert [(r.run, r.state) for r in after.jobs] == [(1, JobRunState.PREEMPTED)]
    again = plan(with_chat, after, FAST)
    assert again.empty and again.jobs[0].state == "preempted" and again.jobs[0].preemptions == 1
    # The model scaled away: the job runs again, as run 2.
    back = plan(desired, after, FAST)
    assert kinds(back) == [("delete", "chat", 0), ("create", "job/embed", 2)]


def test_a_non_preemptible_job_is_never_preempted():
    desired = lab(job("embed", 20, preemptible=False), model("chat", 12, 1, priority=90), gpus=1)
    running = observed(desired, run(1, R, desired.jobs[0]))
    p = plan(desired, running, FAST)
    assert kinds(p) == []
    assert [u.model for u in p.unplaced] == ["chat"]


def test_a_job_never_preempts_when_its_class_does_not():
    desired = lab(model("low", 20, 1, priority=1), job("embed", 8, priority=50, preempts=False), gpus=1)
    state = apply_to_observed(plan(lab(model("low", 20, 1, priority=1), gpus=1),
                                   observed(lab(model("low", 20, 1, priority=1), gpus=1)), FAST),
                              observed(desired), lab(model("low", 20, 1, priority=1), gpus=1))
    p = plan(desired, replace(state, at=T0), FAST)
    assert kinds(p) == [] and "waiting for room" in p.jobs[0].reason


def test_a_running_job_is_never_moved_even_when_the_pool_allows_moves():
    pool = Pool(name="homelab", max_moves=5, inventory=(InventoryNode("node-a", (GpuSpec("a", 24 * GiB),
                                                                                 GpuSpec("b", 24 * GiB))),))
    j = job("embed", 10)
    # The job runs on gpu1; a new 20 GiB model fits on gpu0 anyway, and two 14 GiB replicas want a GPU each.
    desired = DesiredState(pools=(pool,), models=(model("chat", 14, 2, priority=90),), jobs=(j,))
    state = replace(from_inventory(desired), jobs=(run(1, R, j, gpus=(1,)),), at=T0)
    p = plan(desired, state, FAST)
    assert not any(a.model == "job/embed" and a.kind is ActionKind.MOVE for a in p.actions)
    assert ("evict", "job/embed", 1) in kinds(p) or p.jobs[0].gpus == (1,)


def test_a_changed_job_spec_stops_the_active_run_and_starts_a_new_one():
    old = job("embed", 6)
    new = job("embed", 6, entrypoint="python v2.py")
    desired = lab(new)
    p = plan(desired, observed(desired, run(1, R, old)), FAST)
    assert kinds(p) == [("delete", "job/embed", 1), ("create", "job/embed", 2)]


def test_a_removed_job_is_stopped():
    desired = lab()
    p = plan(desired, observed(desired, run(1, R)), FAST)
    assert kinds(p) == [("delete", "job/embed", 1)]
    assert p.actions[0].reason == "job embed is no longer desired: stop run 1"


def test_a_plan_with_jobs_round_trips_through_json():
    desired = lab(model("chat", 8, 1, priority=90), job("embed", 6, env=(("A", "1"),), working_dir="jobs/e"))
    p = plan(desired, observed(desired), FAST)
    assert from_json(to_json(p)) == p


@settings(max_examples=40, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    jobs=st.lists(st.tuples(st.integers(1, 24), st.integers(0, 100), st.booleans()), min_size=1, max_size=5),
    models=st.lists(st.tuples(st.integers(1, 24), st.integers(0, 100)), max_size=3),
)
def test_capacity_is_never_exceeded_and_apply_then_plan_is_empty(jobs, models):
    desired = lab(*(job(f"j{i}", v, priority=p, preemptible=pre) for i, (v, p, pre) in enumerate(jobs)),
                  *(model(f"m{i}", v, 1, priority=p) for i, (v, p) in enumerate(models)))
    state = observed(desired)
    for _ in range(3):
        p = plan(desired, state, FAST)
        for gpu in p.gpus:
            assert sum(u.vram for u in gpu.after) <= gpu.capacity
        state = apply_to_observed(p, state, desired)
    assert plan(desired, state, FAST).empty


def test_a_job_recorded_in_the_cluster_is_desired_and_survives_plans():
    desired = lab(model("chat", 8, 1, priority=90))
    adhoc = job("train", 4)
    state = replace(observed(desired), recorded=(adhoc,))
    p = plan(desired, state, FAST)
    assert ("create", "job/train", 1) in kinds(p)
    assert p.desired_fingerprint == desired.fingerprint  # the specs' own, as `apply --plan` checks
    after = apply_to_observed(p, state, desired)
    assert after.recorded == (adhoc,)
    assert plan(desired, after, FAST).empty  # not deleted as undesired


def test_an_observed_snapshot_with_jobs_round_trips():
    from reconciler.observed import from_json as observed_from_json
    from reconciler.observed import to_json as observed_to_json

    desired = lab(job("embed", 4))
    state = replace(observed(desired, run(1, F, message="boom")), recorded=(job("train", 2),))
    assert observed_from_json(observed_to_json(state)) == state


# -- a job can never wedge a plan --------------------------------------------------------------------------------
NEVER = "0 0 30 2 *"  # validation refuses it; a job recorded by an older version or a saved snapshot may carry it


def test_a_schedule_that_never_fires_is_contained_to_its_job():
    desired = lab(model("chat", 8, 1, priority=90), job("broken", 4, schedule=NEVER), job("fine", 4))
    p = plan(desired, observed(desired), FAST)
    assert ("create", "chat", 0) in kinds(p) and ("create", "job/fine", 1) in kinds(p)
    broken = next(j for j in p.jobs if j.name == "broken")
    assert broken.state == "error"
    assert broken.reason.startswith("cannot be decided, so nothing starts or stops for it: CroniterBadDateError")
    assert not [a for a in p.actions if a.model == "job/broken"]
    assert from_json(to_json(p)) == p
    from reconciler.render.jobs import job_lines, jobs_json

    (shown,) = [j for j in jobs_json(p) if j["name"] == "broken"]  # `status --format json`
    assert (shown["state"], shown["reason"]) == ("error", broken.reason)
    assert any(line.strip().startswith("! job/broken") for line in job_lines(p))


def test_an_undecidable_job_keeps_its_active_run_where_it_runs():
    broken = job("broken", 4, schedule=NEVER)
    desired = lab(broken)
    p = plan(desired, observed(desired, run(3, R, broken, gpus=(1,))), FAST)
    assert p.empty
    (planned,) = p.jobs
    assert (planned.state, planned.run, planned.node, planned.gpus) == ("error", 3, "node-a", (1,))


_FIELD = st.one_of(st.just("*"), st.integers(0, 59).map(str), st.sampled_from(["*/7", "1-5", "0,30"]))
_DAY = st.one_of(st.just("*"), st.integers(1, 31).map(str), st.sampled_from(["L", "29-31", "*/10"]))
_MONTH = st.one_of(st.just("*"), st.integers(1, 12).map(str), st.sampled_from(["2", "4,6", "2-3"]))
_WEEKDAY = st.one_of(st.just("*"), st.integers(0, 6).map(str), st.sampled_from(["1-5", "sun"]))
SCHEDULES = st.one_of(
    st.none(), st.just(NEVER),
    st.builds(lambda m, h, d, mo, w: f"{m} {h} {d} {mo} {w}", _FIELD, st.integers(0, 23).map(str), _DAY, _MONTH,
              _WEEKDAY),
)
TIMES = st.one_of(st.none(), st.floats(T0 - 10 * 86400, T0 + 10 * 86400, allow_nan=False))
RUNS = st.lists(st.tuples(st.sampled_from(list(JobRunState)), TIMES, TIMES, TIMES, st.booleans()), max_size=5)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(schedules=st.lists(st.tuples(SCHEDULES, st.one_of(st.none(), st.integers(1, 86400)), RUNS), min_size=1,
                          max_size=3),
       now=TIMES)
def test_random_schedules_deadlines_and_histories_never_make_plan_raise(schedules, now):
    jobs = [job(f"j{i}", 4, schedule=s, active_deadline=d) for i, (s, d, _) in enumerate(schedules)]
    runs = [run(n + 1, state, j, started=started, ended=ended, slot=slot,
                revision=j.revision if same else "older")
            for j, (_, _, history) in zip(jobs, schedules, strict=True)
            for n, (state, started, ended, slot, same) in enumerate(history)]
    desired = lab(model("chat", 8, 1, priority=90), *jobs)
    p = plan(desired, observed(desired, *runs, at=now), FAST)
    assert ("chat", 0) in {(u.model, u.replica) for u in p.placement}  # the models are planned whatever the jobs do
    assert {j.name for j in p.jobs} == {j.name for j in jobs}
    for gpu in p.gpus:
        assert sum(u.vram for u in gpu.after) <= gpu.capacity
