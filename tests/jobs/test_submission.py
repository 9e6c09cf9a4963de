"""What a run asks Ray for, and ad-hoc jobs resolved against the specs: pure, no cluster."""

from __future__ import annotations


import pytest

from reconciler.adapter.jobs import submission
from reconciler.errors import UserError
from reconciler.plan import PlannedJob
from reconciler.spec import load_spec_files
from reconciler.spec.adhoc import adhoc_job

GiB = 1 << 30


def planned(**kw) -> PlannedJob:
    fields = dict(name="embed", state="waiting", run=3, runs=2, failures=0, preemptions=1, reason="", node="node-a",
                  gpus=(1,), vram=6 * GiB, entrypoint="python embed.py", working_dir="jobs/embed",
                  env_json='{"BATCH_SIZE":"64"}', revision="r1", slot=None, priority=10)
    fields.update(kw)
    return PlannedJob(**fields)


def test_a_run_asks_for_its_vram_on_the_planned_gpus_and_names_them(tmp_path):
    (tmp_path / "jobs" / "embed").mkdir(parents=True)
    args = submission(planned(), spec_dir=tmp_path)
    assert args["submission_id"] == "reconciler--job--embed--3"
    assert args["entrypoint_resources"] == {"vram_mb_node-a_gpu1": 6144.0}
    assert args["runtime_env"] == {"env_vars": {"BATCH_SIZE": "64", "CUDA_VISIBLE_DEVICES": "1"},
                                   "working_dir": str((tmp_path / "jobs" / "embed").resolve())}
    assert args["metadata"]["reconciler.io/job"] == "embed" and args["metadata"]["run"] == "3"


def test_two_gpus_ask_for_both():
    args = submission(planned(gpus=(0, 1), working_dir=None, vram=GiB + 1), spec_dir=None)
    assert args["entrypoint_resources"] == {"vram_mb_node-a_gpu0": 1025.0, "vram_mb_node-a_gpu1": 1025.0}
    assert args["runtime_env"]["env_vars"]["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "working_dir" not in args["runtime_env"]


def test_a_relative_working_dir_needs_the_spec_directory():
    with pytest.raises(UserError, match="give the spec directory"):
        submission(planned(), spec_dir=None)


SPECS = {
    "a.yaml": """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: lab}
spec:
  inventory: [{node: a, gpus: [{name: X, memory: 24Gi}]}]
---
apiVersion: reconciler/v1
kind: PriorityClass
metadata: {name: batch}
spec: {value: 10, default: true}
"""
}


def test_an_adhoc_job_resolves_pool_and_class():
    desired = load_spec_files({k: v.encode() for k, v in SPECS.items()}).desired
    job = adhoc_job(desired, name="train", vram="4Gi", entrypoint="python train.py", working_dir="/home/me/w")
    assert (job.pool, job.priority_class, job.priority, job.vram) == ("lab", "batch", 10, 4 * GiB)


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"priority_class": "bach"}, "--priority-class bach does not exist; did you mean batch?"),
        ({"pool": "lap"}, "--pool lap does not exist; did you mean lab?"),
        ({"vram": "4"}, "--vram 4:"),
        ({"name": "Train"}, "--name 'Train'"),
        ({"entrypoint": " "}, "no command to run"),
    ],
)
def test_adhoc_mistakes_are_one_sentence(kw, message):
    desired = load_spec_files({k: v.encode() for k, v in SPECS.items()}).desired
    fields = {"name": "train", "vram": "4Gi", "entrypoint": "python train.py", **kw}
    with pytest.raises(UserError) as error:
        adhoc_job(desired, **fields)
    assert str(error.value).startswith(message)


def test_a_working_dir_linked_out_of_the_spec_directory_is_never_shipped(tmp_path):
    specs, outside = tmp_path / "specs", tmp_path / "elsewhere"
    (specs / "jobs").mkdir(parents=True)
    outside.mkdir()
    (specs / "jobs" / "embed").symlink_to(outside)  # as a commit could make it after validation
    with pytest.raises(UserError, match=r"leads out of the spec directory once links are followed .*nothing "
                                        r"was shipped"):
        submission(planned(), spec_dir=specs)
    (specs / "jobs" / "embed").unlink()
    (specs / "jobs" / "real").mkdir()
    (specs / "jobs" / "embed").symlink_to(specs / "jobs" / "real")  # a link that stays inside is fine
    assert submission(planned(), spec_dir=specs)["runtime_env"]["working_dir"] == str((specs / "jobs" / "real")
                                                                                       .resolve())
