"""The Job kind: fields, defaults, references and capacity, with located diagnostics."""

import pytest

from reconciler.desired import Job, Preemption
from reconciler.spec.durations import parse_duration

from .specs import job, klass, load, messages, model, pool

ISSUE_EXAMPLE = """\
apiVersion: reconciler/v1
kind: Job
metadata: {name: nightly-embeddings}
spec:
  pool: homelab
  priorityClass: batch
  vram: 6Gi
  gpus: 1
  entrypoint: python embed.py --out /data/emb
  workingDir: jobs/embed
  env: {BATCH_SIZE: "64"}
  retries: 3
  activeDeadline: 2h
  schedule: "0 2 * * *"
"""


def test_the_issue_example_builds_a_job():
    result = load({"jobs.yaml": ISSUE_EXAMPLE, "pool.yaml": [pool("homelab"), klass("batch", 10, preemptible=True)]})
    assert result.diagnostics == ()
    assert result.desired.jobs == (
        Job(
            name="nightly-embeddings",
            pool="homelab",
            priority_class="batch",
            priority=10,
            preemption=Preemption.LOWER_PRIORITY,
            preemptible=True,
            vram=6 << 30,
            entrypoint="python embed.py --out /data/emb",
            gpus=1,
            working_dir="jobs/embed",
            env=(("BATCH_SIZE", "64"),),
            retries=3,
            active_deadline=7200,
            schedule="0 2 * * *",
        ),
    )


def test_defaults_and_the_default_class():
    result = load({"a.yaml": [pool(), klass("low", 5, default=True), job("j")]})
    (j,) = result.desired.jobs
    assert (j.pool, j.priority_class, j.priority, j.gpus, j.retries) == ("lab", "low", 5, 1, 0)
    assert (j.working_dir, j.env, j.active_deadline, j.schedule) == (None, (), None, None)


def test_revision_changes_with_what_a_run_starts_from_and_not_with_retries():
    first = load({"a.yaml": [pool(), job("j")]}).desired.jobs[0]
    retried = load({"a.yaml": [pool(), job("j", retries=4)]}).desired.jobs[0]
    changed = load({"a.yaml": [pool(), job("j", entrypoint="python other.py")]}).desired.jobs[0]
    assert first.revision == retried.revision != changed.revision


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"activeDeadline": "2 hours"}, "`activeDeadline`: `2 hours` is not a duration"),
        ({"activeDeadline": "0s"}, "`activeDeadline`: `0s` is no time at all"),
        ({"activeDeadline": 30}, "`activeDeadline`: a duration is text such as 2h or 90m, not `30`"),
        ({"schedule": "0 25 * * *"}, "`schedule`: `0 25 * * *` is not a cron schedule"),
        ({"schedule": "@daily x"}, "`schedule`: `@daily x` is not a cron schedule"),
        ({"workingDir": "../up"}, "`workingDir`: `../up` leaves the spec directory"),
        ({"workingDir": "/abs"}, "`workingDir`: `/abs` leaves the spec directory"),
        ({"env": {"A-B": "1"}}, "`env`: `A-B` is not an environment variable name"),
        ({"env": {"N": 3}}, "`env`: the value of `N` must be text, not `3`"),
        ({"retries": -1}, "`retries`: must be 0 or more, not -1"),
        ({"gpus": 0}, "`gpus`: must be 1 or more, not 0"),
        ({"entrypoint": " "}, "`entrypoint`: this must not be empty"),
        ({"retry": 2}, "`retry` is not a field of a Job spec; did you mean `retries`?"),
    ],
)
def test_field_messages(spec, message):
    result = load({"a.yaml": [pool(), job("j", **spec)]})
    (error,) = result.errors
    assert error.message.startswith(message), error.message


def test_diagnostics_are_located():
    text = "apiVersion: reconciler/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  vram: 4Gi\n  schedule: nightly\n"
    assert messages(load({"j.yaml": text, "p.yaml": [pool()]})) == [
        "j.yaml:4:1: error: a Job spec needs `entrypoint`",
        "j.yaml:6:13: error: `schedule`: `nightly` is not a cron schedule: write five fields (minute hour "
        'day-of-month month day-of-week), such as "0 2 * * *" for every night at 02:00',
    ]


def test_references_and_names():
    result = load({"a.yaml": [pool(), job("j", pool="lap", priorityClass="hi"), job("j"), model("j")]})
    assert [e.message for e in result.errors] == [
        "pool `lap` does not exist; did you mean `lab`? pools defined: lab",
        "priorityClass `hi` does not exist; no PriorityClass is defined",
        "Job `j` is defined twice (first at a.yaml:17:9); rename or remove one",
    ]


def test_a_job_needs_a_pool_when_several_exist():
    result = load({"a.yaml": [pool("one"), pool("two", nodes={"selector": {"x": "y"}}), job("j")]})
    (error,) = result.errors
    assert error.message == "`pool` is required when several pools exist: add `pool:` with one of one, two"


def test_capacity():
    result = load({"a.yaml": [pool(), job("big", vram="30Gi"), job("wide", gpus=3)]})
    assert [e.message for e in result.errors] == [
        "no node of pool `lab` has 1 GPU with 30 GiB usable each (its largest node has 2 GPUs, its largest GPU "
        "24 GiB usable): lower `vram` or `gpus`, or run the job in another pool",
        "no node of pool `lab` has 3 GPUs with 4 GiB usable each (its largest node has 2 GPUs, its largest GPU "
        "24 GiB usable): lower `vram` or `gpus`, or run the job in another pool",
    ]


def test_a_schedule_that_never_fires_is_refused_where_it_is_written_saying_why():
    text = ("apiVersion: reconciler/v1\nkind: Job\nmetadata: {name: j}\nspec:\n  vram: 4Gi\n  entrypoint: run\n"
            '  schedule: "0 0 30 2 *"\n')
    assert messages(load({"j.yaml": text, "p.yaml": [pool()]})) == [
        "j.yaml:7:13: error: `schedule`: `0 0 30 2 *` never fires: February has no 30th; choose a day up to the "
        "29th, or other months",
    ]


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        ("0 0 31 4,6 *", "April and June have no 31st"),
        ("0 0 30,31 2 *", "February has no 30th or 31st"),
    ],
)
def test_schedules_that_never_fire(schedule, why):
    (error,) = load({"a.yaml": [pool(), job("j", schedule=schedule)]}).errors
    assert error.message.startswith(f"`schedule`: `{schedule}` never fires: {why}"), error.message


@pytest.mark.parametrize("schedule", ["0 0 29 2 *", "0 0 30 2 1", "0 0 31 2-4 *", "0 0 L 2 *"])
def test_schedules_that_fire_rarely_or_on_weekdays_pass(schedule):
    assert load({"a.yaml": [pool(), job("j", schedule=schedule)]}).errors == ()


@pytest.mark.parametrize(("text", "seconds"), [("2h", 7200), ("90m", 5400), ("1h30m", 5400), ("1d2s", 86402)])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds


def test_a_working_dir_that_links_out_of_the_spec_directory_is_refused_where_it_is_written(tmp_path):
    from reconciler.spec import load_specs

    specs = tmp_path / "specs"
    (specs / "jobs").mkdir(parents=True)
    (specs / "jobs" / "embed").symlink_to(tmp_path)  # jobs/embed -> the folder above the specs
    (specs / "jobs" / "inside").mkdir()
    (specs / "jobs" / "alias").symlink_to(specs / "jobs" / "inside")
    (specs / "pool.yaml").write_text(
        "apiVersion: reconciler/v1\nkind: ResourcePool\nmetadata: {name: lab}\nspec:\n"
        "  inventory: [{node: n, gpus: [{name: sim, memory: 24Gi}]}]\n")
    job_text = "apiVersion: reconciler/v1\nkind: Job\nmetadata: {{name: {name}}}\nspec:\n  vram: 4Gi\n" \
               "  entrypoint: run\n  workingDir: {folder}\n"
    (specs / "a.yaml").write_text(job_text.format(name="out", folder="jobs/embed"))
    (specs / "b.yaml").write_text(job_text.format(name="ok", folder="jobs/alias"))
    assert messages(load_specs(specs)) == [
        f"a.yaml:7:15: error: `workingDir`: `jobs/embed` leads out of the spec directory once links are "
        f"followed (to {tmp_path.resolve()}): put the files themselves inside the spec directory",
    ]
    # A link inside the folder counts as well: packing the folder would follow it.
    (specs / "jobs" / "embed").unlink()
    (specs / "jobs" / "embed").mkdir()
    (specs / "jobs" / "embed" / "data").symlink_to("/")
    assert messages(load_specs(specs)) == [
        "a.yaml:7:15: error: `workingDir`: the link data in `jobs/embed` leads out of the spec directory once links "
        "are followed (to /): put the files themselves inside the spec directory",
    ]
