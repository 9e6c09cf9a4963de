"""`watch --git`: the follow decision as a table, the git copy against a local bare repository, and the loop fed
from it (push a change: applied; push a broken spec: nothing changes and the commit is named)."""

from __future__ import annotations

import io
import json

import pytest

from reconciler.errors import UserError
from reconciler.watch.metrics import Metrics
from reconciler.watch.controller import Controller
from reconciler.watch.debounce import Cause
from reconciler.watch.events import EventLog
from reconciler.watch.gitfollow import Following, GitOptions, GitSpecs, Verdict, follow
from reconciler.watch.gitsource import GitRemote, Revision

from .fakes import FakeCluster, simple_plan
from .gitrepo import SpecRepo

A, B, C = (Revision(c * 40, s) for c, s in (("a", "first"), ("b", "second"), ("c", "third")))


@pytest.mark.parametrize(
    ("state", "head", "valid", "after", "verdict"),
    [
        # nothing enforced yet
        (Following(), A, True, Following(applied=A), Verdict.APPLY),
        (Following(), A, False, Following(broken=A), Verdict.BROKEN),
        # the enforced revision is still the head
        (Following(applied=A), A, True, Following(applied=A), Verdict.UNCHANGED),
        # a new good head
        (Following(applied=A), B, True, Following(applied=B), Verdict.APPLY),
        # a new broken head: reported, the last good one kept
        (Following(applied=A), B, False, Following(applied=A, broken=B), Verdict.BROKEN),
        # the same broken head on a later cycle: not reported again
        (Following(applied=A, broken=B), B, False, Following(applied=A, broken=B), Verdict.UNCHANGED),
        # another broken commit on top: named, since it is a different commit
        (Following(applied=A, broken=B), C, False, Following(applied=A, broken=C), Verdict.BROKEN),
        # fixed by a later commit
        (Following(applied=A, broken=B), C, True, Following(applied=C), Verdict.APPLY),
        # the branch reset to the good revision (a revert by force-push): nothing to apply, nothing broken
        (Following(applied=A, broken=B), A, True, Following(applied=A), Verdict.UNCHANGED),
    ],
)
def test_follow(state, head, valid, after, verdict):
    assert follow(state, head=head, valid=valid) == (after, verdict)


POOL = """\
apiVersion: reconciler/v1
kind: ResourcePool
metadata: {name: homelab}
spec:
  inventory:
    - {node: node-a, gpus: [{name: A10, memory: 24Gi}]}
"""


def models(**replicas: object) -> str:
    return "".join(
        f"---\napiVersion: reconciler/v1\nkind: Model\nmetadata: {{name: {name}}}\n"
        f"spec: {{engine: echo, source: test/{name}, vram: 2Gi, replicas: {count}}}\n"
        for name, count in replicas.items()
    )


@pytest.fixture
def repo(tmp_path):
    return SpecRepo(tmp_path)


def test_the_local_copy_follows_the_branch_and_reads_the_specs_without_a_checkout(repo, tmp_path):
    first = repo.push("two models", {"specs/pool.yaml": POOL, "specs/models.yaml": models(alpha=1, beta=1),
                                     "README.md": "not a spec"})
    remote = GitRemote(repo.url, cache=tmp_path / "cache")
    assert remote.open() == Revision(first, "two models")
    assert remote.branch == "main"  # the remote's default branch
    assert remote.read_tree(first, "specs") == {"pool.yaml": POOL.encode(),
                                                "models.yaml": models(alpha=1, beta=1).encode()}
    assert remote.read_tree(first, "elsewhere") is None

    second = repo.push("scale alpha", {"specs/models.yaml": models(alpha=2, beta=1)})
    assert remote.fetch() == Revision(second, "scale alpha")
    # A force-push that rewrites the branch is followed too.
    repo_reset = repo.push("rewritten", {"specs/models.yaml": models(alpha=3)}, branch="main")
    assert remote.fetch().commit == repo_reset


def test_another_branch_is_followed_when_named(repo, tmp_path):
    repo.push("main", {"specs/pool.yaml": POOL, "specs/models.yaml": models(alpha=1)})
    staging = repo.push("staging only", {"specs/models.yaml": models(alpha=2)}, branch="staging")
    remote = GitRemote(repo.url, cache=tmp_path / "cache", branch="staging")
    assert remote.open() == Revision(staging, "staging only")


def test_a_remote_that_cannot_be_read_is_one_sentence(tmp_path):
    missing = (tmp_path / "nowhere.git").as_uri()
    with pytest.raises(UserError, match=f"cannot read the repository {missing}: .+"):
        GitRemote(missing, cache=tmp_path / "cache").open()
    (tmp_path / "r").mkdir()
    repo = SpecRepo(tmp_path / "r")
    repo.push("main", {"specs/pool.yaml": POOL})
    with pytest.raises(UserError, match=f"cannot fetch branch 'nope' of {repo.url}: .+"):
        GitRemote(repo.url, cache=tmp_path / "cache2", branch="nope").open()


def events(sink, kind=None):
    found = [json.loads(line) for line in sink.getvalue().splitlines()]
    return [e for e in found if kind is None or e["event"] == kind]


def test_each_pushed_commit_is_applied_and_a_broken_one_changes_nothing_and_is_named(repo, tmp_path):
    good = repo.push("alpha and beta", {"specs/pool.yaml": POOL, "specs/models.yaml": models(alpha=1, beta=1)})
    sink = io.StringIO()
    log, metrics = EventLog(json_sink=sink), Metrics()
    cluster = FakeCluster()
    with GitSpecs(GitOptions(url=repo.url, path="specs", poll=3600), events=log, metrics=metrics) as specs:
        controller = Controller(load=specs, observe=lambda want: cluster.observe(want) if cluster.state.nodes
                                else _shape(cluster, want), plan=simple_plan, apply=cluster.apply, events=log,
                                metrics=metrics)
        assert controller.cycle(Cause.STARTUP).acted
        assert set(cluster.running()) == {("alpha", 0), ("beta", 0)}
        (revision,) = events(sink, "revision")
        assert (revision["commit"], revision["subject"], revision["branch"]) == (good, "alpha and beta", "main")
        assert specs.status()["revision"] == {"commit": good, "subject": "alpha and beta"}

        # A pushed change: the fetch sees it, the next cycle applies it.
        scaled = repo.push("alpha x2", {"specs/models.yaml": models(alpha=2, beta=1)})
        assert specs.fetch_once()
        assert controller.cycle(Cause.SPEC_CHANGE).acted
        assert set(cluster.running()) == {("alpha", 0), ("alpha", 1), ("beta", 0)}
        assert specs.status()["revision"]["commit"] == scaled
        before = cluster.state

        # A broken spec: nothing changes on the cluster, and the commit is named (once).
        broken = repo.push("typo in replicas", {"specs/models.yaml": models(alpha="2x", beta=1)})
        assert specs.fetch_once()
        assert not controller.cycle(Cause.SPEC_CHANGE).acted
        assert not controller.cycle(Cause.DRIFT_TIMER).acted
        assert cluster.state == before
        (invalid,) = events(sink, "revision-invalid")
        assert invalid["commit"] == broken and invalid["subject"] == "typo in replicas"
        assert invalid["keeping"] == {"commit": scaled, "subject": "alpha x2"}
        assert f'commit {broken[:7]} "typo in replicas" has invalid specs' in invalid["message"]
        assert any(d.startswith("models.yaml:") and ": error: " in d for d in invalid["diagnostics"])
        assert specs.status()["revision"]["commit"] == scaled
        assert specs.status()["brokenRevision"]["commit"] == broken
        sample = metrics.registry.get_sample_value
        assert sample("reconciler_git_revision_info", {"commit": scaled, "subject": "alpha x2", "branch": "main",
                                                       "state": "applied"}) == 1
        assert sample("reconciler_git_revision_info", {"commit": broken, "subject": "typo in replicas",
                                                       "branch": "main", "state": "invalid"}) == 1
        assert sample("reconciler_spec_valid") == 0
        assert sample("reconciler_git_last_fetch_timestamp_seconds") > 0

        # Fixed by the next commit: applied, and nothing is reported broken any more.
        fixed = repo.push("fix the typo", {"specs/models.yaml": models(alpha=1)})
        assert specs.fetch_once()
        assert controller.cycle(Cause.SPEC_CHANGE).acted
        assert set(cluster.running()) == {("alpha", 0)}
        assert specs.status()["brokenRevision"] is None
        assert specs.status()["revision"]["commit"] == fixed
        assert sample("reconciler_git_revision_info", {"commit": broken, "subject": "typo in replicas",
                                                       "branch": "main", "state": "invalid"}) is None
        assert not specs.fetch_once()  # nothing new: no cycle is started
    assert not specs.remote.cache.exists()  # the temporary copy is removed


def test_a_fetch_that_fails_is_reported_once_and_the_last_revision_stays(repo, tmp_path):
    first = repo.push("one", {"specs/pool.yaml": POOL, "specs/models.yaml": models(alpha=1)})
    sink = io.StringIO()
    with GitSpecs(GitOptions(url=repo.url, poll=3600), events=EventLog(json_sink=sink)) as specs:
        specs()
        repo.bare.rename(tmp_path / "moved.git")  # the remote goes away
        assert not specs.fetch_once()
        assert not specs.fetch_once()
        (failure,) = events(sink, "failure")
        assert failure["stage"] == "fetch" and "cannot fetch branch 'main'" in failure["error"]
        assert specs.status()["revision"]["commit"] == first


def _shape(cluster: FakeCluster, want):
    from reconciler.observed import from_inventory

    cluster.state = from_inventory(want)
    return cluster.state


JOB = """\
apiVersion: reconciler/v1
kind: Job
metadata: {name: embed}
spec:
  vram: 4Gi
  entrypoint: python embed.py
  workingDir: jobs/embed
"""


def test_a_jobs_working_dir_ships_from_the_revision_being_enforced(repo):
    """Under --git nothing is checked out for the specs; a job's folder is written out per enforced commit, and a
    link in it that leads away is never shipped."""
    from pathlib import Path

    from reconciler.adapter.jobs import submission
    from reconciler.plan import PlannedJob

    repo.push("embed v1", {"specs/pool.yaml": POOL, "specs/jobs.yaml": JOB, "specs/jobs/embed/embed.py": "v = 1\n"})
    planned = PlannedJob(name="embed", state="waiting", run=1, runs=0, failures=0, preemptions=0, reason="",
                         node="n", gpus=(0,), vram=1, entrypoint="python embed.py", working_dir="jobs/embed")
    with GitSpecs(GitOptions(url=repo.url, path="specs", poll=3600), events=EventLog()) as specs:
        assert specs.spec_dir() is None  # no revision enforced yet
        assert specs().ok
        first = submission(planned, spec_dir=specs.spec_dir())["runtime_env"]["working_dir"]
        assert (Path(first) / "embed.py").read_text() == "v = 1\n"
        repo.push("embed v2", {"specs/jobs/embed/embed.py": "v = 2\n"})
        assert specs.fetch_once() and specs().ok
        second = submission(planned, spec_dir=specs.spec_dir())["runtime_env"]["working_dir"]
        assert (Path(second) / "embed.py").read_text() == "v = 2\n"
        assert not Path(first).exists()  # the previous revision's copy is gone

        # A commit that links out of the spec directory is invalid, as `validate` finds it on disk: never applied.
        (repo.work / "specs" / "jobs" / "embed" / "etc").symlink_to("/etc")
        repo.push("a link out", {})
        assert specs.fetch_once()
        broken = specs()
        assert not broken.ok and [d.message for d in broken.diagnostics] == [
            "`workingDir`: the link etc in `jobs/embed` leads out of the spec directory once links are followed (to "
            "/etc): put the files themselves inside the spec directory"]
        assert specs.spec_dir() == Path(second).parent.parent  # still the last good revision's files
    assert not Path(second).exists()  # removed with the watcher
