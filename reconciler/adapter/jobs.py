"""Job runs on Ray through its job submission API (what `ray job submit` uses), with the dashboard address and the
token the adapter already uses.

A run asks for its VRAM on the planned GPUs as the per-GPU resources replicas ask for (so Ray refuses over-commit and
runs it on the planned node) and names those GPUs in CUDA_VISIBLE_DEVICES. Everything the planner needs to know about
a run travels in the submission's metadata; why reconciler stopped a run (preempted or not) is kept in the GCS KV,
since metadata cannot change after submission.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from reconciler.desired import Job, canonical_json, job_from_json, job_to_json
from reconciler.errors import TransientError, UserError
from reconciler.naming import JOB_METADATA, cuda_visible_devices, job_submission_id, vram_mib, vram_resource
from reconciler.observed import JobRunState, ObservedJobRun
from reconciler.plan import PlannedJob
from reconciler.spec.workdirs import escapes

STOPPED_BY = "job-stopped/"  # KV key prefix: why reconciler stopped a run
RECORDED = "job-recorded/"  # KV key prefix: ad-hoc jobs (`reconciler run`), desired state kept in the cluster
# Written before the stop is asked for, then replaced by PREEMPTED once the run is seen ended. A run that ended
# stopped with only the first (the controller died between the two) was stopped by a preemption all the same.
PREEMPTING = b"preempting"
PREEMPTED = b"preempted"
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")
LOG_TAIL_LINES = 20
_STATES = {"PENDING": JobRunState.PENDING, "RUNNING": JobRunState.RUNNING, "SUCCEEDED": JobRunState.SUCCEEDED,
           "FAILED": JobRunState.FAILED, "STOPPED": JobRunState.STOPPED}


def submission(job: PlannedJob, *, spec_dir: Path | None) -> dict[str, Any]:
    """The arguments of `submit_job` for a planned run: pure, so what a run asks Ray for is checked without Ray."""
    env = {**job.env, "CUDA_VISIBLE_DEVICES": cuda_visible_devices(job.gpus)}
    runtime_env: dict[str, Any] = {"env_vars": env}
    if job.working_dir is not None:
        if spec_dir is None and not Path(job.working_dir).is_absolute():
            raise UserError(
                f"job {job.name} ships workingDir {job.working_dir}, relative to the spec directory: give the spec "
                "directory to apply (reconciler apply DIR --plan FILE)"
            )
        folder = (Path(spec_dir or ".") / job.working_dir).resolve()
        # Checked again here, not only at validate: a link may have changed since (a folder replaced by a link to /).
        if spec_dir is not None and not Path(job.working_dir).is_absolute():
            found = escapes(spec_dir, job.working_dir)
            if found is not None:
                what = job.working_dir if found[0] == job.working_dir else f"the link {found[0]} in {job.working_dir}"
                raise UserError(f"job {job.name}: workingDir {what} leads out of the spec directory once links are "
                                f"followed (to {found[1]}): nothing was shipped")
        if not folder.is_dir():
            raise UserError(f"job {job.name}: workingDir {folder} is not a directory")
        runtime_env["working_dir"] = str(folder)
    metadata = {
        JOB_METADATA: job.name,
        "run": str(job.run),
        "revision": job.revision,
        "node": job.node,
        "gpus": cuda_visible_devices(job.gpus),
        "vram": str(job.vram),
        "slot": "" if job.slot is None else repr(job.slot),
    }
    return {
        "submission_id": job_submission_id(job.name, job.run),
        "entrypoint": job.entrypoint,
        "runtime_env": runtime_env,
        "metadata": metadata,
        "entrypoint_num_cpus": 0,
        "entrypoint_resources": {vram_resource(job.node, g): float(vram_mib(job.vram)) for g in job.gpus},
    }


class Jobs:
    """Ray's job submission API for one cluster."""

    def __init__(self, *, dashboard_url: str, token: str | None, kv: Any) -> None:
        from ray.job_submission import JobSubmissionClient

        headers = {"Authorization": f"Bearer {token}"} if token else None
        try:
            self._client = JobSubmissionClient(dashboard_url, headers=headers)
        except Exception as exc:  # the dashboard is starting or busy
            raise TransientError(f"the Ray job API at {dashboard_url} did not answer: {exc}") from exc
        self._kv = kv
        self._tails: dict[str, str] = {}  # a finished run's log tail: read once, its log no longer changes

    def runs(self) -> tuple[ObservedJobRun, ...]:
        """Every run reconciler submitted, active or finished; failed runs with the tail of their log."""
        try:
            details = self._client.list_jobs()
        except Exception as exc:
            raise TransientError(f"cannot list the cluster's jobs: {exc}") from exc
        runs = []
        for d in details:
            meta = d.metadata or {}
            if JOB_METADATA not in meta or not d.submission_id:
                continue
            state = _STATES.get(str(d.status.value if hasattr(d.status, "value") else d.status), JobRunState.PENDING)
            if state is JobRunState.STOPPED and self._kv.get(STOPPED_BY + d.submission_id) in (PREEMPTED,
                                                                                                 PREEMPTING):
                state = JobRunState.PREEMPTED
            message = d.message or ""
            if state in (JobRunState.FAILED, JobRunState.STOPPED):
                message = self._finished_tail(d.submission_id) or message
            runs.append(
                ObservedJobRun(
                    job=meta[JOB_METADATA],
                    run=int(meta.get("run", "0")),
                    revision=meta.get("revision", ""),
                    state=state,
                    node=meta.get("node", ""),
                    gpus=tuple(int(g) for g in meta.get("gpus", "").split(",") if g),
                    vram=int(meta.get("vram", "0")),
                    slot=float(meta["slot"]) if meta.get("slot") else None,
                    started=d.start_time / 1000 if d.start_time else None,
                    ended=d.end_time / 1000 if d.end_time else None,
                    message=message,
                )
            )
        return tuple(sorted(runs, key=lambda r: (r.job, r.run)))

    def record(self, job: Job) -> None:
        self._kv.put(RECORDED + job.name, canonical_json(job_to_json(job)).encode())

    def unrecord(self, name: str) -> None:
        self._kv.delete(RECORDED + name)

    def recorded(self) -> tuple[Job, ...]:
        found = []
        for key in sorted(self._kv.keys(RECORDED)):
            value = self._kv.get(key)
            if value is not None:
                found.append(job_from_json(json.loads(value)))
        return tuple(found)

    def _finished_tail(self, submission_id: str) -> str:
        if submission_id not in self._tails:
            self._tails[submission_id] = self.log_tail(submission_id)
        return self._tails[submission_id]

    def log_tail(self, submission_id: str, lines: int = LOG_TAIL_LINES) -> str:
        try:
            text = self._client.get_job_logs(submission_id)
        except Exception:
            return ""  # a run whose driver never started has no log; its message says why
        return "\n".join(text.rstrip("\n").splitlines()[-lines:])

    def logs(self, submission_id: str) -> str:
        try:
            return self._client.get_job_logs(submission_id)
        except Exception as exc:
            raise UserError(f"no log for {submission_id}: {exc}") from exc

    def follow(self, submission_id: str):
        """The log as it grows, until the run ends."""
        import asyncio

        async def chunks():
            async for chunk in self._client.tail_job_logs(submission_id):
                yield chunk

        loop = asyncio.new_event_loop()
        try:
            stream = chunks()
            while True:
                try:
                    yield loop.run_until_complete(stream.__anext__())
                except StopAsyncIteration:
                    return
        finally:
            loop.close()

    def submit(self, job: PlannedJob, *, spec_dir: Path | None) -> str:
        args = submission(job, spec_dir=spec_dir)
        if self._exists(args["submission_id"]):
            return args["submission_id"]  # submitted by an earlier, interrupted apply of the same plan
        try:
            return self._client.submit_job(**args)
        except Exception as exc:
            raise TransientError(f"Ray refused job {job.name} run {job.run}: {exc}") from exc

    def _exists(self, submission_id: str) -> bool:
        try:
            self._client.get_job_info(submission_id)
        except RuntimeError:  # what the client raises for an unknown id
            return False
        return True

    def stop(self, job: str, run: int, *, preempted: bool) -> None:
        """Ray stops a run with SIGTERM, then kills it after its grace period. A preemption is marked as intended
        first (so a run that ends before the controller sees it still reads as preempted) and confirmed with
        ``preempted`` once the run is seen ended; a stop Ray refused takes the intent back."""
        sid = job_submission_id(job, run)
        if preempted:
            self._kv.put(STOPPED_BY + sid, PREEMPTING)
        try:
            self._client.stop_job(sid)
        except Exception as exc:
            if preempted:
                self._kv.delete(STOPPED_BY + sid)
            raise TransientError(f"cannot stop {sid}: {exc}") from exc

    def preempted(self, job: str, run: int) -> None:
        """The run's stop is confirmed: mark it preempted for good (it is requeued, not counted as a failure)."""
        self._kv.put(STOPPED_BY + job_submission_id(job, run), PREEMPTED)

    def forget(self, job: str, run: int) -> None:
        """A finished run leaves the history."""
        sid = job_submission_id(job, run)
        try:
            self._client.delete_job(sid)
        except Exception as exc:
            raise TransientError(f"cannot delete {sid}: {exc}") from exc
        self._kv.delete(STOPPED_BY + sid)

    def status(self, job: str, run: int) -> str | None:
        """Ray's status of a run; None when Ray does not know the run. Any other failure to answer is temporary:
        it says nothing about the run, which may still hold its GPUs."""
        sid = job_submission_id(job, run)
        try:
            return str(self._client.get_job_status(sid).value)
        except Exception as exc:
            if _unknown(exc):
                return None
            raise TransientError(f"cannot read the status of {sid}: {exc}") from exc

    def wait_ended(self, job: str, run: int, *, timeout: float, interval: float = 0.5) -> str | None:
        """The run's status once it ended (None: Ray no longer knows it), or the last one seen when ``timeout``
        passed first. A status Ray fails to give is asked again; still failing at the end, it raises
        TransientError: the stop is then not confirmed."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.status(job, run)
            except TransientError:
                if time.monotonic() >= deadline:
                    raise
            else:
                if status is None or status in TERMINAL or time.monotonic() >= deadline:
                    return status
            time.sleep(interval)


def _unknown(exc: Exception) -> bool:
    """Whether the job client's error says the submission does not exist (its wording: "... does not exist")."""
    text = str(exc).lower()
    return "does not exist" in text or "404" in text
