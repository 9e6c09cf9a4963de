"""An ad-hoc job (`reconciler run`, ``reconciler.jobs.submit``) as a ``Job``: its pool and priority class resolved
against the specs, as a Job document's are. Pure."""

from __future__ import annotations

import re

from reconciler.desired import IMPLICIT_PRIORITY, DesiredState, Job
from reconciler.errors import UserError
from reconciler.quantity import QuantityError, parse_quantity
from reconciler.spec.fields import NAME_MAX, NAME_PATTERN, suggestion


def adhoc_job(
    desired: DesiredState,
    *,
    name: str,
    vram: str,
    entrypoint: str,
    priority_class: str | None = None,
    pool: str | None = None,
    gpus: int = 1,
    working_dir: str | None = None,
    env: dict[str, str] | None = None,
    retries: int = 0,
) -> Job:
    if len(name) > NAME_MAX or not re.match(NAME_PATTERN, name):
        raise UserError(f"--name {name!r}: use at most {NAME_MAX} lowercase letters, digits and '-'")
    if not entrypoint.strip():
        raise UserError("no command to run: give it after `--`, e.g. reconciler run --vram 4Gi -- python train.py")
    try:
        memory = parse_quantity(vram)
    except QuantityError as exc:
        raise UserError(f"--vram {vram}: {exc}") from None
    pools = [p.name for p in desired.pools]
    if pool is None:
        if len(pools) != 1:
            raise UserError(f"--pool is needed: the specs define {len(pools)} pools ({', '.join(pools) or 'none'})")
        pool = pools[0]
    elif pool not in pools:
        close = suggestion(pool, pools)
        raise UserError(f"--pool {pool} does not exist" + (f"; did you mean {close}?" if close else
                                                            f"; pools: {', '.join(pools) or 'none'}"))
    classes = {c.name: c for c in desired.priority_classes}
    if priority_class is None:
        klass = next((c for c in desired.priority_classes if c.default), IMPLICIT_PRIORITY)
    elif priority_class in classes:
        klass = classes[priority_class]
    else:
        close = suggestion(priority_class, list(classes))
        raise UserError(f"--priority-class {priority_class} does not exist" + (
            f"; did you mean {close}?" if close else f"; classes: {', '.join(classes) or 'none'}"))
    if gpus < 1 or retries < 0:
        raise UserError("--gpus must be 1 or more and --retries 0 or more")
    return Job(
        name=name,
        pool=pool,
        priority_class=klass.name,
        priority=klass.value,
        preemption=klass.preemption,
        preemptible=klass.preemptible,
        vram=memory,
        entrypoint=entrypoint,
        gpus=gpus,
        working_dir=working_dir,
        env=tuple(sorted((env or {}).items())),
        retries=retries,
    )
