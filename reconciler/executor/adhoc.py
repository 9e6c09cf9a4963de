"""Ad-hoc jobs, the homelab scheduler's ``submit_task``: a one-off job recorded in the cluster (so `apply` and
`watch` keep it as desired state) and submitted where the plan places it among the models.

    from reconciler.executor.adhoc import submit_task
    submitted = submit_task(["python", "train.py"], vram="4Gi", priority_class="batch")
"""

from __future__ import annotations

import os
import shlex
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
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


def submit(cluster, *, desired: DesiredState, job: Job, wait_for_lock: bool = False,
           on_wait: Callable[[str], None] = lambda _: None) -> Submitted:
    """Record `job` in the cluster and submit its run when the plan places it now; otherwise it waits, recorded,
    for `apply` or `watch`. Only this job's run is carried out: the rest of the plan is left to them.

    Planned and submitted under the cluster's apply lock, as `apply` is, so no watcher or `apply` places something
    on the same GPUs meanwhile; ``wait_for_lock`` waits for a holder instead of refusing (``on_wait`` hears why)."""
    if any(j.name == job.name for j in desired.jobs):
        raise UserError(f"job {job.name} is defined in the specs: give this run another name")
    with holding_lock(cluster, command=f"reconciler run {job.name}", wait=wait_for_lock, on_wait=on_wait):
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


@contextmanager
def holding_lock(cluster, *, command: str, wait: bool, on_wait: Callable[[str], None]) -> Iterator[None]:
    """The cluster's apply lock, held (and renewed) for the duration; a holder makes it refuse, or wait."""
    from reconciler.adapter.keeper import LeaseKeeper
    from reconciler.adapter.kv import RayKV
    from reconciler.adapter.lease import Holder, LeaseHeld, acquire, wait_acquire
    from reconciler.settings import DEFAULTS

    cluster.ray_nodes()  # connects the driver: the lock lives in this cluster's GCS
    holder = Holder.current(command)
    if wait:
        lease = wait_acquire(RayKV(), holder=holder, ttl=DEFAULTS.lease.ttl, stop=threading.Event(),
                             on_wait=lambda held: on_wait(str(held)))
        if lease is None:
            raise UserError("stopped while waiting for the apply lock: nothing was submitted")
    else:
        try:
            lease = acquire(RayKV(), holder=holder, ttl=DEFAULTS.lease.ttl)
        except LeaseHeld as held:
            raise UserError(f"{held} (or pass --wait-for-lock to wait for it)") from held
    keeper = LeaseKeeper(lease, on_lost=lambda _: None).start()
    try:
        keeper.confirm()
        yield
    finally:
        keeper.stop(release=True)


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
