"""Ad-hoc jobs, the homelab scheduler's ``submit_task``: a one-off job recorded in the cluster (so `apply` and
`watch` keep it as desired state) and submitted where the plan places it among the models.

    from reconciler.executor.adhoc import submit_task
    submitted = submit_task(["python", "train.py"], vram="4Gi", priority_class="batch")
"""

from __future__ import annotations

import os
import shlex
import time
from dataclasses import dataclass, replace
from pathlib import Path

from reconciler.desired import DesiredState, Job
from reconciler.errors import UserError
from reconciler.executor import jobs as job_steps
from reconciler.plan import ActionKind, PlannedJob, job_item
from reconciler.planner import plan
from reconciler.spec import load_specs
from reconciler.spec.adhoc import adhoc_job


@dataclass(frozen=True)
class Submitted:
    job: PlannedJob  # its state, run and place as planned
    submitted: bool  # False: recorded, waiting for room (job.reason says why)
    message: str


def submit(cluster, *, desired: DesiredState, job: Job) -> Submitted:
    """Record `job` in the cluster and submit its run when the plan places it now; otherwise it waits, recorded,
    for `apply` or `watch`. Only this job's run is carried out: the rest of the plan is left to them."""
    if any(j.name == job.name for j in desired.jobs):
        raise UserError(f"job {job.name} is defined in the specs: give this run another name")
    cluster.jobs.record(job)
    found = plan(desired, cluster.observe(desired))
    planned = found.job(job.name)
    mine = tuple(a for a in found.actions if a.model == job_item(job.name) and a.kind is ActionKind.CREATE)
    if not mine:
        return Submitted(planned, False, f"recorded; {planned.state}: {planned.reason}")
    (result,) = job_steps.submit_all(cluster.jobs, replace(found, actions=mine), spec_dir=None)
    if not result.ok:
        raise UserError(f"job {job.name}: {result.message}")
    return Submitted(planned, True, result.message)


def submit_task(
    command: list[str] | str,
    *,
    vram: str,
    priority_class: str | None = None,
    pool: str | None = None,
    name: str | None = None,
    gpus: int = 1,
    retries: int = 0,
    env: dict[str, str] | None = None,
    working_dir: str | Path | None = None,
    specs: str | Path = "specs",
    address: str | None = None,
) -> Submitted:
    """A one-off job from a script: the spec directory names the pools and priority classes; the working directory
    (default: the current one) is shipped with the run."""
    from reconciler.adapter import connect

    result = load_specs(Path(specs))
    if result.desired is None:
        raise UserError(f"the specs in {specs} have errors: run `reconciler validate {specs}`")
    entrypoint = command if isinstance(command, str) else shlex.join(command)
    job = adhoc_job(result.desired, name=name or time.strftime("run-%Y%m%d-%H%M%S", time.gmtime()), vram=vram,
                    entrypoint=entrypoint, priority_class=priority_class, pool=pool, gpus=gpus,
                    working_dir=str(Path(working_dir or os.getcwd()).resolve()), env=env, retries=retries)
    with connect(address) as cluster:
        return submit(cluster, desired=result.desired, job=job)
